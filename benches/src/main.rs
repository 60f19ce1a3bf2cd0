//! `warren-load`: a lean AMQP 0-9-1 load generator on Warren's own `amqp-codec`.
//!
//! Publishers pipeline many messages per socket write and consumers ack in batches, so the
//! generator costs a small fraction of what the broker does per message (lapin costs more than
//! RabbitMQ itself). It reports rates, end-to-end latency (a timestamp in the body), its own
//! CPU per message (`getrusage`) and the broker's (`/proc/<pid>/stat`, `--broker-pid`).
//!
//! A run: declare queues, start consumers, start publishers, warm up, measure for
//! `--duration`, stop publishers, stop consumers, delete the queues, print the report and one
//! `RESULT key=value ...` line for scripts.
//!
//! The backlog scenarios (`fill`, `ready`, `drain`) are steps that `compare.sh` strings
//! together around a broker restart; they live in `backlog.rs`. `ready` alone times a broker's
//! start. `connections` (idle connections and the broker's memory) is in `connections.rs`; the
//! topic exchange workload (`--exchange-type topic`) in `topic.rs`.

mod backlog;
mod client;
mod connections;
mod consumer;
mod measure;
mod publisher;
mod report;
mod topic;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use amqp_codec::{AMQPValue, FieldTable, LongString};
use clap::{Parser, ValueEnum};

use client::{ClientError, Connection, Endpoint};
use consumer::{Consumer, ConsumerConfig};
use measure::Histogram;
use publisher::{Publisher, PublisherConfig, Routing};
use report::{Latencies, Run, Snapshot};
use topic::TopicPlan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Publish as fast as possible; report msg/s.
    Throughput,
    /// Publish at a fixed rate (`--rate`); report end-to-end latency percentiles.
    Latency,
    /// Backlog step 1: publish `--count` messages (with `--confirm`) to `--queue-name` with no
    /// consumer, wait for every confirm, and leave the queue in place.
    Fill,
    /// Backlog step 2 (and broker start-up): retry connecting every `--retry-ms` until a TCP
    /// connection and the AMQP handshake succeed (the broker is starting), then, with
    /// `--queue-name`, passively declare it and report its count.
    Ready,
    /// Backlog step 3: consume `--queue-name` with acks until it is empty, then delete it.
    Drain,
    /// Open `--connections` idle connections (one channel each) and report the broker's RSS
    /// per connection (needs `--broker-pid`).
    Connections,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExchangeType {
    /// Every queue bound with an empty key; publishers publish with an empty key.
    Fanout,
    /// `--bindings` patterns over the queues and precomputed random keys (see topic.rs).
    Topic,
}

impl ExchangeType {
    fn name(self) -> &'static str {
        match self {
            ExchangeType::Fanout => "fanout",
            ExchangeType::Topic => "topic",
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "warren-load",
    version,
    about = "AMQP 0-9-1 load generator on amqp-codec"
)]
struct Args {
    /// Broker address; only loopback addresses are accepted.
    #[arg(long, default_value = "127.0.0.1:5672")]
    addr: SocketAddr,
    #[arg(long, default_value = "guest")]
    user: String,
    #[arg(long, default_value = "guest")]
    password: String,
    #[arg(long, default_value = "/")]
    vhost: String,

