//! Opening a connection: protocol header, `connection.start`/`start-ok` (authentication),
//! `tune`/`tune-ok`, `open`/`open-ok`.

use std::sync::Arc;

use amqp_codec::protocol::{AMQPClass, connection};
use amqp_codec::{AMQPValue, FieldTable, Frame, Method, ProtocolHeaderCheck, encode};

use super::Connection;
use crate::auth::MECHANISMS;
use crate::error::{ProtocolError, ReplyCode};
use crate::vhost::VHost;

/// What the client said it understands (`client_properties.capabilities`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientCapabilities {
    pub connection_blocked: bool,
    pub consumer_cancel_notify: bool,
    pub authentication_failure_close: bool,
}

/// Limits agreed in `tune`/`tune-ok`.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub channel_max: u16,
    pub frame_max: u32,
    pub heartbeat: u16,
}

/// How a handshake ends early.
#[derive(Debug)]
pub enum HandshakeError {
    /// Not AMQP 0-9-1: we answered with our header.
    BadProtocolHeader,
    /// The peer went away or the socket failed.
    Disconnected,
    /// A protocol error to report with `connection.close` (if the client can take it).
    Refused {
        error: ProtocolError,
        send_close: bool,
    },
}

pub struct Session {
    pub tuning: Tuning,
    pub capabilities: ClientCapabilities,
    pub user: String,
    pub vhost: Arc<VHost>,
}

fn server_properties() -> FieldTable {
    let mut capabilities = FieldTable::default();
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        capabilities.insert(cap.into(), AMQPValue::Boolean(true));
    }
    let mut props = FieldTable::default();
    props.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    for (key, value) in [
        ("product", "Warren"),
        ("version", env!("CARGO_PKG_VERSION")),
        ("platform", "Rust"),
        ("cluster_name", "warren"),
        ("copyright", "The Warren authors"),
        ("information", "Licensed under the Apache License 2.0"),
    ] {
        props.insert(key.into(), AMQPValue::LongString(value.into()));
    }
    props
}

