//! The backlog steps: fill a durable queue with no consumer, wait for a (re)starting broker to
//! answer a handshake, drain the queue. `compare.sh` runs them around a broker restart and
//! reads the broker's memory in between; each step prints a short report and one
//! `RESULT key=value ...` line.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::client::{ClientError, Connection};
use crate::consumer::{Consumer, ConsumerConfig};
use crate::measure;
use crate::publisher::{Publisher, PublisherConfig, Routing};
use crate::{Args, Shared};

type Outcome = Result<(), Box<dyn std::error::Error>>;

fn queue(args: &Args) -> String {
    args.queue_names().remove(0)
}

/// Broker CPU time, if we were told its pid.
fn broker_cpu(args: &Args) -> Option<Duration> {
    args.broker_pid
        .and_then(|pid| measure::process_cpu(pid).ok())
}

fn cpu_us_per_msg(before: Option<Duration>, after: Option<Duration>, msgs: u64) -> f64 {
    match (before, after) {
        (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64() * 1e6 / msgs.max(1) as f64,
        _ => -1.0,
    }
}

/// Waits until `done()` or a thread failed or `limit` passed; false unless `done()`.
fn wait_until(shared: &Shared, limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if shared.failed.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Whether a process is gone or a zombie (a broker started by a shell that has not reaped it).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// Publishes `--count` messages to a new (durable, with `--persistent`) queue with no
/// consumer, and returns once all are confirmed. The queue stays.
pub fn fill(args: &Args) -> Outcome {
    let name = queue(args);
    let shared = Arc::new(Shared::new());
    let mut control = Connection::open(&args.endpoint(), "warren-load control")?;
    control.declare_queue(&name, args.durable_queues(), &args.queue_arguments())?;
    let before = control.queue_message_count(&name)?;

    let conn = Connection::open(&args.endpoint(), "warren-load publisher")?;
    conn.writer
        .set_write_timeout(Some(Duration::from_secs(10)))?;
    let cfg = PublisherConfig {
        exchange: String::new(),
        routing: Routing::Fixed(name.clone()),
        body_size: args.size,
        persistent: args.persistent,
        confirm_window: args.confirm,
        rate: 0.0,
        batch: args.batch,
        limit: args.count,
    };
    let cpu0 = broker_cpu(args);
    let start = Instant::now();
    shared.recording.store(true, Ordering::Relaxed);
    let publisher = Publisher::start(conn, cfg, shared.clone())?;
    let all_confirmed = wait_until(&shared, Duration::from_secs_f64(args.timeout), || {
        shared.confirmed.load(Ordering::Relaxed) >= args.count
    });
    let secs = start.elapsed().as_secs_f64();
    let cpu1 = broker_cpu(args);
    shared.stop_publishers.store(true, Ordering::Relaxed);
    let confirm = publisher.join()?;
    if !all_confirmed {
        return Err(Box::new(ClientError::Protocol(format!(
            "only {} of {} messages confirmed within {} s",
            shared.confirmed.load(Ordering::Relaxed),
            args.count,
            args.timeout
        ))));
    }
    let after = control.queue_message_count(&name)?;
    control.close()?;

    let nacked = shared.nacked.load(Ordering::Relaxed);
    let rate = args.count as f64 / secs;
    let broker_us = cpu_us_per_msg(cpu0, cpu1, args.count);
    println!("== fill {name} on {} ({}) ==", args.label, args.addr);
    println!(
        "published and confirmed {} x {} B ({}) in {secs:.2} s: {rate:.0} msg/s; {nacked} nacked",
        args.count,
        args.size,
        if args.persistent {
            "persistent"
        } else {
            "transient"
        },
    );
    println!(
        "confirm latency: p50 {:.0} us, p99 {:.0} us",
        confirm.quantile(0.5) as f64 / 1000.0,
        confirm.quantile(0.99) as f64 / 1000.0
    );
    println!(
        "queue held {before} messages before, {after} after; broker {broker_us:.2} us CPU/msg"
    );
    println!(
        "RESULT label={} scenario=Fill fill_per_s={rate:.0} fill_s={secs:.3} fill_broker_us_per_msg={broker_us:.3} nacked={nacked} queue_messages={after}",
        args.label
    );
    Ok(())
}

/// Tries to connect and shake hands until it works (the broker is starting), every
/// `--retry-ms`, then (with `--queue-name`) reads the queue's message count with a passive
/// declare. With `--broker-pid` (the process just started, or a launcher that lives as long as
/// it) it gives up as soon as that process exits.
pub fn ready(args: &Args) -> Outcome {
    let since = args
        .since_ns
        .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns as u64));
    let ms_since = |t: SystemTime| {
        since
            .and_then(|s| t.duration_since(s).ok())
            .map_or(-1.0, |d| d.as_secs_f64() * 1000.0)
    };
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    let retry = Duration::from_secs_f64(args.retry_ms / 1000.0);
    let mut attempts = 0u32;
    let mut conn = loop {
        attempts += 1;
        match Connection::open(&args.endpoint(), "warren-load ready") {
            Ok(c) => break c,
            Err(e) if Instant::now() >= deadline => {
                return Err(Box::new(ClientError::Protocol(format!(
                    "no handshake within {} s ({attempts} attempts): {e}",
                    args.timeout
                ))));
            }
            Err(e) if args.broker_pid.is_some_and(exited) => {
                return Err(Box::new(ClientError::Protocol(format!(
                    "the broker process exited while starting ({attempts} attempts): {e}"
                ))));
            }
            Err(_) => {}
        }
        thread::sleep(retry);
    };
    let handshake_ms = ms_since(SystemTime::now());
    println!("== ready: {} ({}) ==", args.label, args.addr);
    let Some(name) = &args.queue_name else {
        conn.close()?;
        println!("handshake {handshake_ms:.1} ms after start ({attempts} attempts)");
        println!(
            "RESULT label={} scenario=Ready start_ms={handshake_ms:.1} attempts={attempts}",
            args.label
        );
        return Ok(());
    };
    let messages = conn.queue_message_count(name)?;
    let queue_ms = ms_since(SystemTime::now());
    conn.close()?;
    println!(
        "handshake {handshake_ms:.0} ms after start ({attempts} attempts); queue {name} answered at {queue_ms:.0} ms with {messages} messages"
    );
    println!(
        "RESULT label={} scenario=Ready start_ms={handshake_ms:.1} queue_ms={queue_ms:.1} recovered={messages} attempts={attempts}",
        args.label
    );
    Ok(())
}

