//! The commit log: where a group commit becomes durable, in front of fjall.
//!
//! Most persistent messages are acked within milliseconds of being confirmed. Putting each one
//! into fjall costs a memtable insert, a journal write, a tombstone when it is acked, and the
//! flush that iterates both again: in the 4-publisher persistent benchmark that was half of
//! the broker's CPU. So each commit is appended here, as the keys and values it changes, and
//! fsynced once; the changes stay in memory (`overlay`) where later commits fold them away,
//! and only what is still there at a checkpoint is written to fjall, after which the log
//! starts over.
//!
//! A log file is a run of records, one per commit: payload length (u32), xxh3 of the payload
//! (u64), payload. The payload is a run of items: a tag (keyspace, plus a delete bit), key
//! length (u32) and key, then for a put the value length (u32) and value. A record that is cut
//! short or fails its checksum ends the file: its commit was never confirmed.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use fjall::{Database, PersistMode, Slice};

use crate::StorageError;
use crate::store::Keyspaces;

/// Once the log holds this much, the next commit is followed by a checkpoint.
pub(crate) const CHECKPOINT_LOG_BYTES: u64 = 64 << 20;

const RECORD_HEADER: usize = 12;

/// The record buffer keeps its memory between commits up to this size.
const KEPT_RECORD_BYTES: usize = 4 << 20;
const DELETE: u8 = 0x80;
const PREFIX: &str = "commit-";
const SUFFIX: &str = ".log";

/// The fjall keyspace an item belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Space {
    Meta = 0,
    Messages = 1,
    Index = 2,
}

impl Space {
    fn from_tag(tag: u8) -> Option<Space> {
        match tag & !DELETE {
            0 => Some(Space::Meta),
            1 => Some(Space::Messages),
            2 => Some(Space::Index),
            _ => None,
        }
    }

    pub(crate) fn keyspace(self, ks: &Keyspaces) -> &fjall::Keyspace {
        match self {
            Space::Meta => &ks.meta,
            Space::Messages => &ks.messages,
            Space::Index => &ks.index,
        }
    }
}

/// The open log file and the record being assembled for the current commit.
pub(crate) struct CommitLog {
    dir: PathBuf,
    epoch: u64,
    /// Created by the first commit after a start or a checkpoint.
    file: Option<File>,
    /// Bytes of whole records in the file: a failed append is cut back to this.
    len: u64,
    /// Earlier files of this run that could not be cut back after a failed append: replay
    /// still needs them until the next checkpoint, which removes them with the current one.
    abandoned: Vec<PathBuf>,
    record: Vec<u8>,
}