fn capability(props: &FieldTable, name: &str) -> bool {
    match props.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(caps)) => {
            matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

impl Connection {
    pub(super) async fn handshake(&mut self) -> Result<Session, HandshakeError> {
        loop {
            match amqp_codec::check_protocol_header(&mut self.rbuf) {
                ProtocolHeaderCheck::Accepted => break,
                ProtocolHeaderCheck::Rejected => {
                    encode::protocol_header(&mut self.out);
                    let _ = self.flush().await;
                    return Err(HandshakeError::BadProtocolHeader);
                }
                ProtocolHeaderCheck::Incomplete => self.read_more().await?,
            }
        }

        let start = AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
            version_major: 0,
            version_minor: 9,
            server_properties: server_properties(),
            mechanisms: MECHANISMS.into(),
            locales: "en_US".into(),
        }));
        encode::method(&mut self.out, 0, &start);
        self.flush()
            .await
            .map_err(|_| HandshakeError::Disconnected)?;

        let start_ok = match self.next_connection_method().await? {
            connection::AMQPMethod::StartOk(s) => s,
            other => return Err(refused(unexpected(other), false)),
        };
        let capabilities = ClientCapabilities {
            connection_blocked: capability(&start_ok.client_properties, "connection.blocked"),
            consumer_cancel_notify: capability(
                &start_ok.client_properties,
                "consumer_cancel_notify",
            ),
            authentication_failure_close: capability(
                &start_ok.client_properties,
                "authentication_failure_close",
            ),
        };
        let mechanism = start_ok.mechanism.as_str().to_string();
        let user = match self.broker.users.authenticate(
            &mechanism,
            start_ok.response.as_bytes(),
            self.peer.ip(),
        ) {
            Ok(user) => user,
            Err(error) => {
                tracing::warn!(%error, mechanism, "authentication failed");
                let error = ProtocolError::access_refused(format!(
                    "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                ))
                .on((10, 11));
                return Err(refused(error, capabilities.authentication_failure_close));
            }
        };

        let (channel_max, frame_max, heartbeat) = {
            let config = &self.broker.config;
            (config.channel_max, config.frame_max, config.heartbeat)
        };
        let tune = AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
            channel_max,
            frame_max,
            heartbeat,
        }));
        encode::method(&mut self.out, 0, &tune);
        self.flush()
            .await
            .map_err(|_| HandshakeError::Disconnected)?;

        let tune_ok = match self.next_connection_method().await? {
            connection::AMQPMethod::TuneOk(t) => t,
            other => return Err(refused(unexpected(other), true)),
        };
        let tuning = negotiate(channel_max, frame_max, &tune_ok)
            .map_err(|e| refused(e.on((10, 31)), true))?;
        self.decoder.set_frame_max(tuning.frame_max);

        let open = match self.next_connection_method().await? {
            connection::AMQPMethod::Open(o) => o,
            other => return Err(refused(unexpected(other), true)),
        };
        let vhost_name = open.virtual_host.as_str();
        let Some(vhost) = self.broker.vhost(vhost_name) else {
            let error =
                ProtocolError::not_allowed(format!("vhost {vhost_name} not found")).on((10, 40));
            return Err(refused(error, true));
        };
        let open_ok = AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {}));
        encode::method(&mut self.out, 0, &open_ok);
        Ok(Session {
            tuning,
            capabilities,
            user,
            vhost,
        })
    }

    /// Reads until a whole frame is buffered; handshake frames must be connection methods
    /// on channel 0 (heartbeats are skipped).
    async fn next_connection_method(&mut self) -> Result<connection::AMQPMethod, HandshakeError> {
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(Frame::Heartbeat { .. })) => continue,
                Ok(Some(Frame::Method {
                    channel: 0,
                    method: Method::Other(AMQPClass::Connection(m)),
                })) => return Ok(m),
                Ok(Some(frame)) => {
                    let error = ProtocolError::new(
                        ReplyCode::CommandInvalid,
                        format!(
                            "expected a connection method on channel 0 during the handshake, got a frame on channel {}",
                            frame.channel()
                        ),
                    );
                    return Err(refused(error, true));
                }
                Ok(None) => self.read_more().await?,
                Err(e) => {
                    let error = ProtocolError::new(
                        ReplyCode::from_code(e.reply_code()).unwrap_or(ReplyCode::FrameError),
                        e,
                    );
                    return Err(refused(error, true));
                }
            }
        }
    }

    async fn read_more(&mut self) -> Result<(), HandshakeError> {
        use tokio::io::AsyncReadExt;
        match self.read.read_buf(&mut self.rbuf).await {
            Ok(0) | Err(_) => Err(HandshakeError::Disconnected),
            Ok(_) => Ok(()),
        }
    }
}

fn refused(error: ProtocolError, send_close: bool) -> HandshakeError {
    HandshakeError::Refused { error, send_close }
}

fn unexpected(method: connection::AMQPMethod) -> ProtocolError {
    let class = AMQPClass::Connection(method);
    ProtocolError::command_invalid(format!(
        "unexpected method connection.{} during the handshake",
        class.get_amqp_method_id()
    ))
}

/// Applies the client's `tune-ok` to what we offered; 0 means "no limit" on either side.
fn negotiate(
    channel_max: u16,
    frame_max: u32,
    tune_ok: &connection::TuneOk,
) -> Result<Tuning, ProtocolError> {
    let client_frame_max = if tune_ok.frame_max == 0 {
        frame_max
    } else {
        tune_ok.frame_max
    };
    if client_frame_max < amqp_codec::FRAME_MIN_SIZE {
        return Err(ProtocolError::not_allowed(format!(
            "frame_max={client_frame_max} < {} min size",
            amqp_codec::FRAME_MIN_SIZE
        )));
    }
    if frame_max != 0 && client_frame_max > frame_max {
        return Err(ProtocolError::not_allowed(format!(
            "frame_max={client_frame_max} > {frame_max} max size"
        )));
    }
    let client_channel_max = if tune_ok.channel_max == 0 {
        channel_max
    } else {
        tune_ok.channel_max.min(channel_max)
    };
    Ok(Tuning {
        channel_max: client_channel_max,
        frame_max: client_frame_max,
        heartbeat: tune_ok.heartbeat,
    })
}
