//! Publishing on a channel: assembling `basic.publish` + header + body frames into a message,
//! routing it, enqueueing it, and the publisher-confirm and mandatory-return bookkeeping.

use std::sync::Arc;

use amqp_codec::protocol::{AMQPClass, basic};
use amqp_codec::{ContentHeader, Publish, RawProperties, encode};
use bytes::{Bytes, BytesMut};

use super::{Channel, ChannelContext};
use crate::enqueue::{dead_letters_refused, enqueue_routed};
use crate::error::{ProtocolError, ProtocolResult, ReplyCode};
use crate::exchange::Exchange;
use crate::message::{Message, QueueEntry};
use crate::queue::dead_letter::DeathReason;
use crate::queue::{DeadLetter, dead_letter};
use std::collections::VecDeque;

/// Where the channel is in receiving a message's frames.
#[derive(Debug, Default)]
pub enum ContentState {
    #[default]
    Idle,
    AwaitingHeader(Publish),
    AwaitingBody {
        publish: Publish,
        header: ContentHeader,
        body: Body,
    },
}

/// Body frames received so far. A body that arrives in one frame is kept as that frame's
/// `Bytes` (no copy); only multi-frame bodies are joined.
#[derive(Debug, Default)]
pub enum Body {
    #[default]
    Empty,
    Single(Bytes),
    Joined(BytesMut),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Empty => 0,
            Body::Single(b) => b.len(),
            Body::Joined(b) => b.len(),
        }
    }

    fn push(&mut self, chunk: Bytes, expected: usize) {
        *self = match std::mem::take(self) {
            Body::Empty => Body::Single(chunk),
            Body::Single(first) => {
                let mut joined = BytesMut::with_capacity(expected);
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&chunk);
                Body::Joined(joined)
            }
            Body::Joined(mut joined) => {
                joined.extend_from_slice(&chunk);
                Body::Joined(joined)
            }
        }
    }

    fn freeze(self) -> Bytes {
        match self {
            Body::Empty => Bytes::new(),
            Body::Single(b) => b,
            Body::Joined(b) => b.freeze(),
        }
    }
}

/// Largest body size any message may announce (RabbitMQ's 512 MiB).
const MAX_BODY_SIZE: u64 = 512 << 20;

/// A message whose frames are all in, not yet routed.
#[derive(Debug)]
pub struct PublishedMessage {
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub properties: RawProperties,
    pub body: Bytes,
}

impl PublishedMessage {
    fn into_message(self, store_id: Option<u64>) -> Message {
        Message::new(
            self.exchange,
            self.routing_key,
            self.properties,
            self.body,
            store_id,
        )
    }
}

/// Publisher-confirm state (`confirm.select`).
///
/// A publish is confirmed once it is enqueued and, if it was written to the store, once that
/// write is on disk. Confirms go out in order as one `basic.ack` with `multiple` per batch, so
/// a publish waiting for the disk holds back the confirms of every publish after it.
#[derive(Debug, Default)]
pub struct Confirms {
    /// Sequence number the next publish gets.
    next_seq: u64,
    /// Highest sequence number handled (routed and enqueued).
    ready_up_to: u64,
    /// Highest sequence number already confirmed.
    sent_up_to: u64,
    /// Runs of publishes waiting for store submissions: (first seq, last seq, submission).
    waiting: VecDeque<(u64, u64, u64)>,
    /// Publishes to nack (refused by a full queue), in order.
    nacks: VecDeque<u64>,
}

impl Confirms {
    pub fn new() -> Self {
        Self {
            next_seq: 1,
            ..Self::default()
        }
    }

    /// Records that the publish just handled waits for store submission `batch`.
    fn wait_for(&mut self, seq: u64, batch: u64) {
        match self.waiting.back_mut() {
            Some((_, last, b)) if *b == batch => *last = seq,
            _ => self.waiting.push_back((seq, seq, batch)),
        }
    }

    /// Store submission `batch` (and every earlier one) finished. Returns the runs that failed
    /// and must be nacked.
    pub fn durable(&mut self, batch: u64, ok: bool, failed: &mut Vec<(u64, u64)>) {
        while let Some(&(first, last, b)) = self.waiting.front() {
            if b > batch {
                break;
            }
            self.waiting.pop_front();
            if !ok {
                failed.push((first, last));
            }
        }
    }

    /// Highest seq that may be confirmed now.
    fn confirmable(&self) -> u64 {
        match self.waiting.front() {
            Some((first, _, _)) => first.saturating_sub(1).min(self.ready_up_to),
            None => self.ready_up_to,
        }
    }
}

