//! Memory-based flow control: bytes of messages held in queues, against a high watermark.
//!
//! Crossing the watermark blocks publishing connections: they stop reading their sockets (TCP
//! pushes back on the publisher) and get `connection.blocked` if they asked for it. Falling
//! back below it unblocks them. Consumers are never blocked, so they can drain.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

#[derive(Debug)]
pub struct MemoryMonitor {
    used: AtomicU64,
    high_watermark: u64,
    blocked: watch::Sender<bool>,
}

impl MemoryMonitor {
    pub fn new(high_watermark: u64) -> Self {
        Self {
            used: AtomicU64::new(0),
            high_watermark,
            blocked: watch::Sender::new(false),
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn add(&self, bytes: u64) {
        let now = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if now > self.high_watermark && !*self.blocked.borrow() {
            self.update_alarm();
        }
    }

    pub fn release(&self, bytes: u64) {
        let before = self.used.fetch_sub(bytes, Ordering::Relaxed);
        let now = before.saturating_sub(bytes);
        if now <= self.high_watermark && *self.blocked.borrow() {
            self.update_alarm();
        }
    }

    /// Re-reads the counter under the watch's lock, so that a racing add and release cannot
    /// leave the alarm in the state of whichever checked first.
    fn update_alarm(&self) {
        let mut used = 0;
        let mut blocked = false;
        let changed = self.blocked.send_if_modified(|b| {
            used = self.used.load(Ordering::Relaxed);
            blocked = used > self.high_watermark;
            let changed = *b != blocked;
            *b = blocked;
            changed
        });
        if changed {
            if blocked {
                tracing::warn!(
                    used,
                    high_watermark = self.high_watermark,
                    "memory alarm set: blocking publishers"
                );
            } else {
                tracing::info!(
                    used,
                    high_watermark = self.high_watermark,
                    "memory alarm cleared: unblocking publishers"
                );
            }
        }
    }

    /// Watches the blocked state; connections select on it.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.blocked.subscribe()
    }
}
