//! Behaviour of the message store through its public API, on real temporary directories.

use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use warren_storage::{
    IndexEntry, MessageId, MetaKind, Placement, QueueStats, QueuedMessage, Recovery,
    SEPARATE_MESSAGE_BIT, StorageError, Store, StoreOptions, WriteOp,
};

mod common;
use common::*;

#[test]
fn a_put_message_reads_back_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let id = store.next_message_id(Placement::Separate);
    write(&store, vec![put(id, "hello", 1), enqueue(1, 0, id)]).unwrap();
    assert_eq!(store.read_message(sep(id)).unwrap(), Some(message("hello")));
    assert_eq!(store.read_message(sep(id + 1)).unwrap(), None);
}

#[test]
fn a_large_body_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let body: String = (0..2_000_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    write(&store, vec![put(1, &body, 1), enqueue(1, 0, 1)]).unwrap();
    assert_eq!(store.read_message(sep(1)).unwrap(), Some(message(&body)));
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.read_message(sep(1)).unwrap(), Some(message(&body)));
}

#[test]
fn read_entries_returns_one_queue_in_seq_order_from_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut ops = Vec::new();
    for seq in [5u64, 1, 3, 2, 4, 300, 256] {
        ops.push(put(seq, "m", 1));
        ops.push(enqueue(7, seq, seq));
    }
    ops.push(put(1000, "other queue", 1));
    ops.push(enqueue(6, 1, 1000));
    ops.push(put(1001, "other queue", 1));
    ops.push(enqueue(8, 0, 1001));
    write(&store, ops).unwrap();

    assert_eq!(
        seqs(&store.read_entries(7, 0, 100).unwrap()),
        [1, 2, 3, 4, 5, 256, 300]
    );
    assert_eq!(seqs(&store.read_entries(7, 3, 2).unwrap()), [3, 4]);
    assert_eq!(seqs(&store.read_entries(7, 6, 100).unwrap()), [256, 300]);
    assert_eq!(
        seqs(&store.read_entries(7, 301, 100).unwrap()),
        Vec::<u64>::new()
    );
    let first = store.read_entries(7, 0, 1).unwrap();
    assert_eq!(first, [entry(1, 1)]);
}

#[test]
fn remove_deletes_a_single_reference_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write(&store, vec![put(1, "a", 1), enqueue(1, 0, 1)]).unwrap();
    write(&store, vec![remove(1, 0, 1)]).unwrap();
    assert_eq!(store.read_message(sep(1)).unwrap(), None);
    assert!(store.read_entries(1, 0, 10).unwrap().is_empty());
}

#[test]
fn put_then_remove_in_one_submission_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write(
        &store,
        vec![put(1, "a", 1), enqueue(1, 0, 1), remove(1, 0, 1)],
    )
    .unwrap();
    assert_eq!(store.read_message(sep(1)).unwrap(), None);
    assert!(store.read_entries(1, 0, 10).unwrap().is_empty());
}

#[test]
fn a_multi_reference_message_lives_until_the_last_queue_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write(
        &store,
        vec![
            put(1, "fanout", 3),
            enqueue(10, 0, 1),
            enqueue(11, 0, 1),
            enqueue(12, 5, 1),
        ],
    )
    .unwrap();
    write(&store, vec![remove(10, 0, 1)]).unwrap();
    assert!(store.read_message(sep(1)).unwrap().is_some());
    // Ops for the same message within one batch.
    store.submit(vec![remove(11, 0, 1)], None);
    write(&store, vec![]).unwrap();
    assert!(store.read_message(sep(1)).unwrap().is_some());
    write(&store, vec![remove(12, 5, 1)]).unwrap();
    assert_eq!(store.read_message(sep(1)).unwrap(), None);
}

#[test]
fn drop_queue_removes_its_entries_and_releases_their_messages() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write(
        &store,
        vec![
            put(1, "shared", 2),
            enqueue(1, 0, 1),
            enqueue(2, 0, 1),
            put(2, "only in queue 1", 1),
            enqueue(1, 1, 2),
        ],
    )
    .unwrap();
    // An entry written in the same batch as the drop goes too.
    write(
        &store,
        vec![
            put(3, "late", 1),
            enqueue(1, 2, 3),
            WriteOp::DropQueue { queue: 1 },
        ],
    )
    .unwrap();
    assert!(store.read_entries(1, 0, 10).unwrap().is_empty());
    assert_eq!(store.read_message(sep(2)).unwrap(), None);
    assert_eq!(store.read_message(sep(3)).unwrap(), None);
    assert!(store.read_message(sep(1)).unwrap().is_some());
    assert_eq!(seqs(&store.read_entries(2, 0, 10).unwrap()), [0]);

    write(&store, vec![WriteOp::DropQueue { queue: 2 }]).unwrap();
    assert_eq!(store.read_message(sep(1)).unwrap(), None);
}

