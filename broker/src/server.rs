//! The listener and the broker-wide state every connection shares; graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use warren_storage::DataDir;

use crate::auth::UserStore;
use crate::config::Config;
use crate::error::BrokerError;
use crate::memory::MemoryMonitor;
use crate::queue::ConnectionId;
use crate::vhost::VHost;

/// How long shutdown waits for connections to finish their close handshakes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// State shared by all connections.
pub struct BrokerState {
    pub config: Config,
    pub users: UserStore,
    pub memory: Arc<MemoryMonitor>,
    vhosts: DashMap<String, Arc<VHost>>,
    next_connection_id: AtomicU64,
    #[allow(dead_code)]
    data_dir: DataDir,
}

impl BrokerState {
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).map(|v| Arc::clone(v.value()))
    }

    pub fn next_connection_id(&self) -> ConnectionId {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
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

    /// Bytes of messages currently held in queues.
    pub fn memory_used(&self) -> u64 {
        self.state.memory.used()
    }

    /// Stops accepting, closes every connection with 320 CONNECTION_FORCED, and waits for
    /// them to finish.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.accept_task.await;
    }
}

/// Binds the listener and starts accepting connections.
pub async fn start(config: Config) -> Result<Broker, BrokerError> {
    let data_dir = DataDir::open(&config.data_dir)?;
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
    let vhosts = DashMap::new();
    vhosts.insert(
        "/".to_string(),
        Arc::new(VHost::new("/", Arc::clone(&memory))),
    );
    let state = Arc::new(BrokerState {
        users: UserStore::with_default_user(config.allow_guest_remote),
        config,
        memory,
        vhosts,
        next_connection_id: AtomicU64::new(1),
        data_dir,
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
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
