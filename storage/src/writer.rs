//! The group-commit writer: one thread owns every write to the database.
//!
//! It blocks on its queue; when a submission arrives it drains everything already queued,
//! folds it into one set of key changes, appends that to the commit log and fsyncs once, moves
//! the changes into the overlay, and then runs the callbacks of that batch in submission
//! order. Once the log or the overlay has grown past its limit, a checkpoint writes the
//! overlay to fjall (one batch, `SyncData`) and the log starts over (see `commit_log`). While
//! one fsync is in flight the next submissions pile up in the queue, so under load batches
//! grow by themselves, and an idle broker commits at once. With `commit_interval > 0` the writer may linger up to that long for
//! more submissions, but only when it already holds something to commit.
//!
//! Message GC also lives here, because only the writer knows the order of every change: an
//! inline message goes with its entry; a separate message written with one reference is
//! deleted by its `Remove`; messages with more references have a count in `multi_refs` (the
//! only per-message state kept in memory).

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use fjall::{Database, PersistMode};

use crate::codec;
use crate::commit_log::{CHECKPOINT_LOG_BYTES, CommitLog};
use crate::overlay::{CHECKPOINT_OVERLAY_BYTES, Overlay};
use crate::pending::{Change, Key, PendingBatch, RefChanges, Value, Writes};
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
    fn op_count(&self) -> usize {
        match &self.work {
            Work::Ops(ops) => ops.len(),
            _ => 1,
        }
    }

    fn weight(&self) -> (usize, usize) {
        match &self.work {
            Work::Ops(ops) => {
                let bytes = ops
                    .iter()
                    .map(|op| match op {
                        WriteOp::PutMessage { message, .. }
                        | WriteOp::Enqueue {
                            message: Some(message),
                            ..
                        } => message.size(),
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
    checkpoints: AtomicU64,
    batches: AtomicU64,
    messages_written: AtomicU64,
    ops_written: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> StoreStats {
        StoreStats {
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            checkpoints: self.checkpoints.load(Ordering::Relaxed),
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
    /// The fold map of each commit, kept for the next one.
    writes: Writes,
    log: CommitLog,
    /// Shared with readers: what the log holds that fjall does not.
    overlay: Arc<RwLock<Overlay>>,
    /// The key changes of the commit in progress, kept for the next one.
    changes: Vec<Change>,
    /// When a checkpoint last failed: the next try waits a while (a full disk would otherwise
    /// make every commit write the whole overlay again).
    checkpoint_failed: Option<Instant>,
    counters: Arc<Counters>,
}

/// The change list keeps its memory between commits up to this many entries.
const KEPT_CHANGES: usize = 16 * 1024;

/// How long after a failed checkpoint the next one is tried.
const CHECKPOINT_RETRY: Duration = Duration::from_secs(1);

/// Where the writer writes: the commit log and its overlay first, fjall at checkpoints.
pub(crate) struct Destination {
    pub(crate) db: Database,
    pub(crate) ks: Keyspaces,
    pub(crate) log: CommitLog,
    pub(crate) overlay: Arc<RwLock<Overlay>>,
}

impl Writer {
    pub(crate) fn new(
        destination: Destination,
        queue: Receiver<Submission>,
        commit_interval: Duration,
        multi_refs: HashMap<MessageId, u32>,
        id_ceiling: u64,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            db: destination.db,
            ks: destination.ks,
            queue,
            commit_interval,
            multi_refs,
            dropped_queues: HashSet::new(),
            id_ceiling,
            writes: Writes::default(),
            log: destination.log,
            overlay: destination.overlay,
            changes: Vec::new(),
            checkpoint_failed: None,
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
            self.commit(&mut group, closing);
            if closing {
                break;
            }
        }
        // Only after `Store::close`: nothing queued behind it may reach the disk.
        while let Ok(submission) = self.queue.try_recv() {
            if let Some(callback) = submission.on_durable {
                complete(callback, Err(StorageError::WriterStopped));
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
    /// On `closing`, also checkpoints before the callbacks run, so that a closed store leaves
    /// nothing in the log.
    fn commit(&mut self, group: &mut Vec<Submission>, closing: bool) {
        let mut outcome = self.write(group.as_mut_slice());
        if closing && outcome.is_ok() {
            outcome = self.checkpoint();
        }
        let outcome = outcome.map_err(|error| {
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
            complete(callback, result);
        }
        if !closing && self.checkpoint_due() {
            let started = Instant::now();
            match self.checkpoint() {
                Ok(()) => {
                    self.checkpoint_failed = None;
                    tracing::debug!(
                        ms = started.elapsed().as_millis() as u64,
                        "commit log checkpointed into fjall"
                    );
                }
                // The log keeps everything; a later commit tries again.
                Err(error) => {
                    self.checkpoint_failed = Some(Instant::now());
                    tracing::error!(%error, "commit log checkpoint failed");
                }
            }
        }
    }

    fn checkpoint_due(&self) -> bool {
        if self
            .checkpoint_failed
            .is_some_and(|at| at.elapsed() < CHECKPOINT_RETRY)
        {
            return false;
        }
        self.log.len() >= CHECKPOINT_LOG_BYTES
            || self
                .overlay
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .bytes()
                >= CHECKPOINT_OVERLAY_BYTES
    }

    /// Writes the overlay to fjall, durably, then empties it and starts a new log file.
    fn checkpoint(&mut self) -> Result<(), StorageError> {
        let overlay = self.overlay.read().unwrap_or_else(PoisonError::into_inner);
        if !overlay.is_empty() {
            let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
            overlay.write_into(&mut batch, &self.ks);
            drop(overlay);
            batch.commit()?;
        } else {
            drop(overlay);
            // Deletions written straight to fjall since the last sync are in its journal.
            self.db.persist(PersistMode::SyncData)?;
        }
        // Only once fjall has it all: a reader holding the read lock saw either.
        self.overlay
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.log
            .restart()
            .map_err(|source| StorageError::CommitLog {
                path: self.log.dir().to_path_buf(),
                source,
            })
    }

    fn write(&mut self, group: &mut [Submission]) -> Result<(), StorageError> {
        let expected_ops = group.iter().map(Submission::op_count).sum();
        let overlay = self.overlay.read().unwrap_or_else(PoisonError::into_inner);
        let mut batch = PendingBatch::new(
            &self.ks,
            &overlay,
            &self.multi_refs,
            &mut self.dropped_queues,
            &mut self.writes,
            expected_ops,
        );
        let mut ops = 0u64;
        let mut messages = 0u64;
        let mut id_ceiling = self.id_ceiling;
        for submission in group.iter_mut() {
            match &mut submission.work {
                Work::Ops(list) => {
                    for op in list.drain(..) {
                        ops += 1;
                        messages += u64::from(matches!(
                            op,
                            WriteOp::PutMessage { .. }
                                | WriteOp::Enqueue {
                                    message: Some(_),
                                    ..
                                }
                        ));
                        batch.apply(op)?;
                    }
                }
                Work::PutMeta { key, value } => {
                    let value = Value::Meta(std::mem::take(value));
                    batch.put(Key::Meta(std::mem::take(key)), value, false);
                }
                Work::DeleteMeta { key } => batch.delete(Key::Meta(std::mem::take(key))),
                Work::RaiseIdCeiling(ceiling) => id_ceiling = id_ceiling.max(*ceiling),
                Work::Barrier | Work::Close => {}
            }
        }
        if id_ceiling > self.id_ceiling {
            let value = Value::Meta(id_ceiling.to_be_bytes().to_vec());
            batch.put(Key::Meta(codec::ID_CEILING_KEY.to_vec()), value, false);
        }

        let ref_changes = if batch.is_empty() {
            drop(batch);
            drop(overlay);
            RefChanges::default()
        } else {
            if self.changes.capacity() > KEPT_CHANGES {
                self.changes = Vec::new();
            }
            self.changes.clear();
            self.log.begin();
            let mut fjall_deletes = self.db.batch();
            let ref_changes =
                batch.write_log(&mut self.log, &mut self.changes, &mut fjall_deletes)?;
            drop(overlay);
            self.log
                .commit()
                .map_err(|source| StorageError::CommitLog {
                    path: self.log.dir().to_path_buf(),
                    source,
                })?;
            self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            // Not synced: the log has these deletions until the checkpoint's sync covers them.
            let fjall_deleted = fjall_deletes.is_empty()
                || match fjall_deletes.commit() {
                    Ok(()) => true,
                    Err(error) => {
                        tracing::error!(%error, "deletions stay in the overlay until the next checkpoint");
                        false
                    }
                };
            let mut overlay = self.overlay.write().unwrap_or_else(PoisonError::into_inner);
            for (key, value, fresh) in self.changes.drain(..) {
                overlay.apply(key, value, fresh, fjall_deleted);
            }
            ref_changes
        };

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

/// Runs an `on_durable` callback. A panicking callback is the caller's bug; it must not take
/// the writer down with it, or every later submission would hang.
fn complete(callback: DurableCallback, result: Result<(), StorageError>) {
    if catch_unwind(AssertUnwindSafe(|| callback(result))).is_err() {
        tracing::error!("a storage on_durable callback panicked");
    }
}

fn full((ops, bytes): (usize, usize)) -> bool {
    ops >= MAX_BATCH_OPS || bytes >= MAX_BATCH_BYTES
}

fn add(total: &mut (usize, usize), (ops, bytes): (usize, usize)) {
    total.0 += ops;
    total.1 += bytes;
}
