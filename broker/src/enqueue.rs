//! Turning a routed message into queue entries: admission under `reject-publish` limits,
//! store writes for what must survive a restart (or leave memory), and expiry times. Shared
//! by channel publishes and dead-lettering, so both obey the same queue rules.

use std::sync::Arc;

use warren_storage::{Placement, WriteOp};

use crate::durable::StoreBatch;
use crate::message::{Message, QueueEntry, now_ms};
use crate::queue::{Overflow, Queue};

/// What became of a routed message.
#[derive(Debug, Default)]
pub struct Enqueued {
    /// Its write is in the batch: a publisher confirm must wait for the batch to be on disk.
    pub wrote: bool,
    /// Queues that refused it (full, with `x-overflow: reject-publish` or `-dlx`).
    pub refused: Vec<Arc<Queue>>,
    /// The message, when some queue refused it (to dead-letter it from there).
    pub message: Option<Arc<Message>>,
}

/// Holds `message` for enqueueing into every queue in `queues` (which is drained), with its
/// store writes in `batch`. `paging` asks for transient messages to be written too, so their
/// bodies can leave memory.
pub fn enqueue_routed(
    message: Message,
    queues: &mut Vec<Arc<Queue>>,
    batch: &mut StoreBatch,
    paging: bool,
) -> Enqueued {
    let mut outcome = Enqueued::default();
    let body_size = message.body.len() as u64;
    queues.retain(|queue| {
        let admitted = queue.admit(body_size);
        if !admitted {
            outcome.refused.push(Arc::clone(queue));
        }
        admitted
    });
    if queues.is_empty() {
        if !outcome.refused.is_empty() {
            outcome.message = Some(Arc::new(message));
        }
        return outcome;
    }
    let persistent = message.properties.delivery_mode() == Some(2);
    let written = |q: &Queue| q.store.is_some() && (paging || (persistent && q.is_durable()));
    let references = queues.iter().filter(|q| written(q)).count() as u32;
    let stored = match batch.store() {
        Some(store) if references > 0 => {
            let stored = message.to_stored();
            let placement = Placement::for_message(references, stored.size());
            Some((store.next_message_id(placement), placement, stored))
        }
        _ => None,
    };
    // An inline message travels with the one entry that holds it, a separate one on its own.
    let mut inline = None;
    let store_id = stored.map(|(id, placement, stored)| {
        match placement {
            Placement::Inline => inline = Some(stored),
            Placement::Separate => batch.push(WriteOp::PutMessage {
                id,
                message: stored,
                references,
            }),
        }
        id
    });
    let message_ttl = message_expiration(&message);
    let message = Arc::new(message.with_store_id(store_id));
    if store_id.is_some() {
        batch.written(Arc::clone(&message));
        outcome.wrote = true;
    }
    if !outcome.refused.is_empty() {
        outcome.message = Some(Arc::clone(&message));
    }
    let mut now = None;
    for queue in queues.drain(..) {
        let ttl = match (message_ttl, queue.settings.policy.arguments.message_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let expires_at = ttl.map_or(0, |ttl| {
            now.get_or_insert_with(now_ms).saturating_add(ttl).max(1)
        });
        let entry = QueueEntry {
            seq: queue.reserve_seq(),
            message: Arc::clone(&message),
            redelivered: false,
            delivery_count: 0,
            persisted: store_id.is_some() && written(&queue),
            paged: !(persistent && queue.is_durable()),
            expires_at,
        };
        if let (Some(index), Some(qs)) = (entry.index_entry(), &queue.store) {
            batch.push(WriteOp::Enqueue {
                queue: qs.id,
                entry: index,
                message: inline.take(),
            });
        }
        batch.hold_enqueue(queue, entry);
    }
    outcome
}

/// The per-message TTL from the `expiration` property, in milliseconds.
fn message_expiration(message: &Message) -> Option<u64> {
    let text = message.properties.expiration()?;
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Whether a queue refusing a message also dead-letters it (`reject-publish-dlx`).
pub fn dead_letters_refused(queue: &Queue) -> bool {
    queue.settings.policy.arguments.overflow == Overflow::RejectPublishDlx
}
