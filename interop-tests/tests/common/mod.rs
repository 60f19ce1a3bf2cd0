//! Shared helpers for the interop tests: a broker on an ephemeral port with a temporary data
//! directory, lapin connections to it, bounded waits, and reply-code extraction from lapin
//! errors. The raw-socket client lives in [`raw`].
//!
//! Every wait on the broker goes through [`within`], so a broken broker fails a test after
//! [`TIMEOUT`] instead of hanging it. Timeouts only bound waits; they never decide a result.

#![allow(dead_code)]

pub mod raw;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_lite::{Stream, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPError, AMQPErrorKind};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ErrorKind, Event,
};
use tempfile::TempDir;
use warren_broker::{Broker, Config};

/// Upper bound for any single wait on the broker.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How long to watch for something that must *not* happen (an extra delivery past a prefetch
/// limit, a message published inside an open transaction). A slow broker can only make such a
/// check pass wrongly, never fail wrongly.
pub const QUIET: Duration = Duration::from_millis(300);

/// AMQP reply codes used by the assertions.
pub mod code {
    pub const REPLY_SUCCESS: u16 = 200;
    pub const NO_ROUTE: u16 = 312;
    pub const CONNECTION_FORCED: u16 = 320;
    pub const ACCESS_REFUSED: u16 = 403;
    pub const NOT_FOUND: u16 = 404;
    pub const RESOURCE_LOCKED: u16 = 405;
    pub const PRECONDITION_FAILED: u16 = 406;
    pub const FRAME_ERROR: u16 = 501;
    pub const SYNTAX_ERROR: u16 = 502;
    pub const COMMAND_INVALID: u16 = 503;
    pub const CHANNEL_ERROR: u16 = 504;
    pub const UNEXPECTED_FRAME: u16 = 505;
    pub const NOT_ALLOWED: u16 = 530;
    pub const NOT_IMPLEMENTED: u16 = 540;
}

/// A running broker and the temporary directory it keeps its data in.
pub struct TestBroker {
    /// `None` once shut down.
    pub broker: Option<Broker>,
    /// The settings it was started with, reused by [`TestBroker::restart`].
    config: Config,
    /// Kept alive for as long as the broker runs; removed on drop.
    _dir: TempDir,
}

impl TestBroker {
    /// A broker with the test defaults of [`Config::for_test`].
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A broker whose test config is adjusted by `tweak` first.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("create temp data dir");
        let mut config = Config::for_test(dir.path());
        tweak(&mut config);
        let broker = within("broker start", warren_broker::start(config.clone()))
            .await
            .expect("broker failed to start");
        Self {
            broker: Some(broker),
            config,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.broker.as_ref().expect("broker shut down").local_addr()
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`
    pub fn uri(&self) -> String {
        self.uri_for("guest", "guest", "%2f")
    }

    pub fn uri_for(&self, user: &str, password: &str, vhost: &str) -> String {
        format!(
            "amqp://{user}:{password}@127.0.0.1:{}/{vhost}",
            self.addr().port()
        )
    }

    /// A new lapin connection as guest to vhost `/`.
    pub async fn connect(&self) -> Connection {
        within(
            "lapin connect",
            Connection::connect(&self.uri(), ConnectionProperties::default()),
        )
        .await
        .expect("lapin connect")
    }

    /// A new connection and a channel on it.
    pub async fn channel(&self) -> (Connection, Channel) {
        let conn = self.connect().await;
        let ch = open_channel(&conn).await;
        (conn, ch)
    }

    /// Shuts down and starts again on the same data directory (on a new ephemeral port).
    pub async fn restart(&mut self) {
        self.shutdown().await;
        let broker = within("broker restart", warren_broker::start(self.config.clone()))
            .await
            .expect("broker failed to restart");
        self.broker = Some(broker);
    }

    /// Graceful shutdown (connections are closed with 320 CONNECTION_FORCED).
    pub async fn shutdown(&mut self) {
        if let Some(broker) = self.broker.take() {
            within("broker shutdown", broker.shutdown()).await;
        }
    }
}

/// A broker with default test settings and one connected lapin client.
pub async fn setup() -> (TestBroker, Connection) {
    let broker = TestBroker::start().await;
    let conn = broker.connect().await;
    (broker, conn)
}

/// A broker, a connection and one channel.
pub async fn setup_channel() -> (TestBroker, Connection, Channel) {
    let (broker, conn) = setup().await;
    let ch = open_channel(&conn).await;
    (broker, conn, ch)
}

pub async fn open_channel(conn: &Connection) -> Channel {
    within("channel.open", conn.create_channel())
        .await
        .expect("channel.open")
}

/// Awaits `fut`, failing the test if it takes longer than [`TIMEOUT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {TIMEOUT:?} waiting for {what}"),
    }
}

