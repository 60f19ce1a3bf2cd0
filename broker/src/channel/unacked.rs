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
use crate::queue::dead_letter::DeathReason;
use crate::queue::{Consumer, Queue};
use crate::queue::{DeadLetter, dead_letter};
use crate::vhost::{RouteScratch, VHost};

#[derive(Debug, Clone)]
pub struct Unacked {
    pub tag: DeliveryTag,
    pub queue: Arc<Queue>,
    pub entry: QueueEntry,
    /// `None` for `basic.get`, which holds no consumer credit.
    pub consumer: Option<Arc<Consumer>>,
    /// For the consumer ack timeout.
    pub delivered_at: std::time::Instant,
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

    pub fn iter(&self) -> impl Iterator<Item = &Unacked> {
        self.entries.iter()
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

/// What a client said about a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// `basic.ack`: done with it.
    Ack,
    /// `nack`/`reject` with requeue, `basic.recover`, or its channel went away.
    Requeue,
    /// `nack`/`reject` without requeue: dead-lettered (reason `rejected`) or dropped.
    Reject,
}

/// Where settling may send messages: back to queues, to the store, to dead-letter exchanges.
pub struct SettleContext<'a> {
    pub vhost: &'a VHost,
    pub batch: &'a mut StoreBatch,
    pub to_pump: &'a mut Vec<Arc<Queue>>,
    pub scratch: &'a mut RouteScratch,
}

/// Settles taken deliveries, one run of the same queue at a time. Acked ones leave their
/// queue and the store; requeued ones go back with their delivery count raised (written to
/// the store before another consumer can see them), unless that passes the queue's delivery
/// limit; rejected ones and those past the limit are dead-lettered. Queues whose consumers got
/// credit back are scheduled for pumping.
pub fn settle(taken: &mut Vec<Unacked>, settlement: Settlement, ctx: &mut SettleContext<'_>) {
    while let Some(first) = taken.first() {
        let queue = Arc::clone(&first.queue);
        let mut end = 0;
        while end < taken.len() && Arc::ptr_eq(&taken[end].queue, &queue) {
            if let Some(consumer) = &taken[end].consumer {
                consumer.release_credit(1);
            }
            end += 1;
        }
        let run = taken.drain(..end);
        match settlement {
            Settlement::Ack => ack_run(&queue, run, ctx.batch),
            Settlement::Reject => {
                let letters = run
                    .map(|u| DeadLetter {
                        entry: u.entry,
                        reason: DeathReason::Rejected,
                    })
                    .collect();
                leave_for_dead_letter(&queue, letters, ctx);
            }
            Settlement::Requeue => requeue_run(&queue, run, ctx),
        }
        if !ctx.to_pump.iter().any(|q| Arc::ptr_eq(q, &queue)) {
            ctx.to_pump.push(queue);
        }
    }
}

fn ack_run(queue: &Queue, run: impl Iterator<Item = Unacked>, batch: &mut StoreBatch) {
    let mut count = 0;
    let mut bytes = 0;
    for u in run {
        count += 1;
        bytes += u.entry.message.size();
        if let (Some(index), Some(qs)) = (u.entry.index_entry(), &queue.store) {
            batch.push(WriteOp::Remove {
                queue: qs.id,
                seq: index.seq,
                message_id: index.message_id,
            });
        }
    }
    queue.settle(count, bytes);
}

fn requeue_run(
    queue: &Arc<Queue>,
    run: impl Iterator<Item = Unacked>,
    ctx: &mut SettleContext<'_>,
) {
    let limit = queue.settings.policy.delivery_limit;
    let mut back = Vec::new();
    let mut over_limit = Vec::new();
    for mut u in run {
        u.entry.redelivered = true;
        u.entry.delivery_count = u.entry.delivery_count.saturating_add(1);
        // RabbitMQ's quorum queues: a return that takes the count past the limit
        // dead-letters the message (so a limit of 3 allows 4 deliveries in all).
        if limit.is_some_and(|limit| u.entry.delivery_count > limit) {
            over_limit.push(DeadLetter {
                entry: u.entry,
                reason: DeathReason::DeliveryLimit,
            });
            continue;
        }
        if let (Some(index), Some(qs)) = (u.entry.index_entry(), &queue.store) {
            ctx.batch.push(WriteOp::UpdateEntry {
                queue: qs.id,
                entry: index,
            });
        }
        back.push(u.entry);
    }
    if !back.is_empty() {
        // The new counts reach the store before another consumer can see the messages.
        ctx.batch.submit();
        queue.requeue(back);
    }
    leave_for_dead_letter(queue, over_limit, ctx);
}

fn leave_for_dead_letter(queue: &Queue, letters: Vec<DeadLetter>, ctx: &mut SettleContext<'_>) {
    if letters.is_empty() {
        return;
    }
    let bytes = letters.iter().map(|l| l.entry.message.size()).sum();
    queue.settle(letters.len(), bytes);
    dead_letter(ctx.vhost, queue, letters, ctx.batch, ctx.scratch);
}