    #[arg(long, value_enum, default_value_t = Scenario::Throughput)]
    scenario: Scenario,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Total publish rate in msg/s over all publishers; 0 = unlimited.
    /// Default: 0 for throughput, 5000 for latency.
    #[arg(long)]
    rate: Option<f64>,
    /// Message body size in bytes (the first 8 carry the send timestamp).
    #[arg(long, default_value_t = 128)]
    size: usize,
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Publisher i uses queue i % queues, consumer j queue j % queues.
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// basic.qos prefetch count per consumer (manual-ack mode).
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    /// Ack (multiple=true) once this many deliveries are unacked.
    #[arg(long, default_value_t = 100)]
    ack_every: u64,
    /// Consume with no-ack (auto ack) instead of manual acks.
    #[arg(long)]
    no_ack: bool,
    /// Persistent messages (delivery_mode 2) to durable queues.
    #[arg(long)]
    persistent: bool,
    /// Publisher confirms with at most N unconfirmed messages per publisher; 0 = off.
    #[arg(long, default_value_t = 0)]
    confirm: u64,
    /// Most messages one publisher writes per socket write.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// PID of the broker process, to report its CPU time per message (ready: to notice that
    /// the starting broker exited).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Name of the broker in the RESULT line.
    #[arg(long, default_value = "broker")]
    label: String,
    /// Declare queues with `x-queue-type` set to this (`classic`, `quorum`). Quorum queues are
    /// always durable.
    #[arg(long)]
    queue_type: Option<String>,
    /// Another queue argument, `KEY=VALUE` (an integer VALUE is sent as a long-long, anything
    /// else as a long string); may be repeated.
    #[arg(long = "queue-arg", value_parser = parse_queue_arg)]
    queue_args: Vec<(String, AMQPValue)>,
    /// Queue name instead of `warren-load-<pid>-<i>` (required by fill, ready and drain).
    #[arg(long)]
    queue_name: Option<String>,
    /// fill: how many messages to publish.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// ready: when the broker was started, in ns since the UNIX epoch (`date +%s%N`); the
    /// report gives the time from then to a successful handshake.
    #[arg(long)]
    since_ns: Option<u128>,
    /// fill, ready, drain: give up after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    /// ready: milliseconds between connection attempts.
    #[arg(long, default_value_t = 1.0)]
    retry_ms: f64,
    /// Publish to a new exchange of this type with the queues bound to it, instead of to the
    /// queues through the default exchange.
    #[arg(long, value_enum)]
    exchange_type: Option<ExchangeType>,
    /// Topic exchange: how many bindings (spread over the queues).
    #[arg(long, default_value_t = 10_000)]
    bindings: usize,
    /// Topic exchange: how many distinct routing keys are precomputed (a power of two).
    #[arg(long, default_value_t = 65_536)]
    topic_keys: usize,
    /// Topic exchange: the fraction of routing keys that match no binding.
    #[arg(long, default_value_t = 0.1)]
    topic_unmatched: f64,
    /// connections: how many idle connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// connections: how many threads open them (handshakes in parallel).
    #[arg(long, default_value_t = 8)]
    connect_threads: usize,
    /// connections: seconds to leave them idle before reading the broker's RSS (and again
    /// after closing them).
    #[arg(long, default_value_t = 5.0)]
    idle: f64,
}

fn parse_queue_arg(s: &str) -> Result<(String, AMQPValue), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("--queue-arg wants KEY=VALUE, got {s:?}"))?;
    let value = match v.parse::<i64>() {
        Ok(n) => AMQPValue::LongLongInt(n),
        Err(_) => AMQPValue::LongString(LongString::from(v)),
    };
    Ok((k.to_string(), value))
}

impl Args {
    /// The `queue.declare` arguments from `--queue-type` and `--queue-arg`.
    fn queue_arguments(&self) -> FieldTable {
        let mut table = FieldTable::default();
        if let Some(t) = &self.queue_type {
            table.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from(t.as_str())),
            );
        }
        for (k, v) in &self.queue_args {
            table.insert(k.as_str().into(), v.clone());
        }
        table
    }

    /// Quorum queues exist only durable; everything else follows `--persistent`.
    fn durable_queues(&self) -> bool {
        self.persistent || self.queue_type.as_deref() == Some("quorum")
    }

    fn queue_names(&self) -> Vec<String> {
        let base = self
            .queue_name
            .clone()
            .unwrap_or_else(|| format!("warren-load-{}", std::process::id()));
        if self.queues == 1 && self.queue_name.is_some() {
            return vec![base];
        }
        (0..self.queues).map(|i| format!("{base}-{i}")).collect()
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            addr: self.addr,
            user: self.user.clone(),
            password: self.password.clone(),
            vhost: self.vhost.clone(),
        }
    }
}

/// Counters and flags shared by the coordinator and every connection thread.
pub struct Shared {
    /// Zero of the timestamps carried in message bodies (one process: one clock).
    base: Instant,
    stop_publishers: AtomicBool,
    stop_consumers: AtomicBool,
    /// Consumers record latencies only inside the measured window.
    recording: AtomicBool,
    /// Some thread hit an error: the coordinator ends the run early.
    failed: AtomicBool,
    /// Shutdown took too long: reader threads give up waiting for `close-ok`.
    abandoned: AtomicBool,
    pub published: AtomicU64,
    pub confirmed: AtomicU64,
    pub nacked: AtomicU64,
    pub consumed: AtomicU64,
    /// Topic routing: deliveries the published keys should cause (each key's matching
    /// bindings, known when the keys were made).
    pub routed: AtomicU64,
}