/// Message 1 (separate), held by queue 1 and queue 2 at seq 0.
fn shared_by_queues_1_and_2(dir: &Path) -> Store {
    let store = open(dir);
    write(
        &store,
        vec![put(1, "shared", 2), enqueue(1, 0, 1), enqueue(2, 0, 1)],
    )
    .unwrap();
    store
}

fn assert_still_held_by_queue_2(store: &Store) {
    assert!(
        store.read_message(sep(1)).unwrap().is_some(),
        "queue 2 still holds the message"
    );
}

#[test]
fn a_remove_that_arrives_after_its_queue_was_dropped_does_not_release_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = shared_by_queues_1_and_2(dir.path());
    write(&store, vec![WriteOp::DropQueue { queue: 1 }]).unwrap();
    // A consumer of queue 1 acked while the queue was being deleted.
    write(&store, vec![remove(1, 0, 1)]).unwrap();
    assert_still_held_by_queue_2(&store);
    write(&store, vec![remove(2, 0, 1)]).unwrap();
    assert_eq!(store.read_message(sep(1)).unwrap(), None);
}

#[test]
fn a_pending_update_of_a_gone_entry_does_not_count_when_its_queue_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = shared_by_queues_1_and_2(dir.path());
    write(&store, vec![remove(1, 0, 1)]).unwrap();
    // A late update of the removed entry, then the queue's deletion, in one batch: the
    // update must not be taken for an entry that still holds a reference.
    let late = WriteOp::UpdateEntry {
        queue: 1,
        entry: IndexEntry {
            delivered: true,
            ..entry(0, 1)
        },
    };
    write(&store, vec![late, WriteOp::DropQueue { queue: 1 }]).unwrap();
    assert_still_held_by_queue_2(&store);
    assert_eq!(seqs(&store.read_entries(2, 0, 10).unwrap()), [0]);
    assert!(store.read_entries(1, 0, 10).unwrap().is_empty());
}

/// Queue 1: seq 0 a paged-out transient message (1), seq 1 a persistent one (2).
fn write_paged_and_kept(store: &Store) {
    let paged = WriteOp::Enqueue {
        queue: 1,
        entry: IndexEntry {
            transient: true,
            ..entry(0, 1)
        },
        message: None,
    };
    write(
        store,
        vec![
            put(1, "paged", 1),
            paged,
            put(2, "kept", 1),
            enqueue(1, 1, 2),
        ],
    )
    .unwrap();
    assert_eq!(store.read_entries(1, 0, 10).unwrap().len(), 2);
}

#[test]
fn transient_entries_and_their_messages_are_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    write_paged_and_kept(&open(dir.path()));
    let store = open(dir.path());
    let left = store.read_entries(1, 0, 10).unwrap();
    assert_eq!(seqs(&left), [1]);
    assert_eq!(store.read_message(sep(1)).unwrap(), None);
    assert!(store.read_message(sep(2)).unwrap().is_some());
}

#[test]
fn update_entry_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write(&store, vec![put(1, "a", 1), enqueue(3, 9, 1)]).unwrap();
    let updated = IndexEntry {
        delivery_count: 2,
        delivered: true,
        ..entry(9, 1)
    };
    write(
        &store,
        vec![WriteOp::UpdateEntry {
            queue: 3,
            entry: updated,
        }],
    )
    .unwrap();
    assert_eq!(store.read_entries(3, 0, 10).unwrap(), [updated]);
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.read_entries(3, 0, 10).unwrap(), [updated]);
}

