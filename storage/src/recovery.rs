//! What `Store::open` does before the writer starts, and what `Store::close` leaves for it.
//!
//! After a clean close the store holds a *clean-shutdown record*: each queue's extent (first
//! and next seq, count, bytes), the reference counts of multi-queue messages and where message
//! ids continue. `open` then reads that one record instead of scanning anything, and deletes
//! it (durably, before any write) so that a crash in the new run is noticed at the next open.
//!
//! Without the record (a crash, a kill, a store dropped without `close`) `open` scans: the
//! queue index once (twice if it holds entries whose message is gone) and the keys of
//! `messages` once, never message bodies. It rebuilds the reference counts and queue extents,
//! drops paged-out transient entries, removes messages no entry references (a crash between a
//! publish and its enqueues) and entries whose message is missing. Memory while it runs is
//! one `u64` per index entry.

use std::collections::{HashMap, HashSet};

use fjall::{Database, OwnedWriteBatch, PersistMode};

use crate::codec;
use crate::store::{ID_BLOCK, Keyspaces};
use crate::{MessageId, QueueId, QueueStats, SEPARATE_MESSAGE_BIT, StorageError};

pub(crate) struct Recovered {
    /// Counts of messages that more than one index entry references.
    pub(crate) multi_refs: HashMap<MessageId, u32>,
    /// The first id to hand out.
    pub(crate) next_id: MessageId,
    /// Ids below this are reserved on disk (written before `open` returns).
    pub(crate) id_ceiling: MessageId,
    /// Every queue with entries in the index.
    pub(crate) queues: HashMap<QueueId, QueueStats>,
    /// The previous run closed the store (or there was none): nothing was scanned.
    pub(crate) clean: bool,
}

pub(crate) fn recover(db: &Database, ks: &Keyspaces) -> Result<Recovered, StorageError> {
    let mut batch = db.batch().durability(Some(PersistMode::SyncData));

    let mut separate_only = false;
    let fresh = match ks.meta.get(codec::FORMAT_KEY)? {
        Some(format) if format.as_ref() == [codec::STORE_FORMAT] => false,
        Some(format) if format.as_ref() == [codec::STORE_FORMAT_SEPARATE_ONLY] => {
            separate_only = true;
            false
        }
        Some(format) => {
            return Err(StorageError::corrupt(format!(
                "store format marker {:?} (this build reads format {})",
                format.as_ref(),
                codec::STORE_FORMAT
            )));
        }
        None => {
            batch.insert(&ks.meta, codec::FORMAT_KEY, [codec::STORE_FORMAT]);
            true
        }
    };

    let ceiling = match ks.meta.get(codec::ID_CEILING_KEY)? {
        Some(value) => codec::be_u64(&value)?,
        None => 0,
    };
    let (scan, clean) = match ks.meta.get(codec::CLEAN_SHUTDOWN_KEY)? {
        Some(record) => {
            // Gone before anything else is written: a crash from here on must be noticed.
            batch.remove(&ks.meta, codec::CLEAN_SHUTDOWN_KEY);
            (codec::decode_clean_shutdown(&record)?, true)
        }
        None if fresh => (Contents::default(), true),
        None => (scan_after_crash(ks, &mut batch)?, false),
    };

    let next_id = ceiling.max(scan.next_id).max(1);
    let id_ceiling = next_id.saturating_add(ID_BLOCK);
    batch.insert(&ks.meta, codec::ID_CEILING_KEY, id_ceiling.to_be_bytes());
    batch.commit()?;

    let mut multi_refs = scan.multi_refs;
    if separate_only {
        move_messages_inline(db, ks)?;
        // Every message moved into its entries: none is shared any more.
        multi_refs.clear();
    }

    Ok(Recovered {
        multi_refs,
        next_id,
        id_ceiling,
        queues: scan.queues,
        clean,
    })
}

