//! Durable storage for Warren: metadata and persistent messages on fjall.
//!
//! Responsibilities:
//! - the data directory ([`DataDir`]) and the database in it ([`Store`]);
//! - persistent messages, stored once however many queues hold them, and per-queue indexes
//!   that scan in sequence order ([`WriteOp`], [`Store::read_entries`]);
//! - group commit: one writer thread batches every submission that arrives while the previous
//!   commit is in flight and fsyncs once per batch (`writer`);
//! - message garbage collection by reference count, and recovery at open (`recovery`);
//! - metadata records (vhosts, users, exchanges, queues, bindings) as opaque bytes.
//!
//! The crate knows nothing about AMQP: exchanges, routing keys, properties and bodies are bytes.

mod codec;
mod error;
mod pending;
mod recovery;
mod store;
mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;

pub use error::StorageError;
pub use store::{Recovery, Store};

pub type QueueId = u64;
pub type MessageId = u64;
/// A message's position in its queue; increases with every enqueue to that queue.
pub type Seq = u64;

/// Runs on the writer thread once the batch holding a submission is durable (or failed).
pub type DurableCallback = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// A persistent message as stored: everything needed to deliver it again after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub exchange: Bytes,
    pub routing_key: Bytes,
    /// Raw AMQP content-header property bytes (flags and list), not decoded here.
    pub properties: Bytes,
    pub body: Bytes,
}

/// One message in one queue's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub seq: Seq,
    pub message_id: MessageId,
    pub delivery_count: u32,
    /// Delivered at least once (AMQP `redelivered` after a restart).
    pub delivered: bool,
    /// Written only to page a transient message out of memory: such entries (and messages
    /// only they reference) are dropped when the store is opened.
    pub transient: bool,
    /// Body bytes, so a recovering queue knows its size (as length limits count it) without
    /// reading bodies.
    pub size: u32,
    /// When the message expires (TTL), in Unix milliseconds; 0 = never.
    pub expires_at: u64,
}

/// A change submitted to the writer; see [`Store::submit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// A persistent message, written once however many durable queues it was routed to.
    /// `references` is how many `Enqueue`s will point at it (0 is taken as 1).
    PutMessage {
        id: MessageId,
        message: StoredMessage,
        references: u32,
    },
    /// Queue `queue` holds the message at `entry.seq` (a seq the queue has not used before).
    Enqueue { queue: QueueId, entry: IndexEntry },
    /// The entry's delivered flag / delivery count changed (overwrites the index value).
    UpdateEntry { queue: QueueId, entry: IndexEntry },
    /// The queue no longer holds `seq` (acked, dropped): removes the index entry, and the
    /// message once no queue references it.
    Remove {
        queue: QueueId,
        seq: Seq,
        message_id: MessageId,
    },
    /// Removes every entry of the queue (queue deleted or purged), with the same message GC.
    DropQueue { queue: QueueId },
}

/// What the store held for one queue when it was opened, so the broker need not count the
/// queue's index at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Seq of the first entry (entries start at or after it).
    pub first: Seq,
    /// Entries, and the sum of their `size`s.
    pub count: u64,
    pub bytes: u64,
    /// One past the seq of the last entry: where the queue continues.
    pub next: Seq,
}

/// A metadata record as stored: (key, value), both opaque.
pub type MetaRecord = (Vec<u8>, Vec<u8>);

/// Kinds of metadata record; each kind is its own key space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetaKind {
    Vhost,
    User,
    Exchange,
    Queue,
    Binding,
}

#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// After draining its queue, how long the writer may wait for more submissions before
    /// committing. Zero (the default) commits at once; batches still grow under load because
    /// everything that arrives during one fsync goes into the next batch.
    pub commit_interval: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            commit_interval: Duration::ZERO,
        }
    }
}

/// Counters for benchmarks and metrics, since the store was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Group commits that wrote something and were fsynced.
    pub fsyncs: u64,
    /// Groups of submissions the writer processed (including ones with nothing to write).
    pub batches: u64,
    /// `PutMessage` ops committed.
    pub messages_written: u64,
    /// `WriteOp`s committed.
    pub ops_written: u64,
}

/// The broker's data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
}

impl DataDir {
    /// Creates the directory if it does not exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&path).map_err(|source| StorageError::CreateDir {
            path: path.clone(),
            source,
        })?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where [`Store`] keeps its database inside the data directory.
    pub fn store_path(&self) -> PathBuf {
        self.path.join("store")
    }
}