/// The AMQP error a lapin error carries, if the broker sent one.
pub fn amqp_error(err: &lapin::Error) -> Option<&AMQPError> {
    match err.kind() {
        ErrorKind::ProtocolError(e) => Some(e),
        _ => None,
    }
}

/// The reply code of a lapin error that came from a broker close.
pub fn reply_code(err: &lapin::Error) -> Option<u16> {
    amqp_error(err).map(|e| e.get_id())
}

/// Asserts that `res` failed with a broker close carrying `code`.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(res: lapin::Result<T>, code: u16) -> lapin::Error {
    match res {
        Ok(v) => panic!("expected an error with reply code {code}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(
                reply_code(&e),
                Some(code),
                "expected reply code {code}, got error {e:?}"
            );
            e
        }
    }
}

/// Whether the reply code is a connection-level one in the AMQP spec's table. amq-protocol
/// classifies by code, not by the frame that carried it, so this is only meaningful for codes
/// whose level is fixed (e.g. 404 soft, 540 hard).
pub fn is_hard(e: &AMQPError) -> bool {
    matches!(e.kind(), AMQPErrorKind::Hard(_))
}

/// Waits for the next broker-sent close (channel or connection) reported on a connection's
/// event stream. Subscribe with `conn.events_listener()` *before* provoking the error.
pub async fn next_close(events: &mut (impl Stream<Item = Event> + Unpin)) -> AMQPError {
    within("a close from the broker", async {
        loop {
            match events.next().await {
                Some(Event::Error(e)) => {
                    if let Some(err) = amqp_error(&e) {
                        return err.clone();
                    }
                }
                Some(_) => {}
                None => panic!("connection event stream ended without an AMQP error"),
            }
        }
    })
    .await
}

/// Waits for a broker `channel.close` with `code` (a soft error).
pub async fn expect_channel_close(events: &mut (impl Stream<Item = Event> + Unpin), code: u16) {
    let err = next_close(events).await;
    assert_eq!(err.get_id(), code, "unexpected close: {err:?}");
    assert!(!is_hard(&err), "expected a channel close, got {err:?}");
}

/// Waits for a broker `connection.close` with `code` (a hard error).
pub async fn expect_connection_close(events: &mut (impl Stream<Item = Event> + Unpin), code: u16) {
    let err = next_close(events).await;
    assert_eq!(err.get_id(), code, "unexpected close: {err:?}");
    assert!(is_hard(&err), "expected a connection close, got {err:?}");
}

/// Declares a non-durable, non-exclusive queue with default arguments.
pub async fn declare_queue(ch: &Channel, name: &str) -> lapin::Queue {
    within(
        "queue.declare",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.declare")
}

/// Message count of a queue, by passive declare.
pub async fn message_count(ch: &Channel, name: &str) -> u32 {
    within(
        "passive queue.declare",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive queue.declare")
    .message_count()
}

/// Publishes `body` to `exchange` with `routing_key` and no properties.
pub async fn publish(ch: &Channel, exchange: &str, routing_key: &str, body: &[u8]) {
    within(
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            Default::default(),
            body,
            BasicProperties::default(),
        ),
    )
    .await
    .expect("basic.publish");
}

/// Starts a consumer (acks required) with a server-generated tag.
pub async fn consume(ch: &Channel, queue: &str) -> Consumer {
    consume_with(
        ch,
        queue,
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
}

pub async fn consume_with(
    ch: &Channel,
    queue: &str,
    options: BasicConsumeOptions,
    arguments: FieldTable,
) -> Consumer {
    within(
        "basic.consume",
        ch.basic_consume(queue.into(), "".into(), options, arguments),
    )
    .await
    .expect("basic.consume")
}

/// The next delivery of a consumer; fails if none arrives within [`TIMEOUT`] or the consumer
/// ends.
pub async fn next_delivery(consumer: &mut Consumer) -> Delivery {
    within("a delivery", consumer.next())
        .await
        .expect("consumer ended")
        .expect("consumer error")
}

/// Asserts that no delivery arrives within [`QUIET`].
pub async fn assert_no_delivery(consumer: &mut Consumer) {
    if let Ok(item) = tokio::time::timeout(QUIET, consumer.next()).await {
        match item {
            Some(Ok(d)) => panic!(
                "unexpected delivery: tag {} body {:?}",
                d.delivery_tag,
                String::from_utf8_lossy(&d.data)
            ),
            Some(Err(e)) => panic!("consumer error: {e:?}"),
            None => panic!("consumer ended"),
        }
    }
}

/// Whether a consumer stream ends (the broker cancelled it) within [`TIMEOUT`].
pub async fn consumer_ends(consumer: &mut Consumer) -> bool {
    within("consumer end", async {
        loop {
            match consumer.next().await {
                None => return true,
                Some(Ok(_)) => continue,
                Some(Err(_)) => return false,
            }
        }
    })
    .await
}

/// A unique-enough name for a test entity.
pub fn name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// The body of a delivery as text.
pub fn text(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}
