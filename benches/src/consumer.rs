//! A consumer connection on one thread: read whatever the socket has, decode every frame in
//! it, count completed messages and their latency, then ack the whole run with one
//! `basic.ack(multiple = true)` once at least `ack_every` deliveries are unacked.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use amqp_codec::{Frame, Method, encode};
use bytes::BytesMut;

use crate::Shared;
use crate::client::{CHANNEL, ClientError, Connection, Result, check_close, wait_close_ok};
use crate::measure::Histogram;

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub queue: String,
    pub no_ack: bool,
    pub prefetch: u16,
    pub ack_every: u64,
}

pub struct Consumer {
    handle: JoinHandle<Result<Histogram>>,
}

impl Consumer {
    /// Sets prefetch, starts consuming, and hands the connection to its own thread.
    pub fn start(mut conn: Connection, cfg: ConsumerConfig, shared: Arc<Shared>) -> Result<Self> {
        if !cfg.no_ack {
            conn.qos(cfg.prefetch)?;
        }
        conn.consume(&cfg.queue, cfg.no_ack)?;
        let handle = thread::Builder::new()
            .name("consumer".into())
            .spawn(move || {
                let result = consume_loop(conn, &cfg, &shared);
                if result.is_err() {
                    shared.fail();
                }
                result
            })?;
        Ok(Consumer { handle })
    }

    /// The latencies this consumer recorded.
    pub fn join(self) -> Result<Histogram> {
        self.handle
            .join()
            .unwrap_or_else(|_| Err(ClientError::Protocol("consumer thread panicked".into())))
    }
}

/// Where we are in the method + header + body frames of the current delivery.
enum Assembly {
    Idle,
    AwaitHeader,
    /// Body bytes still to come; `stamp` is the send time from the first body frame (a body
    /// may span several frames and several socket reads).
    Body {
        remaining: u64,
        first: bool,
        stamp: Option<u64>,
    },
}

fn consume_loop(mut conn: Connection, cfg: &ConsumerConfig, shared: &Shared) -> Result<Histogram> {
    let mut hist = Histogram::default();
    let mut out = BytesMut::with_capacity(64);
    let mut state = Assembly::Idle;
    // Tag of the delivery being assembled, and of the last one received whole.
    let mut pending_tag = 0u64;
    let mut last_tag = 0u64;
    let mut acked = 0u64;

    loop {
        let recording = shared.recording();
        // One clock read per socket read: every message in it arrived by now.
        let now = shared.now_nanos();
        let mut completed = 0u64;
        while let Some(frame) = conn.reader.next_buffered()? {
            match frame {
                Frame::Method {
                    method: Method::Deliver(d),
                    ..
                } => {
                    pending_tag = d.delivery_tag;
                    state = Assembly::AwaitHeader;
                }
                Frame::Header { header, .. } => {
                    if !matches!(state, Assembly::AwaitHeader) {
                        return Err(ClientError::Protocol("content header out of order".into()));
                    }
                    if header.body_size == 0 {
                        completed += 1;
                        last_tag = pending_tag;
                        state = Assembly::Idle;
                    } else {
                        state = Assembly::Body {
                            remaining: header.body_size,
                            first: true,
                            stamp: None,
                        };
                    }
                }
                Frame::Body { payload, .. } => {
                    let Assembly::Body {
                        remaining,
                        first,
                        stamp,
                    } = &mut state
                    else {
                        return Err(ClientError::Protocol("body frame out of order".into()));
                    };
                    if *first && payload.len() >= 8 {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&payload[..8]);
                        *stamp = Some(u64::from_be_bytes(b));
                    }
                    *first = false;
                    *remaining = remaining.saturating_sub(payload.len() as u64);
                    if *remaining == 0 {
                        completed += 1;
                        last_tag = pending_tag;
                        if recording && let Some(sent) = *stamp {
                            hist.record(now.saturating_sub(sent));
                        }
                        state = Assembly::Idle;
                    }
                }
                Frame::Method {
                    method: Method::Other(class),
                    ..
                } => check_close(&class)?,
                _ => {}
            }
        }
        if completed > 0 {
            shared.consumed.fetch_add(completed, Ordering::Relaxed);
        }
        if !cfg.no_ack && last_tag - acked >= cfg.ack_every {
            out.clear();
            encode::ack(&mut out, CHANNEL, last_tag, true);
            conn.writer.write_all(&out)?;
            acked = last_tag;
        }
        if shared.stopping_consumers() {
            break;
        }
        conn.reader.fill()?;
    }

    // Ack what we counted, so that what the queue still holds at its deletion is exactly what
    // we did not see (closing requeues the rest).
    if !cfg.no_ack && last_tag > acked {
        out.clear();
        encode::ack(&mut out, CHANNEL, last_tag, true);
        conn.writer.write_all(&out)?;
    }
    Connection::send_close(&mut conn.writer)?;
    wait_close_ok(&mut conn.reader, Duration::from_secs(3))?;
    Ok(hist)
}
