//! The commit log in front of fjall, seen through the store's API: what a commit wrote is
//! readable at once, survives a crash (a store dropped without `close`), and moves to fjall at
//! checkpoints without changing what reads return.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use warren_storage::{Recovery, StoredMessage, WriteOp};

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("commit-") && name.ends_with(".log")
        })
        .collect();
    files.sort();
    files
}

fn big(id: u64) -> WriteOp {
    WriteOp::PutMessage {
        id: sep(id),
        message: StoredMessage {
            body: Bytes::from(vec![id as u8; 1 << 20]),
            ..message("")
        },
        references: 1,
    }
}

/// Messages 1 and 2 in queue 1 at seqs 1 and 2, in one commit.
fn write_one_and_two(store: &warren_storage::Store) {
    let ops = vec![
        put(1, "one", 1),
        enqueue(1, 1, 1),
        put(2, "two", 1),
        enqueue(1, 2, 2),
    ];
    write(store, ops).unwrap();
}

#[test]
fn what_a_commit_wrote_is_read_back_before_any_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write_one_and_two(&store);
    write(&store, vec![remove(1, 1, 1)]).unwrap();

    assert_eq!(store.stats().checkpoints, 0);
    assert_eq!(seqs(&store.read_entries(1, 0, 10).unwrap()), vec![2]);
    assert_eq!(store.read_message(sep(1)).unwrap(), None);
    assert_eq!(store.read_message(sep(2)).unwrap(), Some(message("two")));
    let files = log_files(dir.path());
    assert_eq!(files.len(), 1);
    assert!(std::fs::metadata(&files[0]).unwrap().len() > 0);
}

#[test]
fn commits_in_the_log_survive_a_crash_and_the_log_is_gone_after_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write_one_and_two(&store);
    let mut delivered = entry(2, 2);
    delivered.delivered = true;
    delivered.delivery_count = 1;
    write(
        &store,
        vec![
            remove(1, 1, 1),
            WriteOp::UpdateEntry {
                queue: 1,
                entry: delivered,
            },
        ],
    )
    .unwrap();
    drop(store);
    assert!(!log_files(dir.path()).is_empty());

    let store = open(dir.path());
    assert_eq!(store.recovery(), Recovery::Scanned);
    assert_eq!(store.read_entries(1, 0, 10).unwrap(), vec![delivered]);
    assert_eq!(store.read_message(sep(1)).unwrap(), None);
    assert_eq!(store.read_message(sep(2)).unwrap(), Some(message("two")));
    assert!(
        log_files(dir.path()).is_empty(),
        "replayed into fjall and removed"
    );
}

#[test]
fn a_commit_cut_short_at_the_end_of_the_log_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write(&store, vec![put(1, "one", 1), enqueue(1, 1, 1)]).unwrap();
    write(&store, vec![put(2, "two", 1), enqueue(1, 2, 2)]).unwrap();
    drop(store);
    let file = log_files(dir.path()).pop().unwrap();
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    let store = open(dir.path());
    assert_eq!(seqs(&store.read_entries(1, 0, 10).unwrap()), vec![1]);
    assert_eq!(store.read_message(sep(1)).unwrap(), Some(message("one")));
    assert_eq!(store.read_message(sep(2)).unwrap(), None);
}

#[test]
fn a_checkpoint_moves_the_log_into_fjall_and_deletions_after_it_still_reach_fjall() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // 20 MiB of bodies: past the overlay's limit, so this commit is followed by a checkpoint.
    let mut ops = Vec::new();
    for id in 1..=20 {
        ops.push(big(id));
        ops.push(enqueue(1, id, id));
    }
    write(&store, ops).unwrap();
    // Barriers complete in order: once this one has, the checkpoint after the big commit ran.
    store.flush().unwrap();
    assert!(store.stats().checkpoints >= 1);
    let before = log_files(dir.path());
    assert!(
        before
            .iter()
            .all(|f| std::fs::metadata(f).unwrap().len() == 0)
    );

    // Entries now in fjall, removed through the log; one more added to the log.
    write(
        &store,
        vec![
            remove(1, 1, 1),
            remove(1, 2, 2),
            put(30, "thirty", 1),
            enqueue(1, 30, 30),
        ],
    )
    .unwrap();
    let expected: Vec<u64> = (3..=20).chain([30]).collect();
    assert_eq!(seqs(&store.read_entries(1, 0, 100).unwrap()), expected);
    assert_eq!(
        seqs(&store.read_entries(1, 15, 3).unwrap()),
        vec![15, 16, 17]
    );
    let tail = store.read_messages(1, 20, 5).unwrap();
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[1].message, Some(message("thirty")));
    assert_eq!(store.read_message(sep(1)).unwrap(), None);
    drop(store);

    let store = open(dir.path());
    assert_eq!(seqs(&store.read_entries(1, 0, 100).unwrap()), expected);
    assert_eq!(store.read_message(sep(2)).unwrap(), None);
    assert_eq!(
        store.read_message(sep(3)).unwrap().unwrap().body.len(),
        1 << 20
    );
    assert_eq!(
        store.read_message(sep(30)).unwrap(),
        Some(message("thirty"))
    );
}

#[test]
fn a_queue_dropped_with_entries_in_both_the_log_and_fjall_loses_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    write_one_and_two(&store);
    store.close().unwrap();
    drop(store);

    let store = open(dir.path());
    write(&store, vec![put(3, "three", 1), enqueue(1, 3, 3)]).unwrap();
    write(&store, vec![WriteOp::DropQueue { queue: 1 }]).unwrap();
    assert!(store.read_entries(1, 0, 10).unwrap().is_empty());
    for id in 1..=3 {
        assert_eq!(store.read_message(sep(id)).unwrap(), None, "message {id}");
    }
    drop(store);

    let store = open(dir.path());
    assert!(store.read_entries(1, 0, 10).unwrap().is_empty());
    assert_eq!(store.read_message(sep(3)).unwrap(), None);
}

/// Reading a queue's separate messages looks each one up in the overlay while the queue scan
/// already holds the overlay's read lock: taken twice on one thread, that deadlocked as soon
/// as the writer queued for the write lock in between.
#[test]
fn reads_of_separate_messages_keep_going_while_commits_change_the_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut ops = Vec::new();
    for id in 1..=100 {
        ops.push(put(id, "body", 1));
        ops.push(enqueue(1, id, id));
    }
    write(&store, ops).unwrap();

    let reader = store.clone();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..2000 {
            let read = reader.read_messages(1, 0, 100).unwrap();
            assert_eq!(read.len(), 100);
            assert!(read.iter().all(|m| m.message == Some(message("body"))));
        }
        done.send(()).unwrap();
    });
    let writes_done = done_writing(store);
    // Generous: this only turns a deadlock into a failure instead of a hung test run.
    let limit = std::time::Duration::from_secs(120);
    finished
        .recv_timeout(limit)
        .expect("the reader finished (no deadlock)");
    writes_done
        .recv_timeout(limit)
        .expect("the commits finished (no deadlock)");
}

fn done_writing(store: warren_storage::Store) -> std::sync::mpsc::Receiver<()> {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for id in 1000..1500 {
            write(&store, vec![put(id, "other", 1), enqueue(2, id, id)]).unwrap();
        }
        done.send(()).unwrap();
    });
    finished
}
