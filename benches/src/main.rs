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

mod client;
mod consumer;
mod measure;
mod publisher;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use client::{ClientError, Connection, Endpoint};
use consumer::{Consumer, ConsumerConfig};
use measure::{Histogram, MachineCpu};
use publisher::{Publisher, PublisherConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Publish as fast as possible; report msg/s.
    Throughput,
    /// Publish at a fixed rate (`--rate`); report end-to-end latency percentiles.
    Latency,
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
    /// PID of the broker process, to report its CPU time per message.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Name of the broker in the RESULT line.
    #[arg(long, default_value = "broker")]
    label: String,
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

/// Everything read at one instant of the run.
struct Snapshot {
    at: Instant,
    self_cpu: Duration,
    broker_cpu: Option<Duration>,
    broker_disk_writes: Option<u64>,
    machine: MachineCpu,
    published: u64,
    confirmed: u64,
    consumed: u64,
    self_threads: Threads,
    broker_threads: Threads,
}

type Threads = std::collections::HashMap<u32, (String, Duration)>;

impl Snapshot {
    fn take(shared: &Shared, broker_pid: Option<u32>) -> Self {
        Snapshot {
            at: Instant::now(),
            self_cpu: measure::self_cpu(),
            broker_cpu: broker_pid.and_then(|pid| measure::process_cpu(pid).ok()),
            broker_disk_writes: broker_pid.and_then(measure::process_disk_writes),
            machine: measure::machine_cpu(),
            published: shared.published.load(Ordering::Relaxed),
            confirmed: shared.confirmed.load(Ordering::Relaxed),
            consumed: shared.consumed.load(Ordering::Relaxed),
            self_threads: measure::thread_cpu(std::process::id()),
            broker_threads: broker_pid.map(measure::thread_cpu).unwrap_or_default(),
        }
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
    if !(args.duration > 0.0 && args.warmup >= 0.0) {
        return Err("--duration must be positive and --warmup not negative".into());
    }
    Ok(())
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    validate(args)?;
    let rate = args.rate.unwrap_or(match args.scenario {
        Scenario::Throughput => 0.0,
        Scenario::Latency => 5000.0,
    });
    let ep = Endpoint {
        addr: args.addr,
        user: args.user.clone(),
        password: args.password.clone(),
        vhost: args.vhost.clone(),
    };
    let shared = Arc::new(Shared::new());
    let queues: Vec<String> = (0..args.queues)
        .map(|i| format!("warren-load-{}-{i}", std::process::id()))
        .collect();

    let mut control = Connection::open(&ep, "warren-load control")?;
    for q in &queues {
        control.declare_queue(q, args.persistent)?;
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
        let cfg = PublisherConfig {
            queue: queues[i % queues.len()].clone(),
            body_size: args.size,
            persistent: args.persistent,
            confirm_window: args.confirm,
            rate: rate / args.publishers as f64,
            batch: args.batch,
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
    control.close()?;

    report(
        args,
        rate,
        &start,
        &end,
        &Latencies {
            delivery: hist,
            confirm: confirm_hist,
        },
        backlog,
        &shared,
    );
    Ok(())
}

/// Sleeps for `d`, waking early if a connection thread failed.
fn wait(shared: &Shared, d: Duration) {
    let until = Instant::now() + d;
    while !shared.failed.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// End-to-end (publish to delivery) and publish-to-confirm latencies.
struct Latencies {
    delivery: Histogram,
    confirm: Histogram,
}

fn report(
    args: &Args,
    rate: f64,
    start: &Snapshot,
    end: &Snapshot,
    lat: &Latencies,
    backlog: u64,
    shared: &Shared,
) {
    let hist = &lat.delivery;
    let cq = |x: f64| lat.confirm.quantile(x) as f64 / 1000.0;
    let secs = end.at.duration_since(start.at).as_secs_f64();
    let published = end.published - start.published;
    let consumed = end.consumed - start.consumed;
    let confirmed = end.confirmed - start.confirmed;
    // CPU per message counts each published message once (or each consumed one when nothing
    // is published): the broker's cost of taking it in, routing, delivering and settling it.
    let msgs = if args.publishers > 0 {
        published
    } else {
        consumed
    }
    .max(1) as f64;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let gen_cpu = end.self_cpu.saturating_sub(start.self_cpu);
    let broker_cpu = match (start.broker_cpu, end.broker_cpu) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let machine_total = end.machine.total.saturating_sub(start.machine.total);
    let machine_busy = end.machine.busy.saturating_sub(start.machine.busy);
    let machine_pct = if machine_total.is_zero() {
        0.0
    } else {
        100.0 * machine_busy.as_secs_f64() / machine_total.as_secs_f64()
    };
    // CPU burnt by everything else on the machine (builds, other tests): the noise floor.
    let others = machine_busy
        .saturating_sub(gen_cpu)
        .saturating_sub(broker_cpu.unwrap_or_default());
    let others_pct = 100.0 * others.as_secs_f64() / secs;
    let q = |x: f64| hist.quantile(x) as f64 / 1000.0;
    let pct = |d: Duration| 100.0 * d.as_secs_f64() / secs;
    let gen_top = measure::busiest_thread(&start.self_threads, &end.self_threads);
    let broker_top = measure::busiest_thread(&start.broker_threads, &end.broker_threads);
    let top = |t: &Option<(String, Duration)>| {
        t.as_ref().map_or(String::new(), |(name, d)| {
            format!("; busiest thread {name} {:.0}%", pct(*d))
        })
    };

    println!(
        "== {} against {} ({}) ==",
        match args.scenario {
            Scenario::Throughput => "throughput",
            Scenario::Latency => "latency",
        },
        args.label,
        args.addr
    );
    println!(
        "setup: {} publisher(s), {} consumer(s), {} queue(s), {} B, rate {}, {}{}{}, prefetch {}, ack every {}",
        args.publishers,
        args.consumers,
        args.queues,
        args.size,
        if rate > 0.0 {
            format!("{rate} msg/s")
        } else {
            "unlimited".into()
        },
        if args.persistent {
            "persistent"
        } else {
            "transient"
        },
        if args.confirm > 0 {
            format!(", confirm window {}", args.confirm)
        } else {
            String::new()
        },
        if args.no_ack { ", no-ack" } else { "" },
        args.prefetch,
        args.ack_every,
    );
    println!("window: {secs:.2} s");
    println!("published: {:>12.0} msg/s", published as f64 / secs);
    if args.confirm > 0 {
        println!("confirmed: {:>12.0} msg/s", confirmed as f64 / secs);
        println!(
            "confirm latency: p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us",
            cq(0.5),
            cq(0.99),
            cq(0.999),
            lat.confirm.max() as f64 / 1000.0
        );
        let nacked = shared.nacked.load(Ordering::Relaxed);
        if nacked > 0 {
            println!("nacked:    {nacked:>12} msgs (whole run)");
        }
    }
    println!("consumed:  {:>12.0} msg/s", consumed as f64 / secs);
    println!(
        "latency:   p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us ({} samples)",
        q(0.5),
        q(0.99),
        q(0.999),
        hist.max() as f64 / 1000.0,
        hist.count()
    );
    println!(
        "generator: {:.2} us CPU/msg, {:.0}% of a core{}",
        us(gen_cpu) / msgs,
        pct(gen_cpu),
        top(&gen_top)
    );
    if let Some(b) = broker_cpu {
        println!(
            "broker:    {:.2} us CPU/msg, {:.0}% of a core{}",
            us(b) / msgs,
            pct(b),
            top(&broker_top)
        );
    }
    let disk = match (start.broker_disk_writes, end.broker_disk_writes) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    if let Some(d) = disk {
        println!(
            "broker:    wrote {:.1} MB/s to storage, {:.0} bytes/msg",
            d as f64 / secs / 1e6,
            d as f64 / msgs
        );
    }
    println!(
        "machine:   {machine_pct:.0}% of all cores busy; other processes used {others_pct:.0}% of a core"
    );
    if backlog > 0 {
        println!("backlog:   {backlog} messages left in the queues at the end");
    }
    let broker_us = broker_cpu.map_or(-1.0, |b| us(b) / msgs);
    let broker_pct = broker_cpu.map_or(-1.0, |b| 100.0 * b.as_secs_f64() / secs);
    println!(
        "RESULT label={} scenario={:?} published_per_s={:.0} confirmed_per_s={:.0} consumed_per_s={:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1} confirm_p50_us={:.1} confirm_p99_us={:.1} confirm_p999_us={:.1} gen_us_per_msg={:.3} gen_cpu_pct={:.0} gen_top_thread_pct={:.0} broker_us_per_msg={:.3} broker_cpu_pct={:.0} broker_top_thread_pct={:.0} broker_disk_bytes_per_msg={:.0} machine_busy_pct={:.0} others_cpu_pct={:.0} backlog={}",
        args.label,
        args.scenario,
        published as f64 / secs,
        confirmed as f64 / secs,
        consumed as f64 / secs,
        q(0.5),
        q(0.99),
        q(0.999),
        cq(0.5),
        cq(0.99),
        cq(0.999),
        us(gen_cpu) / msgs,
        pct(gen_cpu),
        gen_top.as_ref().map_or(-1.0, |(_, d)| pct(*d)),
        broker_us,
        broker_pct,
        broker_top.as_ref().map_or(-1.0, |(_, d)| pct(*d)),
        disk.map_or(-1.0, |d| d as f64 / msgs),
        machine_pct,
        others_pct,
        backlog
    );
}