impl CommitLog {
    /// A log that will write `commit-<epoch>.log` in `dir` (the store's directory).
    pub(crate) fn new(dir: &Path, epoch: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            epoch,
            file: None,
            len: 0,
            abandoned: Vec::new(),
            record: Vec::new(),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Starts the record of a new commit.
    pub(crate) fn begin(&mut self) {
        if self.record.capacity() > KEPT_RECORD_BYTES {
            // A burst (a deep queue deleted) grew it: give the memory back.
            self.record = Vec::new();
        }
        self.record.clear();
        self.record.extend_from_slice(&[0; RECORD_HEADER]);
    }

    pub(crate) fn put(&mut self, space: Space, key: &[u8], value: &[u8]) {
        self.item(space as u8, key);
        self.record
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.record.extend_from_slice(value);
    }

    pub(crate) fn delete(&mut self, space: Space, key: &[u8]) {
        self.item(space as u8 | DELETE, key);
    }

    fn item(&mut self, tag: u8, key: &[u8]) {
        self.record.push(tag);
        self.record
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.record.extend_from_slice(key);
    }

    /// Appends the record and fsyncs. On failure the file is cut back to its last whole
    /// record, so that a later commit is not hidden behind a torn one at replay.
    pub(crate) fn commit(&mut self) -> io::Result<()> {
        let payload = self.record.len() - RECORD_HEADER;
        let hash = xxhash_rust::xxh3::xxh3_64(&self.record[RECORD_HEADER..]);
        self.record[..4].copy_from_slice(&(payload as u32).to_le_bytes());
        self.record[4..RECORD_HEADER].copy_from_slice(&hash.to_le_bytes());
        self.open_file()?;
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("commit log file not open"));
        };
        let written = file.write_all(&self.record).and_then(|()| file.sync_data());
        match written {
            Ok(()) => {
                self.len += self.record.len() as u64;
                Ok(())
            }
            Err(error) => {
                if let Err(cut) = file.set_len(self.len) {
                    tracing::error!(error = %cut, "cannot cut the commit log back after a failed write; starting a new file");
                    self.file = None;
                    self.abandoned.push(self.path(self.epoch));
                    self.epoch += 1;
                    self.len = 0;
                }
                Err(error)
            }
        }
    }

    /// After a checkpoint: everything in the file is in fjall, so it goes, and the next
    /// commit starts a new one.
    pub(crate) fn restart(&mut self) -> io::Result<()> {
        self.file = None;
        self.abandoned.push(self.path(self.epoch));
        self.epoch += 1;
        self.len = 0;
        // Oldest first: a file left behind by a failure here must never outlive a newer one.
        while let Some(old) = self.abandoned.first() {
            match std::fs::remove_file(old) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {
                    self.abandoned.remove(0);
                }
            }
        }
        Ok(())
    }

    fn open_file(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(self.epoch))?;
            file.set_len(0)?;
            // The new name (and the removal of the last file) must be on disk before the
            // first commit in it is confirmed.
            File::open(&self.dir)?.sync_all()?;
            self.file = Some(file);
        }
        Ok(())
    }

    fn path(&self, epoch: u64) -> PathBuf {
        self.dir.join(format!("{PREFIX}{epoch:020}{SUFFIX}"))
    }
}

/// What [`replay`] found.
pub(crate) struct Replayed {
    /// The epoch for the next log file.
    pub(crate) next_epoch: u64,
    pub(crate) records: u64,
    pub(crate) items: usize,
}

/// Applies every log file in `dir` to fjall (durably), then removes them. Runs at open,
/// before recovery looks at fjall.
pub(crate) fn replay(dir: &Path, db: &Database, ks: &Keyspaces) -> Result<Replayed, StorageError> {
    let mut files = log_files(dir)?;
    files.sort();
    let next_epoch = files.last().map_or(0, |(epoch, _)| epoch + 1);
    let mut last = HashMap::<(Space, Slice), Option<Slice>>::new();
    let mut records = 0;
    for (_, path) in &files {
        let bytes = std::fs::read(path).map_err(|source| io_error(path, source))?;
        records += read_records(path, &bytes, &mut last)?;
    }
    let items = last.len();
    if !last.is_empty() {
        let mut batch = db.batch().durability(Some(PersistMode::SyncData));
        for ((space, key), value) in last {
            match value {
                Some(value) => batch.insert(space.keyspace(ks), key, value),
                None => batch.remove(space.keyspace(ks), key),
            }
        }
        batch.commit()?;
    }
    for (_, path) in &files {
        std::fs::remove_file(path).map_err(|source| io_error(path, source))?;
    }
    if !files.is_empty() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| io_error(dir, source))?;
    }
    Ok(Replayed {
        next_epoch,
        records,
        items,
    })
}

/// Folds the whole records of one file into `last`; returns how many there were.
fn read_records(
    path: &Path,
    mut bytes: &[u8],
    last: &mut HashMap<(Space, Slice), Option<Slice>>,
) -> Result<u64, StorageError> {
    let mut records = 0;
    while !bytes.is_empty() {
        let Some((payload, rest)) = whole_record(bytes) else {
            tracing::warn!(
                path = %path.display(),
                left = bytes.len(),
                "commit log ends in a partly written commit (never confirmed): ignored"
            );
            break;
        };
        read_items(payload, last)?;
        records += 1;
        bytes = rest;
    }
    Ok(records)
}