#[test]
fn everything_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ids: Vec<_> = (0..3)
        .map(|_| store.next_message_id(Placement::Separate))
        .collect();
    let mut ops = vec![
        put(ids[0], "zero", 1),
        put(ids[1], "one", 1),
        put(ids[2], "two", 2),
    ];
    ops.extend([
        enqueue(1, 0, ids[0]),
        enqueue(1, 1, ids[1]),
        enqueue(1, 2, ids[2]),
    ]);
    ops.push(enqueue(2, 0, ids[2]));
    store.submit(ops, None);
    store
        .put_meta(MetaKind::Queue, b"/\0q1", b"durable")
        .unwrap();
    store
        .put_meta(MetaKind::Exchange, b"/\0x", b"topic")
        .unwrap();
    store.flush().unwrap();
    let last = *ids.last().unwrap();
    drop(store);

    let store = open(dir.path());
    assert_eq!(seqs(&store.read_entries(1, 0, 10).unwrap()), [0, 1, 2]);
    assert_eq!(seqs(&store.read_entries(2, 0, 10).unwrap()), [0]);
    assert_eq!(
        store.read_message(sep(ids[1])).unwrap(),
        Some(message("one"))
    );
    assert_eq!(
        store.load_meta(MetaKind::Queue).unwrap(),
        [(b"/\0q1".to_vec(), b"durable".to_vec())]
    );
    assert_eq!(
        store.load_meta(MetaKind::Exchange).unwrap(),
        [(b"/\0x".to_vec(), b"topic".to_vec())]
    );
    assert!(store.next_message_id(Placement::Separate) > last);

    // The shared message's count was rebuilt from the index: one remove keeps it.
    write(&store, vec![remove(1, 2, ids[2])]).unwrap();
    assert!(store.read_message(sep(ids[2])).unwrap().is_some());
    write(&store, vec![remove(2, 0, ids[2])]).unwrap();
    assert_eq!(store.read_message(sep(ids[2])).unwrap(), None);
}

#[test]
fn message_ids_never_repeat_across_restarts_even_unwritten() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut last = 0;
    for _ in 0..10 {
        last = store.next_message_id(Placement::Separate);
    }
    drop(store);
    let store = open(dir.path());
    assert!(store.next_message_id(Placement::Separate) > last);
}

#[test]
fn orphan_messages_and_dangling_entries_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // A message no queue references (a crash between publish and enqueue leaves one), and an
    // entry whose message was never written.
    write(
        &store,
        vec![put(1, "orphan", 1), put(2, "kept", 1), enqueue(1, 0, 2)],
    )
    .unwrap();
    write(&store, vec![enqueue(1, 1, 99)]).unwrap();
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.read_message(sep(1)).unwrap(), None);
    assert_eq!(store.read_message(sep(2)).unwrap(), Some(message("kept")));
    assert_eq!(seqs(&store.read_entries(1, 0, 10).unwrap()), [0]);
}

/// Queue 1: seqs 0..3 (message 3 shared with queue 2), seq 0 then acked. Queue 2: seq 5.
/// Message 9 is an orphan (no entry), as a crash between publish and enqueue leaves one.
fn write_two_queues(store: &Store) {
    write(
        store,
        vec![
            put(1, "one", 1),
            put(2, "two", 1),
            put(3, "shared", 2),
            put(9, "orphan", 1),
            enqueue(1, 0, 1),
            enqueue(1, 1, 2),
            enqueue(1, 2, 3),
            enqueue(2, 5, 3),
        ],
    )
    .unwrap();
    write(store, vec![remove(1, 0, 1)]).unwrap();
}

fn stats(first: u64, count: u64, next: u64) -> Option<QueueStats> {
    Some(QueueStats {
        first,
        count,
        bytes: count * 10,
        next,
    })
}

/// A store with `write_two_queues` done, closed cleanly and opened again.
fn two_queues_closed_and_reopened(dir: &Path) -> Store {
    let store = open(dir);
    write_two_queues(&store);
    store.close().unwrap();
    drop(store);
    let store = open(dir);
    assert_eq!(store.recovery(), Recovery::Clean);
    store
}

#[test]
fn a_new_store_opens_clean() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(open(dir.path()).recovery(), Recovery::Clean);
}

#[test]
fn a_closed_store_reopens_without_scanning_and_knows_each_queue() {
    let dir = tempfile::tempdir().unwrap();
    let store = two_queues_closed_and_reopened(dir.path());
    assert_eq!(store.take_recovered_queue(1), stats(1, 2, 3));
    assert_eq!(store.take_recovered_queue(2), stats(5, 1, 6));
    assert_eq!(store.take_recovered_queue(1), None, "handed out once");
    assert_eq!(store.take_recovered_queue(7), None);
    // Nothing was scanned: the orphan is still there (a crash-time scan would remove it).
    assert!(store.read_message(sep(9)).unwrap().is_some());
    // The shared message's count came through the close: one remove keeps it.
    write(&store, vec![remove(1, 2, 3)]).unwrap();
    assert!(store.read_message(sep(3)).unwrap().is_some());
    write(&store, vec![remove(2, 5, 3)]).unwrap();
    assert_eq!(store.read_message(sep(3)).unwrap(), None);
}

