//! Resource alarms: bytes of messages held in memory against a high watermark, and free disk
//! in the data directory against a limit.
//!
//! Either alarm blocks publishing connections: they stop reading their sockets (TCP pushes
//! back on the publisher) and get `connection.blocked` if they asked for it. Clearing both
//! unblocks them. Consumers are never blocked, so they can drain.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::watch;

#[derive(Debug)]
pub struct MemoryMonitor {
    used: AtomicU64,
    high_watermark: u64,
    disk_alarm: AtomicBool,
    blocked: watch::Sender<bool>,
}

impl MemoryMonitor {
    pub fn new(high_watermark: u64) -> Self {
        Self {
            used: AtomicU64::new(0),
            high_watermark,
            disk_alarm: AtomicBool::new(false),
            blocked: watch::Sender::new(false),
        }
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn add(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let now = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if now > self.high_watermark && !*self.blocked.borrow() {
            self.update_alarm();
        }
    }

    pub fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let before = self.used.fetch_sub(bytes, Ordering::Relaxed);
        let now = before.saturating_sub(bytes);
        if now <= self.high_watermark && *self.blocked.borrow() {
            self.update_alarm();
        }
    }

    /// Past half the watermark, queues write new messages to the store so their bodies can
    /// leave memory, instead of letting publishers run into the alarm.
    pub fn should_page(&self) -> bool {
        self.used.load(Ordering::Relaxed) > self.high_watermark / 2
    }

    /// Sets or clears the free-disk alarm.
    pub fn set_disk_alarm(&self, on: bool) {
        if self.disk_alarm.swap(on, Ordering::Relaxed) != on {
            if on {
                tracing::warn!("disk alarm set: free disk below the limit; blocking publishers");
            } else {
                tracing::info!("disk alarm cleared");
            }
            self.update_alarm();
        }
    }

    /// Why publishers are blocked, for `connection.blocked`.
    pub fn reason(&self) -> &'static str {
        if self.disk_alarm.load(Ordering::Relaxed) {
            "low on disk"
        } else {
            "low on memory"
        }
    }

    /// Re-reads both alarms under the watch's lock, so that a racing add and release cannot
    /// leave the state of whichever checked first.
    fn update_alarm(&self) {
        let mut used = 0;
        let mut memory = false;
        let changed = self.blocked.send_if_modified(|b| {
            used = self.used.load(Ordering::Relaxed);
            memory = used > self.high_watermark;
            let blocked = memory || self.disk_alarm.load(Ordering::Relaxed);
            let changed = *b != blocked;
            *b = blocked;
            changed
        });
        if changed {
            if memory {
                tracing::warn!(
                    used,
                    high_watermark = self.high_watermark,
                    "memory alarm set: blocking publishers"
                );
            } else {
                tracing::info!(
                    used,
                    high_watermark = self.high_watermark,
                    "resource alarms cleared: unblocking publishers"
                );
            }
        }
    }

    /// Watches the blocked state; connections select on it.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.blocked.subscribe()
    }
}
