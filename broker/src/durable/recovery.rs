//! Start-up: rebuilding durable topology and queues from the store.
//!
//! Queues are rebuilt from the extents the store found when it opened (first and next seq,
//! count, bytes): neither the index nor any body is read here. Entries and bodies are read
//! back in batches as consumers reach them.

use std::sync::Arc;
use std::time::Instant;

use warren_storage::{MetaKind, StorageError, Store};

use super::Durability;
use super::records::{BindingRecord, ExchangeRecord, QueueRecord};
use crate::memory::MemoryMonitor;
use crate::names::QueueName;
use crate::queue::{
    DiskRun, Queue, QueueArguments, QueueDefaults, QueuePolicy, QueueSettings, QueueStore,
};
use crate::vhost::VHost;

/// Rebuilds the default vhost from the store.
pub fn recover(
    store: Store,
    memory: Arc<MemoryMonitor>,
    defaults: QueueDefaults,
) -> Result<Arc<VHost>, StorageError> {
    let started = Instant::now();
    let queue_records: Vec<QueueRecord> = decode_all(&store, MetaKind::Queue, QueueRecord::decode)?;
    let next_queue_id = queue_records.iter().map(|q| q.id).max().unwrap_or(0) + 1;
    let durability = Durability::new(store.clone(), next_queue_id);
    let vhost = Arc::new(VHost::new(
        "/",
        memory.clone(),
        Some(durability.clone()),
        defaults,
    ));

    let exchanges = decode_all(&store, MetaKind::Exchange, ExchangeRecord::decode)?;
    let exchange_count = exchanges.len();
    for record in exchanges.into_iter().filter(|r| r.vhost == "/") {
        vhost.restore_exchange(record);
    }

    let mut total_messages = 0u64;
    for record in queue_records.into_iter().filter(|r| r.vhost == "/") {
        let stats = store.take_recovered_queue(record.id);
        let disk = stats.map(|s| DiskRun {
            next: s.first,
            count: s.count,
            bytes: s.bytes,
        });
        let next_seq = stats.map_or(0, |s| s.next);
        let messages = disk.map_or(0, |d| d.count);
        total_messages += messages;
        let arguments = QueueArguments::parse(&record.arguments, &record.name, "/")
            .unwrap_or_else(|error| {
                tracing::warn!(queue = %record.name, %error, "stored queue arguments no longer valid; using defaults");
                QueueArguments::default()
            });
        let policy = QueuePolicy::resolve(arguments, &defaults);
        let settings = QueueSettings {
            durable: true,
            exclusive_owner: None,
            auto_delete: record.auto_delete,
            arguments: record.arguments,
            policy,
        };
        let queue = Queue::recovered(
            QueueName::new(&record.name),
            Arc::clone(&vhost.name),
            settings,
            memory.clone(),
            Some(QueueStore {
                store: store.clone(),
                id: record.id,
            }),
            disk,
            next_seq,
        );
        tracing::info!(queue = %record.name, messages, "recovered queue");
        vhost.restore_queue(Arc::new(queue));
    }

    let bindings = decode_all(&store, MetaKind::Binding, |k, _| BindingRecord::decode(k))?;
    let mut binding_count = 0;
    for record in bindings.iter().filter(|r| r.vhost == "/") {
        if vhost.restore_binding(record) {
            binding_count += 1;
        } else {
            tracing::warn!(source = %record.source, target = ?record.target, "dropping stored binding whose end no longer exists");
            durability.delete(MetaKind::Binding, &record.key());
        }
    }
    tracing::info!(
        exchanges = exchange_count,
        queues = vhost.queues().len(),
        bindings = binding_count,
        messages = total_messages,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovery complete"
    );
    Ok(vhost)
}

fn decode_all<T, E: std::fmt::Display>(
    store: &Store,
    kind: MetaKind,
    decode: impl Fn(&[u8], &[u8]) -> Result<T, E>,
) -> Result<Vec<T>, StorageError> {
    let mut out = Vec::new();
    for (key, value) in store.load_meta(kind)? {
        match decode(&key, &value) {
            Ok(record) => out.push(record),
            Err(error) => tracing::error!(%error, ?kind, "skipping unreadable metadata record"),
        }
    }
    Ok(out)
}
