//! A published message and its place in a queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use amqp_codec::RawProperties;
use bytes::Bytes;
use warren_storage::{MessageId, StoredMessage};

/// What a publisher sent. Shared by every queue it was routed to; never copied.
#[derive(Debug)]
pub struct Message {
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub properties: RawProperties,
    pub body: Bytes,
    /// Its id in the store, when it was written there (persistent, in a durable queue).
    pub store_id: Option<MessageId>,
    /// Set once the write holding it is on disk: only then may a queue drop the body from
    /// memory and read it back later.
    stored: AtomicBool,
}

impl Message {
    pub fn new(
        exchange: Bytes,
        routing_key: Bytes,
        properties: RawProperties,
        body: Bytes,
        store_id: Option<MessageId>,
    ) -> Self {
        Self {
            exchange,
            routing_key,
            properties,
            body,
            store_id,
            stored: AtomicBool::new(false),
        }
    }

    /// The same message, to be written to the store under `id`.
    pub fn with_store_id(mut self, id: Option<MessageId>) -> Self {
        self.store_id = id;
        self
    }

    /// A message read back from the store.
    pub fn from_stored(id: MessageId, stored: StoredMessage) -> Option<Self> {
        let properties = RawProperties::new(stored.properties).ok()?;
        Some(Self {
            exchange: stored.exchange,
            routing_key: stored.routing_key,
            properties,
            body: stored.body,
            store_id: Some(id),
            stored: AtomicBool::new(true),
        })
    }

    /// What the store keeps of it (reference-counted copies of the same bytes).
    pub fn to_stored(&self) -> StoredMessage {
        StoredMessage {
            exchange: self.exchange.clone(),
            routing_key: self.routing_key.clone(),
            properties: self.properties.to_bytes(),
            body: self.body.clone(),
        }
    }

    /// Bytes this message accounts for against the memory limit.
    pub fn size(&self) -> u64 {
        (self.body.len() + self.properties.as_bytes().len()) as u64
    }

    pub fn is_stored(&self) -> bool {
        self.stored.load(Ordering::Acquire)
    }

    pub fn mark_stored(&self) {
        self.stored.store(true, Ordering::Release);
    }
}

/// Wall-clock time in Unix milliseconds, for TTLs and `x-death` times.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One message in one queue.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    /// Position in the queue; a requeued message goes back to this place.
    pub seq: u64,
    pub message: Arc<Message>,
    /// Set once the message has been delivered (and so returned, if it is ready again).
    pub redelivered: bool,
    /// Times the message has been returned to the queue after a delivery.
    pub delivery_count: u32,
    /// The queue's index in the store holds this entry.
    pub persisted: bool,
    /// Written only to page the body out of memory: not kept across a restart.
    pub paged: bool,
    /// When it expires (queue or per-message TTL), in Unix milliseconds; 0 = never.
    pub expires_at: u64,
}

impl QueueEntry {
    /// The store's view of this entry.
    pub fn index_entry(&self) -> Option<warren_storage::IndexEntry> {
        let message_id = self.message.store_id.filter(|_| self.persisted)?;
        Some(warren_storage::IndexEntry {
            seq: self.seq,
            message_id,
            delivery_count: self.delivery_count,
            delivered: self.redelivered,
            transient: self.paged,
            size: self.message.body.len() as u32,
            expires_at: self.expires_at,
        })
    }
}
