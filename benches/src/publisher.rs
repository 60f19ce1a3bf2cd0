//! A publisher connection: a writer thread that pipelines `basic.publish` + header + body
//! frames (many messages per socket write), and a reader thread that counts publisher
//! confirms and watches for the broker closing on us.
//!
//! With `--confirm N` the writer keeps at most N messages unconfirmed and parks when the window
//! is full; the reader unparks it after each read that settled something. The reader also
//! measures confirm latency: the writer notes the send time of each batch it writes, and a batch
//! is confirmed once every delivery tag up to its last one is.

use std::collections::{BTreeSet, VecDeque};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use amqp_codec::{AMQPClass, Frame, Method, RawProperties, encode, protocol::basic};
use bytes::{Bytes, BytesMut};

use crate::Shared;
use crate::client::{CHANNEL, ClientError, Connection, FrameReader, Result, check_close};
use crate::measure::Histogram;
use crate::topic::TopicPlan;

/// Where a publisher's messages go.
#[derive(Clone)]
pub enum Routing {
    /// Every message with this routing key (through the default exchange: a queue name).
    Fixed(String),
    /// Keys from the topic plan's table, in its order, from `start` on.
    Topic { plan: Arc<TopicPlan>, start: usize },
}

/// What one publisher does.
#[derive(Clone)]
pub struct PublisherConfig {
    /// Exchange to publish to; empty for the default exchange.
    pub exchange: String,
    pub routing: Routing,
    pub body_size: usize,
    pub persistent: bool,
    /// Outstanding-confirm window; 0 = no confirms.
    pub confirm_window: u64,
    /// Messages per second for this publisher; 0 = as fast as possible.
    pub rate: f64,
    /// At most this many messages per socket write.
    pub batch: usize,
    /// Publish this many messages in all, then wait for their confirms and close; 0 = until
    /// told to stop.
    pub limit: u64,
}

/// Confirm bookkeeping shared by the writer and reader threads of one publisher.
#[derive(Default)]
struct Confirms {
    /// Messages settled by the broker (acked or nacked).
    settled: AtomicU64,
    /// Batches written and not yet wholly confirmed: (last delivery tag, messages, send time).
    /// One lock per batch on each side; with a window of N it holds at most N entries.
    in_flight: Mutex<VecDeque<(u64, u64, u64)>>,
}

pub struct Publisher {
    writer: JoinHandle<Result<()>>,
    reader: JoinHandle<Result<Histogram>>,
}

impl Publisher {
    /// Starts the writer and reader threads on an open connection.
    pub fn start(mut conn: Connection, cfg: PublisherConfig, shared: Arc<Shared>) -> Result<Self> {
        if cfg.confirm_window > 0 {
            conn.confirm_select()?;
        }
        let confirms = Arc::new(Confirms::default());
        let frame_max = conn.frame_max;
        let Connection { writer, reader, .. } = conn;

        let w_shared = shared.clone();
        let w_confirms = confirms.clone();
        let writer = thread::Builder::new()
            .name("publisher".into())
            .spawn(move || {
                let result = write_loop(writer, &cfg, frame_max, &w_shared, &w_confirms);
                if result.is_err() {
                    w_shared.fail();
                }
                result
            })?;
        let writer_thread = writer.thread().clone();
        let reader = thread::Builder::new()
            .name("publisher-reader".into())
            .spawn(move || {
                let result = read_loop(reader, &shared, &confirms, &writer_thread);
                if result.is_err() {
                    shared.fail();
                }
                result
            })?;
        Ok(Publisher { writer, reader })
    }

    /// Waits for both threads; returns the confirm latencies (empty without confirms).
    pub fn join(self) -> Result<Histogram> {
        let w = self.writer.join().unwrap_or_else(|_| Err(panicked()));
        let r = self.reader.join().unwrap_or_else(|_| Err(panicked()));
        w.and(r)
    }
}

fn panicked() -> ClientError {
    ClientError::Protocol("publisher thread panicked".into())
}

fn properties(persistent: bool) -> RawProperties {
    if persistent {
        // Flags word with only delivery-mode set, then delivery-mode = 2.
        RawProperties::new(Bytes::from_static(&[0x10, 0x00, 2])).unwrap_or_default()
    } else {
        RawProperties::default()
    }
}

/// Asks the kernel to wake sleeping timers of this thread within ~10 µs instead of the default
/// 50 µs, so that a fixed publish rate is kept without spinning.
fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 10_000u64);
    }
}

