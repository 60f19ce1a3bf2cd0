//! The queue: its messages (ready, and delivered but unsettled), its consumers and their
//! credit. This is the "queue process" of RabbitMQ's split; the channel owns delivery tags and
//! the unacked map, the queue owns order and who gets what.
//!
//! A queue's state has one owner at a time: a short synchronous critical section under a
//! mutex, entered inline by the publishing connection (enqueue and dispatch), by the consuming
//! connection (settle, requeue) and by declares. Nothing awaits while holding it, so a std
//! mutex is the right tool: no task hop per message, and an uncontended lock is one atomic.

mod arguments;
mod consumer;
pub mod dead_letter;
mod dead_lettering;
mod ready;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use amqp_codec::FieldTable;

pub use arguments::{Overflow, QueueArguments, QueueDefaults, QueuePolicy, QueueType};
pub use consumer::{ChannelCredit, Consumer};
pub use dead_lettering::dead_letter;
use ready::ReadyMessages;
pub use ready::{DiskRun, QueueStore};
use warren_storage::WriteOp;

use crate::connection::outbox::{Delivery, OutboxItem};
use crate::error::{ProtocolError, ProtocolResult};
use crate::memory::MemoryMonitor;
use crate::message::{QueueEntry, now_ms};
use crate::names::QueueName;
use dead_letter::DeathReason;

/// Connection that owns an exclusive queue.
pub type ConnectionId = u64;

/// What `queue.declare` asked for; fixed for the queue's life.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub durable: bool,
    pub exclusive_owner: Option<ConnectionId>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// `arguments` and broker defaults, resolved: what the queue runs with.
    pub policy: QueuePolicy,
}

#[derive(Debug)]
pub struct Queue {
    pub name: QueueName,
    pub settings: QueueSettings,
    pub vhost: Arc<str>,
    /// Where a durable queue keeps persistent messages; `None` for transient queues.
    pub store: Option<QueueStore>,
    /// Next position handed out; reserved before the message is enqueued, so that its
    /// write reaches the store before any consumer can see it.
    next_seq: AtomicU64,
    state: Mutex<QueueState>,
    memory: Arc<MemoryMonitor>,
    /// Messages left the queue to be dead-lettered; see [`Queue::take_dead_letters`].
    has_dead: AtomicBool,
    /// Last declare, consume, get or cancel (Unix ms), for `x-expires`.
    last_used_ms: AtomicU64,
}

/// A message that left its queue without being consumed, and why.
#[derive(Debug)]
pub struct DeadLetter {
    pub entry: QueueEntry,
    pub reason: DeathReason,
}

#[derive(Debug, Default)]
struct QueueState {
    ready: ReadyMessages,
    /// Delivered to a consumer or `basic.get` and not yet settled.
    unacked: usize,
    /// Sorted by priority, highest first; insertion order within a priority.
    consumers: Vec<Arc<Consumer>>,
    /// Round-robin cursor into `consumers`.
    next_consumer: usize,
    had_consumers: bool,
    deleted: bool,
    /// Expired or dropped messages waiting to be dead-lettered by whoever takes them.
    dead: Vec<DeadLetter>,
    /// Publishes admitted under a reject-publish limit, not yet enqueued: (count, bytes).
    admitted: (u64, u64),
}

/// Point-in-time counts for `queue.declare-ok` and operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub ready: u32,
    pub unacked: u32,
    pub consumers: u32,
}

impl Queue {
    pub fn new(
        name: QueueName,
        vhost: Arc<str>,
        settings: QueueSettings,
        memory: Arc<MemoryMonitor>,
        store: Option<QueueStore>,
    ) -> Self {
        Self::recovered(name, vhost, settings, memory, store, None, 0)
    }

