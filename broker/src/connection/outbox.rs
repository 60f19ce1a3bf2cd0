//! A connection's mailbox for work that queues hand it: deliveries for its consumers and
//! server-sent `basic.cancel`s.
//!
//! Queues push under their own lock; the connection task swaps the whole batch out and turns
//! it into frames, so a burst of deliveries costs one lock round trip and one socket write.
//! The number of deliveries waiting is bounded: a consumer whose outbox is full has no credit,
//! which is what bounds no-ack consumers (they have no prefetch).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::message::QueueEntry;
use crate::names::ConsumerTag;
use crate::queue::{Consumer, Queue};
use std::sync::Arc;

/// Deliveries waiting to be written before consumers of this connection stop getting more.
pub const OUTBOX_CAPACITY: usize = 8192;

#[derive(Debug)]
pub struct Delivery {
    pub consumer: Arc<Consumer>,
    pub queue: Arc<Queue>,
    pub entry: QueueEntry,
}

#[derive(Debug)]
pub enum OutboxItem {
    Deliver(Delivery),
    /// The queue went away under this consumer.
    Cancel {
        channel: u16,
        tag: ConsumerTag,
    },
    /// Store submission `batch` of this connection is on disk (or failed): publisher
    /// confirms waiting for it can go out.
    Durable {
        batch: u64,
        ok: bool,
    },
}

#[derive(Debug, Default)]
pub struct Outbox {
    items: Mutex<Vec<OutboxItem>>,
    notify: Notify,
    pending: AtomicUsize,
    /// A queue skipped one of our consumers because the outbox was full: pump our queues once
    /// it drains.
    stalled: AtomicBool,
}

impl Outbox {
    pub fn has_room(&self) -> bool {
        if self.pending.load(Ordering::Relaxed) < OUTBOX_CAPACITY {
            return true;
        }
        self.stalled.store(true, Ordering::Relaxed);
        false
    }

    pub fn push(&self, item: OutboxItem) {
        if matches!(item, OutboxItem::Deliver(_)) {
            self.pending.fetch_add(1, Ordering::Relaxed);
        }
        let was_empty = {
            let mut items = match self.items.lock() {
                Ok(items) => items,
                Err(poisoned) => poisoned.into_inner(),
            };
            items.push(item);
            items.len() == 1
        };
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Moves everything waiting into `into` (which should be empty).
    pub fn take(&self, into: &mut Vec<OutboxItem>) {
        let mut items = match self.items.lock() {
            Ok(items) => items,
            Err(poisoned) => poisoned.into_inner(),
        };
        std::mem::swap(&mut *items, into);
    }

    /// Called once taken deliveries are encoded for the socket.
    pub fn delivered(&self, n: usize) {
        self.pending.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn take_stalled(&self) -> bool {
        self.stalled.swap(false, Ordering::Relaxed)
    }

    pub async fn notified(&self) {
        self.notify.notified().await
    }
}
