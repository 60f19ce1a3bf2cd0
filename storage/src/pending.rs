//! One commit being assembled by the writer: the last write per key, and the reference-count
//! changes that take effect only if the commit succeeds.
//!
//! fjall gives every item of a batch the same sequence number, so two writes to one key must
//! be folded here. Keys are typed (a message id, a queue id and seq) rather than bytes: the
//! writer folds several ops per message at full publish rate, and hashing two integers costs
//! far less than ordering byte vectors. Message values are encoded only at commit, so a message
//! published and acked within one commit is never encoded at all.
//!
//! An inline message (one queue holds it) is folded under its index key together with the
//! entry, so it costs one map entry here and one item in fjall; only separate messages have
//! keys of their own and take part in reference counting.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use fjall::{OwnedWriteBatch, Slice};

use crate::codec::{self, INDEX_VALUE_LEN};
use crate::commit_log::{CommitLog, Space};
use crate::overlay::{Overlay, Seen};
use crate::store::Keyspaces;
use crate::{MessageId, Placement, QueueId, Seq, StorageError, StoredMessage, WriteOp};

/// Keys are the broker's own ids (and metadata names), hashed per op at full publish rate.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Meta(Vec<u8>),
    Message(MessageId),
    Index(QueueId, Seq),
}

pub(crate) enum Value {
    Meta(Vec<u8>),
    Message(StoredMessage),
    Entry {
        header: [u8; INDEX_VALUE_LEN],
        inline: Option<Inline>,
    },
}

/// The message inside an index entry.
pub(crate) enum Inline {
    /// Enqueued in this batch.
    New(StoredMessage),
    /// Committed earlier, and not read yet: an update of an entry that is often removed
    /// later in the same batch, so the disk is read only if the update is still due at
    /// commit ([`PendingBatch::write_into`]).
    OnDisk,
}

/// New counts of multi-reference messages; 0 means forget it.
pub(crate) type RefChanges = FastMap<MessageId, u32>;

/// One key a commit wrote, for the overlay once the commit is durable: the value (`None`:
/// deleted) and whether the commit created the key.
pub(crate) type Change = (Key, Option<Slice>, bool);

/// The folded writes of one batch. The writer keeps one map across commits: allocating it
/// afresh for every commit cost page faults in profiles.
pub(crate) type Writes = FastMap<Key, Pending>;

/// Commits of up to this many writes keep the map's memory between commits.
const KEPT_WRITES: usize = 16 * 1024;

/// The last write to one key within a batch.
pub(crate) struct Pending {
    /// `None` deletes.
    value: Option<Value>,
    /// The key was created in this batch (a fresh message id or queue seq), so deleting it
    /// again in the same batch needs no tombstone at all: publish-then-ack within one commit
    /// leaves nothing on disk.
    fresh: bool,
}

pub(crate) struct PendingBatch<'a> {
    ks: &'a Keyspaces,
    overlay: &'a Overlay,
    multi_refs: &'a HashMap<MessageId, u32>,
    dropped_queues: &'a mut HashSet<u64>,
    writes: &'a mut Writes,
    ref_changes: RefChanges,
}