#[test]
fn a_store_not_closed_is_scanned_at_the_next_open_as_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write_two_queues(&store);
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.recovery(), Recovery::Scanned);
    assert_eq!(store.take_recovered_queue(1), stats(1, 2, 3));
    assert_eq!(store.take_recovered_queue(2), stats(5, 1, 6));
    assert_eq!(store.read_message(sep(9)).unwrap(), None, "orphan removed");
    write(&store, vec![remove(1, 2, 3)]).unwrap();
    assert!(store.read_message(sep(3)).unwrap().is_some());
}

#[test]
fn a_crash_after_a_clean_restart_is_still_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let store = two_queues_closed_and_reopened(dir.path());
    write(&store, vec![put(20, "later", 1), enqueue(1, 3, 20)]).unwrap();
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.recovery(), Recovery::Scanned);
    assert_eq!(store.take_recovered_queue(1), stats(1, 3, 4));
}

#[test]
fn submissions_after_close_fail_and_never_reach_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write_two_queues(&store);
    store.close().unwrap();
    assert!(matches!(
        write(&store, vec![put(30, "late", 1), enqueue(1, 3, 30)]),
        Err(StorageError::WriterStopped)
    ));
    assert!(store.close().is_err());
    // Reads still work after close.
    assert_eq!(store.read_message(sep(2)).unwrap(), Some(message("two")));
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.recovery(), Recovery::Clean);
    assert_eq!(store.read_message(sep(30)).unwrap(), None);
    assert_eq!(store.take_recovered_queue(1), stats(1, 2, 3));
}

#[test]
fn close_drops_paged_out_transient_entries_and_their_messages() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write_paged_and_kept(&store);
    store.close().unwrap();
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.recovery(), Recovery::Clean);
    assert_eq!(seqs(&store.read_entries(1, 0, 10).unwrap()), [1]);
    assert_eq!(store.read_message(sep(1)).unwrap(), None);
    assert_eq!(store.take_recovered_queue(1), stats(1, 1, 2));
}

#[test]
fn meta_records_are_put_deleted_and_loaded_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.put_meta(MetaKind::Vhost, b"/", b"v1").unwrap();
    store.put_meta(MetaKind::Vhost, b"/", b"v2").unwrap();
    store.put_meta(MetaKind::Vhost, b"other", b"x").unwrap();
    store.put_meta(MetaKind::User, b"guest", b"hash").unwrap();
    store.delete_meta(MetaKind::Vhost, b"other").unwrap();
    store
        .delete_meta(MetaKind::Binding, b"never there")
        .unwrap();
    assert_eq!(
        store.load_meta(MetaKind::Vhost).unwrap(),
        [(b"/".to_vec(), b"v2".to_vec())]
    );
    assert_eq!(store.load_meta(MetaKind::User).unwrap().len(), 1);
    assert!(store.load_meta(MetaKind::Binding).unwrap().is_empty());
}

#[test]
fn concurrent_submissions_share_fsyncs_and_complete_in_order() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let before = store.stats();

    let completions: Vec<Arc<Mutex<Vec<u64>>>> = (0..THREADS)
        .map(|_| Arc::new(Mutex::new(Vec::new())))
        .collect();
    std::thread::scope(|scope| {
        for (thread, done) in completions.iter().enumerate() {
            let store = store.clone();
            scope.spawn(move || {
                for i in 0..PER_THREAD {
                    let id = store.next_message_id(Placement::Separate);
                    let done = done.clone();
                    store.submit(
                        vec![put(id, "m", 1), enqueue(thread as u64, i, id)],
                        Some(Box::new(move |result| {
                            result.unwrap();
                            done.lock().unwrap().push(i);
                        })),
                    );
                }
            });
        }
    });
    store.flush().unwrap();

    for done in &completions {
        assert_eq!(*done.lock().unwrap(), (0..PER_THREAD).collect::<Vec<_>>());
    }
    let stats = store.stats();
    let submissions = THREADS * PER_THREAD;
    assert!(
        stats.fsyncs - before.fsyncs < submissions,
        "{} fsyncs for {submissions} submissions",
        stats.fsyncs - before.fsyncs
    );
    assert_eq!(
        stats.messages_written - before.messages_written,
        submissions
    );
    assert_eq!(stats.ops_written - before.ops_written, 2 * submissions);
    for thread in 0..THREADS {
        assert_eq!(
            store.read_entries(thread, 0, 1000).unwrap().len(),
            PER_THREAD as usize
        );
    }
}

