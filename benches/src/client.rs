//! A minimal blocking AMQP 0-9-1 client on `amqp-codec`: the handshake, synchronous
//! request/reply for the few setup methods, and a frame reader for the hot loops.
//!
//! One `std::net::TcpStream` per connection, channel 1 only, heartbeats off (we ask for 0 in
//! `tune-ok`). Publishers split the socket with `try_clone` into a writer and a reader thread;
//! consumers use one thread for both.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use amqp_codec::protocol::{basic, channel, confirm, connection, exchange, queue};
use amqp_codec::{AMQPClass, AMQPValue, CodecError, FieldTable, Frame, FrameDecoder, Method};
use amqp_codec::{LongString, PROTOCOL_HEADER, encode};
use bytes::BytesMut;

/// The channel every connection of the load generator uses.
pub const CHANNEL: u16 = 1;
/// The largest frame we accept; the broker may ask for less.
const OUR_FRAME_MAX: u32 = 128 * 1024;
/// How long a blocking read waits before the caller gets to look at its stop flags.
pub const READ_TIMEOUT: Duration = Duration::from_millis(50);
/// Read buffer of a loaded connection: room for many frames per `read`.
const BIG_BUFFER: usize = 128 * 1024;
/// Read buffer of a connection that only shakes hands (the idle-connections scenario).
const SMALL_BUFFER: usize = 4 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("undecodable frame from the broker: {0}")]
    Codec(#[from] CodecError),
    #[error("broker closed the connection")]
    Eof,
    #[error("broker closed the {scope}: {code} {text} (class {class_id} method {method_id})")]
    Closed {
        scope: &'static str,
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    },
    #[error("protocol: {0}")]
    Protocol(String),
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub user: String,
    pub password: String,
    pub vhost: String,
}

/// The read side of a connection: socket, buffered bytes, frame decoder.
pub struct FrameReader {
    stream: TcpStream,
    /// Bytes read but not yet decoded; body frames are split off it without a copy.
    buf: BytesMut,
    /// `std::io::Read` wants an initialised slice: read here, then append to `buf`.
    scratch: Vec<u8>,
    decoder: FrameDecoder,
}

impl FrameReader {
    fn new(stream: TcpStream, buffer: usize) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(2 * buffer),
            scratch: vec![0; buffer],
            decoder: FrameDecoder::new(OUR_FRAME_MAX),
        }
    }

    /// Decodes the next buffered frame, if a whole one is there.
    #[inline]
    pub fn next_buffered(&mut self) -> Result<Option<Frame>> {
        Ok(self.decoder.decode(&mut self.buf)?)
    }

    /// One `read` from the socket. `Ok(false)` when the read timed out with nothing.
    pub fn fill(&mut self) -> Result<bool> {
        match self.stream.read(&mut self.scratch) {
            Ok(0) => Err(ClientError::Eof),
            Ok(n) => {
                self.buf.extend_from_slice(&self.scratch[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The next frame, reading as needed (blocks; read timeouts are retried).
    pub fn next_frame(&mut self) -> Result<Frame> {
        loop {
            if let Some(frame) = self.next_buffered()? {
                return Ok(frame);
            }
            self.fill()?;
        }
    }

    /// The next method frame on `channel`, skipping heartbeats. A close from the broker
    /// becomes an error carrying its reply code and text.
    pub fn next_method(&mut self) -> Result<AMQPClass> {
        loop {
            match self.next_frame()? {
                Frame::Method {
                    method: Method::Other(class),
                    ..
                } => {
                    check_close(&class)?;
                    return Ok(class);
                }
                Frame::Heartbeat { .. } => {}
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected frame during setup: {other:?}"
                    )));
                }
            }
        }
    }
}

/// Turns `connection.close` / `channel.close` into an error.
pub fn check_close(class: &AMQPClass) -> Result<()> {
    let (scope, c) = match class {
        AMQPClass::Connection(connection::AMQPMethod::Close(c)) => (
            "connection",
            (c.reply_code, c.reply_text.as_str(), c.class_id, c.method_id),
        ),
        AMQPClass::Channel(channel::AMQPMethod::Close(c)) => (
            "channel",
            (c.reply_code, c.reply_text.as_str(), c.class_id, c.method_id),
        ),
        _ => return Ok(()),
    };
    Err(ClientError::Closed {
        scope,
        code: c.0,
        text: c.1.to_string(),
        class_id: c.2,
        method_id: c.3,
    })
}

/// An open connection with channel 1 open.
pub struct Connection {
    /// The socket we write to (the reader holds a clone).
    pub writer: TcpStream,
    pub reader: FrameReader,
    /// Negotiated `frame_max`, for splitting bodies.
    pub frame_max: u32,
    out: BytesMut,
}

impl Connection {
    /// TCP connect, protocol header, start/start-ok (PLAIN), tune/tune-ok, open, channel.open.
    pub fn open(ep: &Endpoint, name: &str) -> Result<Self> {
        Self::open_with_buffer(ep, name, BIG_BUFFER)
    }

