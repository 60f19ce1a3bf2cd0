//! The `Store` handle: opening the database, reads, metadata, and the door to the writer.
//!
//! Reads run on the caller's thread and see every committed batch: in the overlay (what the
//! commit log holds that fjall does not have yet), else in fjall. Writes go through the single
//! writer thread (`writer`), including metadata, so that all changes are ordered one after
//! another and share fsyncs.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::{JoinHandle, ThreadId};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions};

use crate::codec;
use crate::commit_log::{self, CommitLog};
use crate::overlay::{Overlay, Seen};
use crate::pending::Key;
use crate::writer::{Counters, Destination, Submission, Work, Writer};
use crate::{
    DurableCallback, IndexEntry, MessageId, MetaKind, MetaRecord, Placement, QueueId, QueueStats,
    QueuedMessage, SEPARATE_MESSAGE_BIT, Seq, StorageError, StoreOptions, StoreStats,
    StoredMessage, WriteOp,
};

/// Ids are reserved on disk this many at a time, so `next_message_id` never waits for a disk
/// write and ids still never repeat across restarts.
pub(crate) const ID_BLOCK: u64 = 1 << 20;

/// Message values at least this big live in fjall's blob files instead of the LSM tree, so
/// compactions do not rewrite bodies. Messages of one queue up to about this size are stored
/// inline in the index instead (`Placement`), which has no blob files.
const BLOB_THRESHOLD: u32 = 4 * 1024;

/// fjall's block cache, shared by the keyspaces. Reads are mostly a queue's head moving
/// forward through fresh tables, which a cache barely helps; fjall's default is 32 MiB.
const CACHE_BYTES: u64 = 4 << 20;

/// Memtable size of the `messages` and `queue_index` keyspaces (fjall's default is 64 MiB):
/// what a backlog keeps in memory beside the tables, and what a crash leaves to replay from
/// the journal. Measured with a backlog of 1M 100-byte messages: RSS 268 MiB at 64 MiB,
/// ~170 at 32, ~100 at 16, ~58 at 8; below 64 MiB flushes and compactions cost the fill
/// about 25% more CPU per message, the same from 8 to 16 MiB, and publish-consume throughput
/// showed no difference. Set when a keyspace is created; older stores keep their size.
const MEMTABLE_BYTES: u64 = 16 << 20;

/// Sealed journals beyond this make fjall flush the keyspaces that still hold them (`meta`
/// is written rarely and would otherwise keep every journal alive up to fjall's default of
/// 512 MiB, all of it replayed after a crash). 64 MiB is fjall's minimum.
const MAX_JOURNALING_BYTES: u64 = 64 << 20;

/// How `Store::open` found the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// New, or closed with [`Store::close`]: nothing had to be scanned.
    Clean,
    /// Not closed (a crash, a kill, a store dropped without `close`): the index and the
    /// message keys were scanned for what that left behind.
    Scanned,
}
/// The three keyspaces; cheap to clone (handles).
#[derive(Clone)]
pub(crate) struct Keyspaces {
    pub(crate) meta: Keyspace,
    pub(crate) messages: Keyspace,
    pub(crate) index: Keyspace,
}

/// A handle on the message store; clones share one database and one writer thread.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

struct Inner {
    path: PathBuf,
    ks: Keyspaces,
    overlay: Arc<RwLock<Overlay>>,
    /// The writer's queue. Unbounded on purpose: `submit` must never block a broker task, and
    /// the broker's memory alarm bounds what can be in flight.
    sender: Option<Sender<Submission>>,
    /// Taken by whichever of `close` and `drop` ends the writer first.
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Blocking calls made from an `on_durable` callback would wait on themselves.
    writer_thread: ThreadId,
    /// The next id to hand out.
    next_id: AtomicU64,
    /// Ids below this are covered by a reservation submitted to the writer.
    id_ceiling: AtomicU64,
    counters: Arc<Counters>,
    /// Each queue's extent at open, until the broker takes it.
    recovered_queues: Mutex<HashMap<QueueId, QueueStats>>,
    recovery: Recovery,
    /// Also keeps the database alive as long as any handle, whatever the writer thread does.
    db: Database,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue lets the writer commit what is left and exit; joining it means the
        // database lock is released once the last handle is gone, so the directory can be
        // reopened at once. If the last handle dies inside a callback, that is the writer
        // thread itself: it exits by itself after the callback returns.
        drop(self.sender.take());
        let writer = self
            .writer
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if std::thread::current().id() != self.writer_thread {
            join_writer(writer);
        }
    }
}