/// What a scan (or a clean-shutdown record) says about the store's contents.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Contents {
    pub(crate) queues: HashMap<QueueId, QueueStats>,
    pub(crate) multi_refs: HashMap<MessageId, u32>,
    /// Above every message id on disk.
    pub(crate) next_id: MessageId,
}

/// One pass over the queue index: the extent of every queue, and every separate message id
/// referenced (sorted, with repeats). Transient entries are left out and their keys and
/// separate message ids returned, for the caller to delete.
struct IndexScan {
    queues: HashMap<QueueId, QueueStats>,
    referenced: Vec<MessageId>,
    transient: Vec<(fjall::Slice, Option<MessageId>)>,
    /// Above every message id in the index, inline ones included.
    next_id: MessageId,
}

fn scan_index(ks: &Keyspaces) -> Result<IndexScan, StorageError> {
    let mut queues: HashMap<QueueId, QueueStats> = HashMap::new();
    let mut referenced = Vec::new();
    let mut transient = Vec::new();
    let mut next_id = 0;
    for guard in ks.index.iter() {
        let (key, value) = guard.into_inner()?;
        let (queue, seq) = codec::decode_index_key(&key)?;
        let id = codec::index_value_message_id(&value)?;
        next_id = next_id.max(id_counter(id).saturating_add(1));
        // A bare header refers to a separate message; a longer value holds its own.
        let separate = codec::index_value_tail(&value).is_none().then_some(id);
        if codec::index_value_is_transient(&value) {
            // Paged-out transient messages do not survive a restart.
            transient.push((key, separate));
            continue;
        }
        let size = codec::index_value_size(&value)?;
        let stats = queues.entry(queue).or_insert(QueueStats {
            first: seq,
            ..QueueStats::default()
        });
        stats.count += 1;
        stats.bytes += u64::from(size);
        stats.next = seq.saturating_add(1);
        referenced.extend(separate);
    }
    referenced.sort_unstable();
    Ok(IndexScan {
        queues,
        referenced,
        transient,
        next_id,
    })
}

/// The counter part of a message id, without its placement bit.
fn id_counter(id: MessageId) -> MessageId {
    id & !SEPARATE_MESSAGE_BIT
}

/// Reference counts of ids referenced more than once, and the distinct ids.
fn count_references(referenced: &[MessageId]) -> (HashMap<MessageId, u32>, Vec<MessageId>) {
    let mut multi_refs = HashMap::new();
    let mut distinct = Vec::with_capacity(referenced.len());
    for run in referenced.chunk_by(|a, b| a == b) {
        distinct.push(run[0]);
        if run.len() > 1 {
            let count = u32::try_from(run.len()).unwrap_or(u32::MAX);
            multi_refs.insert(run[0], count);
        }
    }
    (multi_refs, distinct)
}

