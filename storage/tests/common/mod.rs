//! Helpers shared by the store's integration tests.
#![allow(dead_code)] // each test file uses its own subset

use std::path::Path;
use std::sync::mpsc;

use bytes::Bytes;
use warren_storage::{
    IndexEntry, MessageId, SEPARATE_MESSAGE_BIT, StorageError, Store, StoreOptions, StoredMessage,
    WriteOp,
};

pub fn open(dir: &Path) -> Store {
    Store::open(dir, StoreOptions::default()).expect("open store")
}

pub fn message(body: &str) -> StoredMessage {
    StoredMessage {
        exchange: Bytes::from_static(b"amq.direct"),
        routing_key: Bytes::from_static(b"key"),
        properties: Bytes::from_static(&[0x10, 0x00, 0x02]),
        body: Bytes::copy_from_slice(body.as_bytes()),
    }
}

/// Most tests use small literal ids for separate messages: this gives them the placement bit
/// (and leaves ids that have it alone).
pub fn sep(id: MessageId) -> MessageId {
    id | SEPARATE_MESSAGE_BIT
}

pub fn entry(seq: u64, message_id: MessageId) -> IndexEntry {
    IndexEntry {
        seq,
        message_id: sep(message_id),
        delivery_count: 0,
        delivered: false,
        transient: false,
        size: 10,
        expires_at: 0,
    }
}

pub fn put(id: MessageId, body: &str, references: u32) -> WriteOp {
    WriteOp::PutMessage {
        id: sep(id),
        message: message(body),
        references,
    }
}

pub fn enqueue(queue: u64, seq: u64, message_id: MessageId) -> WriteOp {
    WriteOp::Enqueue {
        queue,
        entry: entry(seq, message_id),
        message: None,
    }
}

pub fn remove(queue: u64, seq: u64, message_id: MessageId) -> WriteOp {
    WriteOp::Remove {
        queue,
        seq,
        message_id: sep(message_id),
    }
}

/// Submits and waits for the batch's callback, returning its result.
pub fn write(store: &Store, ops: Vec<WriteOp>) -> Result<(), StorageError> {
    let (tx, rx) = mpsc::channel();
    store.submit(
        ops,
        Some(Box::new(move |result| {
            tx.send(result).unwrap();
        })),
    );
    rx.recv().unwrap()
}

pub fn seqs(entries: &[IndexEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}
