//! What `Store::open` does before the writer starts: check the store's format, rebuild the
//! reference counts of multi-queue messages, remove what a crash left behind, and find where
//! message ids continue.
//!
//! Only keys and index values are read, never message bodies: `queue_index` once (twice if it
//! holds entries whose message is gone), and the keys of `messages` once. Memory is one `u64`
//! per index entry while it runs.

use std::collections::{HashMap, HashSet};

use fjall::{Database, PersistMode};

use crate::codec;
use crate::store::{ID_BLOCK, Keyspaces};
use crate::{MessageId, StorageError};

pub(crate) struct Recovered {
    /// Counts of messages that more than one index entry references.
    pub(crate) multi_refs: HashMap<MessageId, u32>,
    /// The first id to hand out.
    pub(crate) next_id: MessageId,
    /// Ids below this are reserved on disk (written before `open` returns).
    pub(crate) id_ceiling: MessageId,
}

pub(crate) fn recover(db: &Database, ks: &Keyspaces) -> Result<Recovered, StorageError> {
    let mut batch = db.batch().durability(Some(PersistMode::SyncData));

    match ks.meta.get(codec::FORMAT_KEY)? {
        Some(format) if format.as_ref() == [codec::STORE_FORMAT] => {}
        Some(format) => {
            return Err(StorageError::corrupt(format!(
                "store format marker {:?} (this build reads format {})",
                format.as_ref(),
                codec::STORE_FORMAT
            )));
        }
        None => batch.insert(&ks.meta, codec::FORMAT_KEY, [codec::STORE_FORMAT]),
    }

    // Every message id the index references, sorted, with repeats.
    let started = std::time::Instant::now();
    let mut referenced = Vec::new();
    let mut transient = 0u64;
    for guard in ks.index.iter() {
        let (key, value) = guard.into_inner()?;
        codec::decode_index_key(&key)?;
        let id = codec::index_value_message_id(&value)?;
        if codec::index_value_is_transient(&value) {
            // Paged-out transient messages do not survive a restart.
            batch.remove(&ks.index, key);
            transient += 1;
            continue;
        }
        referenced.push(id);
    }
    if transient > 0 {
        tracing::info!(entries = transient, "dropped paged-out transient messages");
    }
    referenced.sort_unstable();

    let mut multi_refs = HashMap::new();
    let mut distinct = Vec::with_capacity(referenced.len());
    for run in referenced.chunk_by(|a, b| a == b) {
        distinct.push(run[0]);
        if run.len() > 1 {
            let count = u32::try_from(run.len()).unwrap_or(u32::MAX);
            multi_refs.insert(run[0], count);
        }
    }
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
        max_id = Some(id);
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
            if dangling.contains(&id) {
                batch.remove(&ks.index, key);
            }
        }
        multi_refs.retain(|id, _| !dangling.contains(id));
        tracing::warn!(
            messages = dangling.len(),
            "dropped queue index entries whose message is missing"
        );
    }
    tracing::debug!(
        index_scan_ms = index_ms,
        message_scan_ms = started.elapsed().as_millis() as u64 - index_ms,
        entries = distinct_count,
        "store recovery scans"
    );
    if orphans > 0 {
        tracing::info!(orphans, "removed messages no queue references");
    }

    let ceiling = match ks.meta.get(codec::ID_CEILING_KEY)? {
        Some(value) => codec::be_u64(&value)?,
        None => 0,
    };
    let next_id = ceiling
        .max(max_id.map_or(0, |id| id.saturating_add(1)))
        .max(1);
    let id_ceiling = next_id.saturating_add(ID_BLOCK);
    batch.insert(&ks.meta, codec::ID_CEILING_KEY, id_ceiling.to_be_bytes());
    batch.commit()?;

    Ok(Recovered {
        multi_refs,
        next_id,
        id_ceiling,
    })
}
