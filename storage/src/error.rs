//! The crate's one error type.
//!
//! Every message reads as one line and says what failed and where; nothing read from disk panics,
//! a record that does not decode is `Corrupt`.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot open the message store in {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: fjall::Error,
    },

    #[error(
        "the message store in {path} is locked: another process (or another Store) has it open"
    )]
    Locked { path: PathBuf },

    #[error("the message store in {path} is damaged and cannot be opened: {reason}")]
    Damaged { path: PathBuf, reason: String },

    #[error("storage engine error: {0}")]
    Fjall(#[from] fjall::Error),

    #[error("corrupt record in the message store: {what}")]
    Corrupt { what: String },

    /// A group commit failed; every submission of that batch gets this (the engine's error is
    /// not `Clone`, so it travels as text).
    #[error("write batch was not committed: {reason}")]
    CommitFailed { reason: String },

    #[error("the storage writer thread has stopped")]
    WriterStopped,

    /// A blocking call from an `on_durable` callback would wait on the thread running it.
    #[error(
        "Store::{call} called from an on_durable callback (the writer thread): it would deadlock"
    )]
    OnWriterThread { call: &'static str },

    #[error("commit log {path}: {source}")]
    CommitLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot read free disk space of {path}: {source}")]
    DiskFree {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        Self::Corrupt { what: what.into() }
    }
}
