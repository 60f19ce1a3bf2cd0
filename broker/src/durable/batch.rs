//! A connection's store writes for one batch of frames, and the enqueues that wait for them.
//!
//! Ordering rule: a message's store writes are submitted before the message becomes visible
//! to any other connection (enqueued, or requeued after a delivery). Otherwise a consumer on
//! another connection could ack it and submit the removal before the publisher submitted the
//! write, and the store would resurrect an acked message after a restart. So publishes only
//! reserve their queue position while frames are handled; [`StoreBatch::flush`] submits the
//! writes and then enqueues, once per batch of frames (and before any method that could
//! observe the queue, such as `basic.get`).

use std::sync::Arc;

use warren_storage::{Store, WriteOp};

use crate::connection::outbox::{Outbox, OutboxItem};
use crate::message::{Message, QueueEntry};
use crate::queue::Queue;

pub struct StoreBatch {
    store: Option<Store>,
    outbox: Arc<Outbox>,
    ops: Vec<WriteOp>,
    /// Messages whose `PutMessage` is in `ops`: marked stored once the batch is on disk.
    written: Vec<Arc<Message>>,
    /// Enqueues held back until `ops` are submitted.
    pending: Vec<(Arc<Queue>, QueueEntry)>,
    /// Queues enqueued into since the last `take_touched`: they may have dead letters.
    touched: Vec<Arc<Queue>>,
    /// Id of the next submission; confirms wait on it.
    next_id: u64,
    /// A channel waits for this submission to send publisher confirms.
    confirm_wanted: bool,
}

impl StoreBatch {
    pub fn new(store: Option<Store>, outbox: Arc<Outbox>) -> Self {
        Self {
            store,
            outbox,
            ops: Vec::new(),
            written: Vec::new(),
            pending: Vec::new(),
            touched: Vec::new(),
            next_id: 1,
            confirm_wanted: false,
        }
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// The submission the ops pushed now will travel in.
    pub fn id(&self) -> u64 {
        self.next_id
    }

    pub fn push(&mut self, op: WriteOp) {
        self.ops.push(op);
    }

    pub fn ops_mut(&mut self) -> &mut Vec<WriteOp> {
        &mut self.ops
    }

    pub fn written(&mut self, message: Arc<Message>) {
        self.written.push(message);
    }

    /// The caller will wait for `OutboxItem::Durable` of the current submission.
    pub fn want_confirm(&mut self) {
        self.confirm_wanted = true;
    }

    pub fn hold_enqueue(&mut self, queue: Arc<Queue>, entry: QueueEntry) {
        self.pending.push((queue, entry));
    }

    /// Queues enqueued into since the last call.
    pub fn take_touched(&mut self, into: &mut Vec<Arc<Queue>>) {
        into.append(&mut self.touched);
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || !self.ops.is_empty()
    }

    /// Submits the store writes collected so far (no-op when there are none).
    pub fn submit(&mut self) {
        if self.ops.is_empty() {
            if self.confirm_wanted {
                // Nothing to write after all (the ops were folded away): confirm at once.
                self.confirm_wanted = false;
                self.outbox.push(OutboxItem::Durable {
                    batch: self.next_id,
                    ok: true,
                });
                self.next_id += 1;
            }
            return;
        }
        let Some(store) = &self.store else {
            self.ops.clear();
            return;
        };
        // The next batch is likely as large: start it at this one's size rather than growing
        // from empty (regrowing a vector of large ops showed in profiles).
        let (ops_len, written_len) = (self.ops.len(), self.written.len());
        let ops = std::mem::replace(&mut self.ops, Vec::with_capacity(ops_len));
        let written = std::mem::replace(&mut self.written, Vec::with_capacity(written_len));
        let notify = self
            .confirm_wanted
            .then(|| (Arc::clone(&self.outbox), self.next_id));
        self.confirm_wanted = false;
        self.next_id += 1;
        store.submit(
            ops,
            Some(Box::new(move |result| {
                let ok = match result {
                    Ok(()) => true,
                    Err(error) => {
                        tracing::error!(%error, "store write failed; publishers get basic.nack");
                        false
                    }
                };
                if ok {
                    for message in &written {
                        message.mark_stored();
                    }
                }
                if let Some((outbox, batch)) = notify {
                    outbox.push(OutboxItem::Durable { batch, ok });
                }
            })),
        );
    }

    /// Submits the writes, then makes held-back messages visible in their queues, one lock
    /// per run of messages for the same queue.
    pub fn flush(&mut self) {
        self.submit();
        let mut pending = std::mem::take(&mut self.pending);
        let mut held = pending.drain(..).peekable();
        while let Some((queue, first)) = held.next() {
            let same_queue = std::iter::from_fn(|| {
                held.next_if(|(q, _)| Arc::ptr_eq(q, &queue))
                    .map(|(_, entry)| entry)
            });
            queue.enqueue(std::iter::once(first).chain(same_queue));
            if !self.touched.iter().any(|q| Arc::ptr_eq(q, &queue)) {
                self.touched.push(queue);
            }
        }
        drop(held);
        self.pending = pending;
    }
}
