//! A published message and its place in a queue.

use std::sync::Arc;

use amqp_codec::RawProperties;
use bytes::Bytes;

/// What a publisher sent. Shared by every queue it was routed to; never copied.
#[derive(Debug)]
pub struct Message {
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub properties: RawProperties,
    pub body: Bytes,
}

impl Message {
    /// Bytes this message accounts for against the memory limit.
    pub fn size(&self) -> u64 {
        (self.body.len() + self.properties.as_bytes().len()) as u64
    }
}

/// One message in one queue.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    /// Position in the queue; a requeued message goes back to this place.
    pub seq: u64,
    pub message: Arc<Message>,
    /// Set once the message has been delivered and returned.
    pub redelivered: bool,
    /// Times the message has been returned to the queue after a delivery.
    pub delivery_count: u32,
}
