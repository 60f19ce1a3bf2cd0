//! Broker settings: the `warren` command line, each option also readable from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Warren: an AMQP 0-9-1 message broker that RabbitMQ clients use unchanged.
#[derive(Debug, Clone, Parser)]
#[command(name = "warren", version, about)]
pub struct Config {
    /// Address to accept AMQP connections on.
    #[arg(long, env = "WARREN_LISTEN", default_value = "0.0.0.0:5672")]
    pub listen: SocketAddr,

    /// Where durable state lives.
    #[arg(long, env = "WARREN_DATA_DIR", default_value = "./warren-data")]
    pub data_dir: PathBuf,

    /// Log filter, in tracing's `EnvFilter` syntax (e.g. `info,warren_broker=debug`).
    #[arg(long, env = "WARREN_LOG", default_value = "info")]
    pub log: String,

    /// Heartbeat interval offered to clients, in seconds (0 disables).
    #[arg(long, env = "WARREN_HEARTBEAT", default_value_t = 60)]
    pub heartbeat: u16,

    /// Largest frame offered to clients, in bytes.
    #[arg(long, env = "WARREN_FRAME_MAX", default_value_t = 131_072)]
    pub frame_max: u32,

    /// Most channels per connection.
    #[arg(long, env = "WARREN_CHANNEL_MAX", default_value_t = 2047)]
    pub channel_max: u16,

    /// Bytes of message bodies held in queues before publishers are blocked.
    #[arg(long, env = "WARREN_MEMORY_HIGH_WATERMARK", default_value_t = 1 << 30)]
    pub memory_high_watermark: u64,

    /// Largest message body accepted, in bytes (RabbitMQ's default is 128 MiB).
    #[arg(long, env = "WARREN_MAX_MESSAGE_SIZE", default_value_t = 128 << 20)]
    pub max_message_size: u64,

    /// Free disk (bytes) in the data directory below which publishers are blocked
    /// (RabbitMQ's default is 50 MB).
    #[arg(long, env = "WARREN_DISK_FREE_LIMIT", default_value_t = 50_000_000)]
    pub disk_free_limit: u64,

    /// How long the group commit may wait for more writes once it has some, in microseconds
    /// (0: commit at once; batches still grow under load while an fsync is in flight).
    #[arg(long, env = "WARREN_COMMIT_INTERVAL_US", default_value_t = 0)]
    pub commit_interval_us: u64,

    /// Delivery limit of quorum queues declared without `x-delivery-limit` (RabbitMQ 4: 20).
    #[arg(long, env = "WARREN_QUORUM_DELIVERY_LIMIT", default_value_t = 20)]
    pub quorum_delivery_limit: u32,

    /// How long a delivery may stay unacked before its channel is closed with 406, in
    /// milliseconds (RabbitMQ's `consumer_timeout`; per queue: `x-consumer-timeout`).
    #[arg(long, env = "WARREN_CONSUMER_TIMEOUT_MS", default_value_t = 1_800_000)]
    pub consumer_timeout_ms: u64,

    /// Let the default user `guest` log in from addresses other than loopback.
    #[arg(long, env = "WARREN_GUEST_REMOTE", default_value_t = false)]
    pub allow_guest_remote: bool,
}

impl Config {
    /// Settings for a broker in a test: an ephemeral loopback port and the given data directory.
    pub fn for_test(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.into(),
            log: "warn".into(),
            heartbeat: 60,
            frame_max: 131_072,
            channel_max: 2047,
            memory_high_watermark: 1 << 30,
            max_message_size: 128 << 20,
            disk_free_limit: 0,
            commit_interval_us: 0,
            quorum_delivery_limit: 20,
            consumer_timeout_ms: 1_800_000,
            allow_guest_remote: false,
        }
    }
}
