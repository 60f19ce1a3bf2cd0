//! Start-up: rebuilding durable topology and queues from the store.
//!
//! Queues are rebuilt from the message index alone (positions, delivery counts, flags): no
//! body is read here. Bodies are read back in batches as consumers reach them.

use std::sync::Arc;
use std::time::Instant;

use warren_storage::{MetaKind, QueueId, StorageError, Store};

use super::Durability;
use super::records::{BindingRecord, ExchangeRecord, QueueRecord};
use crate::memory::MemoryMonitor;
use crate::names::QueueName;
use crate::queue::{
    DiskRun, Queue, QueueArguments, QueueDefaults, QueuePolicy, QueueSettings, QueueStore,
};
use crate::vhost::VHost;

/// Index entries read per step while counting a queue.
const SCAN_CHUNK: usize = 65_536;

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
        let queue_started = Instant::now();
        let (disk, next_seq) = scan_index(&store, record.id)?;
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
        tracing::info!(
            queue = %record.name,
            messages,
            elapsed_ms = queue_started.elapsed().as_millis() as u64,
            "recovered queue"
        );
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

/// Counts a queue's stored entries and finds where they start and end.
fn scan_index(store: &Store, queue: QueueId) -> Result<(Option<DiskRun>, u64), StorageError> {
    let mut first = None;
    let mut count = 0u64;
    let mut bytes = 0u64;
    let mut next = 0u64;
    loop {
        let chunk = store.read_entries(queue, next, SCAN_CHUNK)?;
        let Some(last) = chunk.last() else {
            break;
        };
        first = first.or(chunk.first().map(|e| e.seq));
        count += chunk.len() as u64;
        bytes += chunk.iter().map(|e| u64::from(e.size)).sum::<u64>();
        next = last.seq + 1;
        if chunk.len() < SCAN_CHUNK {
            break;
        }
    }
    let disk = first.map(|first| DiskRun {
        next: first,
        count,
        bytes,
    });
    Ok((disk, next))
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
