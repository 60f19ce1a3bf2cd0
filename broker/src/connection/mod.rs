//! One client connection: the "reader" of RabbitMQ's split. It owns the socket's read side,
//! the frame codec, heartbeats, tune limits and the channel table, and turns protocol errors
//! into close frames in one place ([`Connection::close_with`]).
//!
//! One task runs the connection: it reads a batch of frames, handles all of them, drains the
//! deliveries queues left in its outbox, pumps queues whose consumers got credit back, and
//! hands everything it wrote to the writer task in one piece.

mod close;
mod handshake;
pub mod outbox;
mod writer;

use crate::hash::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amqp_codec::protocol::{AMQPClass, basic, channel, connection};
use amqp_codec::{Frame, FrameDecoder, Method, encode};
use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::channel::{Channel, ChannelContext};
use crate::durable::StoreBatch;
use crate::error::{ProtocolError, ReplyCode};
use crate::queue::{ConnectionId, Queue};
use crate::server::BrokerState;
use crate::vhost::{RouteScratch, VHost};
use handshake::{ClientCapabilities, HandshakeError};
use outbox::{Outbox, OutboxItem};
use writer::WriterMsg;

/// Bytes read per socket read at most; also the initial read buffer size.
const READ_BUFFER: usize = 64 * 1024;
/// How long a peer may take to answer our `connection.close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often unacked deliveries are checked against consumer timeouts.
const ACK_TIMEOUT_CHECK: Duration = Duration::from_millis(500);
/// Rounds of dead-lettering per batch (a dead letter may cause another).
const MAX_DEAD_LETTER_ROUNDS: usize = 8;
/// RabbitMQ's handshake timeout.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

enum ChannelSlot {
    Open(Box<Channel>),
    /// We sent `channel.close` and wait for `close-ok`; other frames are dropped.
    Closing,
}

/// Why the main loop ended.
enum Exit {
    /// The client closed with `connection.close`; close-ok is written.
    ClientClosed,
    /// A hard error or a shutdown: send `connection.close` with this.
    Error(ProtocolError),
    PeerGone,
    HeartbeatTimeout,
}

pub struct Connection {
    id: ConnectionId,
    peer: SocketAddr,
    broker: Arc<BrokerState>,
    read: OwnedReadHalf,
    rbuf: BytesMut,
    decoder: FrameDecoder,
    /// Frames written since the last flush.
    out: BytesMut,
    writer: mpsc::Sender<WriterMsg>,
    outbox: Arc<Outbox>,
    outbox_items: Vec<OutboxItem>,
    channels: HashMap<u16, ChannelSlot>,
    exclusive_queues: Vec<Arc<Queue>>,
    to_pump: Vec<Arc<Queue>>,
    /// Has this connection published? Only publishers are blocked by resource alarms.
    published: bool,
    /// Did we tell the client `connection.blocked`?
    blocked_sent: bool,
    last_read: Instant,
    /// Store writes of the current batch and the enqueues waiting for them.
    batch: StoreBatch,
    /// Queues touched this batch that may hold dead letters.
    dead_candidates: Vec<Arc<Queue>>,
    route_scratch: RouteScratch,
    /// The time at the start of the current batch (delivery timestamps for ack timeouts).
    now: Instant,
}

/// Runs one accepted connection to its end.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    broker: Arc<BrokerState>,
    shutdown: watch::Receiver<bool>,
) {
    let id = broker.next_connection_id();
    let span = tracing::info_span!("connection", id, %peer);
    async move {
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let (writer_tx, writer_rx) = mpsc::channel(writer::WRITER_QUEUE);
        let writer_task = tokio::spawn(writer::run(write, writer_rx).in_current_span());
        let outbox = Arc::new(Outbox::default());
        let batch = StoreBatch::new(broker.store(), Arc::clone(&outbox));
        let mut conn = Connection {
            id,
            peer,
            decoder: FrameDecoder::new(broker.config.frame_max),
            broker,
            read,
            rbuf: BytesMut::with_capacity(READ_BUFFER),
            out: BytesMut::with_capacity(READ_BUFFER),
            writer: writer_tx,
            outbox,
            batch,
            dead_candidates: Vec::new(),
            route_scratch: RouteScratch::default(),
            now: Instant::now(),
            outbox_items: Vec::new(),
            channels: HashMap::default(),
            exclusive_queues: Vec::new(),
            to_pump: Vec::new(),
            published: false,
            blocked_sent: false,
            last_read: Instant::now(),
        };
        conn.run(shutdown).await;
        drop(conn);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer_task).await;
    }
    .instrument(span)
    .await
}