/// The payload of the record at the start of `bytes` and what follows it, if it is whole.
fn whole_record(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let header = bytes.get(..RECORD_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let hash = u64::from_le_bytes(header[4..].try_into().ok()?);
    let payload = bytes.get(RECORD_HEADER..RECORD_HEADER.checked_add(len)?)?;
    (xxhash_rust::xxh3::xxh3_64(payload) == hash).then(|| (payload, &bytes[RECORD_HEADER + len..]))
}

fn read_items(
    mut payload: &[u8],
    last: &mut HashMap<(Space, Slice), Option<Slice>>,
) -> Result<(), StorageError> {
    while let Some((&tag, rest)) = payload.split_first() {
        let space = Space::from_tag(tag)
            .ok_or_else(|| StorageError::corrupt(format!("commit log item tag {tag}")))?;
        let (key, rest) = take_sized(rest)?;
        let (value, rest) = if tag & DELETE == 0 {
            let (value, rest) = take_sized(rest)?;
            (Some(Slice::from(value)), rest)
        } else {
            (None, rest)
        };
        last.insert((space, Slice::from(key)), value);
        payload = rest;
    }
    Ok(())
}

fn take_sized(bytes: &[u8]) -> Result<(&[u8], &[u8]), StorageError> {
    let truncated = || StorageError::corrupt("commit log item cut short inside a whole record");
    let len = bytes
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(truncated)? as usize;
    let rest = &bytes[4..];
    if rest.len() < len {
        return Err(truncated());
    }
    Ok(rest.split_at(len))
}

fn log_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|source| io_error(dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| io_error(dir, source))?;
        let name = entry.file_name();
        let epoch = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(epoch) = epoch {
            files.push((epoch, entry.path()));
        }
    }
    Ok(files)
}

fn io_error(path: &Path, source: io::Error) -> StorageError {
    StorageError::CommitLog {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold(bytes: &[u8]) -> HashMap<(Space, Slice), Option<Slice>> {
        let mut last = HashMap::new();
        read_records(Path::new("test"), bytes, &mut last).unwrap();
        last
    }

    fn two_records(dir: &Path) -> Vec<u8> {
        let mut log = CommitLog::new(dir, 7);
        log.begin();
        log.put(Space::Index, b"k1", b"v1");
        log.put(Space::Meta, b"m", b"x");
        log.commit().unwrap();
        log.begin();
        log.delete(Space::Index, b"k1");
        log.put(Space::Messages, b"k2", b"v2");
        log.commit().unwrap();
        std::fs::read(log.path(7)).unwrap()
    }

    #[test]
    fn later_records_win_and_deletes_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let last = fold(&two_records(dir.path()));
        assert_eq!(last.len(), 3);
        assert_eq!(last[&(Space::Index, Slice::from(&b"k1"[..]))], None);
        assert_eq!(
            last[&(Space::Messages, Slice::from(&b"k2"[..]))],
            Some(Slice::from(&b"v2"[..]))
        );
    }

    #[test]
    fn a_torn_or_damaged_last_record_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = two_records(dir.path());
        for cut in 1..30 {
            let last = fold(&bytes[..bytes.len() - cut]);
            // Only the first commit survives: k1 is still there.
            assert_eq!(
                last[&(Space::Index, Slice::from(&b"k1"[..]))],
                Some(Slice::from(&b"v1"[..])),
                "cut {cut}"
            );
            assert_eq!(last.len(), 2, "cut {cut}");
        }
        let mut flipped = bytes.clone();
        let at = flipped.len() - 1;
        flipped[at] ^= 1;
        assert_eq!(fold(&flipped).len(), 2);
    }
}