/// Consumes the queue with manual acks until every message it held is delivered, then
/// deletes it.
pub fn drain(args: &Args) -> Outcome {
    let name = queue(args);
    let shared = Arc::new(Shared::new());
    let mut control = Connection::open(&args.endpoint(), "warren-load control")?;
    let held = u64::from(control.queue_message_count(&name)?);

    let conn = Connection::open(&args.endpoint(), "warren-load consumer")?;
    let cfg = ConsumerConfig {
        queue: name.clone(),
        no_ack: args.no_ack,
        prefetch: args.prefetch,
        ack_every: args.ack_every,
    };
    let cpu0 = broker_cpu(args);
    let start = Instant::now();
    let consumer = Consumer::start(conn, cfg, shared.clone())?;
    let all = wait_until(&shared, Duration::from_secs_f64(args.timeout), || {
        shared.consumed.load(Ordering::Relaxed) >= held
    });
    let secs = start.elapsed().as_secs_f64();
    let cpu1 = broker_cpu(args);
    let consumed = shared.consumed.load(Ordering::Relaxed);
    shared.stop_consumers.store(true, Ordering::Relaxed);
    consumer.join()?;
    let left = control.delete_queue(&name)?;
    control.close()?;
    if !all {
        return Err(Box::new(ClientError::Protocol(format!(
            "consumed {consumed} of {held} messages within {} s",
            args.timeout
        ))));
    }
    let rate = consumed as f64 / secs;
    let broker_us = cpu_us_per_msg(cpu0, cpu1, consumed);
    println!("== drain {name} on {} ({}) ==", args.label, args.addr);
    println!(
        "consumed {consumed} of {held} messages in {secs:.2} s: {rate:.0} msg/s (prefetch {}, ack every {}); broker {broker_us:.2} us CPU/msg; {left} left at delete",
        args.prefetch, args.ack_every
    );
    println!(
        "RESULT label={} scenario=Drain drain_per_s={rate:.0} drain_s={secs:.3} drained={consumed} drain_broker_us_per_msg={broker_us:.3}",
        args.label
    );
    Ok(())
}
