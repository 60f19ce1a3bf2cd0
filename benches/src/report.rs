//! The measured window: what is read at its two ends, and the report made from them (a
//! readable block and one `RESULT key=value ...` line for `compare.sh`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::measure::{self, Histogram, MachineCpu};
use crate::{Args, Scenario, Shared};

/// Everything read at one instant of the run.
pub struct Snapshot {
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
    pub fn take(shared: &Shared, broker_pid: Option<u32>) -> Self {
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

/// End-to-end (publish to delivery) and publish-to-confirm latencies.
pub struct Latencies {
    pub delivery: Histogram,
    pub confirm: Histogram,
}

/// What one run measured besides the shared counters.
pub struct Run<'a> {
    pub rate: f64,
    pub start: &'a Snapshot,
    pub end: &'a Snapshot,
    pub latencies: &'a Latencies,
    /// Messages left in the queues when they were deleted.
    pub backlog: u64,
    /// Deliveries the whole run's publishes should have caused (published x bound queues).
    pub expected_deliveries: u64,
    /// Time to create the exchange's bindings (topic).
    pub bind_ms: Option<f64>,
    /// Fraction of the topic keys that match a binding.
    pub topic_matched: Option<f64>,
}

pub fn report(args: &Args, run: &Run, shared: &Shared) {
    let (rate, start, end, lat, backlog) =
        (run.rate, run.start, run.end, run.latencies, run.backlog);
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
            Scenario::Fill | Scenario::Ready | Scenario::Drain | Scenario::Connections => "other",
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
    // Every delivery the run's publishes should have caused was either consumed or still in a
    // queue at the end: a check on the routing (and on lost messages).
    let consumed_all = shared.consumed.load(Ordering::Relaxed);
    let route_check = if run.expected_deliveries > 0 {
        100.0 * (consumed_all + backlog) as f64 / run.expected_deliveries as f64
    } else {
        -1.0
    };
    println!(
        "routing:   {consumed_all} consumed + {backlog} left = {route_check:.2}% of the {} deliveries expected",
        run.expected_deliveries
    );
    if let Some(ms) = run.bind_ms {
        println!(
            "bindings:  {} created in {ms:.0} ms; {:.1}% of the keys match one",
            args.bindings,
            100.0 * run.topic_matched.unwrap_or(0.0)
        );
    }
    let deliveries = consumed.max(1) as f64;
    let broker_us = broker_cpu.map_or(-1.0, |b| us(b) / msgs);
    let broker_us_delivery = broker_cpu.map_or(-1.0, |b| us(b) / deliveries);
    let broker_pct = broker_cpu.map_or(-1.0, |b| 100.0 * b.as_secs_f64() / secs);
    println!(
        "RESULT label={} scenario={:?} published_per_s={:.0} confirmed_per_s={:.0} consumed_per_s={:.0} p50_us={:.1} p99_us={:.1} p999_us={:.1} confirm_p50_us={:.1} confirm_p99_us={:.1} confirm_p999_us={:.1} gen_us_per_msg={:.3} gen_cpu_pct={:.0} gen_top_thread_pct={:.0} broker_us_per_msg={:.3} broker_cpu_pct={:.0} broker_top_thread_pct={:.0} broker_disk_bytes_per_msg={:.0} machine_busy_pct={:.0} others_cpu_pct={:.0} backlog={} broker_us_per_delivery={:.3} gen_us_per_delivery={:.3} route_check_pct={:.2} bind_ms={:.0}",
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
        backlog,
        broker_us_delivery,
        us(gen_cpu) / deliveries,
        route_check,
        run.bind_ms.unwrap_or(-1.0),
    );
}
