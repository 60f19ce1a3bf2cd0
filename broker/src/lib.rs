//! Warren: an AMQP 0-9-1 message broker that RabbitMQ clients use unchanged.
//!
//! The module tree follows RabbitMQ's split: [`connection`] (socket, framing, heartbeats,
//! channel table), [`channel`] (protocol state, unacked map, prefetch, confirms,
//! transactions), [`queue`] (messages, consumers, credit), [`exchange`] (routing), [`vhost`]
//! (registries and topology operations).

pub mod auth;
pub mod channel;
pub mod config;
pub mod connection;
pub mod durable;
pub mod enqueue;
pub mod error;
pub mod exchange;
pub mod hash;
pub mod memory;
pub mod message;
pub mod names;
pub mod queue;
pub mod server;
pub mod vhost;

pub use config::Config;
pub use error::{BrokerError, ProtocolError, ReplyCode};
pub use server::{Broker, start};