impl Store {
    /// Opens (creating) the database under `dir` and starts the writer thread. After a clean
    /// [`Store::close`] that is all; otherwise it first scans for what a crash left behind
    /// (see [`Recovery`]).
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, StorageError> {
        let path = dir.to_path_buf();
        std::fs::create_dir_all(&path).map_err(|source| StorageError::CreateDir {
            path: path.clone(),
            source,
        })?;
        // fjall decodes its own files with a few `expect`s; a damaged directory must still be
        // an error, not a crashed broker.
        let started = std::time::Instant::now();
        let opened = catch_unwind(AssertUnwindSafe(|| open_database(&path)));
        let (db, ks) = match opened {
            Ok(result) => result?,
            Err(_) => {
                return Err(StorageError::Damaged {
                    path,
                    reason: "the storage engine panicked while reading it".into(),
                });
            }
        };

        let opened_ms = started.elapsed().as_millis() as u64;
        let replayed = commit_log::replay(&path, &db, &ks)?;
        let replayed_ms = started.elapsed().as_millis() as u64 - opened_ms;
        let recovered = crate::recovery::recover(&db, &ks)?;
        let recovery = if recovered.clean {
            Recovery::Clean
        } else {
            Recovery::Scanned
        };
        tracing::info!(
            path = %path.display(),
            open_ms = opened_ms,
            log_replay_ms = replayed_ms,
            log_records = replayed.records,
            log_keys = replayed.items,
            recovery_ms = started.elapsed().as_millis() as u64 - opened_ms - replayed_ms,
            ?recovery,
            "message store open"
        );

        let counters = Arc::new(Counters::default());
        let overlay = Arc::new(RwLock::new(Overlay::default()));
        let (sender, receiver) = mpsc::channel();
        let destination = Destination {
            db: db.clone(),
            ks: ks.clone(),
            log: CommitLog::new(&path, replayed.next_epoch),
            overlay: overlay.clone(),
        };
        let writer = Writer::new(
            destination,
            receiver,
            options.commit_interval,
            recovered.multi_refs,
            recovered.id_ceiling,
            counters.clone(),
        );
        let handle = std::thread::Builder::new()
            .name("warren-storage-writer".into())
            .spawn(move || writer.run())
            .map_err(|source| StorageError::Open {
                path: path.clone(),
                source: fjall::Error::Io(source),
            })?;

        Ok(Store {
            inner: Arc::new(Inner {
                path,
                ks,
                overlay,
                writer_thread: handle.thread().id(),
                sender: Some(sender),
                writer: Mutex::new(Some(handle)),
                next_id: AtomicU64::new(recovered.next_id),
                id_ceiling: AtomicU64::new(recovered.id_ceiling),
                counters,
                recovered_queues: Mutex::new(recovered.queues),
                recovery,
                db,
            }),
        })
    }

    /// Queues ops for the group-commit writer. `on_durable` runs on the writer thread once the
    /// batch holding these ops is committed and fsynced, with `Err` if it was not. Ops of one
    /// submit are applied in order, submissions in submission order. Never blocks.
    ///
    /// Callbacks must be quick and must not call [`Store::flush`], [`Store::put_meta`] or
    /// [`Store::delete_meta`] (those return `OnWriterThread`).
    pub fn submit(&self, ops: Vec<WriteOp>, on_durable: Option<DurableCallback>) {
        self.send(Submission {
            work: Work::Ops(ops),
            on_durable,
        });
    }

