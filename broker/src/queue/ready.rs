//! A queue's ready messages, in order, with the bodies of those far from the head kept only
//! on disk.
//!
//! Three runs, in seq order: `head` (in memory, what consumers get next), `disk` (a run of
//! entries that exist only in the store), and `tail` (the newest, in memory). A deep durable
//! queue keeps a bounded head and tail in memory; once a tail message's write is on disk its
//! body can leave memory and join the disk run, and the head is refilled from the store in
//! batches as consumers approach it (RabbitMQ's classic queues v2 and lazy queues do the same).
//! A queue without a store keeps everything in `head`.

use std::collections::VecDeque;
use std::sync::Arc;

use warren_storage::{QueueId, QueuedMessage, Seq, Store};

use crate::message::{Message, QueueEntry};

/// Refill the head up to this many entries...
const HEAD_TARGET: usize = 2048;
/// ...or this many bytes, whichever comes first.
const HEAD_TARGET_BYTES: u64 = 8 << 20;
/// Entries read from the store per refill step.
const REFILL_BATCH: usize = 512;
/// Page the tail out once it holds more than this many entries...
const TAIL_MAX: usize = 1024;
/// ...or this many bytes.
const TAIL_MAX_BYTES: u64 = 8 << 20;

/// Entries that exist only in the store: `count` of them (`bytes` in all), the first at or
/// after `next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskRun {
    pub next: Seq,
    pub count: u64,
    pub bytes: u64,
}

/// Where a durable queue's entries live in the store.
#[derive(Debug, Clone)]
pub struct QueueStore {
    pub store: Store,
    pub id: QueueId,
}

#[derive(Debug, Default)]
pub struct ReadyMessages {
    head: VecDeque<QueueEntry>,
    head_bytes: u64,
    disk: Option<DiskRun>,
    tail: VecDeque<QueueEntry>,
    tail_bytes: u64,
    /// Priority queues (`x-max-priority`): one run per priority, highest last. Such queues
    /// keep every message in memory; `head` and `tail` stay empty once the disk run is read.
    levels: Vec<VecDeque<QueueEntry>>,
    levels_len: u64,
    levels_bytes: u64,
    /// Body bytes of every ready message, on disk included: what `x-max-length-bytes` counts
    /// (RabbitMQ counts bodies only).
    body_bytes: u64,
}

impl ReadyMessages {
    /// A queue's ready messages; `max_priority` makes it a priority queue. A recovered queue
    /// starts with everything on disk.
    pub fn new(max_priority: Option<u8>, disk: Option<DiskRun>) -> Self {
        let levels = max_priority
            .map(|max| (0..=max).map(|_| VecDeque::new()).collect())
            .unwrap_or_default();
        Self {
            body_bytes: disk.map_or(0, |d| d.bytes),
            disk,
            levels,
            ..Self::default()
        }
    }

    fn is_priority(&self) -> bool {
        !self.levels.is_empty()
    }

    pub fn len(&self) -> u64 {
        self.head.len() as u64
            + self.disk.map_or(0, |d| d.count)
            + self.tail.len() as u64
            + self.levels_len
    }