impl Connection {
    async fn run(&mut self, shutdown: watch::Receiver<bool>) {
        tracing::debug!("accepted connection");
        let session = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handshake()).await {
            Err(_) => {
                tracing::warn!("closing connection: handshake timeout");
                return;
            }
            Ok(Err(HandshakeError::BadProtocolHeader)) => {
                tracing::warn!("closing connection: client sent an unsupported protocol header");
                return;
            }
            Ok(Err(HandshakeError::Disconnected)) => {
                tracing::info!("client closed the connection during the handshake");
                return;
            }
            Ok(Err(HandshakeError::Refused { error, send_close })) => {
                if send_close {
                    self.close_with(error).await;
                } else {
                    tracing::warn!(code = error.code.code(), text = %error.text, "closing connection");
                }
                return;
            }
            Ok(Ok(session)) => session,
        };
        tracing::info!(
            user = %session.user,
            vhost = %session.vhost.name,
            heartbeat = session.tuning.heartbeat,
            frame_max = session.tuning.frame_max,
            "connection open"
        );
        let _ = self
            .writer
            .send(WriterMsg::Heartbeat(session.tuning.heartbeat))
            .await;
        if self.flush().await.is_err() {
            return;
        }
        let exit = self.main_loop(&session, shutdown).await;
        let client_closed = matches!(exit, Exit::ClientClosed);
        match exit {
            Exit::ClientClosed => {
                let _ = self.flush().await;
                tracing::info!("client closed the connection");
            }
            Exit::Error(error) => self.close_with(error).await,
            Exit::PeerGone => tracing::info!("client went away without closing the connection"),
            Exit::HeartbeatTimeout => tracing::warn!(
                timeout_secs = u64::from(session.tuning.heartbeat) * 2,
                "missed heartbeats from client; closing connection"
            ),
        }
        self.cleanup(&session.vhost);
        if client_closed {
            // As RabbitMQ does, leave closing the socket to the client after close-ok:
            // some clients (lapin) report a connection whose socket closes under them
            // before they saw close-ok as failed rather than closed.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.await_peer_close()).await;
        }
    }

    async fn main_loop(&mut self, session: &Session, mut shutdown: watch::Receiver<bool>) -> Exit {
        let mut blocked = self.broker.memory.subscribe();
        let heartbeat = Duration::from_secs(u64::from(session.tuning.heartbeat).max(1));
        let mut heartbeat_check = tokio::time::interval(heartbeat);
        let heartbeats_on = session.tuning.heartbeat > 0;
        let mut ack_timeouts = tokio::time::interval(ACK_TIMEOUT_CHECK);
        let outbox = Arc::clone(&self.outbox);
        loop {
            let alarm = *blocked.borrow_and_update();
            let read_allowed = !(alarm && self.published);
            if read_allowed == self.blocked_sent {
                self.tell_blocked(!read_allowed, session.capabilities);
                if self.flush().await.is_err() {
                    return Exit::PeerGone;
                }
            }
            tokio::select! {
                _ = shutdown.changed() => {
                    return Exit::Error(ProtocolError::new(
                        ReplyCode::ConnectionForced,
                        "broker forced connection closure with reason 'shutdown'",
                    ));
                }
                read = self.read.read_buf(&mut self.rbuf), if read_allowed => {
                    match read {
                        Ok(0) | Err(_) => return Exit::PeerGone,
                        Ok(_) => {}
                    }
                    self.last_read = Instant::now();
                    if let Some(exit) = self.handle_frames(session) {
                        return exit;
                    }
                }
                _ = outbox.notified() => {}
                _ = heartbeat_check.tick(), if heartbeats_on => {
                    if self.last_read.elapsed() > heartbeat * 2 {
                        return Exit::HeartbeatTimeout;
                    }
                }
                _ = blocked.changed() => {}
                _ = ack_timeouts.tick() => self.check_ack_timeouts(&session.vhost),
            }
            self.now = Instant::now();
            self.after_batch(session);
            if self.flush().await.is_err() {
                return Exit::PeerGone;
            }
        }
    }

    /// `connection.blocked` / `unblocked`, for clients that asked for them.
    fn tell_blocked(&mut self, block: bool, caps: ClientCapabilities) {
        self.blocked_sent = block;
        if !caps.connection_blocked {
            return;
        }
        let method = if block {
            tracing::info!("blocking publisher: resource alarm");
            connection::AMQPMethod::Blocked(connection::Blocked {
                reason: self.broker.memory.reason().into(),
            })
        } else {
            connection::AMQPMethod::Unblocked(connection::Unblocked {})
        };
        encode::method(&mut self.out, 0, &AMQPClass::Connection(method));
    }

    /// Decodes and handles every whole frame in the read buffer.
    fn handle_frames(&mut self, session: &Session) -> Option<Exit> {
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(frame)) => {
                    if let Some(exit) = self.handle_frame(frame, session) {
                        return Some(exit);
                    }
                }
                Ok(None) => {
                    if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                        self.rbuf.reserve(READ_BUFFER);
                    }
                    return None;
                }
                Err(e) => {
                    let code =
                        ReplyCode::from_code(e.reply_code()).unwrap_or(ReplyCode::FrameError);
                    return Some(Exit::Error(ProtocolError::new(code, &e).on(e.method_ids())));
                }
            }
        }
    }

    fn handle_frame(&mut self, frame: Frame, session: &Session) -> Option<Exit> {
        // Held-back publishes become visible before any method that could observe a queue.
        if let Frame::Method { method, .. } = &frame
            && !matches!(method, Method::Publish(_) | Method::Ack(_))
            && self.batch.has_pending()
        {
            self.batch.flush();
        }
        let channel_id = frame.channel();
        if channel_id == 0 {
            return self.handle_connection_frame(frame);
        }
        let channel_method = match &frame {
            Frame::Method {
                method: Method::Other(AMQPClass::Channel(m)),
                ..
            } => Some(m.clone()),
            _ => None,
        };
        let open_channels = self.channels.len();
        match (self.channels.get_mut(&channel_id), channel_method) {
            (None, Some(channel::AMQPMethod::Open(_)))
                if open_channels >= usize::from(session.tuning.channel_max) =>
            {
                Some(Exit::Error(
                    ProtocolError::not_allowed(format!(
                        "number of channels opened ({open_channels}) has reached the negotiated channel_max ({})",
                        session.tuning.channel_max
                    ))
                    .on((20, 10)),
                ))
            }
            (None, Some(channel::AMQPMethod::Open(_))) => {
                self.channels.insert(
                    channel_id,
                    ChannelSlot::Open(Box::new(Channel::new(channel_id))),
                );
                let ok = AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {}));
                encode::method(&mut self.out, channel_id, &ok);
                None
            }
            (None, _) => Some(Exit::Error(
                ProtocolError::channel_error("expected 'channel.open'").on(frame_ids(&frame)),
            )),
            (Some(ChannelSlot::Closing), Some(channel::AMQPMethod::CloseOk(_))) => {
                self.channels.remove(&channel_id);
                None
            }
            (Some(ChannelSlot::Closing), Some(channel::AMQPMethod::Close(_))) => {
                self.channels.remove(&channel_id);
                let ok = AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}));
                encode::method(&mut self.out, channel_id, &ok);
                None
            }
            (Some(ChannelSlot::Closing), _) => None,
            (Some(ChannelSlot::Open(_)), Some(channel::AMQPMethod::Open(_))) => Some(Exit::Error(
                ProtocolError::channel_error("second 'channel.open' seen").on((20, 10)),
            )),
            (Some(ChannelSlot::Open(_)), Some(channel::AMQPMethod::Close(close))) => {
                tracing::debug!(
                    channel = channel_id,
                    code = close.reply_code,
                    "client closed channel"
                );
                self.close_channel(channel_id, &session.vhost);
                self.channels.remove(&channel_id);
                let ok = AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {}));
                encode::method(&mut self.out, channel_id, &ok);
                None
            }
            (Some(ChannelSlot::Open(_)), Some(channel::AMQPMethod::CloseOk(_))) => None,
            (Some(ChannelSlot::Open(ch)), _) => {
                let mut ctx = ChannelContext {
                    conn_id: self.id,
                    user: &session.user,
                    vhost: &session.vhost,
                    outbox: &self.outbox,
                    out: &mut self.out,
                    frame_max: session.tuning.frame_max,
                    max_message_size: self.broker.config.max_message_size,
                    to_pump: &mut self.to_pump,
                    exclusive_queues: &mut self.exclusive_queues,
                    published: &mut self.published,
                    batch: &mut self.batch,
                };
                match ch.handle(frame, &mut ctx) {
                    Ok(()) => None,
                    Err(error) if error.closes_connection() => Some(Exit::Error(error)),
                    Err(error) => {
                        self.channel_exception(channel_id, error, &session.vhost);
                        None
                    }
                }
            }
        }
    }

    fn handle_connection_frame(&mut self, frame: Frame) -> Option<Exit> {
        match frame {
            Frame::Heartbeat { .. } => None,
            Frame::Method {
                method: Method::Other(AMQPClass::Connection(m)),
                ..
            } => match m {
                connection::AMQPMethod::Close(close) => {
                    tracing::debug!(code = close.reply_code, text = %close.reply_text, "client sent connection.close");
                    let ok = connection::AMQPMethod::CloseOk(connection::CloseOk {});
                    encode::method(&mut self.out, 0, &AMQPClass::Connection(ok));
                    Some(Exit::ClientClosed)
                }
                connection::AMQPMethod::CloseOk(_) => Some(Exit::ClientClosed),
                connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_) => None,
                connection::AMQPMethod::UpdateSecret(_) => {
                    let ok = connection::AMQPMethod::UpdateSecretOk(connection::UpdateSecretOk {});
                    encode::method(&mut self.out, 0, &AMQPClass::Connection(ok));
                    None
                }
                other => {
                    let class = AMQPClass::Connection(other);
                    let ids = (class.get_amqp_class_id(), class.get_amqp_method_id());
                    Some(Exit::Error(
                        ProtocolError::command_invalid("unexpected connection method").on(ids),
                    ))
                }
            },
            Frame::Method { method, .. } => Some(Exit::Error(
                ProtocolError::channel_error("unexpected method in connection state running")
                    .on(method.ids()),
            )),
            Frame::Header { .. } | Frame::Body { .. } => Some(Exit::Error(
                ProtocolError::unexpected_frame("content frame on channel 0"),
            )),
        }
    }

    /// A soft error: the channel is closed with `channel.close`, the connection goes on.
    fn channel_exception(&mut self, channel_id: u16, error: ProtocolError, vhost: &Arc<VHost>) {
        tracing::warn!(
            channel = channel_id,
            code = error.code.code(),
            text = %error.text,
            class_id = error.class_id,
            method_id = error.method_id,
            "channel error"
        );
        self.close_channel(channel_id, vhost);
        self.channels.insert(channel_id, ChannelSlot::Closing);
        let close = AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: error.code.code(),
            reply_text: error.text.as_str().into(),
            class_id: error.class_id,
            method_id: error.method_id,
        }));
        encode::method(&mut self.out, channel_id, &close);
    }

    /// Releases a channel's consumers and unacked messages.
    fn close_channel(&mut self, channel_id: u16, vhost: &Arc<VHost>) {
        if let Some(ChannelSlot::Open(ch)) = self.channels.get_mut(&channel_id) {
            for queue in ch.close(vhost, &mut self.to_pump, &mut self.batch) {
                vhost.remove_queue_if_present(&queue);
            }
        }
    }

    /// Work after a batch of frames: deliveries waiting in the outbox, queues to pump, and
    /// the publisher confirms the batch earned.
    fn after_batch(&mut self, session: &Session) {
        self.batch.flush();
        self.drain_outbox(session);
        if !self.to_pump.is_empty() {
            for queue in &self.to_pump {
                queue.pump();
            }
            self.dead_candidates.append(&mut self.to_pump);
            self.drain_outbox(session);
        }
        self.send_dead_letters(&session.vhost);
        // Writes from deliveries and acks in this batch (delivered flags, removals).
        self.batch.submit();
        for slot in self.channels.values_mut() {
            if let ChannelSlot::Open(ch) = slot {
                ch.flush_confirms(&mut self.out);
            }
        }
    }

    /// Dead-letters what the queues touched in this batch dropped (expired, over a length
    /// limit). Dead letters can land in queues that drop some of their own, so this repeats,
    /// a bounded number of times: cycles are cut by `x-death` checks anyway.
    fn send_dead_letters(&mut self, vhost: &Arc<VHost>) {
        for _ in 0..MAX_DEAD_LETTER_ROUNDS {
            self.batch.take_touched(&mut self.dead_candidates);
            if self.dead_candidates.is_empty() {
                return;
            }
            for queue in self.dead_candidates.drain(..) {
                let letters = queue.take_dead_letters();
                crate::queue::dead_letter(
                    vhost,
                    &queue,
                    letters,
                    &mut self.batch,
                    &mut self.route_scratch,
                );
            }
            if !self.batch.has_pending() {
                return;
            }
            self.batch.flush();
        }
    }

    /// Closes channels holding a delivery unacked past its queue's consumer timeout.
    fn check_ack_timeouts(&mut self, vhost: &Arc<VHost>) {
        let now = Instant::now();
        let mut expired = Vec::new();
        for (id, slot) in &self.channels {
            if let ChannelSlot::Open(ch) = slot
                && let Some(timeout_ms) = ch.ack_timeout_exceeded(now)
            {
                expired.push((*id, timeout_ms));
            }
        }
        for (id, timeout_ms) in expired {
            let error = ProtocolError::precondition_failed(format!(
                "delivery acknowledgement on channel {id} timed out. Timeout value used: {timeout_ms} ms. This timeout value can be configured, see consumers doc guide to learn more"
            ));
            self.channel_exception(id, error, vhost);
        }
    }

    fn drain_outbox(&mut self, session: &Session) {
        let mut items = std::mem::take(&mut self.outbox_items);
        self.outbox.take(&mut items);
        // One reservation for the whole burst: growing the buffer frame by frame re-copied
        // it at every doubling (~4% of broker CPU for small no-ack messages).
        self.out.reserve(items.iter().map(encoded_size_hint).sum());
        let mut delivered = 0;
        for item in items.drain(..) {
            match item {
                OutboxItem::Deliver(delivery) => {
                    delivered += 1;
                    match self.channels.get_mut(&delivery.consumer.channel) {
                        Some(ChannelSlot::Open(ch)) => ch.deliver(
                            delivery,
                            &mut self.out,
                            session.tuning.frame_max,
                            &mut self.batch,
                            self.now,
                        ),
                        _ => {
                            delivery.consumer.release_credit(1);
                            delivery
                                .queue
                                .requeue_unsent(delivery.entry, delivery.consumer.no_ack);
                        }
                    }
                }
                OutboxItem::Durable { batch, ok } => {
                    for slot in self.channels.values_mut() {
                        if let ChannelSlot::Open(ch) = slot {
                            ch.on_durable(batch, ok, &mut self.out);
                        }
                    }
                }
                OutboxItem::Cancel { channel, tag } => {
                    if let Some(ChannelSlot::Open(ch)) = self.channels.get_mut(&channel)
                        && ch.consumer_cancelled_by_queue(&tag)
                        && session.capabilities.consumer_cancel_notify
                    {
                        let cancel = basic::AMQPMethod::Cancel(basic::Cancel {
                            consumer_tag: tag.as_str().into(),
                            nowait: true,
                        });
                        encode::method(&mut self.out, channel, &AMQPClass::Basic(cancel));
                    }
                }
            }
        }
        self.outbox_items = items;
        self.outbox.delivered(delivered);
        if self.outbox.take_stalled() {
            for slot in self.channels.values() {
                if let ChannelSlot::Open(ch) = slot {
                    for queue in ch.consumed_queues() {
                        if !self.to_pump.iter().any(|q| Arc::ptr_eq(q, queue)) {
                            self.to_pump.push(Arc::clone(queue));
                        }
                    }
                }
            }
        }
    }

    /// Hands everything written so far to the writer task.
    async fn flush(&mut self) -> Result<(), ()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let chunk = self.out.split().freeze();
        self.writer
            .send(WriterMsg::Data(chunk))
            .await
            .map_err(|_| ())
    }
}

/// About how many bytes an outbox item becomes on the wire (deliver method, content header
/// and body frames); a little over is fine.
fn encoded_size_hint(item: &OutboxItem) -> usize {
    const FRAMING: usize = 128;
    match item {
        OutboxItem::Deliver(d) => {
            let m = &d.entry.message;
            FRAMING
                + d.consumer.tag.len()
                + m.exchange.len()
                + m.routing_key.len()
                + m.properties.as_bytes().len()
                + m.body.len()
        }
        OutboxItem::Cancel { tag, .. } => FRAMING + tag.len(),
        OutboxItem::Durable { .. } => 0,
    }
}

fn frame_ids(frame: &Frame) -> (u16, u16) {
    match frame {
        Frame::Method { method, .. } => method.ids(),
        _ => (0, 0),
    }
}

use handshake::Session;
