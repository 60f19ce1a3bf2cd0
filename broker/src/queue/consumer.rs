//! A consumer as its queue sees it: where deliveries go and how much credit it has left.
//!
//! Credit is the flow control between a queue and a consumer: the queue hands a consumer a
//! message only while the consumer is under its prefetch (per consumer, and shared by the
//! channel when `basic.qos` is global) and its connection's outbox has room. The queue stops
//! pushing; it never buffers on a consumer's behalf. Counters are atomics because the queue
//! takes credit under its own lock while the channel returns it from the connection's task.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::connection::outbox::Outbox;
use crate::names::ConsumerTag;

/// Prefetch state shared by all consumers of one channel.
#[derive(Debug, Default)]
pub struct ChannelCredit {
    /// `basic.qos` with `global = true`; 0 = no limit.
    limit: AtomicU32,
    /// Unacked deliveries on the channel to consumers that ack.
    unacked: AtomicU32,
}

impl ChannelCredit {
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    fn try_acquire(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        self.unacked
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    fn release(&self, n: u32) {
        let _ = self
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

/// A `basic.consume` subscription.
#[derive(Debug)]
pub struct Consumer {
    pub tag: ConsumerTag,
    pub channel: u16,
    pub outbox: Arc<Outbox>,
    pub no_ack: bool,
    pub exclusive: bool,
    /// `x-priority`: higher priority consumers get messages first while they have credit.
    pub priority: i32,
    /// Per-consumer prefetch (`basic.qos` with `global = false` before `basic.consume`).
    pub prefetch: u32,
    unacked: AtomicU32,
    /// Set by `basic.cancel` or channel close; deliveries still in flight go back.
    cancelled: AtomicBool,
    pub channel_credit: Arc<ChannelCredit>,
}

impl Consumer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tag: ConsumerTag,
        channel: u16,
        outbox: Arc<Outbox>,
        no_ack: bool,
        exclusive: bool,
        priority: i32,
        prefetch: u32,
        channel_credit: Arc<ChannelCredit>,
    ) -> Self {
        Self {
            tag,
            channel,
            outbox,
            no_ack,
            exclusive,
            priority,
            prefetch,
            unacked: AtomicU32::new(0),
            cancelled: AtomicBool::new(false),
            channel_credit,
        }
    }

    /// Takes one unit of credit if the consumer may receive a message now.
    pub fn try_take_credit(&self) -> bool {
        if !self.outbox.has_room() {
            return false;
        }
        if self.no_ack {
            return true;
        }
        if self.prefetch != 0 && self.unacked.load(Ordering::Relaxed) >= self.prefetch {
            return false;
        }
        if !self.channel_credit.try_acquire() {
            return false;
        }
        self.unacked.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Returns credit for `n` settled deliveries.
    pub fn release_credit(&self, n: u32) {
        if self.no_ack || n == 0 {
            return;
        }
        let _ = self
            .unacked
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
        self.channel_credit.release(n);
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    pub fn unacked(&self) -> u32 {
        self.unacked.load(Ordering::Relaxed)
    }
}
