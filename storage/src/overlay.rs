//! What the commit log holds that fjall does not have yet: the latest value (or deletion) of
//! every key written since the last checkpoint.
//!
//! The writer changes it after each commit's fsync; readers look here before fjall. A key
//! created since the checkpoint and deleted again simply leaves (fjall never saw it). Deleting
//! a key that fjall may hold gains nothing from waiting (the tombstone is due anyway), so the
//! writer puts that tombstone straight into fjall after the fsync and the key leaves here too;
//! only if that write fails does the deletion stay here until the checkpoint.
//!
//! Readers hold the read lock while they also read fjall, and a checkpoint writes fjall before
//! it empties the overlay: a reader therefore sees each key in one place or the other, and where
//! both hold it, the overlay is newer.

use std::collections::{BTreeMap, HashMap};

use fjall::{OwnedWriteBatch, Slice};

use crate::codec;
use crate::pending::Key;
use crate::store::Keyspaces;
use crate::{MessageId, QueueId, Seq};

/// Once the overlay holds this much, the next commit is followed by a checkpoint. It bounds
/// the memory a backlog keeps here (its messages are paged out of the broker's memory) and
/// what a crash leaves to replay.
pub(crate) const CHECKPOINT_OVERLAY_BYTES: usize = 16 << 20;

/// Per-key bookkeeping of the maps, counted against the limit above.
const SLOT_OVERHEAD: usize = 48;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

struct Slot {
    /// `None`: deleted.
    value: Option<Slice>,
    /// fjall may hold an older version, so a deletion must reach it.
    on_disk: bool,
}

#[derive(Default)]
pub(crate) struct Overlay {
    index: BTreeMap<(QueueId, Seq), Slot>,
    messages: FastMap<MessageId, Slot>,
    meta: HashMap<Vec<u8>, Slot>,
    bytes: usize,
}

/// What the overlay knows of one key.
pub(crate) enum Seen<'a> {
    /// Not written since the checkpoint: fjall has the answer.
    NotHere,
    Deleted,
    Value(&'a Slice),
}

impl Overlay {
    pub(crate) fn is_empty(&self) -> bool {
        self.index.is_empty() && self.messages.is_empty() && self.meta.is_empty()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn get(&self, key: &Key) -> Seen<'_> {
        let slot = match key {
            Key::Meta(key) => self.meta.get(key),
            Key::Message(id) => self.messages.get(id),
            Key::Index(queue, seq) => self.index.get(&(*queue, *seq)),
        };
        match slot {
            None => Seen::NotHere,
            Some(Slot { value: None, .. }) => Seen::Deleted,
            Some(Slot {
                value: Some(value), ..
            }) => Seen::Value(value),
        }
    }

    /// Whether deleting `key` must reach fjall: fjall may hold it (`fresh`: the deleting
    /// commit also created it).
    pub(crate) fn delete_reaches_fjall(&self, key: &Key, fresh: bool) -> bool {
        let slot = match key {
            Key::Meta(key) => self.meta.get(key),
            Key::Message(id) => self.messages.get(id),
            Key::Index(queue, seq) => self.index.get(&(*queue, *seq)),
        };
        slot.map_or(!fresh, |slot| slot.on_disk)
    }

    /// Records a committed write. `fresh`: the key was created by that commit.
    /// `fjall_deleted`: a deletion was also written to fjall itself, so none is kept here.
    pub(crate) fn apply(
        &mut self,
        key: Key,
        value: Option<Slice>,
        fresh: bool,
        fjall_deleted: bool,
    ) {
        let (key_len, old, added) = match key {
            Key::Meta(key) => {
                let len = key.len();
                let next = next_slot(self.meta.get(&key), value, fresh, fjall_deleted);
                let added = next.as_ref().map_or(0, |slot| slot_bytes(len, slot));
                let old = match next {
                    Some(slot) => self.meta.insert(key, slot),
                    None => self.meta.remove(&key),
                };
                (len, old, added)
            }
            Key::Message(id) => {
                let next = next_slot(self.messages.get(&id), value, fresh, fjall_deleted);
                let added = next.as_ref().map_or(0, |slot| slot_bytes(8, slot));
                let old = match next {
                    Some(slot) => self.messages.insert(id, slot),
                    None => self.messages.remove(&id),
                };
                (8, old, added)
            }
            Key::Index(queue, seq) => {
                let next = next_slot(self.index.get(&(queue, seq)), value, fresh, fjall_deleted);
                let added = next.as_ref().map_or(0, |slot| slot_bytes(16, slot));
                let old = match next {
                    Some(slot) => self.index.insert((queue, seq), slot),
                    None => self.index.remove(&(queue, seq)),
                };
                (16, old, added)
            }
        };
        if let Some(old) = old {
            self.bytes = self.bytes.saturating_sub(slot_bytes(key_len, &old));
        }
        self.bytes += added;
    }

    /// Entries of `queue` from `from` on, in seq order (`None`: deleted).
    pub(crate) fn queue_range(
        &self,
        queue: QueueId,
        from: Seq,
    ) -> impl Iterator<Item = (Seq, Option<&Slice>)> {
        self.index
            .range((queue, from)..=(queue, Seq::MAX))
            .map(|(&(_, seq), slot)| (seq, slot.value.as_ref()))
    }

    /// Metadata keys starting with `prefix` (`None`: deleted).
    pub(crate) fn meta_with_prefix<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a [u8], Option<&'a Slice>)> {
        self.meta
            .iter()
            .filter(move |(key, _)| key.starts_with(prefix))
            .map(|(key, slot)| (key.as_slice(), slot.value.as_ref()))
    }

    /// Adds every write to `batch`: the checkpoint.
    pub(crate) fn write_into(&self, batch: &mut OwnedWriteBatch, ks: &Keyspaces) {
        for ((queue, seq), slot) in &self.index {
            let key = codec::index_key(*queue, *seq);
            put_or_remove(batch, &ks.index, &key, slot);
        }
        for (id, slot) in &self.messages {
            put_or_remove(batch, &ks.messages, &codec::message_key(*id), slot);
        }
        for (key, slot) in &self.meta {
            put_or_remove(batch, &ks.meta, key, slot);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.index.clear();
        self.messages = FastMap::default();
        self.meta.clear();
        self.bytes = 0;
    }
}

fn next_slot(
    old: Option<&Slot>,
    value: Option<Slice>,
    fresh: bool,
    fjall_deleted: bool,
) -> Option<Slot> {
    let on_disk = old.map_or(!fresh, |slot| slot.on_disk);
    match value {
        Some(value) => Some(Slot {
            value: Some(value),
            on_disk,
        }),
        None if on_disk && !fjall_deleted => Some(Slot {
            value: None,
            on_disk,
        }),
        None => None,
    }
}

fn slot_bytes(key_len: usize, slot: &Slot) -> usize {
    key_len + SLOT_OVERHEAD + slot.value.as_ref().map_or(0, |v| v.len())
}

fn put_or_remove(batch: &mut OwnedWriteBatch, keyspace: &fjall::Keyspace, key: &[u8], slot: &Slot) {
    match &slot.value {
        Some(value) => batch.insert(keyspace, key, value.clone()),
        None => batch.remove(keyspace, key),
    }
}
