//! Durable storage for Warren: metadata and persistent messages on fjall.
//!
//! Responsibilities:
//! - the data directory ([`DataDir`]) and the database in it ([`Store`]);
//! - persistent messages, inside their queue's index entry when one queue holds them, else
//!   stored once however many queues hold them, and per-queue indexes that scan in sequence
//!   order ([`WriteOp`], [`Placement`], [`Store::read_messages`]);
//! - group commit: one writer thread batches every submission that arrives while the previous
//!   commit is in flight and fsyncs once per batch (`writer`), appending it to the commit log;
//!   what the log holds stays in memory (`overlay`) until a checkpoint writes what is left of
//!   it to fjall, so messages acked soon after their commit never reach fjall (`commit_log`);
//! - message garbage collection by reference count, and recovery at open (`recovery`);
//! - metadata records (vhosts, users, exchanges, queues, bindings) as opaque bytes.
//!
//! The crate knows nothing about AMQP: exchanges, routing keys, properties and bodies are bytes.

mod codec;
mod commit_log;
mod error;
mod overlay;
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

/// Where a message is stored, which is fixed when its id is handed out
/// ([`Store::next_message_id`]) and carried in the id itself.
///
/// A message that one queue holds is stored inside its index entry: one write to store it and
/// one to delete it, instead of two each. A message several queues hold, or one too big to
/// keep beside the index (compactions would rewrite it), is stored once on its own, in fjall's
/// blob files when large, and reference-counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Inside the one index entry that holds it: sent with its [`WriteOp::Enqueue`].
    Inline,
    /// On its own ([`WriteOp::PutMessage`]); index entries refer to it by id.
    Separate,
}

/// Set in the ids of [`Placement::Separate`] messages; ids count up in the other bits.
pub const SEPARATE_MESSAGE_BIT: MessageId = 1 << 63;

/// Encoded messages above this many bytes are stored separately even when one queue holds
/// them (the blob threshold, so that big bodies stay out of compactions).
const INLINE_MAX_BYTES: usize = 4 * 1024;

impl Placement {
    /// The placement for a message that `references` queue entries will hold, whose body,
    /// properties, exchange and routing key add up to `size` bytes.
    pub fn for_message(references: u32, size: usize) -> Placement {
        if references <= 1 && size <= INLINE_MAX_BYTES {
            Placement::Inline
        } else {
            Placement::Separate
        }
    }

    /// The placement `id` was handed out with.
    pub fn of(id: MessageId) -> Placement {
        if id & SEPARATE_MESSAGE_BIT != 0 {
            Placement::Separate
        } else {
            Placement::Inline
        }
    }
}

impl StoredMessage {
    /// What [`Placement::for_message`] counts.
    pub fn size(&self) -> usize {
        self.exchange.len() + self.routing_key.len() + self.properties.len() + self.body.len()
    }
}

/// A change submitted to the writer; see [`Store::submit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// A [`Placement::Separate`] message, written once however many durable queues it was
    /// routed to. `references` is how many `Enqueue`s will point at it (0 is taken as 1).
    PutMessage {
        id: MessageId,
        message: StoredMessage,
        references: u32,
    },
    /// Queue `queue` holds the message at `entry.seq` (a seq the queue has not used before).
    /// `message` is the message itself when its id is [`Placement::Inline`] (and must be
    /// `None` otherwise: the entry then refers to a `PutMessage`).
    Enqueue {
        queue: QueueId,
        entry: IndexEntry,
        message: Option<StoredMessage>,
    },
    /// The entry's delivered flag / delivery count changed (rewrites the entry, keeping an
    /// inline message). Ignored if the entry is gone.
    UpdateEntry { queue: QueueId, entry: IndexEntry },
    /// The queue no longer holds `seq` (acked, dropped): removes the index entry, and a
    /// separate message once no queue references it.
    Remove {
        queue: QueueId,
        seq: Seq,
        message_id: MessageId,
    },
    /// Removes every entry of the queue (queue deleted or purged), with the same message GC.
    DropQueue { queue: QueueId },
}

/// A queue entry read back with its message ([`Store::read_messages`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedMessage {
    pub entry: IndexEntry,
    /// `None` if the store does not hold the message (a damaged store).
    pub message: Option<StoredMessage>,
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
    /// Checkpoints: the commit log's contents written to fjall and the log started over.
    pub checkpoints: u64,
    /// Groups of submissions the writer processed (including ones with nothing to write).
    pub batches: u64,
    /// Messages committed (`PutMessage`s and `Enqueue`s carrying an inline message).
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
