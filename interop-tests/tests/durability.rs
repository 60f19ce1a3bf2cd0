//! Durability, observed through the protocol: the real `warren` binary runs as a child
//! process on a temporary data directory, is stopped (SIGTERM) or killed (SIGKILL), started
//! again on the same directory, and inspected with lapin.

mod common;

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{TIMEOUT, assert_code, code, within};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// The `warren` binary of this build, built once if needed.
fn warren_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        // target/<profile>/deps/<this test> -> target/<profile>/warren
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable lives in target/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target directory");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "-q", "-p", "warren-broker", "--bin", "warren"])
            .arg("--target-dir")
            .arg(target_dir);
        if release {
            build.arg("--release");
        }
        let status = build
            .status()
            .expect("run cargo build for the warren binary");
        assert!(status.success(), "building the warren binary failed");
        profile_dir.join("warren")
    })
}

/// A `warren` child process on a data directory that outlives it.
struct Warren {
    child: Option<Child>,
    port: u16,
    data_dir: PathBuf,
}

impl Warren {
    async fn start(data_dir: &Path) -> Self {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("probe port");
            probe.local_addr().expect("probe addr").port()
        };
        let child = Command::new(warren_binary())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--log")
            .arg("warn")
            .arg("--disk-free-limit")
            .arg("0")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn warren");
        let warren = Self {
            child: Some(child),
            port,
            data_dir: data_dir.to_path_buf(),
        };
        within("warren accepting connections", async {
            loop {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        warren
    }

    fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    async fn connect(&self) -> Connection {
        within(
            "lapin connect",
            Connection::connect(&self.uri(), ConnectionProperties::default()),
        )
        .await
        .expect("connect to warren")
    }

    async fn channel(&self) -> (Connection, Channel) {
        let conn = self.connect().await;
        let ch = within("channel open", conn.create_channel())
            .await
            .expect("open channel");
        (conn, ch)
    }

    /// SIGTERM, then wait for a clean exit.
    async fn stop(mut self) -> PathBuf {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("send SIGTERM");
        assert!(status.success());
        let exit = within("warren exits after SIGTERM", async {
            loop {
                if let Some(status) = child.try_wait().expect("wait warren") {
                    break status;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(exit.success(), "warren exited with {exit}");
        self.data_dir.clone()
    }

    /// SIGKILL: no chance to flush anything.
    fn crash(mut self) -> PathBuf {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.data_dir.clone()
    }
}

impl Drop for Warren {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
    within(
        "publish",
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .expect("publish")
    .await
    .expect("publish confirm");
}

async fn get(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    within(
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions::default()),
    )
    .await
    .expect("basic.get")
}

async fn message_count(ch: &Channel, queue: &str) -> u32 {
    within(
        "passive declare",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue exists")
    .message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_topology_and_persistent_messages_survive_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let warren = Warren::start(dir.path()).await;
    {
        let (_c, ch) = warren.channel().await;
        ch.exchange_declare(
            "orders".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.exchange_declare(
            "scratch-ex".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_declare("jobs".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        ch.queue_declare(
            "scratch".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            "jobs".into(),
            "orders".into(),
            "order.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        publish(&ch, "orders", "order.new", b"kept", persistent()).await;
        publish(
            &ch,
            "orders",
            "order.new",
            b"transient",
            BasicProperties::default(),
        )
        .await;
        publish(&ch, "", "scratch", b"in a transient queue", persistent()).await;
        assert_eq!(message_count(&ch, "jobs").await, 2);
    }
    let dir_path = warren.stop().await;

    let warren = Warren::start(&dir_path).await;
    let (conn, ch) = warren.channel().await;
    // The durable queue kept only the persistent message.
    assert_eq!(message_count(&ch, "jobs").await, 1);
    let got = get(&ch, "jobs").await.expect("the persistent message");
    assert_eq!(got.delivery.data, b"kept");
    assert!(!got.delivery.redelivered);
    // The durable binding still routes.
    publish(&ch, "orders", "order.paid", b"after restart", persistent()).await;
    assert_eq!(message_count(&ch, "jobs").await, 1);
    // Non-durable things are gone.
    let res = ch
        .queue_declare(
            "scratch".into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    assert_code(res, code::NOT_FOUND);
    let ch = conn.create_channel().await.unwrap();
    let res = ch
        .exchange_declare(
            "scratch-ex".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    assert_code(res, code::NOT_FOUND);
    warren.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_durable_queue_does_not_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let warren = Warren::start(dir.path()).await;
    {
        let (_c, ch) = warren.channel().await;
        ch.queue_declare(
            "mine".into(),
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        publish(&ch, "", "mine", b"x", persistent()).await;
    }
    let path = warren.stop().await;
    let warren = Warren::start(&path).await;
    let (_c, ch) = warren.channel().await;
    let res = ch
        .queue_declare(
            "mine".into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    assert_code(res, code::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_are_gone_after_a_restart_and_the_rest_stay_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let warren = Warren::start(dir.path()).await;
    {
        let (_c, ch) = warren.channel().await;
        ch.queue_declare("work".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        for i in 0..100u32 {
            publish(&ch, "", "work", &i.to_be_bytes(), persistent()).await;
        }
        for i in 0..60u32 {
            let m = get(&ch, "work").await.expect("message");
            assert_eq!(m.delivery.data, i.to_be_bytes());
            m.delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
    }
    let path = warren.stop().await;
    let warren = Warren::start(&path).await;
    let (_c, ch) = warren.channel().await;
    assert_eq!(message_count(&ch, "work").await, 40);
    for i in 60..100u32 {
        let m = get(&ch, "work").await.expect("message");
        assert_eq!(m.delivery.data, i.to_be_bytes());
    }
}

/// A clean stop records each queue's extent so the next start does not count it; a crash
/// leaves no record and the start scans instead. Either way a passive declare must report the
/// right count, and the queue must continue in order where it left off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_counts_stay_right_across_clean_restarts_and_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let warren = Warren::start(dir.path()).await;
    {
        let (_c, ch) = warren.channel().await;
        ch.queue_declare("deep".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        // More than a queue keeps in memory, so part of it lives only on disk.
        for i in 0..3_000u32 {
            publish(&ch, "", "deep", &i.to_be_bytes(), persistent()).await;
        }
        for i in 0..200u32 {
            let m = get(&ch, "deep").await.expect("message");
            assert_eq!(m.delivery.data, i.to_be_bytes());
            m.delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
    }
    let warren = Warren::start(&warren.stop().await).await;
    {
        let (_c, ch) = warren.channel().await;
        assert_eq!(
            message_count(&ch, "deep").await,
            2_800,
            "after a clean stop"
        );
        // Confirmed, so on disk before the crash (an ack could still be in flight).
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publish(&ch, "", "deep", &3_000u32.to_be_bytes(), persistent()).await;
        assert_eq!(message_count(&ch, "deep").await, 2_801);
    }
    let warren = Warren::start(&warren.crash()).await;
    {
        let (_c, ch) = warren.channel().await;
        assert_eq!(message_count(&ch, "deep").await, 2_801, "after a crash");
    }
    let warren = Warren::start(&warren.stop().await).await;
    let (_c, ch) = warren.channel().await;
    assert_eq!(
        message_count(&ch, "deep").await,
        2_801,
        "clean stop after a crash"
    );
    for i in 200..=3_000u32 {
        let m = get(&ch, "deep").await.expect("message");
        assert_eq!(m.delivery.data, i.to_be_bytes());
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert!(get(&ch, "deep").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_routed_to_several_durable_queues_survives_in_each_until_each_acks() {
    let dir = tempfile::tempdir().unwrap();
    let warren = Warren::start(dir.path()).await;
    {
        let (_c, ch) = warren.channel().await;
        for q in ["fan-a", "fan-b", "fan-c"] {
            ch.queue_declare(q.into(), durable(), FieldTable::default())
                .await
                .unwrap();
            ch.queue_bind(
                q.into(),
                "amq.fanout".into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        }
        publish(&ch, "amq.fanout", "", b"shared", persistent()).await;
        let m = get(&ch, "fan-a").await.expect("message in fan-a");
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let path = warren.stop().await;
    let warren = Warren::start(&path).await;
    {
        let (_c, ch) = warren.channel().await;
        assert_eq!(message_count(&ch, "fan-a").await, 0);
        let m = get(&ch, "fan-b").await.expect("still in fan-b");
        assert_eq!(m.delivery.data, b"shared");
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let path = warren.stop().await;
    let warren = Warren::start(&path).await;
    let (_c, ch) = warren.channel().await;
    assert_eq!(message_count(&ch, "fan-b").await, 0);
    let m = get(&ch, "fan-c").await.expect("still in fan-c");
    assert_eq!(m.delivery.data, b"shared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_at_crash_comes_back_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let warren = Warren::start(dir.path()).await;
    {
        let (_c, ch) = warren.channel().await;
        ch.queue_declare("inflight".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        ch.queue_declare("inflight-sync".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        publish(&ch, "", "inflight", b"held", persistent()).await;
        publish(&ch, "", "inflight", b"never delivered", persistent()).await;
        let m = get(&ch, "inflight").await.expect("delivered");
        assert!(!m.delivery.redelivered);
        // A nack with requeue, then delivered again and left unacked at the crash.
        m.delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .unwrap();
        let again = get(&ch, "inflight").await.expect("redelivered");
        assert!(again.delivery.redelivered);
        // Its confirm needs an fsync that comes after the delivery was recorded.
        publish(&ch, "", "inflight-sync", b"", persistent()).await;
    }
    let path = warren.crash();
    let warren = Warren::start(&path).await;
    let (_c, ch) = warren.channel().await;
    assert_eq!(message_count(&ch, "inflight").await, 2);
    let first = get(&ch, "inflight").await.expect("first");
    assert_eq!(first.delivery.data, b"held");
    assert!(first.delivery.redelivered, "delivered before the crash");
    let second = get(&ch, "inflight").await.expect("second");
    assert_eq!(second.delivery.data, b"never delivered");
    assert!(
        !second.delivery.redelivered,
        "never delivered before the crash"
    );
}

/// Publishes with confirms until the broker is killed part way; every confirmed message must
/// be there after the restart. Duplicates are allowed (at-least-once) and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_message_survives_sigkill() {
    const MESSAGES: u32 = 20_000;
    for round in 0..3u32 {
        let dir = tempfile::tempdir().unwrap();
        let warren = Warren::start(dir.path()).await;
        let (conn, ch) = warren.channel().await;
        ch.queue_declare("crash".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let kill_after = 4_000 + u64::from(round) * 5_000;
        let confirmed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let count = Arc::new(AtomicU64::new(0));
        let publisher = {
            let confirmed = Arc::clone(&confirmed);
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let mut pending = std::collections::VecDeque::new();
                for id in 0..MESSAGES {
                    let Ok(confirm) = ch
                        .basic_publish(
                            "".into(),
                            "crash".into(),
                            BasicPublishOptions::default(),
                            &id.to_be_bytes(),
                            persistent(),
                        )
                        .await
                    else {
                        break;
                    };
                    pending.push_back((id, confirm));
                    // A window of outstanding confirms.
                    while pending.len() > 500 {
                        let Some((id, confirm)) = pending.pop_front() else {
                            break;
                        };
                        match confirm.await {
                            Ok(c) if c.is_ack() => {
                                confirmed.lock().unwrap().push(id);
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => return,
                        }
                    }
                }
                while let Some((id, confirm)) = pending.pop_front() {
                    match confirm.await {
                        Ok(c) if c.is_ack() => {
                            confirmed.lock().unwrap().push(id);
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => return,
                    }
                }
            })
        };
        within("enough confirms before the kill", async {
            while count.load(Ordering::Relaxed) < kill_after && !publisher.is_finished() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        let path = warren.crash();
        let _ = tokio::time::timeout(TIMEOUT, publisher).await;
        drop(conn);
        let confirmed: Vec<u32> = confirmed.lock().unwrap().clone();
        assert!(
            confirmed.len() as u64 >= kill_after.min(u64::from(MESSAGES)),
            "round {round}: only {} confirms before the kill",
            confirmed.len()
        );

        let warren = Warren::start(&path).await;
        let (_c, ch) = warren.channel().await;
        let stored = message_count(&ch, "crash").await;
        let mut consumer = ch
            .basic_consume(
                "crash".into(),
                "check".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut seen = HashSet::new();
        let mut duplicates = 0u32;
        for _ in 0..stored {
            let delivery = within("recovered delivery", consumer.next())
                .await
                .expect("consumer stream")
                .expect("delivery");
            let id = u32::from_be_bytes(delivery.data[..4].try_into().unwrap());
            if !seen.insert(id) {
                duplicates += 1;
            }
        }
        let lost: Vec<u32> = confirmed
            .iter()
            .copied()
            .filter(|id| !seen.contains(id))
            .collect();
        eprintln!(
            "round {round}: {} confirmed, {stored} recovered, {duplicates} duplicates, {} lost",
            confirmed.len(),
            lost.len()
        );
        assert!(
            lost.is_empty(),
            "round {round}: confirmed but lost: {lost:?}"
        );
    }
}

/// A deep durable queue keeps only a bounded window of bodies in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_durable_queue_keeps_its_bodies_on_disk() {
    const MESSAGES: usize = 4_000;
    const BODY: usize = 16 * 1024;
    let broker = common::TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    ch.queue_declare("deep".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body = vec![7u8; BODY];
    let mut confirms = Vec::with_capacity(MESSAGES);
    for _ in 0..MESSAGES {
        confirms.push(
            ch.basic_publish(
                "".into(),
                "deep".into(),
                BasicPublishOptions::default(),
                &body,
                persistent(),
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(within("confirm", c).await.unwrap().is_ack());
    }
    let total = (MESSAGES * BODY) as u64;
    let in_memory = within("bodies paged out", async {
        loop {
            let used = broker.broker.as_ref().unwrap().memory_used();
            if used < total / 3 {
                break used;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        in_memory < total / 3,
        "{in_memory} of {total} bytes in memory"
    );
    assert_eq!(message_count(&ch, "deep").await, MESSAGES as u32);
    // Everything comes back, in order, as consumers reach it.
    for _ in 0..MESSAGES {
        let m = get(&ch, "deep").await.expect("paged-in message");
        assert_eq!(m.delivery.data.len(), BODY);
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(message_count(&ch, "deep").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_on_a_locked_data_directory_exits_with_one_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let first = Warren::start(dir.path()).await;
    let output = within(
        "second warren exits",
        tokio::task::spawn_blocking({
            let dir = dir.path().to_path_buf();
            move || {
                Command::new(warren_binary())
                    .arg("--listen")
                    .arg("127.0.0.1:0")
                    .arg("--data-dir")
                    .arg(&dir)
                    .output()
                    .expect("run warren")
            }
        }),
    )
    .await
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warren:") && stderr.to_lowercase().contains("lock"),
        "stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    // The first broker is unaffected.
    let (_c, ch) = first.channel().await;
    ch.queue_declare("still-works".into(), durable(), FieldTable::default())
        .await
        .unwrap();
}

/// Past half the memory watermark, transient messages are written to the store too, so a
/// backlog far larger than the watermark fits without blocking publishers for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_messages_page_to_disk_under_memory_pressure() {
    const WATERMARK: u64 = 64 << 20;
    const MESSAGES: usize = 12_000;
    const BODY: usize = 16 * 1024;
    let broker = common::TestBroker::start_with(|c| c.memory_high_watermark = WATERMARK).await;
    let (_c, ch) = broker.channel().await;
    ch.queue_declare(
        "backlog".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = std::collections::VecDeque::new();
    for i in 0..MESSAGES {
        let mut body = vec![0u8; BODY];
        body[..8].copy_from_slice(&(i as u64).to_be_bytes());
        confirms.push_back(
            ch.basic_publish(
                "".into(),
                "backlog".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
        while confirms.len() > 1000 {
            let c = confirms.pop_front().unwrap();
            assert!(within("confirm", c).await.unwrap().is_ack());
        }
    }
    for c in confirms {
        assert!(within("confirm", c).await.unwrap().is_ack());
    }
    let total = (MESSAGES * BODY) as u64;
    assert!(total > 2 * WATERMARK);
    within("bodies paged out below the watermark", async {
        while broker.broker.as_ref().unwrap().memory_used() > WATERMARK {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(message_count(&ch, "backlog").await, MESSAGES as u32);
    for i in 0..MESSAGES {
        let m = get(&ch, "backlog").await.expect("message");
        assert_eq!(
            u64::from_be_bytes(m.delivery.data[..8].try_into().unwrap()),
            i as u64
        );
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
}