/// RabbitMQ's publish-time property checks: `expiration` must be a non-negative integer and
/// `user_id`, when set, must name the connection's user.
fn check_properties(properties: &RawProperties, user: &str) -> ProtocolResult {
    if let Some(expiration) = properties.expiration() {
        let text = String::from_utf8_lossy(expiration);
        let valid = !expiration.is_empty()
            && expiration.iter().all(u8::is_ascii_digit)
            && text.parse::<u64>().is_ok();
        if !valid {
            let reason = if text.starts_with('-') {
                "value_negative"
            } else {
                "no_integer"
            };
            return Err(ProtocolError::precondition_failed(format!(
                "invalid expiration '{text}': {reason}"
            )));
        }
    }
    if let Some(user_id) = properties.user_id()
        && user_id != user.as_bytes()
    {
        return Err(ProtocolError::precondition_failed(format!(
            "user_id property set to '{}' but authenticated user was '{user}'",
            String::from_utf8_lossy(user_id)
        )));
    }
    Ok(())
}

impl Channel {
    pub(super) fn on_publish(&mut self, publish: Publish) -> ProtocolResult {
        if publish.immediate {
            return Err(ProtocolError::not_implemented("immediate=true"));
        }
        self.content = ContentState::AwaitingHeader(publish);
        Ok(())
    }

    pub(super) fn on_header(
        &mut self,
        header: ContentHeader,
        ctx: &mut ChannelContext<'_>,
    ) -> ProtocolResult {
        let ContentState::AwaitingHeader(publish) = std::mem::take(&mut self.content) else {
            return Err(ProtocolError::unexpected_frame(format!(
                "expected method frame, got non method frame instead on channel {}",
                self.id
            )));
        };
        if header.class_id != 60 {
            return Err(ProtocolError::unexpected_frame(format!(
                "content header for class {} on channel {}",
                header.class_id, self.id
            )));
        }
        if header.body_size > MAX_BODY_SIZE {
            // RabbitMQ's command assembler refuses these outright, before any body arrives.
            return Err(ProtocolError::new(
                ReplyCode::FrameError,
                format!(
                    "content body size {} exceeds the protocol limit {MAX_BODY_SIZE}",
                    header.body_size
                ),
            )
            .on((60, 40)));
        }
        if header.body_size > ctx.max_message_size {
            return Err(ProtocolError::precondition_failed(format!(
                "message size {} is larger than configured max size {}",
                header.body_size, ctx.max_message_size
            ))
            .on((60, 40)));
        }
        if header.body_size == 0 {
            return self.complete_publish(publish, header, Bytes::new(), ctx);
        }
        self.content = ContentState::AwaitingBody {
            publish,
            header,
            body: Body::Empty,
        };
        Ok(())
    }

    pub(super) fn on_body(&mut self, chunk: Bytes, ctx: &mut ChannelContext<'_>) -> ProtocolResult {
        let ContentState::AwaitingBody {
            publish,
            header,
            mut body,
        } = std::mem::take(&mut self.content)
        else {
            return Err(ProtocolError::unexpected_frame(format!(
                "expected method frame, got non method frame instead on channel {}",
                self.id
            )));
        };
        let expected = header.body_size as usize;
        if body.len() + chunk.len() > expected {
            return Err(ProtocolError::unexpected_frame(format!(
                "content body larger than the declared {expected} bytes on channel {}",
                self.id
            )));
        }
        body.push(chunk, expected);
        if body.len() < expected {
            self.content = ContentState::AwaitingBody {
                publish,
                header,
                body,
            };
            return Ok(());
        }
        self.complete_publish(publish, header, body.freeze(), ctx)
    }

    fn complete_publish(
        &mut self,
        publish: Publish,
        header: ContentHeader,
        body: Bytes,
        ctx: &mut ChannelContext<'_>,
    ) -> ProtocolResult {
        let exchange = ctx
            .vhost
            .publish_exchange(&publish.exchange, &mut self.exchange_cache)
            .map_err(|e| e.on((60, 40)))?;
        if exchange.settings.internal {
            return Err(ProtocolError::access_refused(format!(
                "cannot publish to internal exchange '{}' in vhost '{}'",
                exchange.name, ctx.vhost.name
            ))
            .on((60, 40)));
        }
        check_properties(&header.properties, ctx.user).map_err(|e| e.on((60, 40)))?;
        let message = PublishedMessage {
            exchange: publish.exchange,
            routing_key: publish.routing_key,
            properties: header.properties,
            body,
        };
        if let Some(tx) = &mut self.tx {
            tx.publishes.push((exchange, message, publish.mandatory));
            return Ok(());
        }
        self.route_and_enqueue(&exchange, message, publish.mandatory, ctx);
        Ok(())
    }