impl<'a> PendingBatch<'a> {
    /// A batch for about `ops` writes, folded into `writes` (empty; sized once up front:
    /// rehashing showed in profiles).
    pub(crate) fn new(
        ks: &'a Keyspaces,
        overlay: &'a Overlay,
        multi_refs: &'a HashMap<MessageId, u32>,
        dropped_queues: &'a mut HashSet<u64>,
        writes: &'a mut Writes,
        ops: usize,
    ) -> Self {
        debug_assert!(writes.is_empty());
        if writes.capacity() > KEPT_WRITES.max(ops) {
            // A burst grew it: give the memory back rather than keep it for good.
            writes.shrink_to(ops);
        }
        writes.reserve(ops);
        Self {
            ks,
            overlay,
            multi_refs,
            dropped_queues,
            writes,
            ref_changes: RefChanges::default(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub(crate) fn apply(&mut self, op: WriteOp) -> Result<(), StorageError> {
        match op {
            WriteOp::PutMessage {
                id,
                message,
                references,
            } => {
                debug_assert_eq!(Placement::of(id), Placement::Separate, "message {id}");
                self.put(Key::Message(id), Value::Message(message), true);
                if references > 1 {
                    self.ref_changes.insert(id, references);
                }
            }
            // The queue went away before this entry arrived: the reference it would hold is
            // released at once so a shared message is still deleted with its last holder.
            WriteOp::Enqueue { queue, entry, .. } if self.is_dropped(queue) => {
                self.release(entry.message_id);
            }
            WriteOp::UpdateEntry { queue, .. } | WriteOp::Remove { queue, .. }
                if self.is_dropped(queue) => {}
            WriteOp::Enqueue {
                queue,
                entry,
                message,
            } => {
                debug_assert_eq!(
                    message.is_some(),
                    Placement::of(entry.message_id) == Placement::Inline,
                    "message {}",
                    entry.message_id
                );
                let value = Value::Entry {
                    header: codec::encode_index_value(&entry),
                    inline: message.map(Inline::New),
                };
                self.put(Key::Index(queue, entry.seq), value, true);
            }
            WriteOp::UpdateEntry { queue, entry } => self.update_entry(queue, &entry),
            WriteOp::Remove {
                queue,
                seq,
                message_id,
            } => {
                self.delete(Key::Index(queue, seq));
                self.release(message_id);
            }
            WriteOp::DropQueue { queue } => {
                self.drop_queue(queue)?;
                self.dropped_queues.insert(queue);
            }
        }
        Ok(())
    }

    /// Rewrites an entry's header, keeping its inline message: from this batch if the entry
    /// was written in it, else from disk at commit. An entry already removed stays removed.
    fn update_entry(&mut self, queue: QueueId, entry: &crate::IndexEntry) {
        let key = Key::Index(queue, entry.seq);
        let header = codec::encode_index_value(entry);
        match self.writes.entry(key) {
            Entry::Occupied(mut slot) => {
                if let Some(Value::Entry { header: old, .. }) = &mut slot.get_mut().value {
                    *old = header;
                }
            }
            Entry::Vacant(slot) => {
                slot.insert(Pending {
                    value: Some(Value::Entry {
                        header,
                        inline: Some(Inline::OnDisk),
                    }),
                    fresh: false,
                });
            }
        }
    }

    /// Both sets are nearly always empty: skip hashing then (std's SipHash, per op).
    fn is_dropped(&self, queue: QueueId) -> bool {
        !self.dropped_queues.is_empty() && self.dropped_queues.contains(&queue)
    }

    fn shared_count(&self, id: MessageId) -> Option<u32> {
        if self.ref_changes.is_empty() && self.multi_refs.is_empty() {
            return None;
        }
        self.ref_changes
            .get(&id)
            .or_else(|| self.multi_refs.get(&id))
            .copied()
    }

    pub(crate) fn put(&mut self, key: Key, value: Value, fresh: bool) {
        match self.writes.entry(key) {
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

    pub(crate) fn delete(&mut self, key: Key) {
        match self.writes.get_mut(&key) {
            Some(Pending { fresh: true, .. }) => {
                self.writes.remove(&key);
            }
            Some(pending) => pending.value = None,
            None => {
                self.writes.insert(
                    key,
                    Pending {
                        value: None,
                        fresh: false,
                    },
                );
            }
        }
    }

    /// One reference to `id` is gone; deletes a separate message when it was the last (an
    /// inline one goes with its entry).
    fn release(&mut self, id: MessageId) {
        if Placement::of(id) == Placement::Inline {
            return;
        }
        match self.shared_count(id) {
            Some(count) if count > 1 => {
                self.ref_changes.insert(id, count - 1);
            }
            Some(_) => {
                self.ref_changes.insert(id, 0);
                self.delete(Key::Message(id));
            }
            None => self.delete(Key::Message(id)),
        }
    }

    /// Removes every entry of the queue, on disk and written earlier in this batch.
    fn drop_queue(&mut self, queue: QueueId) -> Result<(), StorageError> {
        // Pending updates of entries on disk: the scan below finds those entries (if they
        // still exist), and an update must not count as an entry of its own.
        self.writes.retain(|key, pending| {
            !matches!(
                (key, &pending.value),
                (Key::Index(q, _), Some(Value::Entry { inline: Some(Inline::OnDisk), .. }))
                    if *q == queue
            )
        });
        let mut found = Vec::new();
        for guard in self.ks.index.prefix(codec::queue_prefix(queue)) {
            let (key, value) = guard.into_inner()?;
            let (_, seq) = codec::decode_index_key(&key)?;
            // The overlay's and the batch's own writes to this key win over fjall, below.
            let key = Key::Index(queue, seq);
            if !self.writes.contains_key(&key) && matches!(self.overlay.get(&key), Seen::NotHere) {
                found.push((seq, codec::index_value_message_id(&value)?));
            }
        }
        for (seq, value) in self.overlay.queue_range(queue, 0) {
            if let Some(value) = value
                && !self.writes.contains_key(&Key::Index(queue, seq))
            {
                found.push((seq, codec::index_value_message_id(value)?));
            }
        }
        for (key, pending) in self.writes.iter() {
            if let (Key::Index(q, seq), Some(Value::Entry { header, .. })) = (key, &pending.value)
                && *q == queue
            {
                found.push((*seq, codec::index_value_message_id(header)?));
            }
        }
        for (seq, message_id) in found {
            self.delete(Key::Index(queue, seq));
            self.release(message_id);
        }
        Ok(())
    }

    /// Moves the folded writes into the log's record, and into `changes` for the overlay;
    /// deletions of keys fjall may hold also go into `fjall_deletes`, to be applied once the
    /// record is durable. Hands back the reference-count changes, also for then.
    pub(crate) fn write_log(
        mut self,
        log: &mut CommitLog,
        changes: &mut Vec<Change>,
        fjall_deletes: &mut OwnedWriteBatch,
    ) -> Result<RefChanges, StorageError> {
        for (key, pending) in self.writes.drain() {
            let value = match pending.value {
                None => None,
                Some(Value::Meta(value)) => Some(Slice::from(value)),
                Some(Value::Message(message)) => Some(codec::encode_message(&message)),
                Some(Value::Entry {
                    header,
                    inline: None,
                }) => Some(Slice::from(&header[..])),
                Some(Value::Entry {
                    header,
                    inline: Some(Inline::New(message)),
                }) => Some(codec::encode_inline_entry(&header, &message)),
                Some(Value::Entry {
                    header,
                    inline: Some(Inline::OnDisk),
                }) => {
                    // Gone (removed by an earlier commit): nothing to update.
                    let Some(value) = updated_entry(self.ks, self.overlay, &key, &header)? else {
                        continue;
                    };
                    Some(value)
                }
            };
            // Short keys live inside the `Slice`: no allocation.
            let (space, key_bytes) = match &key {
                Key::Meta(k) => (Space::Meta, Slice::from(k.as_slice())),
                Key::Message(id) => (Space::Messages, Slice::from(&codec::message_key(*id)[..])),
                Key::Index(q, seq) => (Space::Index, Slice::from(&codec::index_key(*q, *seq)[..])),
            };
            match &value {
                Some(value) => log.put(space, &key_bytes, value),
                None => {
                    log.delete(space, &key_bytes);
                    if self.overlay.delete_reaches_fjall(&key, pending.fresh) {
                        fjall_deletes.remove(space.keyspace(self.ks), key_bytes);
                    }
                }
            }
            changes.push((key, value, pending.fresh));
        }
        Ok(std::mem::take(&mut self.ref_changes))
    }
}

/// An entry committed earlier with a new header and its old inline message, read from the
/// overlay or fjall; `None` if it is gone.
fn updated_entry(
    ks: &Keyspaces,
    overlay: &Overlay,
    key: &Key,
    header: &[u8; INDEX_VALUE_LEN],
) -> Result<Option<Slice>, StorageError> {
    let Key::Index(queue, seq) = key else {
        return Ok(None);
    };
    let old = match overlay.get(key) {
        Seen::Value(old) => old.clone(),
        Seen::Deleted => return Ok(None),
        Seen::NotHere => match ks.index.get(codec::index_key(*queue, *seq))? {
            Some(old) => old,
            None => return Ok(None),
        },
    };
    let tail = codec::index_value_tail(&old).unwrap_or_default();
    Ok(Some(codec::encode_entry_with_tail(header, tail)))
}

impl Drop for PendingBatch<'_> {
    /// A batch that failed part way leaves nothing behind for the next one.
    fn drop(&mut self) {
        self.writes.clear();
    }
}
