//! Ending a connection: the server-side close handshake for hard errors, and releasing
//! everything the connection held (channels, exclusive queues, undelivered deliveries).

use std::sync::Arc;

use amqp_codec::protocol::{AMQPClass, connection};
use amqp_codec::{Frame, Method, encode};
use tokio::io::AsyncReadExt;

use super::outbox::OutboxItem;
use super::{CLOSE_TIMEOUT, Connection};
use crate::error::ProtocolError;
use crate::vhost::VHost;

impl Connection {
    /// Sends `connection.close` for a hard error and waits (briefly) for `close-ok`.
    pub(super) async fn close_with(&mut self, error: ProtocolError) {
        tracing::warn!(
            code = error.code.code(),
            text = %error.text,
            class_id = error.class_id,
            method_id = error.method_id,
            "closing connection"
        );
        let close = AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: error.code.code(),
            reply_text: error.text.as_str().into(),
            class_id: error.class_id,
            method_id: error.method_id,
        }));
        encode::method(&mut self.out, 0, &close);
        if self.flush().await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.await_close_ok()).await;
    }

    async fn await_close_ok(&mut self) {
        loop {
            loop {
                match self.decoder.decode(&mut self.rbuf) {
                    Ok(Some(Frame::Method {
                        channel: 0,
                        method: Method::Other(AMQPClass::Connection(m)),
                    })) => match m {
                        connection::AMQPMethod::CloseOk(_) => return,
                        connection::AMQPMethod::Close(_) => {
                            let ok = connection::AMQPMethod::CloseOk(connection::CloseOk {});
                            encode::method(&mut self.out, 0, &AMQPClass::Connection(ok));
                            let _ = self.flush().await;
                            return;
                        }
                        _ => {}
                    },
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
            match self.read.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Reads (and drops) whatever the client still sends until it closes its end.
    pub(super) async fn await_peer_close(&mut self) {
        loop {
            self.rbuf.clear();
            match self.read.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// The connection is gone: channels release their consumers and unacked messages,
    /// exclusive queues are deleted, deliveries still in the outbox go back.
    pub(super) fn cleanup(&mut self, vhost: &Arc<VHost>) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            self.close_channel(id, vhost);
        }
        self.channels.clear();
        self.batch.flush();
        for queue in self.exclusive_queues.drain(..) {
            vhost.remove_queue_if_present(&queue);
        }
        let mut items = std::mem::take(&mut self.outbox_items);
        self.outbox.take(&mut items);
        for item in items.drain(..) {
            if let OutboxItem::Deliver(d) = item {
                d.consumer.release_credit(1);
                d.queue.requeue_unsent(d.entry, d.consumer.no_ack);
            }
        }
        for queue in self.to_pump.drain(..) {
            queue.pump();
        }
    }
}