fn write_loop(
    mut stream: TcpStream,
    cfg: &PublisherConfig,
    frame_max: u32,
    shared: &Shared,
    confirms: &Confirms,
) -> Result<()> {
    let props = properties(cfg.persistent);
    let mut body = vec![0xA5u8; cfg.body_size];
    let mut out = BytesMut::with_capacity(cfg.batch * (cfg.body_size + 128));
    let exchange = cfg.exchange.as_bytes();
    let (fixed_key, topic, mut next_key) = match &cfg.routing {
        Routing::Fixed(key) => (key.as_bytes(), None, 0),
        Routing::Topic { plan, start } => (&b""[..], Some(plan.as_ref()), *start),
    };
    let mut sent: u64 = 0;
    let start = Instant::now();
    if cfg.rate > 0.0 {
        tighten_timer_slack();
    }

    while !shared.stopping_publishers() {
        let mut n = cfg.batch as u64;
        if cfg.limit > 0 {
            if sent >= cfg.limit {
                break;
            }
            n = n.min(cfg.limit - sent);
        }
        if cfg.rate > 0.0 {
            let due = (start.elapsed().as_secs_f64() * cfg.rate) as u64;
            if due <= sent {
                let next = start + Duration::from_secs_f64((sent + 1) as f64 / cfg.rate);
                thread::sleep(next.saturating_duration_since(Instant::now()));
                continue;
            }
            n = n.min(due - sent);
        }
        if cfg.confirm_window > 0 {
            let outstanding = sent - confirms.settled.load(Ordering::Acquire);
            let room = cfg.confirm_window.saturating_sub(outstanding);
            if room == 0 {
                thread::park_timeout(Duration::from_millis(10));
                continue;
            }
            n = n.min(room);
        }

        out.clear();
        // One clock read per write: messages of one batch leave together anyway.
        let stamp = shared.now_nanos();
        if cfg.confirm_window > 0
            && let Ok(mut q) = confirms.in_flight.lock()
        {
            q.push_back((sent + n, n, stamp));
        }
        if body.len() >= 8 {
            body[..8].copy_from_slice(&stamp.to_be_bytes());
        }
        let mut routed = 0u64;
        for _ in 0..n {
            let key = match topic {
                None => fixed_key,
                Some(plan) => {
                    // The table's length is a power of two: wrapping is a mask.
                    let (key, hits) = plan.key(next_key);
                    next_key = (next_key + 1) & (plan.len() - 1);
                    routed += u64::from(hits);
                    key
                }
            };
            encode::publish(&mut out, CHANNEL, exchange, key, false);
            encode::content(&mut out, CHANNEL, &props, &body, frame_max);
        }
        stream.write_all(&out)?;
        sent += n;
        shared.published.fetch_add(n, Ordering::Relaxed);
        if topic.is_some() {
            shared.routed.fetch_add(routed, Ordering::Relaxed);
        }
    }

    // Give outstanding confirms a bounded time to arrive, then close the connection. A run
    // with a message limit is about every message being confirmed: wait longer.
    if cfg.confirm_window > 0 {
        let wait = Duration::from_secs(if cfg.limit > 0 { 60 } else { 5 });
        let deadline = Instant::now() + wait;
        while confirms.settled.load(Ordering::Acquire) < sent && Instant::now() < deadline {
            thread::park_timeout(Duration::from_millis(10));
        }
    }
    Connection::send_close(&mut stream)
}

/// Confirm delivery tags seen so far: everything up to `upto`, plus single tags above it.
#[derive(Default)]
struct Settled {
    upto: u64,
    above: BTreeSet<u64>,
}

impl Settled {
    fn settle(&mut self, tag: u64, multiple: bool) {
        if multiple {
            if tag > self.upto {
                self.upto = tag;
                self.above = self.above.split_off(&(tag + 1));
            }
        } else if tag == self.upto + 1 {
            self.upto = tag;
        } else if tag > self.upto {
            self.above.insert(tag);
        }
        while self.above.first() == Some(&(self.upto + 1)) {
            self.above.pop_first();
            self.upto += 1;
        }
    }

    fn count(&self) -> u64 {
        self.upto + self.above.len() as u64
    }
}

fn read_loop(
    mut reader: FrameReader,
    shared: &Shared,
    confirms: &Confirms,
    writer: &thread::Thread,
) -> Result<Histogram> {
    let mut settled = Settled::default();
    let mut latency = Histogram::default();
    loop {
        let before = settled.count();
        while let Some(frame) = reader.next_buffered()? {
            match frame {
                Frame::Method {
                    method: Method::Ack(ack),
                    ..
                } => {
                    settled.settle(ack.delivery_tag, ack.multiple);
                }
                Frame::Method {
                    method: Method::Other(AMQPClass::Basic(basic::AMQPMethod::Nack(nack))),
                    ..
                } => {
                    let b = settled.count();
                    settled.settle(nack.delivery_tag, nack.multiple);
                    shared
                        .nacked
                        .fetch_add(settled.count() - b, Ordering::Relaxed);
                }
                Frame::Method {
                    method:
                        Method::Other(AMQPClass::Connection(
                            amqp_codec::protocol::connection::AMQPMethod::CloseOk(_),
                        )),
                    ..
                } => return Ok(latency),
                Frame::Method {
                    method: Method::Other(class),
                    ..
                } => check_close(&class)?,
                _ => {}
            }
        }
        let now = settled.count();
        if now != before {
            confirms.settled.store(now, Ordering::Release);
            shared.confirmed.fetch_add(now - before, Ordering::Relaxed);
            writer.unpark();
            let at = shared.now_nanos();
            let recording = shared.recording();
            if let Ok(mut q) = confirms.in_flight.lock() {
                while let Some(&(last, n, stamp)) = q.front() {
                    if last > settled.upto {
                        break;
                    }
                    q.pop_front();
                    if recording {
                        latency.record_n(at.saturating_sub(stamp), n);
                    }
                }
            }
        }
        match reader.fill() {
            Ok(_) => {}
            // After we asked to stop, the broker hanging up is the end we wanted.
            Err(ClientError::Eof) if shared.stopping_publishers() => return Ok(latency),
            Err(e) => return Err(e),
        }
        if shared.abandoned() {
            return Ok(latency);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Settled;

    #[test]
    fn settled_counts_multiple_and_out_of_order_single_confirms() {
        let mut s = Settled::default();
        s.settle(3, false);
        s.settle(1, false);
        assert_eq!((s.upto, s.count()), (1, 2));
        s.settle(2, false);
        assert_eq!((s.upto, s.count()), (3, 3));
        s.settle(7, false);
        s.settle(6, true);
        assert_eq!((s.upto, s.count()), (7, 7));
    }
}
