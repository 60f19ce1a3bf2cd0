//! The writing half of a connection: one task that owns the socket's write side, writes
//! what the connection task hands it, and sends heartbeats when the line has been quiet.
//!
//! The hand-over channel is small and bounded: when the client reads slowly, the connection
//! task waits on it, stops draining its outbox, and the queues stop handing it messages.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// Chunks of frames waiting for the socket. Each chunk is one batch of the connection task.
pub const WRITER_QUEUE: usize = 4;

#[derive(Debug)]
pub enum WriterMsg {
    Data(Bytes),
    /// The negotiated heartbeat interval in seconds (0 = off).
    Heartbeat(u16),
}

pub async fn run(mut socket: OwnedWriteHalf, mut rx: mpsc::Receiver<WriterMsg>) {
    let mut quiet_limit: Option<Duration> = None;
    loop {
        let msg = match quiet_limit {
            Some(limit) => match tokio::time::timeout(limit, rx.recv()).await {
                Ok(msg) => msg,
                Err(_) => {
                    let mut hb = BytesMut::with_capacity(8);
                    amqp_codec::encode::heartbeat(&mut hb);
                    if socket.write_all(&hb).await.is_err() {
                        break;
                    }
                    continue;
                }
            },
            None => rx.recv().await,
        };
        match msg {
            None => break,
            Some(WriterMsg::Data(bytes)) => {
                if let Err(error) = socket.write_all(&bytes).await {
                    tracing::debug!(%error, "write to client failed");
                    break;
                }
            }
            Some(WriterMsg::Heartbeat(secs)) => {
                // Send one at half the interval of silence so the client never sees two
                // missed intervals even with some scheduling delay.
                quiet_limit = (secs > 0).then(|| Duration::from_millis(u64::from(secs) * 500));
            }
        }
    }
    let _ = socket.shutdown().await;
}
