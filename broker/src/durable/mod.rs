//! What makes Warren durable, on the broker side: metadata records for durable exchanges,
//! queues and bindings (encoded here, stored by `warren-storage`), the per-connection batch
//! of message writes, and recovery at start.

pub mod batch;
pub mod records;
pub mod recovery;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use warren_storage::{MetaKind, QueueId, Store};

pub use batch::StoreBatch;

/// The store and the counters that must not repeat across restarts.
#[derive(Debug)]
pub struct Durability {
    pub store: Store,
    next_queue_id: AtomicU64,
}

impl Durability {
    pub fn new(store: Store, next_queue_id: QueueId) -> Arc<Self> {
        Arc::new(Self {
            store,
            next_queue_id: AtomicU64::new(next_queue_id.max(1)),
        })
    }

    /// A store id for a new durable queue; never reused, so late writes for a deleted queue
    /// can be told apart.
    pub fn next_queue_id(&self) -> QueueId {
        self.next_queue_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Writes a metadata record, logging (not failing the method) when the disk refuses:
    /// the topology still works in memory, and the operator sees why it will not survive.
    pub fn put(&self, kind: MetaKind, key: &[u8], value: &[u8]) {
        if let Err(error) = self.store.put_meta(kind, key, value) {
            tracing::error!(%error, ?kind, "cannot store metadata record");
        }
    }

    pub fn delete(&self, kind: MetaKind, key: &[u8]) {
        if let Err(error) = self.store.delete_meta(kind, key) {
            tracing::error!(%error, ?kind, "cannot delete metadata record");
        }
    }
}