#[test]
fn flush_waits_for_everything_submitted_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for id in 1..=500 {
        store.submit(vec![put(id, "m", 1), enqueue(1, id, id)], None);
    }
    store.flush().unwrap();
    assert_eq!(store.read_entries(1, 0, 1000).unwrap().len(), 500);
    assert!(store.read_message(sep(500)).unwrap().is_some());
}

#[test]
fn dropping_the_store_commits_what_was_submitted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.submit(vec![put(1, "last words", 1), enqueue(1, 0, 1)], None);
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store.read_message(sep(1)).unwrap(),
        Some(message("last words"))
    );
}

#[test]
fn a_blocking_call_inside_a_callback_is_an_error_not_a_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (tx, rx) = mpsc::channel();
    let inner = store.clone();
    store.submit(
        vec![],
        Some(Box::new(move |_| {
            tx.send(inner.flush()).unwrap();
        })),
    );
    assert!(matches!(
        rx.recv().unwrap(),
        Err(StorageError::OnWriterThread { .. })
    ));
}

#[test]
fn a_locked_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let second = Store::open(dir.path(), StoreOptions::default());
    let error = second.expect_err("second open must fail");
    assert!(matches!(error, StorageError::Locked { .. }), "{error}");
    assert!(error.to_string().contains("locked"));
}

#[test]
fn a_damaged_directory_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write(&store, vec![put(1, "a", 1), enqueue(1, 0, 1)]).unwrap();
    store.put_meta(MetaKind::Vhost, b"/", b"v").unwrap();
    drop(store);

    fn scribble(path: &Path) {
        for entry in std::fs::read_dir(path).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                scribble(&path);
            } else if path.file_name().is_some_and(|name| name != "lock") {
                let len = std::fs::metadata(&path).unwrap().len().max(64) as usize;
                let garbage: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8).collect();
                std::fs::write(&path, garbage).unwrap();
            }
        }
    }
    scribble(dir.path());

    let error = Store::open(dir.path(), StoreOptions::default())
        .expect_err("a damaged store must not open");
    let text = error.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
}

#[test]
fn disk_free_reports_the_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(store.disk_free().unwrap() > 0);
}

#[test]
fn a_commit_interval_still_commits_everything() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        commit_interval: std::time::Duration::from_millis(2),
    };
    let store = Store::open(dir.path(), options).unwrap();
    for id in 1..=50 {
        store.submit(vec![put(id, "m", 1), enqueue(1, id, id)], None);
    }
    write(&store, vec![remove(1, 1, 1)]).unwrap();
    assert_eq!(store.read_entries(1, 0, 100).unwrap().len(), 49);
    assert_eq!(store.read_message(sep(1)).unwrap(), None);
}

// --- Inline messages: one queue holds them, stored inside the index entry -------------------

fn enqueue_inline(queue: u64, seq: u64, id: MessageId, body: &str) -> WriteOp {
    assert_eq!(Placement::of(id), Placement::Inline);
    WriteOp::Enqueue {
        queue,
        entry: IndexEntry {
            message_id: id,
            ..entry(seq, 0)
        },
        message: Some(message(body)),
    }
}

fn bodies(store: &Store, queue: u64) -> Vec<(u64, Option<Bytes>)> {
    store
        .read_messages(queue, 0, 100)
        .unwrap()
        .into_iter()
        .map(|QueuedMessage { entry, message }| (entry.seq, message.map(|m| m.body)))
        .collect()
}

fn some(body: &'static str) -> Option<Bytes> {
    Some(Bytes::from_static(body.as_bytes()))
}

#[test]
fn placement_follows_references_and_size_and_is_carried_by_the_id() {
    assert_eq!(Placement::for_message(1, 100), Placement::Inline);
    assert_eq!(Placement::for_message(2, 100), Placement::Separate);
    assert_eq!(Placement::for_message(1, 1 << 20), Placement::Separate);
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let inline = store.next_message_id(Placement::Inline);
    let separate = store.next_message_id(Placement::Separate);
    assert_eq!(Placement::of(inline), Placement::Inline);
    assert_eq!(Placement::of(separate), Placement::Separate);
    assert_ne!(
        inline & !SEPARATE_MESSAGE_BIT,
        separate & !SEPARATE_MESSAGE_BIT
    );
}