fn scan_after_crash(ks: &Keyspaces, batch: &mut OwnedWriteBatch) -> Result<Contents, StorageError> {
    let started = std::time::Instant::now();
    let IndexScan {
        mut queues,
        referenced,
        transient,
        next_id: index_next_id,
    } = scan_index(ks)?;
    if !transient.is_empty() {
        tracing::info!(
            entries = transient.len(),
            "dropped paged-out transient messages"
        );
    }
    for (key, _) in transient {
        batch.remove(&ks.index, key);
    }
    let (mut multi_refs, distinct) = count_references(&referenced);
    drop(referenced);

    // Walk stored messages and referenced ids together, both in id order: a message nobody
    // references is an orphan (a crash between a publish and its enqueues can leave one); an
    // id with no message means index entries to drop.
    let index_ms = started.elapsed().as_millis() as u64;
    let mut orphans = 0u64;
    let mut max_id = None;
    let mut wanted = distinct.iter().copied().peekable();
    let mut dangling = HashSet::new();
    for guard in ks.messages.iter() {
        let key = guard.key()?;
        let id = codec::decode_message_key(&key)?;
        max_id = max_id.max(Some(id_counter(id)));
        while let Some(&want) = wanted.peek() {
            if want >= id {
                break;
            }
            dangling.insert(want);
            wanted.next();
        }
        if wanted.peek() == Some(&id) {
            wanted.next();
        } else {
            batch.remove(&ks.messages, key);
            orphans += 1;
        }
    }
    dangling.extend(wanted);
    let distinct_count = distinct.len();
    drop(distinct);

    if !dangling.is_empty() {
        for guard in ks.index.iter() {
            let (key, value) = guard.into_inner()?;
            let id = codec::index_value_message_id(&value)?;
            let separate = codec::index_value_tail(&value).is_none();
            if separate && dangling.contains(&id) && !codec::index_value_is_transient(&value) {
                let (queue, _) = codec::decode_index_key(&key)?;
                if let Some(stats) = queues.get_mut(&queue) {
                    stats.count = stats.count.saturating_sub(1);
                    let size = codec::index_value_size(&value)?;
                    stats.bytes = stats.bytes.saturating_sub(u64::from(size));
                }
                batch.remove(&ks.index, key);
            }
        }
        queues.retain(|_, stats| stats.count > 0);
        multi_refs.retain(|id, _| !dangling.contains(id));
        tracing::warn!(
            messages = dangling.len(),
            "dropped queue index entries whose message is missing"
        );
    }
    tracing::info!(
        index_scan_ms = index_ms,
        message_scan_ms = started.elapsed().as_millis() as u64 - index_ms,
        entries = distinct_count,
        "store was not closed cleanly: scanned it"
    );
    if orphans > 0 {
        tracing::info!(orphans, "removed messages no queue references");
    }
    Ok(Contents {
        queues,
        multi_refs,
        next_id: max_id
            .map_or(0, |id| id.saturating_add(1))
            .max(index_next_id),
    })
}

/// Run by `Store::close` once the writer has stopped: drops paged-out transient entries (and
/// the messages only they held), and writes the clean-shutdown record, in one durable batch.
pub(crate) fn write_clean_shutdown(
    db: &Database,
    ks: &Keyspaces,
    next_id: MessageId,
) -> Result<(), StorageError> {
    let mut batch = db.batch().durability(Some(PersistMode::SyncData));
    let IndexScan {
        queues,
        referenced,
        transient,
        ..
    } = scan_index(ks)?;
    for (key, separate) in transient {
        batch.remove(&ks.index, key);
        if let Some(id) = separate
            && referenced.binary_search(&id).is_err()
        {
            batch.remove(&ks.messages, codec::message_key(id));
        }
    }
    let (multi_refs, _) = count_references(&referenced);
    let contents = Contents {
        queues,
        multi_refs,
        next_id,
    };
    batch.insert(
        &ks.meta,
        codec::CLEAN_SHUTDOWN_KEY,
        codec::encode_clean_shutdown(&contents),
    );
    batch.commit()?;
    Ok(())
}

