//! The listener and the broker-wide state every connection shares; graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::hash::DashMap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use warren_storage::{DataDir, Store, StoreOptions};

use crate::auth::UserStore;
use crate::config::Config;
use crate::connection::outbox::Outbox;
use crate::durable::StoreBatch;
use crate::error::BrokerError;
use crate::memory::MemoryMonitor;
use crate::queue::{ConnectionId, QueueDefaults};
use crate::vhost::{RouteScratch, VHost};

/// How long shutdown waits for connections to finish their close handshakes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often queues page out bodies written since their last publish.
const QUEUE_MAINTENANCE_INTERVAL: Duration = Duration::from_millis(250);
/// Rounds of dead-lettering per maintenance pass (a dead letter may cause another).
const MAX_DEAD_LETTER_ROUNDS: usize = 8;
/// How often free disk is checked.
const DISK_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// State shared by all connections.
pub struct BrokerState {
    pub config: Config,
    pub users: UserStore,
    pub memory: Arc<MemoryMonitor>,
    vhosts: DashMap<String, Arc<VHost>>,
    next_connection_id: AtomicU64,
    store: Store,
    /// Free bytes below which the disk alarm is set; changeable at run time.
    disk_free_limit: AtomicU64,
}

impl BrokerState {
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).map(|v| Arc::clone(v.value()))
    }

    pub fn next_connection_id(&self) -> ConnectionId {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn store(&self) -> Option<Store> {
        Some(self.store.clone())
    }
}

/// A running broker.
pub struct Broker {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    accept_task: tokio::task::JoinHandle<()>,
    state: Arc<BrokerState>,
}

impl Broker {
    /// The address the broker accepts connections on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Bytes of message bodies currently held in memory.
    pub fn memory_used(&self) -> u64 {
        self.state.memory.used()
    }

    /// Changes the free-disk limit (as `rabbitmqctl set_disk_free_limit` does); the next
    /// check, within a second, applies it.
    pub fn set_disk_free_limit(&self, bytes: u64) {
        self.state.disk_free_limit.store(bytes, Ordering::Relaxed);
    }

    /// Group-commit counters of the store.
    pub fn store_stats(&self) -> warren_storage::StoreStats {
        self.state.store.stats()
    }

    /// Stops accepting, closes every connection with 320 CONNECTION_FORCED, waits for them
    /// to finish, and closes the store cleanly.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.accept_task.await;
        // A clean close makes the next start quick (no scan, nothing to replay).
        let store = self.state.store.clone();
        match tokio::task::spawn_blocking(move || store.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "closing the store failed"),
            Err(error) => tracing::error!(%error, "closing the store did not finish"),
        }
    }
}

/// Binds the listener and starts accepting connections.
pub async fn start(config: Config) -> Result<Broker, BrokerError> {
    let data_dir = DataDir::open(&config.data_dir)?;
    let options = StoreOptions {
        commit_interval: Duration::from_micros(config.commit_interval_us),
    };
    let store_path = data_dir.store_path();
    let store = tokio::task::spawn_blocking(move || Store::open(&store_path, options))
        .await
        .map_err(|e| BrokerError::Startup(format!("store open did not finish: {e}")))??;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| BrokerError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| BrokerError::Bind {
        addr: config.listen,
        source,
    })?;
    let memory = Arc::new(MemoryMonitor::new(config.memory_high_watermark));
    let recovered = {
        let store = store.clone();
        let memory = Arc::clone(&memory);
        let defaults = QueueDefaults {
            quorum_delivery_limit: config.quorum_delivery_limit,
            consumer_timeout_ms: config.consumer_timeout_ms,
        };
        tokio::task::spawn_blocking(move || {
            crate::durable::recovery::recover(store, memory, defaults)
        })
        .await
        .map_err(|e| BrokerError::Startup(format!("recovery did not finish: {e}")))??
    };
    let vhosts = DashMap::default();
    vhosts.insert("/".to_string(), recovered);
    let state = Arc::new(BrokerState {
        users: UserStore::with_default_user(config.allow_guest_remote),
        disk_free_limit: AtomicU64::new(config.disk_free_limit),
        config,
        memory,
        vhosts,
        next_connection_id: AtomicU64::new(1),
        store,
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(watch_disk(Arc::clone(&state), shutdown_rx.clone()));
    tokio::spawn(maintain_queues(Arc::clone(&state), shutdown_rx.clone()));
    let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&state), shutdown_rx));
    tracing::info!(address = %local_addr, data_dir = %state.config.data_dir.display(), "Warren ready to accept AMQP connections");
    Ok(Broker {
        local_addr,
        shutdown: shutdown_tx,
        accept_task,
        state,
    })
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<BrokerState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(crate::connection::serve(
                        stream,
                        peer,
                        Arc::clone(&state),
                        shutdown.clone(),
                    ));
                }
                Err(error) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::error!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let open = connections.len();
    tracing::info!(connections = open, "shutting down: closing connections");
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    tracing::info!("shutdown complete");
}

/// Sets and clears the disk alarm from the free space of the data directory's filesystem.
async fn watch_disk(state: Arc<BrokerState>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(DISK_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let limit = state.disk_free_limit.load(Ordering::Relaxed);
        match state.store.disk_free() {
            Ok(free) => state.memory.set_disk_alarm(free < limit),
            Err(error) => tracing::warn!(%error, "cannot read free disk space"),
        }
    }
}

/// Periodic queue housekeeping: pages out bodies whose writes completed after the last
/// publish to their queue.
async fn maintain_queues(state: Arc<BrokerState>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(QUEUE_MAINTENANCE_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let now = crate::message::now_ms();
        let mut batch = StoreBatch::new(Some(state.store.clone()), Arc::new(Outbox::default()));
        let mut scratch = RouteScratch::default();
        for vhost in state.vhosts.iter() {
            for queue in vhost.queues() {
                if queue.tick(now) {
                    tracing::info!(queue = %queue.name, "deleting queue unused for longer than its x-expires");
                    vhost.remove_queue_if_present(&queue);
                    continue;
                }
                let letters = queue.take_dead_letters();
                crate::queue::dead_letter(vhost.value(), &queue, letters, &mut batch, &mut scratch);
            }
            // Dead letters may expire or overflow in turn; a few rounds settle them.
            for _ in 0..MAX_DEAD_LETTER_ROUNDS {
                if !batch.has_pending() {
                    break;
                }
                batch.flush();
                let mut touched = Vec::new();
                batch.take_touched(&mut touched);
                for queue in touched {
                    let letters = queue.take_dead_letters();
                    crate::queue::dead_letter(
                        vhost.value(),
                        &queue,
                        letters,
                        &mut batch,
                        &mut scratch,
                    );
                }
            }
            batch.flush();
        }
    }
}