    /// Closes the store cleanly so that the next open is quick: commits everything submitted
    /// before the call, stops the writer (later submissions fail with `WriterStopped`),
    /// records each queue's extent and the message reference counts, and flushes fjall's
    /// memtables so that its journal has nothing left to replay. Reads keep working.
    ///
    /// Costs one pass over the queue index plus writing out the memtables. A store dropped
    /// without `close` is recovered by scanning at the next open, as after a crash.
    pub fn close(&self) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        self.submit_and_wait("close", Work::Close)?;
        join_writer(
            self.inner
                .writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        // The writer is gone, so nothing else writes from here on.
        let next_id = self.inner.next_id.load(Ordering::Relaxed);
        crate::recovery::write_clean_shutdown(&self.inner.db, &self.inner.ks, next_id)?;
        let recorded_ms = started.elapsed().as_millis() as u64;
        for keyspace in [
            &self.inner.ks.meta,
            &self.inner.ks.messages,
            &self.inner.ks.index,
        ] {
            keyspace.rotate_memtable_and_wait()?;
        }
        tracing::info!(
            record_ms = recorded_ms,
            flush_ms = started.elapsed().as_millis() as u64 - recorded_ms,
            "message store closed"
        );
        Ok(())
    }

    /// How the store was found when it was opened.
    pub fn recovery(&self) -> Recovery {
        self.inner.recovery
    }