impl Shared {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            stop_publishers: AtomicBool::new(false),
            stop_consumers: AtomicBool::new(false),
            recording: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            abandoned: AtomicBool::new(false),
            published: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            nacked: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            routed: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn now_nanos(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
    pub fn stopping_publishers(&self) -> bool {
        self.stop_publishers.load(Ordering::Relaxed)
    }
    pub fn stopping_consumers(&self) -> bool {
        self.stop_consumers.load(Ordering::Relaxed)
    }
    pub fn recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
    pub fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Relaxed)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren-load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn validate(args: &Args) -> Result<(), String> {
    if !args.addr.ip().is_loopback() {
        return Err(format!(
            "{} is not a loopback address: warren-load only loads brokers on this machine",
            args.addr
        ));
    }
    if args.publishers == 0 && args.consumers == 0 {
        return Err("nothing to do: no publishers and no consumers".into());
    }
    if args.queues == 0 || args.batch == 0 {
        return Err("--queues and --batch must be at least 1".into());
    }
    if !args.no_ack && args.prefetch > 0 && args.ack_every > u64::from(args.prefetch) {
        return Err("--ack-every larger than --prefetch would stall the consumer".into());
    }
    if args.ack_every == 0 {
        return Err("--ack-every must be at least 1".into());
    }
    if !(args.duration > 0.0 && args.warmup >= 0.0 && args.timeout > 0.0) {
        return Err("--duration and --timeout must be positive and --warmup not negative".into());
    }
    let backlog_step = matches!(args.scenario, Scenario::Fill | Scenario::Drain);
    if backlog_step && args.queue_name.is_none() {
        return Err("fill and drain need --queue-name".into());
    }
    if args.scenario == Scenario::Fill && (args.count == 0 || args.confirm == 0) {
        return Err("fill needs --count and --confirm of at least 1".into());
    }
    if !(args.retry_ms > 0.0 && args.idle >= 0.0) {
        return Err("--retry-ms must be positive and --idle not negative".into());
    }
    if !(0.0..=1.0).contains(&args.topic_unmatched) {
        return Err("--topic-unmatched is a fraction between 0 and 1".into());
    }
    if args.scenario == Scenario::Connections && args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    Ok(())
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    validate(args)?;
    let rate = args.rate.unwrap_or(match args.scenario {
        Scenario::Latency => 5000.0,
        _ => 0.0,
    });
    match args.scenario {
        Scenario::Fill => return backlog::fill(args),
        Scenario::Ready => return backlog::ready(args),
        Scenario::Drain => return backlog::drain(args),
        Scenario::Connections => return connections::connections(args),
        Scenario::Throughput | Scenario::Latency => {}
    }
    let ep = args.endpoint();
    let shared = Arc::new(Shared::new());
    let queues = args.queue_names();

    let mut control = Connection::open(&ep, "warren-load control")?;
    let arguments = args.queue_arguments();
    for q in &queues {
        control.declare_queue(q, args.durable_queues(), &arguments)?;
    }
    let exchange = args
        .exchange_type
        .map(|_| format!("warren-load-{}-x", std::process::id()))
        .unwrap_or_default();
    let mut topic_plan = None;
    let mut bind_ms = None;
    if let Some(kind) = args.exchange_type {
        control.declare_exchange(&exchange, kind.name())?;
        let started = Instant::now();
        match kind {
            ExchangeType::Fanout => {
                control.bind_all(&exchange, queues.iter().map(|q| (q.as_str(), "")))?;
            }
            ExchangeType::Topic => {
                let plan = TopicPlan::new(
                    args.bindings,
                    queues.len(),
                    args.topic_keys,
                    args.topic_unmatched,
                    0x5EED,
                );
                control.bind_all(
                    &exchange,
                    plan.bindings
                        .iter()
                        .map(|(pattern, q)| (queues[*q].as_str(), pattern.as_str())),
                )?;
                bind_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                topic_plan = Some(Arc::new(plan));
            }
        }
    }

    let mut consumers = Vec::new();
    for j in 0..args.consumers {
        let conn = Connection::open(&ep, &format!("warren-load consumer {j}"))?;
        let cfg = ConsumerConfig {
            queue: queues[j % queues.len()].clone(),
            no_ack: args.no_ack,
            prefetch: args.prefetch,
            ack_every: args.ack_every,
        };
        consumers.push(Consumer::start(conn, cfg, shared.clone())?);
    }
    let mut publishers = Vec::new();
    for i in 0..args.publishers {
        let conn = Connection::open(&ep, &format!("warren-load publisher {i}"))?;
        conn.writer
            .set_write_timeout(Some(Duration::from_secs(10)))?;
        let routing = match (&topic_plan, args.exchange_type) {
            (Some(plan), _) => Routing::Topic {
                plan: plan.clone(),
                // Publishers walk the same table from evenly spaced places.
                start: i * plan.len() / args.publishers,
            },
            (None, Some(_)) => Routing::Fixed(String::new()),
            (None, None) => Routing::Fixed(queues[i % queues.len()].clone()),
        };
        let cfg = PublisherConfig {
            exchange: exchange.clone(),
            routing,
            body_size: args.size,
            persistent: args.persistent,
            confirm_window: args.confirm,
            rate: rate / args.publishers as f64,
            batch: args.batch,
            limit: 0,
        };
        publishers.push(Publisher::start(conn, cfg, shared.clone())?);
    }

    wait(&shared, Duration::from_secs_f64(args.warmup));
    let start = Snapshot::take(&shared, args.broker_pid);
    shared.recording.store(true, Ordering::Relaxed);
    wait(&shared, Duration::from_secs_f64(args.duration));
    shared.recording.store(false, Ordering::Relaxed);
    let end = Snapshot::take(&shared, args.broker_pid);

    // Shut down: publishers first (they close after their confirms), then consumers.
    shared.stop_publishers.store(true, Ordering::Relaxed);
    {
        // Past this, reader threads stop waiting for the broker's close-ok.
        let shared = shared.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_secs(15));
            shared.abandoned.store(true, Ordering::Relaxed);
        });
    }
    let mut errors: Vec<ClientError> = Vec::new();
    let mut confirm_hist = Histogram::default();
    for p in publishers {
        match p.join() {
            Ok(h) => confirm_hist.merge(&h),
            Err(e) => errors.push(e),
        }
    }
    shared.stop_consumers.store(true, Ordering::Relaxed);
    let mut hist = Histogram::default();
    for c in consumers {
        match c.join() {
            Ok(h) => hist.merge(&h),
            Err(e) => errors.push(e),
        }
    }
    // A run cut short by an error has no numbers worth a RESULT line.
    if let Some(e) = errors.into_iter().next() {
        return Err(Box::new(e));
    }

    let mut backlog = 0u64;
    for q in &queues {
        backlog += u64::from(control.delete_queue(q)?);
    }
    if !exchange.is_empty() {
        control.delete_exchange(&exchange)?;
    }
    control.close()?;

    // What the queues should have received over the whole run, by design.
    let published = shared.published.load(Ordering::Relaxed);
    let expected = match args.exchange_type {
        None => published,
        Some(ExchangeType::Fanout) => published * queues.len() as u64,
        Some(ExchangeType::Topic) => shared.routed.load(Ordering::Relaxed),
    };
    report::report(
        args,
        &Run {
            rate,
            start: &start,
            end: &end,
            latencies: &Latencies {
                delivery: hist,
                confirm: confirm_hist,
            },
            backlog,
            expected_deliveries: expected,
            bind_ms,
            topic_matched: topic_plan.as_ref().map(|p| p.matched_fraction()),
        },
        &shared,
    );
    Ok(())
}