    /// Routes a complete message and queues it for enqueueing, with its store writes when it
    /// is persistent and reaches durable queues; records its confirm.
    pub(super) fn route_and_enqueue(
        &mut self,
        exchange: &Arc<Exchange>,
        message: PublishedMessage,
        mandatory: bool,
        ctx: &mut ChannelContext<'_>,
    ) {
        *ctx.published = true;
        ctx.vhost.route(
            exchange,
            &message.routing_key,
            &message.properties,
            &mut self.route_scratch,
            &mut self.route_out,
        );
        let mut wrote = false;
        let mut refused = false;
        if self.route_out.is_empty() {
            if mandatory {
                let message = message.into_message(None);
                self.send_return(&message, ReplyCode::NoRoute, ctx);
            }
        } else {
            // Under memory pressure every message is written, so queues can drop bodies
            // from memory; only persistent ones in durable queues survive a restart.
            let paging = ctx.vhost.memory().should_page();
            let message = message.into_message(None);
            let outcome = enqueue_routed(message, &mut self.route_out, ctx.batch, paging);
            wrote = outcome.wrote;
            refused = !outcome.refused.is_empty();
            if let Some(message) = outcome.message {
                for queue in outcome.refused.iter().filter(|q| dead_letters_refused(q)) {
                    let letter = DeadLetter {
                        entry: QueueEntry {
                            seq: 0,
                            message: Arc::clone(&message),
                            redelivered: false,
                            delivery_count: 0,
                            persisted: false,
                            paged: false,
                            expires_at: 0,
                        },
                        reason: DeathReason::Maxlen,
                    };
                    dead_letter(
                        ctx.vhost,
                        queue,
                        vec![letter],
                        ctx.batch,
                        &mut self.route_scratch,
                    );
                }
            }
        }
        if let Some(confirms) = &mut self.confirms {
            let seq = confirms.next_seq;
            confirms.ready_up_to = seq;
            confirms.next_seq += 1;
            if refused {
                // RabbitMQ nacks a publish that any full queue refused.
                confirms.nacks.push_back(seq);
            } else if wrote {
                confirms.wait_for(seq, ctx.batch.id());
                ctx.batch.want_confirm();
            }
        }
    }

    fn send_return(&self, message: &Message, code: ReplyCode, ctx: &mut ChannelContext<'_>) {
        let method = AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
            reply_code: code.code(),
            reply_text: code.name().into(),
            exchange: String::from_utf8_lossy(&message.exchange).as_ref().into(),
            routing_key: String::from_utf8_lossy(&message.routing_key)
                .as_ref()
                .into(),
        }));
        encode::method(ctx.out, self.id, &method);
        encode::content(
            ctx.out,
            self.id,
            &message.properties,
            &message.body,
            ctx.frame_max,
        );
    }

    /// Writes one `basic.ack` (multiple) covering every publish confirmable since the last
    /// call: a burst of publishes costs one confirm frame.
    pub fn flush_confirms(&mut self, out: &mut BytesMut) {
        let Some(confirms) = &mut self.confirms else {
            return;
        };
        let up_to = confirms.confirmable();
        // Nacks split the run of acks: ack up to each one, then nack it.
        while let Some(&nack) = confirms.nacks.front() {
            if nack > up_to {
                break;
            }
            confirms.nacks.pop_front();
            if nack > confirms.sent_up_to + 1 {
                let multiple = nack - 1 - confirms.sent_up_to > 1;
                encode::ack(out, self.id, nack - 1, multiple);
            }
            encode::nack(out, self.id, nack, false, false);
            confirms.sent_up_to = nack;
        }
        if up_to > confirms.sent_up_to {
            let multiple = up_to - confirms.sent_up_to > 1;
            encode::ack(out, self.id, up_to, multiple);
            confirms.sent_up_to = up_to;
        }
    }

    /// A store submission of this connection finished: confirms waiting for it can go, and
    /// publishes whose write failed are nacked.
    pub fn on_durable(&mut self, batch: u64, ok: bool, out: &mut BytesMut) {
        let Some(confirms) = &mut self.confirms else {
            return;
        };
        let mut failed = Vec::new();
        confirms.durable(batch, ok, &mut failed);
        for (first, last) in failed {
            if first > confirms.sent_up_to + 1 {
                encode::ack(out, self.id, first - 1, first - 1 > confirms.sent_up_to + 1);
            }
            encode::nack(out, self.id, last, last > first, false);
            confirms.sent_up_to = confirms.sent_up_to.max(last);
        }
    }
}
