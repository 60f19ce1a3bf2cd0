//! The group-commit writer: one thread owns every write to the database.
//!
//! It blocks on its queue; when a submission arrives it drains everything already queued,
//! applies it all as one fjall batch across keyspaces, persists once (`SyncData`), and then runs
//! the callbacks of that batch in submission order. While one fsync is in flight the next
//! submissions pile up in the queue, so under load batches grow by themselves, and an idle
//! broker commits at once. With `commit_interval > 0` the writer may linger up to that long for
//! more submissions, but only when it already holds something to commit.
//!
//! Message GC also lives here, because only the writer knows the order of every change: a
//! message written with one reference is deleted by its `Remove`; messages with more references
//! have a count in `multi_refs` (the only per-message state kept in memory).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use fjall::{Database, PersistMode};

use crate::codec;
use crate::store::Keyspaces;
use crate::{DurableCallback, MessageId, StorageError, StoreStats, WriteOp};

/// Stop draining the queue once a batch holds this many ops or this many value bytes: the
/// rest goes into the next batch, so one commit never grows without bound.
const MAX_BATCH_OPS: usize = 65_536;
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

pub(crate) struct Submission {
    pub(crate) work: Work,
    pub(crate) on_durable: Option<DurableCallback>,
}

pub(crate) enum Work {
    Ops(Vec<WriteOp>),
    PutMeta {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    DeleteMeta {
        key: Vec<u8>,
    },
    /// Ids below this may have been handed out; persist it so they are never reused.
    RaiseIdCeiling(u64),
    /// Nothing to write: completes once everything before it is durable.
    Barrier,
    /// Like `Barrier`, then the writer stops: later submissions fail with `WriterStopped`.
    Close,
}

impl Submission {
    fn weight(&self) -> (usize, usize) {
        match &self.work {
            Work::Ops(ops) => {
                let bytes = ops
                    .iter()
                    .map(|op| match op {
                        WriteOp::PutMessage { message, .. } => {
                            message.body.len() + message.properties.len()
                        }
                        _ => 0,
                    })
                    .sum();
                (ops.len(), bytes)
            }
            Work::PutMeta { value, .. } => (1, value.len()),
            _ => (1, 0),
        }
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    fsyncs: AtomicU64,
    batches: AtomicU64,
    messages_written: AtomicU64,
    ops_written: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> StoreStats {
        StoreStats {
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            messages_written: self.messages_written.load(Ordering::Relaxed),
            ops_written: self.ops_written.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct Writer {
    db: Database,
    ks: Keyspaces,
    queue: Receiver<Submission>,
    commit_interval: Duration,
    /// Reference counts of messages that more than one queue holds. Single-reference messages
    /// (the common case) are not tracked: their `Remove` deletes them.
    multi_refs: HashMap<MessageId, u32>,
    /// Queues dropped since open. Queue ids are never reused, so a `Remove`/`UpdateEntry`
    /// that reaches the writer after its queue's `DropQueue` (another connection settled a
    /// delivery while the queue was being deleted) is stale and must not release a shared
    /// message a second time.
    dropped_queues: HashSet<u64>,
    /// The id ceiling on disk.
    id_ceiling: u64,
    counters: Arc<Counters>,
}

impl Writer {
    pub(crate) fn new(
        db: Database,
        ks: Keyspaces,
        queue: Receiver<Submission>,
        commit_interval: Duration,
        multi_refs: HashMap<MessageId, u32>,
        id_ceiling: u64,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            db,
            ks,
            queue,
            commit_interval,
            multi_refs,
            dropped_queues: HashSet::new(),
            id_ceiling,
            counters,
        }
    }

    /// Runs until every `Store` handle is gone and the queue is empty.
    pub(crate) fn run(mut self) {
        let mut group = Vec::new();
        while let Ok(first) = self.queue.recv() {
            let mut weight = first.weight();
            group.push(first);
            self.drain(&mut group, &mut weight);
            if !self.commit_interval.is_zero() {
                let deadline = Instant::now() + self.commit_interval;
                while !full(weight) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self.queue.recv_timeout(left) {
                        Ok(submission) => {
                            add(&mut weight, submission.weight());
                            group.push(submission);
                            self.drain(&mut group, &mut weight);
                        }
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
            let closing = group.iter().any(|s| matches!(s.work, Work::Close));
            self.commit(&mut group);
            if closing {
                break;
            }
        }
        // Only after `Store::close`: nothing queued behind it may reach the disk.
        while let Ok(submission) = self.queue.try_recv() {
            if let Some(callback) = submission.on_durable
                && catch_unwind(AssertUnwindSafe(|| {
                    callback(Err(StorageError::WriterStopped))
                }))
                .is_err()
            {
                tracing::error!("a storage on_durable callback panicked");
            }
        }
    }

    /// Takes what is already queued, up to the batch limits.
    fn drain(&self, group: &mut Vec<Submission>, weight: &mut (usize, usize)) {
        while !full(*weight) {
            match self.queue.try_recv() {
                Ok(submission) => {
                    add(weight, submission.weight());
                    group.push(submission);
                }
                Err(_) => break,
            }
        }
    }

    /// Writes the group as one batch and completes its callbacks.
    fn commit(&mut self, group: &mut Vec<Submission>) {
        let outcome = self.write(group).map_err(|error| {
            tracing::error!(%error, submissions = group.len(), "storage batch failed");
            error.to_string()
        });
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        for submission in group.drain(..) {
            let Some(callback) = submission.on_durable else {
                continue;
            };
            let result = match &outcome {
                Ok(()) => Ok(()),
                Err(reason) => Err(StorageError::CommitFailed {
                    reason: reason.clone(),
                }),
            };
            // A panicking callback is the caller's bug; it must not take the writer down with
            // it, or every later submission would hang.
            if catch_unwind(AssertUnwindSafe(|| callback(result))).is_err() {
                tracing::error!("a storage on_durable callback panicked");
            }
        }
    }

    fn write(&mut self, group: &[Submission]) -> Result<(), StorageError> {
        let mut batch = PendingBatch::new(&self.ks, &self.multi_refs, &mut self.dropped_queues);
        let mut ops = 0u64;
        let mut messages = 0u64;
        let mut id_ceiling = self.id_ceiling;
        for submission in group {
            match &submission.work {
                Work::Ops(list) => {
                    for op in list {
                        batch.apply(op)?;
                        ops += 1;
                        messages += u64::from(matches!(op, WriteOp::PutMessage { .. }));
                    }
                }
                Work::PutMeta { key, value } => {
                    batch.put(Space::Meta, key.clone(), value.clone(), false);
                }
                Work::DeleteMeta { key } => batch.delete(Space::Meta, key.clone()),
                Work::RaiseIdCeiling(ceiling) => id_ceiling = id_ceiling.max(*ceiling),
                Work::Barrier | Work::Close => {}
            }
        }
        if id_ceiling > self.id_ceiling {
            let value = id_ceiling.to_be_bytes().to_vec();
            batch.put(Space::Meta, codec::ID_CEILING_KEY.to_vec(), value, false);
        }

        let PendingBatch {
            writes,
            ref_changes,
            ..
        } = batch;
        if !writes.is_empty() {
            let mut fjall_batch = self.db.batch().durability(Some(PersistMode::SyncData));
            for ((space, key), pending) in writes {
                let keyspace = match space {
                    Space::Meta => &self.ks.meta,
                    Space::Messages => &self.ks.messages,
                    Space::Index => &self.ks.index,
                };
                match pending.value {
                    Some(value) => fjall_batch.insert(keyspace, key, value),
                    None => fjall_batch.remove(keyspace, key),
                }
            }
            fjall_batch.commit()?;
            self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        }

        // Only now, with the batch durable, does the in-memory state follow it.
        self.id_ceiling = id_ceiling;
        for (id, count) in ref_changes {
            if count == 0 {
                self.multi_refs.remove(&id);
            } else {
                self.multi_refs.insert(id, count);
            }
        }
        self.counters.ops_written.fetch_add(ops, Ordering::Relaxed);
        self.counters
            .messages_written
            .fetch_add(messages, Ordering::Relaxed);
        Ok(())
    }
}

fn full((ops, bytes): (usize, usize)) -> bool {
    ops >= MAX_BATCH_OPS || bytes >= MAX_BATCH_BYTES
}

fn add(total: &mut (usize, usize), (ops, bytes): (usize, usize)) {
    total.0 += ops;
    total.1 += bytes;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Space {
    Meta,
    Messages,
    Index,
}

/// The last write to one key within a batch.
struct Pending {
    /// `None` deletes.
    value: Option<Vec<u8>>,
    /// The key was created in this batch (a fresh message id or queue seq), so deleting it
    /// again in the same batch needs no tombstone at all: publish-then-ack within one commit
    /// leaves nothing on disk.
    fresh: bool,
}

/// One batch being built: the last write per key (fjall gives every item of a batch the same
/// sequence number, so two writes to one key must be folded here), and reference-count
/// changes that take effect only if the batch commits.
struct PendingBatch<'a> {
    ks: &'a Keyspaces,
    multi_refs: &'a HashMap<MessageId, u32>,
    dropped_queues: &'a mut HashSet<u64>,
    writes: BTreeMap<(Space, Vec<u8>), Pending>,
    /// New counts of multi-reference messages; 0 means forget it.
    ref_changes: HashMap<MessageId, u32>,
}

impl<'a> PendingBatch<'a> {
    fn new(
        ks: &'a Keyspaces,
        multi_refs: &'a HashMap<MessageId, u32>,
        dropped_queues: &'a mut HashSet<u64>,
    ) -> Self {
        Self {
            ks,
            multi_refs,
            dropped_queues,
            writes: BTreeMap::new(),
            ref_changes: HashMap::new(),
        }
    }

    fn apply(&mut self, op: &WriteOp) -> Result<(), StorageError> {
        match op {
            WriteOp::PutMessage {
                id,
                message,
                references,
            } => {
                let key = codec::message_key(*id).to_vec();
                self.put(Space::Messages, key, codec::encode_message(message), true);
                if *references > 1 {
                    self.ref_changes.insert(*id, *references);
                }
            }
            // The queue went away before this entry arrived: the reference it would hold is
            // released at once so a shared message is still deleted with its last holder.
            WriteOp::Enqueue { queue, entry } if self.dropped_queues.contains(queue) => {
                self.release(entry.message_id);
            }
            WriteOp::UpdateEntry { queue, .. } | WriteOp::Remove { queue, .. }
                if self.dropped_queues.contains(queue) => {}
            WriteOp::Enqueue { queue, entry } => {
                let key = codec::index_key(*queue, entry.seq).to_vec();
                let value = codec::encode_index_value(entry).to_vec();
                self.put(Space::Index, key, value, true);
            }
            WriteOp::UpdateEntry { queue, entry } => {
                let key = codec::index_key(*queue, entry.seq).to_vec();
                let value = codec::encode_index_value(entry).to_vec();
                self.put(Space::Index, key, value, false);
            }
            WriteOp::Remove {
                queue,
                seq,
                message_id,
            } => {
                self.delete(Space::Index, codec::index_key(*queue, *seq).to_vec());
                self.release(*message_id);
            }
            WriteOp::DropQueue { queue } => {
                self.drop_queue(*queue)?;
                self.dropped_queues.insert(*queue);
            }
        }
        Ok(())
    }

    fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>, fresh: bool) {
        match self.writes.entry((space, key)) {
            Entry::Vacant(slot) => {
                slot.insert(Pending {
                    value: Some(value),
                    fresh,
                });
            }
            Entry::Occupied(mut slot) => {
                let pending = slot.get_mut();
                // Rewritten after a delete in this batch: the key may exist on disk.
                if pending.value.is_none() {
                    pending.fresh = false;
                }
                pending.value = Some(value);
            }
        }
    }

    fn delete(&mut self, space: Space, key: Vec<u8>) {
        let slot = (space, key);
        if matches!(self.writes.get(&slot), Some(Pending { fresh: true, .. })) {
            self.writes.remove(&slot);
        } else {
            self.writes.insert(
                slot,
                Pending {
                    value: None,
                    fresh: false,
                },
            );
        }
    }

    /// One reference to `id` is gone; deletes the message when it was the last.
    fn release(&mut self, id: MessageId) {
        let count = self
            .ref_changes
            .get(&id)
            .or_else(|| self.multi_refs.get(&id))
            .copied();
        match count {
            Some(count) if count > 1 => {
                self.ref_changes.insert(id, count - 1);
            }
            Some(_) => {
                self.ref_changes.insert(id, 0);
                self.delete(Space::Messages, codec::message_key(id).to_vec());
            }
            None => self.delete(Space::Messages, codec::message_key(id).to_vec()),
        }
    }

    /// Removes every entry of the queue, on disk and written earlier in this batch.
    fn drop_queue(&mut self, queue: u64) -> Result<(), StorageError> {
        let prefix = codec::queue_prefix(queue);
        let mut found = Vec::new();
        for guard in self.ks.index.prefix(prefix) {
            let (key, value) = guard.into_inner()?;
            codec::decode_index_key(&key)?;
            // The batch's own write to this key (if any) wins over the disk, below.
            if !self.writes.contains_key(&(Space::Index, key.to_vec())) {
                found.push((key.to_vec(), codec::index_value_message_id(&value)?));
            }
        }
        let start = (Space::Index, prefix.to_vec());
        for ((space, key), pending) in self.writes.range(start..) {
            if *space != Space::Index || !key.starts_with(&prefix) {
                break;
            }
            if let Some(value) = &pending.value {
                found.push((key.clone(), codec::index_value_message_id(value)?));
            }
        }
        for (key, message_id) in found {
            self.delete(Space::Index, key);
            self.release(message_id);
        }
        Ok(())
    }
}