    /// Body bytes of all ready messages, on disk included (for `x-max-length-bytes`).
    pub fn bytes(&self) -> u64 {
        self.body_bytes
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn level_of(&self, entry: &QueueEntry) -> usize {
        let max = self.levels.len().saturating_sub(1);
        usize::from(entry.message.properties.priority().unwrap_or(0)).min(max)
    }

    fn push_level(&mut self, entry: QueueEntry) {
        let level = self.level_of(&entry);
        self.levels_len += 1;
        self.levels_bytes += entry.message.size();
        insert_sorted(&mut self.levels[level], entry);
    }

    /// Gives back an entry just taken with `pop_front` (nobody could take it).
    pub fn unpop(&mut self, entry: QueueEntry) {
        self.body_bytes += entry.message.body.len() as u64;
        if self.is_priority() {
            self.push_level(entry);
        } else {
            self.head_bytes += entry.message.size();
            self.head.push_front(entry);
        }
    }

    /// Adds a new message at its seq position.
    pub fn push(&mut self, entry: QueueEntry, pageable: bool) {
        self.body_bytes += entry.message.body.len() as u64;
        if self.is_priority() {
            self.push_level(entry);
            return;
        }
        let size = entry.message.size();
        let to_head = self.head.back().is_some_and(|b| entry.seq < b.seq)
            || self.disk.is_some_and(|d| entry.seq < d.next)
            || (self.disk.is_none()
                && self.tail.is_empty()
                && (!pageable
                    || (self.head.len() < HEAD_TARGET && self.head_bytes < HEAD_TARGET_BYTES)));
        if to_head {
            insert_sorted(&mut self.head, entry);
            self.head_bytes += size;
        } else {
            insert_sorted(&mut self.tail, entry);
            self.tail_bytes += size;
        }
    }

    /// Puts a delivered message back at its original place (always ahead of the disk run).
    pub fn requeue(&mut self, entry: QueueEntry) {
        self.body_bytes += entry.message.body.len() as u64;
        if self.is_priority() {
            self.push_level(entry);
            return;
        }
        self.head_bytes += entry.message.size();
        insert_sorted(&mut self.head, entry);
    }

    /// The next message, refilling the head from the store when it runs dry.
    pub fn pop_front(&mut self, store: Option<&QueueStore>) -> Option<(QueueEntry, u64)> {
        let mut paged_in = 0;
        if self.is_priority() {
            if self.disk.is_some() {
                paged_in = self.load_all(store);
            }
            let level = self.levels.iter_mut().rev().find(|l| !l.is_empty())?;
            let entry = level.pop_front()?;
            self.body_bytes = self
                .body_bytes
                .saturating_sub(entry.message.body.len() as u64);
            self.levels_len -= 1;
            self.levels_bytes = self.levels_bytes.saturating_sub(entry.message.size());
            return Some((entry, paged_in));
        }
        if self.head.is_empty() {
            paged_in = self.refill(store);
        }
        let entry = self.head.pop_front()?;
        self.head_bytes = self.head_bytes.saturating_sub(entry.message.size());
        self.body_bytes = self
            .body_bytes
            .saturating_sub(entry.message.body.len() as u64);
        Some((entry, paged_in))
    }

    /// A recovered priority queue reads all its messages back at once (priority queues do not
    /// page). Returns the bytes read.
    fn load_all(&mut self, store: Option<&QueueStore>) -> u64 {
        let mut added = 0;
        while self.disk.is_some() {
            let before = self.disk;
            added += self.refill_head(store, usize::MAX, u64::MAX);
            for entry in std::mem::take(&mut self.head) {
                self.push_level(entry);
            }
            self.head_bytes = 0;
            if self.disk == before {
                break;
            }
        }
        added
    }

    /// Bytes paged in: refills the head from the disk run, then moves the tail up once the
    /// disk run is used up.
    pub fn refill(&mut self, store: Option<&QueueStore>) -> u64 {
        self.refill_head(store, HEAD_TARGET, HEAD_TARGET_BYTES)
    }
    fn refill_head(&mut self, store: Option<&QueueStore>, max_len: usize, max_bytes: u64) -> u64 {
        let mut added = 0;
        while self.head.len() < max_len && self.head_bytes < max_bytes {
            let Some(run) = self.disk else {
                break;
            };
            let Some(store) = store else {
                break;
            };
            let want = REFILL_BATCH.min(run.count as usize);
            let entries = match store.store.read_messages(store.id, run.next, want) {
                Ok(entries) => entries,
                Err(error) => {
                    tracing::error!(%error, queue_id = store.id, "cannot read queue index; messages stay on disk");
                    break;
                }
            };
            if entries.is_empty() {
                tracing::error!(
                    queue_id = store.id,
                    missing = run.count,
                    "queue index has fewer entries than expected"
                );
                self.disk = None;
                break;
            }
            let mut next = run.next;
            let mut taken = 0u64;
            let mut taken_bytes = 0u64;
            for QueuedMessage {
                entry: index,
                message,
            } in entries
            {
                next = index.seq + 1;
                taken += 1;
                taken_bytes += u64::from(index.size);
                let Some(message) = message.and_then(|m| Message::from_stored(index.message_id, m))
                else {
                    tracing::error!(
                        message_id = index.message_id,
                        seq = index.seq,
                        "message body missing from the store or unreadable; skipped"
                    );
                    continue;
                };
                let entry = QueueEntry {
                    seq: index.seq,
                    message: Arc::new(message),
                    redelivered: index.delivered,
                    delivery_count: index.delivery_count,
                    persisted: true,
                    paged: index.transient,
                    expires_at: index.expires_at,
                };
                let size = entry.message.size();
                added += size;
                self.head_bytes += size;
                self.head.push_back(entry);
            }
            let count = run.count.saturating_sub(taken);
            self.disk = (count > 0).then_some(DiskRun {
                next,
                count,
                bytes: run.bytes.saturating_sub(taken_bytes),
            });
        }
        if self.disk.is_none() && !self.tail.is_empty() && self.head.len() < max_len {
            self.head.append(&mut self.tail);
            self.head_bytes += std::mem::take(&mut self.tail_bytes);
        }
        added
    }

    /// Drops the bodies of stored tail messages from memory, folding them into the disk run.
    /// Returns the bytes released.
    pub fn page_out(&mut self) -> u64 {
        if self.is_priority() || self.tail.len() <= TAIL_MAX && self.tail_bytes <= TAIL_MAX_BYTES {
            return 0;
        }
        if self.disk.is_none() {
            // Messages admitted before memory pressure began were never written; they lead
            // the tail and would block the fold, so they join the head instead (order holds:
            // nothing lies between head and tail).
            while self.tail.front().is_some_and(|e| !e.persisted) {
                let Some(entry) = self.tail.pop_front() else {
                    break;
                };
                let size = entry.message.size();
                self.tail_bytes = self.tail_bytes.saturating_sub(size);
                self.head_bytes += size;
                self.head.push_back(entry);
            }
        }
        let mut released = 0;
        while self.tail.len() > TAIL_MAX / 2 || self.tail_bytes > TAIL_MAX_BYTES / 2 {
            let Some(front) = self.tail.front() else {
                break;
            };
            if !(front.persisted && front.message.is_stored()) {
                break;
            }
            let Some(entry) = self.tail.pop_front() else {
                break;
            };
            let size = entry.message.size();
            released += size;
            self.tail_bytes = self.tail_bytes.saturating_sub(size);
            match &mut self.disk {
                Some(run) => {
                    run.count += 1;
                    run.bytes += size;
                }
                None => {
                    self.disk = Some(DiskRun {
                        next: entry.seq,
                        count: 1,
                        bytes: size,
                    })
                }
            }
        }
        released
    }

    /// Empties the queue: in-memory entries are returned, the disk run is handed back too.
    pub fn take_all(&mut self) -> (Vec<QueueEntry>, Option<DiskRun>) {
        let mut entries: Vec<QueueEntry> = self.head.drain(..).collect();
        entries.extend(self.tail.drain(..));
        for level in &mut self.levels {
            entries.extend(level.drain(..));
        }
        self.head_bytes = 0;
        self.tail_bytes = 0;
        self.levels_len = 0;
        self.levels_bytes = 0;
        self.body_bytes = 0;
        (entries, self.disk.take())
    }
}

/// Inserts by seq, scanning from the back: new messages almost always belong at the end.
fn insert_sorted(deque: &mut VecDeque<QueueEntry>, entry: QueueEntry) {
    if deque.back().is_none_or(|b| b.seq < entry.seq) {
        deque.push_back(entry);
        return;
    }
    let at = deque.partition_point(|e| e.seq < entry.seq);
    deque.insert(at, entry);
}