    /// The handshake with small buffers, keeping only the socket: a connection that stays
    /// idle (no heartbeats: we asked for none) and costs us one file descriptor.
    pub fn open_idle(ep: &Endpoint, name: &str) -> Result<TcpStream> {
        let conn = Self::open_with_buffer(ep, name, SMALL_BUFFER)?;
        // The reader's clone of the socket goes; the connection stays open through `writer`.
        Ok(conn.writer)
    }

    fn open_with_buffer(ep: &Endpoint, name: &str, buffer: usize) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&ep.addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        let writer = stream.try_clone()?;
        let mut conn = Connection {
            writer,
            reader: FrameReader::new(stream, buffer),
            frame_max: OUR_FRAME_MAX,
            out: BytesMut::with_capacity(4096),
        };
        conn.handshake(ep, name).map_err(|e| match e {
            ClientError::Eof | ClientError::Io(_) => ClientError::Protocol(format!(
                "broker at {} dropped the connection during the handshake \
                 (wrong user, password or vhost?): {e}",
                ep.addr
            )),
            e => e,
        })?;
        Ok(conn)
    }

    fn handshake(&mut self, ep: &Endpoint, name: &str) -> Result<()> {
        let conn = self;
        conn.writer.write_all(&PROTOCOL_HEADER)?;

        match conn.reader.next_method()? {
            AMQPClass::Connection(connection::AMQPMethod::Start(start)) => {
                let mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).to_string();
                if !mechanisms.split(' ').any(|m| m == "PLAIN") {
                    return Err(ClientError::Protocol(format!(
                        "broker offers no PLAIN mechanism: {mechanisms}"
                    )));
                }
            }
            other => return Err(unexpected("connection.start", &other)),
        }
        let mut props = FieldTable::default();
        props.insert(
            "product".into(),
            AMQPValue::LongString(LongString::from("warren-load")),
        );
        props.insert(
            "connection_name".into(),
            AMQPValue::LongString(LongString::from(name)),
        );
        // Without this capability RabbitMQ answers bad credentials by dropping the socket.
        let mut capabilities = FieldTable::default();
        capabilities.insert(
            "authentication_failure_close".into(),
            AMQPValue::Boolean(true),
        );
        props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        let response = format!("\0{}\0{}", ep.user, ep.password);
        conn.send_method(&AMQPClass::Connection(connection::AMQPMethod::StartOk(
            connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: LongString::from(response),
                locale: "en_US".into(),
            },
        )))?;

        let tune = match conn.reader.next_method()? {
            AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
            other => return Err(unexpected("connection.tune", &other)),
        };
        conn.frame_max = match tune.frame_max {
            0 => OUR_FRAME_MAX,
            n => n.min(OUR_FRAME_MAX),
        };
        conn.reader.decoder.set_frame_max(conn.frame_max);
        conn.send_method(&AMQPClass::Connection(connection::AMQPMethod::TuneOk(
            connection::TuneOk {
                channel_max: 1,
                frame_max: conn.frame_max,
                heartbeat: 0,
            },
        )))?;
        let open = AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: ep.vhost.as_str().into(),
        }));
        match conn.rpc_on(0, &open)? {
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
            other => return Err(unexpected("connection.open-ok", &other)),
        }
        match conn.rpc(&AMQPClass::Channel(channel::AMQPMethod::Open(
            channel::Open {},
        )))? {
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => {}
            other => return Err(unexpected("channel.open-ok", &other)),
        }
        Ok(())
    }

    fn send_method(&mut self, class: &AMQPClass) -> Result<()> {
        self.send_method_on(0, class)
    }

    fn send_method_on(&mut self, channel: u16, class: &AMQPClass) -> Result<()> {
        self.out.clear();
        encode::method(&mut self.out, channel, class);
        self.writer.write_all(&self.out)?;
        Ok(())
    }

    fn rpc_on(&mut self, channel: u16, class: &AMQPClass) -> Result<AMQPClass> {
        self.send_method_on(channel, class)?;
        self.reader.next_method()
    }

    /// Sends a method on channel 1 and waits for the reply.
    pub fn rpc(&mut self, class: &AMQPClass) -> Result<AMQPClass> {
        self.rpc_on(CHANNEL, class)
    }

    /// Declares a queue with `arguments` (`x-queue-type` and the like).
    pub fn declare_queue(
        &mut self,
        name: &str,
        durable: bool,
        arguments: &FieldTable,
    ) -> Result<()> {
        self.declare(name, false, durable, arguments).map(|_| ())
    }

    /// `queue.declare(passive)`: how many ready messages an existing queue holds.
    pub fn queue_message_count(&mut self, name: &str) -> Result<u32> {
        self.declare(name, true, false, &FieldTable::default())
    }

    fn declare(
        &mut self,
        name: &str,
        passive: bool,
        durable: bool,
        arguments: &FieldTable,
    ) -> Result<u32> {
        let declare = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.into(),
            passive,
            durable,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: arguments.clone(),
        }));
        match self.rpc(&declare)? {
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)) => Ok(ok.message_count),
            other => Err(unexpected("queue.declare-ok", &other)),
        }
    }

    /// Declares a transient exchange of `kind` (`fanout`, `topic`, ...).
    pub fn declare_exchange(&mut self, name: &str, kind: &str) -> Result<()> {
        let declare = AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: name.into(),
            kind: kind.into(),
            passive: false,
            durable: false,
            auto_delete: false,
            internal: false,
            nowait: false,
            arguments: FieldTable::default(),
        }));
        match self.rpc(&declare)? {
            AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(_)) => Ok(()),
            other => Err(unexpected("exchange.declare-ok", &other)),
        }
    }

    pub fn delete_exchange(&mut self, name: &str) -> Result<()> {
        let delete = AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
            exchange: name.into(),
            if_unused: false,
            nowait: false,
        }));
        match self.rpc(&delete)? {
            AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(_)) => Ok(()),
            other => Err(unexpected("exchange.delete-ok", &other)),
        }
    }

    /// Binds queues to `exchange`, one `(queue, routing key)` pair each. The binds go out
    /// with `nowait`, many per write, then one `basic.qos` round trip: a channel handles its
    /// methods in order, so its `qos-ok` means every bind before it was done (a failed bind
    /// closes the channel, and that comes back instead).
    pub fn bind_all<'a>(
        &mut self,
        exchange: &str,
        bindings: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> Result<u64> {
        let mut n = 0u64;
        self.out.clear();
        for (queue, key) in bindings {
            let bind = AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: queue.into(),
                exchange: exchange.into(),
                routing_key: key.into(),
                nowait: true,
                arguments: FieldTable::default(),
            }));
            encode::method(&mut self.out, CHANNEL, &bind);
            n += 1;
            if self.out.len() >= 64 * 1024 {
                self.writer.write_all(&self.out)?;
                self.out.clear();
            }
        }
        self.writer.write_all(&self.out)?;
        self.out.clear();
        // The prefetch this channel had: the control connection never consumes.
        self.qos(0)?;
        Ok(n)
    }

    /// Deletes a queue; returns how many messages it still held.
    pub fn delete_queue(&mut self, name: &str) -> Result<u32> {
        let delete = AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: name.into(),
            if_unused: false,
            if_empty: false,
            nowait: false,
        }));
        match self.rpc(&delete)? {
            AMQPClass::Queue(queue::AMQPMethod::DeleteOk(ok)) => Ok(ok.message_count),
            other => Err(unexpected("queue.delete-ok", &other)),
        }
    }

    pub fn qos(&mut self, prefetch_count: u16) -> Result<()> {
        let qos = AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count,
            global: false,
        }));
        match self.rpc(&qos)? {
            AMQPClass::Basic(basic::AMQPMethod::QosOk(_)) => Ok(()),
            other => Err(unexpected("basic.qos-ok", &other)),
        }
    }

    pub fn consume(&mut self, queue: &str, no_ack: bool) -> Result<()> {
        let consume = AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: queue.into(),
            consumer_tag: "".into(),
            no_local: false,
            no_ack,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        }));
        match self.rpc(&consume)? {
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => Ok(()),
            other => Err(unexpected("basic.consume-ok", &other)),
        }
    }

    pub fn confirm_select(&mut self) -> Result<()> {
        let select = AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        }));
        match self.rpc(&select)? {
            AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_)) => Ok(()),
            other => Err(unexpected("confirm.select-ok", &other)),
        }
    }

    /// Sends `connection.close`; the caller's reader waits for `close-ok`.
    pub fn send_close(writer: &mut TcpStream) -> Result<()> {
        let mut out = BytesMut::with_capacity(64);
        encode::method(&mut out, 0, &close_method());
        writer.write_all(&out)?;
        Ok(())
    }

    /// `connection.close` and wait (bounded) for `close-ok`, for the setup connection.
    pub fn close(mut self) -> Result<()> {
        Self::send_close(&mut self.writer)?;
        wait_close_ok(&mut self.reader, Duration::from_secs(2))
    }
}

fn close_method() -> AMQPClass {
    AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    }))
}

/// Reads and drops frames until `connection.close-ok`, EOF, or the deadline.
pub fn wait_close_ok(reader: &mut FrameReader, limit: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        while let Some(frame) = reader.next_buffered()? {
            if let Frame::Method {
                method: Method::Other(AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))),
                ..
            } = frame
            {
                return Ok(());
            }
        }
        match reader.fill() {
            Ok(_) => {}
            Err(ClientError::Eof) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn unexpected(wanted: &str, got: &AMQPClass) -> ClientError {
    ClientError::Protocol(format!("expected {wanted}, got {got:?}"))
}