/// Converts a format-2 store, which kept every message in `messages`, to the current format:
/// each entry gets a copy of its message, then `messages` is emptied (format-2 ids carry no
/// placement bit, so they would read as inline ones), then the format marker moves on. Each
/// step can be repeated after a crash: entries that already hold their message are skipped.
fn move_messages_inline(db: &Database, ks: &Keyspaces) -> Result<(), StorageError> {
    const CHUNK: usize = 4096;
    let started = std::time::Instant::now();
    let mut moved = 0u64;
    let mut batch = db.batch();
    for guard in ks.index.iter() {
        let (key, value) = guard.into_inner()?;
        if codec::index_value_tail(&value).is_some() {
            continue;
        }
        let id = codec::index_value_message_id(&value)?;
        let Some(message) = ks.messages.get(codec::message_key(id))? else {
            continue;
        };
        // Without a message, the value is just the header.
        batch.insert(
            &ks.index,
            key,
            codec::encode_entry_with_tail(&value, &message),
        );
        moved += 1;
        if batch.len() >= CHUNK {
            std::mem::replace(&mut batch, db.batch()).commit()?;
        }
    }
    batch.commit()?;
    let mut batch = db.batch();
    for guard in ks.messages.iter() {
        let key = guard.key()?;
        if codec::decode_message_key(&key)? & SEPARATE_MESSAGE_BIT == 0 {
            batch.remove(&ks.messages, key);
            if batch.len() >= CHUNK {
                std::mem::replace(&mut batch, db.batch()).commit()?;
            }
        }
    }
    batch.insert(&ks.meta, codec::FORMAT_KEY, [codec::STORE_FORMAT]);
    batch.durability(Some(PersistMode::SyncData)).commit()?;
    tracing::info!(
        entries = moved,
        ms = started.elapsed().as_millis() as u64,
        "store converted to format 3: messages moved into their queue entries"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{
        IndexEntry, Placement, QueuedMessage, Store, StoreOptions, StoredMessage, WriteOp,
    };

    fn message(body: &'static str) -> StoredMessage {
        StoredMessage {
            exchange: Bytes::from_static(b"x"),
            routing_key: Bytes::from_static(b"k"),
            properties: Bytes::new(),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    fn entry(seq: u64, message_id: MessageId) -> IndexEntry {
        IndexEntry {
            seq,
            message_id,
            delivery_count: 0,
            delivered: false,
            transient: false,
            size: 3,
            expires_at: 0,
        }
    }

    /// Writes what a format-2 build left: every message in `messages` under an id without
    /// the placement bit, message 2 shared by two queues.
    fn write_format_2(dir: &std::path::Path) {
        let (db, ks) = crate::store::open_database(dir).unwrap();
        let mut batch = db.batch();
        batch.insert(
            &ks.meta,
            codec::FORMAT_KEY,
            [codec::STORE_FORMAT_SEPARATE_ONLY],
        );
        for (id, body) in [(1, "one"), (2, "two")] {
            let value = codec::encode_message(&message(body));
            batch.insert(&ks.messages, codec::message_key(id), value);
        }
        for (queue, seq, id) in [(1, 0, 1), (1, 1, 2), (2, 0, 2)] {
            let value = codec::encode_index_value(&entry(seq, id));
            batch.insert(&ks.index, codec::index_key(queue, seq), &value[..]);
        }
        batch
            .durability(Some(PersistMode::SyncData))
            .commit()
            .unwrap();
    }

    fn bodies(store: &Store, queue: u64) -> Vec<Bytes> {
        let read = store.read_messages(queue, 0, 10).unwrap();
        read.into_iter()
            .filter_map(|QueuedMessage { message, .. }| message.map(|m| m.body))
            .collect()
    }

    #[test]
    fn a_format_2_store_is_converted_and_keeps_every_message() {
        let dir = tempfile::tempdir().unwrap();
        write_format_2(dir.path());
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(bodies(&store, 1), ["one", "two"]);
        assert_eq!(bodies(&store, 2), ["two"]);
        // Each entry holds its own copy now; the separate records are gone.
        assert_eq!(store.read_message(1).unwrap(), None);
        assert_eq!(store.read_message(2).unwrap(), None);
        assert_eq!(Placement::of(2), Placement::Inline);

        // Removing every entry leaves nothing behind, across a reopen that checks the format.
        let (tx, rx) = std::sync::mpsc::channel();
        let remove = |queue, seq, message_id| WriteOp::Remove {
            queue,
            seq,
            message_id,
        };
        store.submit(
            vec![remove(1, 0, 1), remove(1, 1, 2)],
            Some(Box::new(move |result| tx.send(result).unwrap())),
        );
        rx.recv().unwrap().unwrap();
        store.close().unwrap();
        drop(store);
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert!(bodies(&store, 1).is_empty());
        assert_eq!(bodies(&store, 2), ["two"]);
        assert_eq!(store.take_recovered_queue(1), None);
    }
}
