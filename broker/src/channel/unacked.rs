//! The channel's unacked map: deliveries sent and not yet settled, in delivery-tag order.
//!
//! Tags grow monotonically, so a `VecDeque` sorted by tag makes the common cases cheap:
//! `ack multiple` pops from the front, a single ack is a binary search near the front.

use std::collections::VecDeque;
use std::sync::Arc;

use warren_storage::WriteOp;

use crate::durable::StoreBatch;
use crate::error::{ProtocolError, ProtocolResult};
use crate::message::QueueEntry;
use crate::names::DeliveryTag;
use crate::queue::{Consumer, Queue};

#[derive(Debug)]
pub struct Unacked {
    pub tag: DeliveryTag,
    pub queue: Arc<Queue>,
    pub entry: QueueEntry,
    /// `None` for `basic.get`, which holds no consumer credit.
    pub consumer: Option<Arc<Consumer>>,
}

#[derive(Debug, Default)]
pub struct UnackedMap {
    entries: VecDeque<Unacked>,
}

impl UnackedMap {
    pub fn push(&mut self, unacked: Unacked) {
        self.entries.push_back(unacked);
    }

    /// Removes the deliveries an ack/nack names: `tag` alone, or every tag up to it with
    /// `multiple` (tag 0 with `multiple` means all). 406 when nothing matches, as RabbitMQ.
    pub fn take(
        &mut self,
        tag: DeliveryTag,
        multiple: bool,
        into: &mut Vec<Unacked>,
    ) -> ProtocolResult {
        if multiple {
            let before = into.len();
            while self
                .entries
                .front()
                .is_some_and(|u| tag == 0 || u.tag <= tag)
            {
                if let Some(u) = self.entries.pop_front() {
                    into.push(u);
                }
            }
            if into.len() == before && tag != 0 {
                return Err(unknown_tag(tag));
            }
            return Ok(());
        }
        let idx = self
            .entries
            .binary_search_by_key(&tag, |u| u.tag)
            .map_err(|_| unknown_tag(tag))?;
        if let Some(u) = self.entries.remove(idx) {
            into.push(u);
        }
        Ok(())
    }

    /// Everything, for requeue on close or `basic.recover`.
    pub fn drain_all(&mut self) -> impl Iterator<Item = Unacked> + '_ {
        self.entries.drain(..)
    }

    /// Puts back deliveries taken by an ack that a rolled-back transaction undoes.
    pub fn restore(&mut self, mut restored: Vec<Unacked>) {
        restored.extend(self.entries.drain(..));
        restored.sort_by_key(|u| u.tag);
        self.entries = restored.into();
    }
}

fn unknown_tag(tag: DeliveryTag) -> ProtocolError {
    ProtocolError::precondition_failed(format!("unknown delivery tag {tag}"))
}

/// Settles taken deliveries: acked ones leave their queues (and the store), requeued ones go
/// back (their new delivery count written first). Runs of the same queue are settled in one
/// call. Queues whose consumers got credit back are added to `to_pump`.
pub fn settle(
    taken: &mut Vec<Unacked>,
    requeue: bool,
    to_pump: &mut Vec<Arc<Queue>>,
    batch: &mut StoreBatch,
) {
    let mut i = 0;
    while i < taken.len() {
        let queue = Arc::clone(&taken[i].queue);
        let mut j = i;
        let mut bytes = 0;
        while j < taken.len() && Arc::ptr_eq(&taken[j].queue, &queue) {
            bytes += taken[j].entry.message.size();
            if let Some(consumer) = &taken[j].consumer {
                consumer.release_credit(1);
            }
            j += 1;
        }
        if requeue {
            for u in &mut taken[i..j] {
                u.entry.redelivered = true;
                u.entry.delivery_count = u.entry.delivery_count.saturating_add(1);
                if let (Some(index), Some(qs)) = (u.entry.index_entry(), &queue.store) {
                    batch.push(WriteOp::UpdateEntry {
                        queue: qs.id,
                        entry: index,
                    });
                }
            }
            // The new counts reach the store before another consumer can see the messages.
            batch.submit();
            queue.requeue(taken[i..j].iter().map(|u| u.entry.clone()));
        } else {
            if let Some(qs) = &queue.store {
                batch.extend(taken[i..j].iter().filter_map(|u| {
                    u.entry.index_entry().map(|index| WriteOp::Remove {
                        queue: qs.id,
                        seq: index.seq,
                        message_id: index.message_id,
                    })
                }));
            }
            queue.settle(j - i, bytes);
        }
        if !to_pump.iter().any(|q| Arc::ptr_eq(q, &queue)) {
            to_pump.push(queue);
        }
        i = j;
    }
    taken.clear();
}