    /// What the store held for `queue` when it was opened (`None`: no entries). Handed out
    /// once per queue: it is out of date as soon as the queue changes.
    pub fn take_recovered_queue(&self, queue: QueueId) -> Option<QueueStats> {
        self.inner
            .recovered_queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&queue)
    }

    /// Blocks until everything submitted before the call is durable.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.submit_and_wait("flush", Work::Barrier)
    }

    /// Reads a separate message back; `None` if no committed batch holds it (inline messages
    /// are read with their entry, by [`Store::read_messages`]).
    pub fn read_message(&self, id: MessageId) -> Result<Option<StoredMessage>, StorageError> {
        self.read_message_with(&self.overlay(), id)
    }

    /// [`Store::read_message`] under a read lock the caller already holds (taking it twice
    /// on one thread can deadlock behind a waiting writer).
    fn read_message_with(
        &self,
        overlay: &Overlay,
        id: MessageId,
    ) -> Result<Option<StoredMessage>, StorageError> {
        match overlay.get(&Key::Message(id)) {
            Seen::Value(value) => return codec::decode_message(id, value).map(Some),
            Seen::Deleted => return Ok(None),
            Seen::NotHere => {}
        }
        match self.inner.ks.messages.get(codec::message_key(id))? {
            Some(value) => codec::decode_message(id, &value).map(Some),
            None => Ok(None),
        }
    }

    /// Up to `limit` entries of `queue` with seq >= `from`, in seq order, with their messages:
    /// inline ones come with the entry, separate ones cost a read each. Seeks as
    /// [`Store::read_entries`] does.
    pub fn read_messages(
        &self,
        queue: QueueId,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StorageError> {
        self.scan_queue(queue, from, limit, |overlay, entry, value| {
            let message = match codec::decode_inline_message(entry.message_id, value)? {
                Some(message) => Some(message),
                None => self.read_message_with(overlay, entry.message_id)?,
            };
            Ok(QueuedMessage { entry, message })
        })
    }

    /// Up to `limit` index entries of `queue` with seq >= `from`, in seq order, without their
    /// messages. Costs one range seek plus the entries returned and any deletion tombstones
    /// between `from` and them, so pass the queue's head position, never 0 out of habit.
    pub fn read_entries(
        &self,
        queue: QueueId,
        from: Seq,
        limit: usize,
    ) -> Result<Vec<IndexEntry>, StorageError> {
        self.scan_queue(queue, from, limit, |_, entry, _| Ok(entry))
    }

    /// `each` applied to up to `limit` entries of `queue` from `from` (with the raw value).
    fn scan_queue<T>(
        &self,
        queue: QueueId,
        from: Seq,
        limit: usize,
        mut each: impl FnMut(&Overlay, IndexEntry, &[u8]) -> Result<T, StorageError>,
    ) -> Result<Vec<T>, StorageError> {
        let start = codec::index_key(queue, from);
        let end = codec::index_key(queue, Seq::MAX);
        let mut out = Vec::with_capacity(limit.min(1024));
        // Held while fjall is read too: see `overlay`.
        let overlay = self.overlay();
        let mut newer = overlay.queue_range(queue, from).peekable();
        let mut fjall = self.inner.ks.index.range(start..=end);
        let mut on_disk = next_index_item(&mut fjall)?;
        while out.len() < limit {
            let overlay_seq = newer.peek().map(|(seq, _)| *seq);
            let disk_seq = on_disk.as_ref().map(|(seq, _)| *seq);
            let (seq, value) = match (overlay_seq, disk_seq) {
                (None, None) => break,
                (Some(o), d) if d.is_none_or(|d| o <= d) => {
                    if d == Some(o) {
                        on_disk = next_index_item(&mut fjall)?;
                    }
                    match newer.next() {
                        Some((seq, Some(value))) => (seq, value.clone()),
                        _ => continue,
                    }
                }
                _ => match on_disk.take() {
                    Some(item) => {
                        on_disk = next_index_item(&mut fjall)?;
                        item
                    }
                    None => break,
                },
            };
            out.push(each(
                &overlay,
                codec::decode_index_value(seq, &value)?,
                &value,
            )?);
        }
        Ok(out)
    }

    fn overlay(&self) -> std::sync::RwLockReadGuard<'_, Overlay> {
        self.inner
            .overlay
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh id for a message stored as `placement` says; ids never repeat, also across
    /// restarts.
    pub fn next_message_id(&self, placement: Placement) -> MessageId {
        let id = self.next_id();
        match placement {
            Placement::Inline => id,
            Placement::Separate => id | SEPARATE_MESSAGE_BIT,
        }
    }

    fn next_id(&self) -> MessageId {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let ceiling = self.inner.id_ceiling.load(Ordering::Relaxed);
        // Reserve the next block while half of this one is still left, so the reservation is
        // on disk long before any id it covers is handed out.
        if id.saturating_add(ID_BLOCK / 2) >= ceiling {
            let raised = id.saturating_add(ID_BLOCK);
            if self
                .inner
                .id_ceiling
                .compare_exchange(ceiling, raised, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.send(Submission {
                    work: Work::RaiseIdCeiling(raised),
                    on_durable: None,
                });
            }
        }
        id
    }

    /// Stores a metadata record; durable (fsynced) before it returns.
    pub fn put_meta(&self, kind: MetaKind, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let work = Work::PutMeta {
            key: codec::meta_key(kind, key),
            value: value.to_vec(),
        };
        self.submit_and_wait("put_meta", work)
    }

    /// Deletes a metadata record; durable (fsynced) before it returns.
    pub fn delete_meta(&self, kind: MetaKind, key: &[u8]) -> Result<(), StorageError> {
        let work = Work::DeleteMeta {
            key: codec::meta_key(kind, key),
        };
        self.submit_and_wait("delete_meta", work)
    }

    /// Every record of one kind, in key order.
    pub fn load_meta(&self, kind: MetaKind) -> Result<Vec<MetaRecord>, StorageError> {
        let prefix = [codec::meta_kind_byte(kind)];
        let overlay = self.overlay();
        let mut records = std::collections::BTreeMap::new();
        for guard in self.inner.ks.meta.prefix(prefix) {
            let (key, value) = guard.into_inner()?;
            records.insert(key[1..].to_vec(), value.to_vec());
        }
        for (key, value) in overlay.meta_with_prefix(&prefix) {
            match value {
                Some(value) => records.insert(key[1..].to_vec(), value.to_vec()),
                None => records.remove(&key[1..]),
            };
        }
        Ok(records.into_iter().collect())
    }

    /// Free bytes (available to this user) on the filesystem holding the store.
    pub fn disk_free(&self) -> Result<u64, StorageError> {
        disk_free(&self.inner.path)
    }

    pub fn stats(&self) -> StoreStats {
        self.inner.counters.snapshot()
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn send(&self, submission: Submission) {
        let Some(sender) = &self.inner.sender else {
            return;
        };
        if let Err(mpsc::SendError(submission)) = sender.send(submission)
            && let Some(callback) = submission.on_durable
        {
            callback(Err(StorageError::WriterStopped));
        }
    }

    fn submit_and_wait(&self, call: &'static str, work: Work) -> Result<(), StorageError> {
        if std::thread::current().id() == self.inner.writer_thread {
            return Err(StorageError::OnWriterThread { call });
        }
        let (done, wait) = mpsc::sync_channel(1);
        self.send(Submission {
            work,
            on_durable: Some(Box::new(move |result| {
                let _ = done.send(result);
            })),
        });
        // A dropped callback (writer gone) closes the channel.
        wait.recv().unwrap_or(Err(StorageError::WriterStopped))
    }
}

pub(crate) fn open_database(path: &Path) -> Result<(Database, Keyspaces), StorageError> {
    let open_error = |source: fjall::Error| classify_open_error(path, source);
    let db = Database::builder(path)
        .cache_size(CACHE_BYTES)
        .max_journaling_size(MAX_JOURNALING_BYTES)
        .open()
        .map_err(open_error)?;
    let meta = db
        .keyspace("meta", KeyspaceCreateOptions::default)
        .map_err(open_error)?;
    let messages = db
        .keyspace("messages", || {
            KeyspaceCreateOptions::default()
                .max_memtable_size(MEMTABLE_BYTES)
                .with_kv_separation(Some(
                    KvSeparationOptions::default().separation_threshold(BLOB_THRESHOLD),
                ))
        })
        .map_err(open_error)?;
    let index = db
        .keyspace("queue_index", || {
            KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
        })
        .map_err(open_error)?;
    Ok((
        db,
        Keyspaces {
            meta,
            messages,
            index,
        },
    ))
}

fn classify_open_error(path: &Path, source: fjall::Error) -> StorageError {
    let path = path.to_path_buf();
    let reason = match &source {
        fjall::Error::Locked => return StorageError::Locked { path },
        fjall::Error::Io(_) | fjall::Error::Poisoned => {
            return StorageError::Open { path, source };
        }
        fjall::Error::InvalidVersion(Some(version)) => {
            format!("unsupported database format version {version:?}")
        }
        fjall::Error::InvalidVersion(None) => "unreadable format version marker".to_string(),
        fjall::Error::JournalRecovery(e) => format!("journal cannot be recovered: {e:?}"),
        other => format!("{other:?}"),
    };
    StorageError::Damaged { path, reason }
}

#[cfg(unix)]
fn disk_free(path: &Path) -> Result<u64, StorageError> {
    let stat = rustix::fs::statvfs(path).map_err(|errno| StorageError::DiskFree {
        path: path.to_path_buf(),
        source: errno.into(),
    })?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(not(unix))]
fn disk_free(path: &Path) -> Result<u64, StorageError> {
    Err(StorageError::DiskFree {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::Unsupported, "statvfs needs unix"),
    })
}

/// The next entry of a fjall range over one queue's index.
fn next_index_item(
    range: &mut impl Iterator<Item = fjall::Guard>,
) -> Result<Option<(Seq, fjall::Slice)>, StorageError> {
    let Some(guard) = range.next() else {
        return Ok(None);
    };
    let (key, value) = guard.into_inner()?;
    let (_, seq) = codec::decode_index_key(&key)?;
    Ok(Some((seq, value)))
}

/// Waits for the writer thread (if not already joined) to finish.
fn join_writer(writer: Option<JoinHandle<()>>) {
    if let Some(writer) = writer
        && writer.join().is_err()
    {
        tracing::error!("storage writer thread panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_bodies_use_key_value_separation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert!(store.inner.ks.messages.is_kv_separated());
        assert!(!store.inner.ks.index.is_kv_separated());
    }
}