/// Sleeps for `d`, waking early if a connection thread failed.
pub(crate) fn wait(shared: &Shared, d: Duration) {
    let until = Instant::now() + d;
    while !shared.failed.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_args_send_integers_as_long_longs_and_the_rest_as_strings() {
        let args = Args::parse_from([
            "warren-load",
            "--queue-type",
            "quorum",
            "--queue-arg",
            "x-max-length=10",
            "--queue-arg",
            "x-queue-mode=lazy",
        ]);
        let table = args.queue_arguments();
        let get = |k: &str| table.inner().get(k).cloned();
        assert_eq!(
            get("x-queue-type"),
            Some(AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(get("x-max-length"), Some(AMQPValue::LongLongInt(10)));
        assert_eq!(
            get("x-queue-mode"),
            Some(AMQPValue::LongString("lazy".into()))
        );
        assert!(args.durable_queues(), "quorum queues are always durable");
    }

    #[test]
    fn a_queue_name_is_used_as_is_for_one_queue_and_numbered_for_several() {
        let one = Args::parse_from(["warren-load", "--queue-name", "q"]);
        assert_eq!(one.queue_names(), vec!["q"]);
        let two = Args::parse_from(["warren-load", "--queue-name", "q", "--queues", "2"]);
        assert_eq!(two.queue_names(), vec!["q-0", "q-1"]);
    }
}