    /// A durable queue rebuilt from the store: its messages start on disk.
    pub fn recovered(
        name: QueueName,
        vhost: Arc<str>,
        settings: QueueSettings,
        memory: Arc<MemoryMonitor>,
        store: Option<QueueStore>,
        disk: Option<DiskRun>,
        next_seq: u64,
    ) -> Self {
        let ready = ReadyMessages::new(settings.policy.arguments.max_priority, disk);
        Self {
            name,
            settings,
            vhost,
            store,
            next_seq: AtomicU64::new(next_seq),
            state: Mutex::new(QueueState {
                ready,
                ..QueueState::default()
            }),
            memory,
            has_dead: AtomicBool::new(false),
            last_used_ms: AtomicU64::new(now_ms()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding the lock cannot leave the queue half-updated in a way that
        // loses messages, so carry on with the data rather than poison every later caller.
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Survives a restart: declared durable, and not exclusive (exclusive queues never
    /// outlive their connection).
    pub fn is_durable(&self) -> bool {
        self.settings.durable && self.settings.exclusive_owner.is_none()
    }

    pub fn is_exclusive_to_other(&self, connection: ConnectionId) -> bool {
        matches!(self.settings.exclusive_owner, Some(owner) if owner != connection)
    }

    /// 405 unless `connection` may use this queue.
    pub fn check_access(&self, connection: ConnectionId) -> ProtocolResult {
        if self.is_exclusive_to_other(connection) {
            return Err(ProtocolError::resource_locked(format!(
                "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                self.name, self.vhost
            )));
        }
        Ok(())
    }

    pub fn counts(&self) -> QueueCounts {
        let st = self.lock();
        QueueCounts {
            ready: st.ready.len().min(u64::from(u32::MAX)) as u32,
            unacked: st.unacked as u32,
            consumers: st.consumers.len() as u32,
        }
    }

    /// The position the next message will take.
    pub fn reserve_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds messages (with reserved seqs) and hands ready messages to consumers with credit.
    pub fn enqueue(self: &Arc<Self>, entries: impl IntoIterator<Item = QueueEntry>) {
        let mut st = self.lock();
        if st.deleted {
            return;
        }
        let pageable = self.store.is_some();
        let admitted = self.settings.policy.arguments.overflow != Overflow::DropHead;
        let mut fresh_from = u64::MAX;
        for entry in entries {
            let size = entry.message.size();
            if admitted {
                st.admitted.0 = st.admitted.0.saturating_sub(1);
                st.admitted.1 = st
                    .admitted
                    .1
                    .saturating_sub(entry.message.body.len() as u64);
            }
            fresh_from = fresh_from.min(entry.seq);
            self.memory.add(size);
            st.ready.push(entry, pageable);
        }
        self.drop_head_over_limit(&mut st);
        self.dispatch_from(&mut st, fresh_from);
        self.expire_head(&mut st, now_ms());
        if pageable {
            let released = st.ready.page_out();
            self.memory.release(released);
        }
        self.note_dead(&st);
    }

    /// Under `x-overflow: reject-publish(-dlx)`, reserves room for one more message of
    /// `size` bytes; false when the queue is full and the publish must be refused.
    pub fn admit(&self, body_size: u64) -> bool {
        let args = &self.settings.policy.arguments;
        if args.overflow == Overflow::DropHead
            || (args.max_length.is_none() && args.max_length_bytes.is_none())
        {
            return true;
        }
        let mut st = self.lock();
        let len = st.ready.len() + st.admitted.0;
        let bytes = st.ready.bytes() + st.admitted.1;
        if args.max_length.is_some_and(|max| len >= max)
            || args
                .max_length_bytes
                .is_some_and(|max| bytes + body_size > max)
        {
            return false;
        }
        st.admitted.0 += 1;
        st.admitted.1 += body_size;
        true
    }

    /// `x-overflow: drop-head`: the oldest ready messages go (dead-lettered `maxlen`) while
    /// the queue is over `x-max-length` or `x-max-length-bytes`.
    fn drop_head_over_limit(&self, st: &mut QueueState) {
        let args = &self.settings.policy.arguments;
        if args.overflow != Overflow::DropHead {
            return;
        }
        while args.max_length.is_some_and(|max| st.ready.len() > max)
            || args
                .max_length_bytes
                .is_some_and(|max| st.ready.bytes() > max)
        {
            let Some((entry, paged_in)) = st.ready.pop_front(self.store.as_ref()) else {
                break;
            };
            self.memory.add(paged_in);
            self.memory.release(entry.message.size());
            st.dead.push(DeadLetter {
                entry,
                reason: DeathReason::Maxlen,
            });
        }
    }

    /// Expired messages at the head leave for dead-lettering, whether or not a consumer is
    /// there to notice (RabbitMQ expires from the head).
    fn expire_head(&self, st: &mut QueueState, now: u64) {
        while let Some((entry, paged_in)) = st.ready.pop_front(self.store.as_ref()) {
            self.memory.add(paged_in);
            if entry.expires_at == 0 || entry.expires_at > now {
                st.ready.unpop(entry);
                break;
            }
            self.memory.release(entry.message.size());
            st.dead.push(DeadLetter {
                entry,
                reason: DeathReason::Expired,
            });
        }
    }

    fn note_dead(&self, st: &QueueState) {
        if !st.dead.is_empty() {
            self.has_dead.store(true, Ordering::Release);
        }
    }

    /// Messages that left the queue to be dead-lettered (expired, dropped by a length limit).
    pub fn take_dead_letters(&self) -> Vec<DeadLetter> {
        if !self.has_dead.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut self.lock().dead)
    }

    /// Marks the queue used now (declare, consume, get), for `x-expires`.
    pub fn touch(&self) {
        self.last_used_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Periodic housekeeping: expiry at the head, paging, and whether `x-expires` says the
    /// queue has been unused long enough to be deleted.
    pub fn tick(&self, now: u64) -> bool {
        let mut st = self.lock();
        if st.deleted {
            return false;
        }
        self.expire_head(&mut st, now);
        if self.store.is_some() {
            let released = st.ready.page_out();
            self.memory.release(released);
        }
        self.note_dead(&st);
        let unused_for = now.saturating_sub(self.last_used_ms.load(Ordering::Relaxed));
        self.settings
            .policy
            .arguments
            .expires
            .is_some_and(|expires| st.consumers.is_empty() && unused_for >= expires)
    }

    /// `basic.get`: the head message and how many remain.
    pub fn get(&self, no_ack: bool) -> Option<(QueueEntry, u32)> {
        self.touch();
        let mut st = self.lock();
        self.expire_head(&mut st, now_ms());
        self.note_dead(&st);
        let (entry, paged_in) = st.ready.pop_front(self.store.as_ref())?;
        self.memory.add(paged_in);
        if no_ack {
            self.memory.release(entry.message.size());
        } else {
            st.unacked += 1;
        }
        let remaining = st.ready.len().min(u64::from(u32::MAX)) as u32;
        Some((entry, remaining))
    }

    /// Puts delivered messages back at their original places, marked redelivered.
    pub fn requeue(self: &Arc<Self>, entries: impl IntoIterator<Item = QueueEntry>) {
        let mut st = self.lock();
        for entry in entries {
            st.unacked = st.unacked.saturating_sub(1);
            if st.deleted {
                self.memory.release(entry.message.size());
                continue;
            }
            st.ready.requeue(entry);
        }
        self.dispatch(&mut st);
    }

    /// A delivery handed to a consumer that went away before it was sent: back to its place,
    /// not marked redelivered (the client never saw it).
    pub fn requeue_unsent(self: &Arc<Self>, entry: QueueEntry, no_ack: bool) {
        let mut st = self.lock();
        if no_ack {
            // Its memory was released when it left for a no-ack consumer.
            self.memory.add(entry.message.size());
        } else {
            st.unacked = st.unacked.saturating_sub(1);
        }
        if st.deleted {
            self.memory.release(entry.message.size());
            return;
        }
        st.ready.requeue(entry);
        self.dispatch(&mut st);
    }

    /// Acked (or dropped) deliveries: they leave the queue for good.
    pub fn settle(&self, count: usize, bytes: u64) {
        if count == 0 {
            return;
        }
        let mut st = self.lock();
        st.unacked = st.unacked.saturating_sub(count);
        drop(st);
        self.memory.release(bytes);
    }

    /// Hands ready messages to consumers that have credit again.
    pub fn pump(self: &Arc<Self>) {
        let mut st = self.lock();
        self.dispatch(&mut st);
    }

    /// Adds a consumer; 403 if the queue or the new consumer is exclusive and others exist.
    pub fn add_consumer(self: &Arc<Self>, consumer: Arc<Consumer>) -> ProtocolResult {
        self.touch();
        let mut st = self.lock();
        if st.deleted {
            return Err(ProtocolError::not_found(format!(
                "no queue '{}' in vhost '{}'",
                self.name, self.vhost
            )));
        }
        if st.consumers.iter().any(|c| c.exclusive)
            || (consumer.exclusive && !st.consumers.is_empty())
        {
            return Err(ProtocolError::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.name, self.vhost
            )));
        }
        let at = st
            .consumers
            .partition_point(|c| c.priority >= consumer.priority);
        st.consumers.insert(at, consumer);
        st.had_consumers = true;
        self.dispatch(&mut st);
        Ok(())
    }

    /// Removes a consumer. Returns true when this leaves an auto-delete queue unused, so the
    /// caller should delete it.
    pub fn remove_consumer(&self, consumer: &Arc<Consumer>) -> bool {
        self.touch();
        let mut st = self.lock();
        if let Some(pos) = st.consumers.iter().position(|c| Arc::ptr_eq(c, consumer)) {
            st.consumers.remove(pos);
            if st.next_consumer > pos {
                st.next_consumer -= 1;
            }
        }
        self.settings.auto_delete && st.had_consumers && st.consumers.is_empty() && !st.deleted
    }

    /// Drops every ready message; returns how many. Store removals go into `ops`.
    pub fn purge(&self, ops: &mut Vec<WriteOp>) -> u32 {
        let mut st = self.lock();
        let count = st.ready.len();
        let (entries, disk) = st.ready.take_all();
        drop(st);
        let bytes: u64 = entries.iter().map(|e| e.message.size()).sum();
        self.memory.release(bytes);
        let Some(store) = &self.store else {
            return count.min(u64::from(u32::MAX)) as u32;
        };
        ops.extend(entries.iter().filter_map(|e| {
            e.index_entry().map(|i| WriteOp::Remove {
                queue: store.id,
                seq: i.seq,
                message_id: i.message_id,
            })
        }));
        if let Some(run) = disk {
            remove_disk_run(store, run, ops);
        }
        count.min(u64::from(u32::MAX)) as u32
    }

    /// Marks the queue deleted, drops its ready messages and tells its consumers. Returns the
    /// number of ready messages it held.
    pub fn delete(&self) -> u32 {
        let mut st = self.lock();
        if st.deleted {
            return 0;
        }
        st.deleted = true;
        let n = st.ready.len();
        let (entries, _) = st.ready.take_all();
        for consumer in st.consumers.drain(..) {
            consumer.outbox.push(OutboxItem::Cancel {
                channel: consumer.channel,
                tag: consumer.tag.clone(),
            });
        }
        drop(st);
        self.memory
            .release(entries.iter().map(|e| e.message.size()).sum());
        n.min(u64::from(u32::MAX)) as u32
    }

    fn dispatch(self: &Arc<Self>, st: &mut QueueState) {
        self.dispatch_from(st, u64::MAX);
    }

    /// Hands ready messages to consumers with credit. Messages at or after `fresh_from` have
    /// only just entered the queue: their TTL starts now, so even a TTL of 0 lets them go to a
    /// consumer that can take them at once (RabbitMQ's rule); they expire afterwards.
    fn dispatch_from(self: &Arc<Self>, st: &mut QueueState, fresh_from: u64) {
        let single_active = self.settings.policy.arguments.single_active_consumer;
        let mut now = None;
        while !st.ready.is_empty() && !st.consumers.is_empty() {
            let Some((entry, paged_in)) = st.ready.pop_front(self.store.as_ref()) else {
                break;
            };
            self.memory.add(paged_in);
            if entry.expires_at != 0
                && entry.seq < fresh_from
                && entry.expires_at <= *now.get_or_insert_with(now_ms)
            {
                self.memory.release(entry.message.size());
                st.dead.push(DeadLetter {
                    entry,
                    reason: DeathReason::Expired,
                });
                continue;
            }
            let Some(idx) = pick_consumer(st, single_active) else {
                st.ready.unpop(entry);
                break;
            };
            let consumer = &st.consumers[idx];
            if consumer.no_ack {
                self.memory.release(entry.message.size());
            } else {
                st.unacked += 1;
            }
            let consumer = &st.consumers[idx];
            consumer.outbox.push(OutboxItem::Deliver(Delivery {
                consumer: Arc::clone(consumer),
                queue: Arc::clone(self),
                entry,
            }));
        }
        self.note_dead(st);
    }
}

/// Removal ops for every entry of a disk run, read from the index in chunks.
fn remove_disk_run(store: &QueueStore, run: DiskRun, ops: &mut Vec<WriteOp>) {
    let mut next = run.next;
    let mut left = run.count;
    while left > 0 {
        let chunk = match store
            .store
            .read_entries(store.id, next, left.min(4096) as usize)
        {
            Ok(chunk) if !chunk.is_empty() => chunk,
            Ok(_) => break,
            Err(error) => {
                tracing::error!(%error, queue_id = store.id, "cannot read queue index while purging");
                break;
            }
        };
        for entry in &chunk {
            ops.push(WriteOp::Remove {
                queue: store.id,
                seq: entry.seq,
                message_id: entry.message_id,
            });
            next = entry.seq + 1;
        }
        left = left.saturating_sub(chunk.len() as u64);
    }
}

/// The next consumer with credit: the highest priority first, round-robin within a priority.
/// A single-active-consumer queue only ever delivers to its first consumer (the longest
/// waiting of the highest priority); when it goes, the next one takes over.
fn pick_consumer(st: &mut QueueState, single_active: bool) -> Option<usize> {
    if single_active {
        return st
            .consumers
            .first()
            .is_some_and(|c| c.try_take_credit())
            .then_some(0);
    }
    let n = st.consumers.len();
    let mut group = 0;
    while group < n {
        let priority = st.consumers[group].priority;
        let end = group
            + st.consumers[group..]
                .iter()
                .take_while(|c| c.priority == priority)
                .count();
        let len = end - group;
        let start = if (group..end).contains(&st.next_consumer) {
            st.next_consumer - group
        } else {
            0
        };
        for k in 0..len {
            let idx = group + (start + k) % len;
            if st.consumers[idx].try_take_credit() {
                st.next_consumer = if idx + 1 < end { idx + 1 } else { group };
                return Some(idx);
            }
        }
        group = end;
    }
    None
}
