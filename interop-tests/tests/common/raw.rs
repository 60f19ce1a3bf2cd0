//! A raw AMQP 0-9-1 client over a tokio `TcpStream`, for the checks lapin cannot make: exact
//! handshake contents, malformed frames, byte-for-byte content headers.
//!
//! Frames go out through `amqp_codec::encode` (or as hand-built bytes) and come back through
//! `amqp_codec::FrameDecoder`. Every read is bounded by [`super::TIMEOUT`].

use std::net::SocketAddr;

use amqp_codec::protocol::{AMQPClass, basic, channel, connection};
use amqp_codec::types::{AMQPValue, FieldTable, LongString};
use amqp_codec::{Frame, FrameDecoder, Method, RawProperties, encode};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::TIMEOUT;

/// What the broker said during the handshake.
pub struct Handshake {
    pub start: connection::Start,
    pub tune: connection::Tune,
}

pub struct RawClient {
    stream: TcpStream,
    /// Bytes read but not yet decoded.
    buf: BytesMut,
    /// Client side: no limit on what the broker may send us.
    decoder: FrameDecoder,
    /// The frame_max agreed in tune-ok; used to split bodies.
    pub frame_max: u32,
}

impl RawClient {
    /// A TCP connection with nothing sent yet.
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = super::within("tcp connect", TcpStream::connect(addr))
            .await
            .expect("tcp connect");
        stream.set_nodelay(true).ok();
        Self {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            decoder: FrameDecoder::new(0),
            frame_max: 4096,
        }
    }

    /// Protocol header, start/start-ok (PLAIN guest/guest), tune/tune-ok, open/open-ok on `/`.
    pub async fn open(addr: SocketAddr) -> (Self, Handshake) {
        Self::open_at(addr, "guest", "guest", "/").await
    }

    /// Full handshake against `addr`, as `user`/`password` on `vhost`.
    pub async fn open_at(
        addr: SocketAddr,
        user: &str,
        password: &str,
        vhost: &str,
    ) -> (Self, Handshake) {
        let mut c = Self::connect(addr).await;
        let start = c.start(user, password).await;
        let tune = match c.read_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => t,
            other => panic!("expected connection.tune, got {other:?}"),
        };
        c.tune_ok(&tune).await;
        c.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: vhost.into(),
            })),
        )
        .await;
        match c.read_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {}
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
        (c, Handshake { start, tune })
    }

    /// Sends the protocol header, reads connection.start, answers with start-ok.
    pub async fn start(&mut self, user: &str, password: &str) -> connection::Start {
        self.send_bytes(&amqp_codec::PROTOCOL_HEADER).await;
        let start = match self.read_method().await {
            (0, AMQPClass::Connection(connection::AMQPMethod::Start(s))) => s,
            other => panic!("expected connection.start, got {other:?}"),
        };
        let response = format!("\0{user}\0{password}");
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: client_properties(),
                mechanism: "PLAIN".into(),
                response: LongString::from(response.into_bytes()),
                locale: "en_US".into(),
            })),
        )
        .await;
        start
    }

    /// Accepts the broker's tune values as they are.
    pub async fn tune_ok(&mut self, tune: &connection::Tune) {
        self.frame_max = tune.frame_max;
        self.send_method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                // No heartbeats from us; the broker's 60 s will not run out during a test.
                heartbeat: 0,
            })),
        )
        .await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        super::within("socket write", self.stream.write_all(bytes))
            .await
            .expect("socket write");
    }

    /// Writes, ignoring errors (for sends after which the broker may already have closed).
    pub async fn send_bytes_lossy(&mut self, bytes: &[u8]) {
        let _ = tokio::time::timeout(TIMEOUT, self.stream.write_all(bytes)).await;
    }

    pub async fn send_method(&mut self, channel: u16, method: AMQPClass) {
        let mut out = BytesMut::new();
        encode::method(&mut out, channel, &method);
        self.send_bytes(&out).await;
    }

    /// channel.open / open-ok.
    pub async fn open_channel(&mut self, ch: u16) {
        self.send_method(
            ch,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        )
        .await;
        match self.read_method().await {
            (c, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))) if c == ch => {}
            other => panic!("expected channel.open-ok on {ch}, got {other:?}"),
        }
    }

    /// basic.publish + content header + body frames, the properties given as raw bytes.
    pub async fn publish_raw(
        &mut self,
        ch: u16,
        exchange: &str,
        routing_key: &str,
        properties: &[u8],
        body: &[u8],
    ) {
        let mut out = BytesMut::new();
        encode::publish(
            &mut out,
            ch,
            exchange.as_bytes(),
            routing_key.as_bytes(),
            false,
        );
        let props = RawProperties::new(Bytes::copy_from_slice(properties))
            .expect("test built malformed properties");
        encode::content(&mut out, ch, &props, body, self.frame_max);
        self.send_bytes(&out).await;
    }

    /// The next frame, skipping heartbeats; `None` on EOF.
    pub async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            match self.read_any_frame().await {
                Some(Frame::Heartbeat { .. }) => continue,
                other => return other,
            }
        }
    }

    /// The next frame, heartbeats included; `None` on EOF.
    pub async fn read_any_frame(&mut self) -> Option<Frame> {
        super::within("a frame from the broker", async {
            loop {
                match self.decoder.decode(&mut self.buf) {
                    Ok(Some(frame)) => return Some(frame),
                    Ok(None) => {}
                    Err(e) => panic!("broker sent an undecodable frame: {e}"),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) => return None,
                    Ok(_) => {}
                    // A reset after the broker closed counts as EOF.
                    Err(_) => return None,
                }
            }
        })
        .await
    }

    /// The next method frame (content frames in between are skipped) as (channel, method).
    pub async fn read_method(&mut self) -> (u16, AMQPClass) {
        loop {
            match self.read_frame().await {
                Some(Frame::Method {
                    channel,
                    method: Method::Other(class),
                }) => return (channel, class),
                Some(Frame::Method { channel, method }) => {
                    panic!("unexpected per-message method on channel {channel}: {method:?}")
                }
                Some(_) => continue,
                None => panic!("broker closed the socket while a method was expected"),
            }
        }
    }

    /// Reads until the broker's `connection.close`, answers close-ok, and returns it.
    pub async fn expect_connection_close(&mut self) -> connection::Close {
        loop {
            match self.read_frame().await {
                Some(Frame::Method {
                    channel: 0,
                    method: Method::Other(AMQPClass::Connection(connection::AMQPMethod::Close(c))),
                }) => {
                    let mut out = BytesMut::new();
                    encode::method(
                        &mut out,
                        0,
                        &AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                            connection::CloseOk {},
                        )),
                    );
                    self.send_bytes_lossy(&out).await;
                    return c;
                }
                Some(_) => continue,
                None => panic!("broker closed the socket without connection.close"),
            }
        }
    }

    /// Reads until `channel.close` on `ch`, answers close-ok, and returns it.
    pub async fn expect_channel_close(&mut self, ch: u16) -> channel::Close {
        loop {
            match self.read_frame().await {
                Some(Frame::Method {
                    channel,
                    method: Method::Other(AMQPClass::Channel(channel::AMQPMethod::Close(c))),
                }) if channel == ch => {
                    self.send_method(
                        ch,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    )
                    .await;
                    return c;
                }
                Some(Frame::Method {
                    method: Method::Other(AMQPClass::Connection(connection::AMQPMethod::Close(c))),
                    ..
                }) => panic!("expected channel.close on {ch}, got connection.close {c:?}"),
                Some(_) => continue,
                None => panic!("broker closed the socket without channel.close"),
            }
        }
    }

    /// Everything the broker writes until it closes the socket.
    pub async fn read_to_eof(&mut self) -> Vec<u8> {
        let mut all = self.buf.split().to_vec();
        super::within("the broker to close the socket", async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => all.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        all
    }

    /// Closes our sending side (TCP FIN); reading still works.
    pub async fn shutdown_write(&mut self) {
        self.stream
            .shutdown()
            .await
            .expect("shutdown of the write side");
    }

    /// Whether the broker kept the socket open (no EOF, nothing sent) for `wait`.
    pub async fn stays_open_for(&mut self, wait: std::time::Duration) -> bool {
        let mut byte = [0u8; 1];
        tokio::time::timeout(wait, self.stream.read(&mut byte))
            .await
            .is_err()
    }

    /// basic.consume (no-ack) on `queue`, waiting for consume-ok.
    pub async fn consume_no_ack(&mut self, ch: u16, queue: &str) {
        self.send_method(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: queue.into(),
                consumer_tag: "".into(),
                no_local: false,
                no_ack: true,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        )
        .await;
        match self.read_method().await {
            (c, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))) if c == ch => {}
            other => panic!("expected basic.consume-ok, got {other:?}"),
        }
    }

    /// Reads a delivery (basic.deliver, header, body) and returns the header's raw property
    /// bytes and the body.
    pub async fn read_delivery(&mut self) -> (Vec<u8>, Vec<u8>) {
        match self.read_frame().await {
            Some(Frame::Method {
                method: Method::Deliver(_),
                ..
            }) => {}
            Some(Frame::Method { method, .. }) => {
                panic!("expected basic.deliver, got {method:?}")
            }
            Some(other) => panic!("expected basic.deliver, got {other:?}"),
            None => panic!("broker closed the socket while a delivery was expected"),
        }
        let header = match self.read_frame().await {
            Some(Frame::Header { header, .. }) => header,
            other => panic!("expected a content header, got {other:?}"),
        };
        let mut body = Vec::new();
        while (body.len() as u64) < header.body_size {
            match self.read_frame().await {
                Some(Frame::Body { payload, .. }) => body.extend_from_slice(&payload),
                other => panic!("expected a body frame, got {other:?}"),
            }
        }
        (header.properties.as_bytes().to_vec(), body)
    }
}

/// What a modern client announces, so the broker enables the extensions under test.
pub fn client_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        caps.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert(
        "product".into(),
        AMQPValue::LongString("warren-interop-tests".into()),
    );
    props.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    props
}

/// A frame built by hand: type, channel, payload, and the given end octet.
pub fn frame_bytes(frame_type: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.push(frame_type);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(end);
    out
}