#[test]
fn an_inline_message_reads_back_with_its_entry_and_goes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = store.next_message_id(Placement::Inline);
    let b = store.next_message_id(Placement::Inline);
    write(
        &store,
        vec![
            enqueue_inline(4, 0, a, "first"),
            put(7, "shared", 1),
            enqueue(4, 1, 7),
            enqueue_inline(4, 2, b, "third"),
        ],
    )
    .unwrap();
    assert_eq!(
        bodies(&store, 4),
        [(0, some("first")), (1, some("shared")), (2, some("third"))]
    );
    // Only the separate message is a record of its own.
    assert_eq!(store.read_message(a).unwrap(), None);
    assert_eq!(seqs(&store.read_entries(4, 0, 10).unwrap()), [0, 1, 2]);

    write(&store, vec![remove(4, 0, a), remove(4, 1, 7)]).unwrap();
    assert_eq!(bodies(&store, 4), [(2, some("third"))]);
    assert_eq!(store.read_message(sep(7)).unwrap(), None);
}

#[test]
fn an_inline_message_survives_a_clean_close_and_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let id = store.next_message_id(Placement::Inline);
    write(&store, vec![enqueue_inline(2, 5, id, "kept")]).unwrap();
    store.close().unwrap();
    drop(store);

    let store = open(dir.path());
    assert_eq!(store.recovery(), Recovery::Clean);
    assert_eq!(store.take_recovered_queue(2), stats(5, 1, 6));
    assert_eq!(bodies(&store, 2), [(5, some("kept"))]);
    // Dropped without close: the next open scans, and must not take the entry for one whose
    // message is missing.
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.recovery(), Recovery::Scanned);
    assert_eq!(store.take_recovered_queue(2), stats(5, 1, 6));
    assert_eq!(bodies(&store, 2), [(5, some("kept"))]);
    assert!(store.next_message_id(Placement::Inline) > id);
}

#[test]
fn updating_an_inline_entry_keeps_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let id = store.next_message_id(Placement::Inline);
    let update = |delivery_count| WriteOp::UpdateEntry {
        queue: 1,
        entry: IndexEntry {
            message_id: id,
            delivery_count,
            delivered: true,
            ..entry(0, 0)
        },
    };
    // In the batch that enqueued it, then in a later one (read back from disk).
    write(&store, vec![enqueue_inline(1, 0, id, "body"), update(1)]).unwrap();
    write(&store, vec![update(2)]).unwrap();
    let read = store.read_messages(1, 0, 10).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].entry.delivery_count, 2);
    assert!(read[0].entry.delivered);
    assert_eq!(read[0].message, Some(message("body")));

    drop(store);
    let store = open(dir.path());
    let read = store.read_messages(1, 0, 10).unwrap();
    assert_eq!(read[0].entry.delivery_count, 2);
    assert_eq!(read[0].message, Some(message("body")));
    // An update that arrives after the entry was removed does not bring it back.
    write(&store, vec![remove(1, 0, id), update(3)]).unwrap();
    write(&store, vec![update(4)]).unwrap();
    assert!(store.read_messages(1, 0, 10).unwrap().is_empty());
}

#[test]
fn drop_queue_removes_inline_entries_on_disk_and_in_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let on_disk = store.next_message_id(Placement::Inline);
    let in_batch = store.next_message_id(Placement::Inline);
    write(&store, vec![enqueue_inline(3, 0, on_disk, "a")]).unwrap();
    write(
        &store,
        vec![
            enqueue_inline(3, 1, in_batch, "b"),
            WriteOp::DropQueue { queue: 3 },
        ],
    )
    .unwrap();
    assert!(store.read_messages(3, 0, 10).unwrap().is_empty());
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.take_recovered_queue(3), None);
}

#[test]
fn transient_inline_entries_are_dropped_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let paged = store.next_message_id(Placement::Inline);
    let kept = store.next_message_id(Placement::Inline);
    let mut transient = enqueue_inline(1, 0, paged, "paged");
    if let WriteOp::Enqueue { entry, .. } = &mut transient {
        entry.transient = true;
    }
    write(&store, vec![transient, enqueue_inline(1, 1, kept, "kept")]).unwrap();
    store.close().unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(bodies(&store, 1), [(1, some("kept"))]);
    assert_eq!(store.take_recovered_queue(1), stats(1, 1, 2));
}
