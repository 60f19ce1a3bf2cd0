//! The idle-connections scenario: open `--connections` AMQP connections with one channel each,
//! leave them idle, and read what they cost the broker in resident memory.
//!
//! A few threads (`--connect-threads`) shake hands in parallel; each connection then keeps only
//! its socket (one file descriptor, no thread, no buffer: heartbeats are off, so an idle
//! connection has nothing to read or write). After `--idle` seconds the broker's RSS is read,
//! every socket is checked (still open and silent, or closed by the broker), all of them are
//! closed with `connection.close`, and after another `--idle` seconds the RSS is read again.

use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::Args;
use crate::client::{ClientError, Connection};
use crate::measure;

type Outcome = Result<(), Box<dyn std::error::Error>>;

/// Descriptors we need besides the connections (stdio, the control socket, slack).
const SPARE_FDS: u64 = 64;

/// What the opening threads hand back: their sockets and the first error, if any.
struct Opened {
    streams: Vec<TcpStream>,
    error: Option<(usize, ClientError)>,
}

/// Open sockets that are silent (`alive`), closed by the broker, or that have something to
/// read (a `connection.close` from the broker, most likely).
fn check(streams: &[TcpStream]) -> (usize, usize, usize) {
    let (mut alive, mut closed, mut spoke) = (0, 0, 0);
    let mut byte = [0u8; 1];
    for s in streams {
        if s.set_nonblocking(true).is_err() {
            closed += 1;
            continue;
        }
        match s.peek(&mut byte) {
            Ok(0) => closed += 1,
            Ok(_) => spoke += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => alive += 1,
            Err(_) => closed += 1,
        }
    }
    (alive, closed, spoke)
}

pub fn connections(args: &Args) -> Outcome {
    let n = args.connections;
    let pid = args
        .broker_pid
        .ok_or("the connections scenario needs --broker-pid to read the broker's memory")?;
    let want = n as u64 + SPARE_FDS;
    let ours = measure::raise_open_files(want)?;
    if ours < want {
        return Err(format!(
            "warren-load may open {ours} files and {n} connections need {want}: raise `ulimit -n`"
        )
        .into());
    }
    let broker_fds = measure::open_files_limit(pid);
    if let Some(limit) = broker_fds
        && limit < want
    {
        eprintln!(
            "warren-load: the broker may open only {limit} files: fewer than {n} connections will work"
        );
    }
    let me = std::process::id();
    let idle = Duration::from_secs_f64(args.idle);

    let rss0 = measure::rss_kib(pid).ok_or("cannot read the broker's RSS")?;
    let self0 = measure::rss_kib(me).unwrap_or(0);
    let cpu0 = measure::process_cpu(pid).ok();
    let start = Instant::now();
    let threads = args.connect_threads.clamp(1, n.max(1));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let ep = args.endpoint();
            let stop = stop.clone();
            thread::Builder::new()
                .name(format!("connect-{t}"))
                .spawn(move || {
                    let mine = (t..n).step_by(threads);
                    let mut opened = Opened {
                        streams: Vec::with_capacity(mine.len()),
                        error: None,
                    };
                    for i in mine {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match Connection::open_idle(&ep, &format!("warren-load idle {i}")) {
                            Ok(s) => opened.streams.push(s),
                            Err(e) => {
                                opened.error = Some((i, e));
                                stop.store(true, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                    opened
                })
        })
        .collect::<io::Result<_>>()?;
    let mut streams = Vec::with_capacity(n);
    let mut error = None;
    for h in handles {
        let opened = h
            .join()
            .map_err(|_| ClientError::Protocol("connect thread panicked".into()))?;
        streams.extend(opened.streams);
        if error.is_none() {
            error = opened.error;
        }
    }
    let open_s = start.elapsed().as_secs_f64();
    let cpu1 = measure::process_cpu(pid).ok();
    let opened = streams.len();

    thread::sleep(idle);
    let rss1 = measure::rss_kib(pid).unwrap_or(0);
    let self1 = measure::rss_kib(me).unwrap_or(0);
    let (alive, closed, spoke) = check(&streams);

    // Close them all, give the broker a moment to answer, then drop the sockets.
    for s in &mut streams {
        let _ = s.set_nonblocking(false);
        let _ = Connection::send_close(s);
    }
    thread::sleep(Duration::from_secs(1));
    drop(streams);
    thread::sleep(idle);
    let rss2 = measure::rss_kib(pid).unwrap_or(0);

    let per = |kib: u64, base: u64| kib.saturating_sub(base) as f64 / opened.max(1) as f64;
    let broker_us = match (cpu0, cpu1) {
        (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64() * 1e6 / opened.max(1) as f64,
        _ => -1.0,
    };
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "== {n} idle connections on {} ({}) ==",
        args.label, args.addr
    );
    println!(
        "opened {opened} of {n} in {open_s:.2} s ({:.0}/s, {threads} threads); broker {broker_us:.0} us CPU per connection",
        opened as f64 / open_s
    );
    println!(
        "after {:.0} s idle: {alive} open and silent, {closed} closed by the broker, {spoke} with something to read",
        idle.as_secs_f64()
    );
    println!(
        "broker RSS: {:.1} MiB before, {:.1} MiB with them ({:.1} KiB per connection), {:.1} MiB {:.0} s after closing them",
        mib(rss0),
        mib(rss1),
        per(rss1, rss0),
        mib(rss2),
        idle.as_secs_f64() + 1.0
    );
    println!(
        "warren-load RSS: {:.1} MiB before, {:.1} MiB with them ({:.2} KiB per connection); broker open-files limit {}",
        mib(self0),
        mib(self1),
        per(self1, self0),
        broker_fds.map_or("unknown".to_string(), |l| l.to_string())
    );
    if let Some((i, e)) = &error {
        println!("connection {i} failed: {e}");
    }
    println!(
        "RESULT label={} scenario=Connections conns_wanted={n} conns_opened={opened} conns_alive={alive} open_s={open_s:.3} conns_per_s={:.0} broker_us_per_conn={broker_us:.1} rss_before_mib={:.1} rss_conns_mib={:.1} rss_closed_mib={:.1} rss_per_conn_kib={:.2} gen_rss_per_conn_kib={:.2}",
        args.label,
        opened as f64 / open_s,
        mib(rss0),
        mib(rss1),
        mib(rss2),
        per(rss1, rss0),
        per(self1, self0),
    );
    match error {
        Some((i, e)) => Err(format!("connection {i} of {n} failed: {e}").into()),
        None if alive < n => Err(format!("only {alive} of {n} connections were still open").into()),
        None => Ok(()),
    }
}
