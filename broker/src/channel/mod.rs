//! One AMQP channel: the "channel process" of RabbitMQ's split. It owns the protocol state of
//! the channel: the publish being assembled, confirm sequence numbers, the unacked map and
//! delivery tags, the consumers it opened, prefetch, and transactions. Queues own messages.
//!
//! A channel lives inside its connection's task, so none of this state is shared or locked.

mod consume;
mod publish;
mod topology;
mod unacked;

use crate::hash::HashMap;
use std::sync::Arc;

use amqp_codec::protocol::{AMQPClass, basic, channel, confirm, tx};
use amqp_codec::{Frame, Method, encode};
use bytes::BytesMut;

use crate::connection::outbox::{Delivery, Outbox};
use crate::durable::StoreBatch;
use crate::error::{ProtocolError, ProtocolResult};
use crate::exchange::Exchange;
use crate::names::{ConsumerTag, QueueName};
use crate::queue::{ChannelCredit, ConnectionId, Consumer, Queue};
use crate::vhost::{LookupCache, RouteScratch, VHost};

use publish::{Confirms, ContentState, PublishedMessage};
use unacked::{SettleContext, Settlement, Unacked, UnackedMap, settle};

/// What a channel needs from its connection while it handles a frame.
pub struct ChannelContext<'a> {
    pub conn_id: ConnectionId,
    /// The authenticated user, for `user_id` checks.
    pub user: &'a str,
    pub vhost: &'a Arc<VHost>,
    pub outbox: &'a Arc<Outbox>,
    /// Frames to send, flushed by the connection after the read batch.
    pub out: &'a mut BytesMut,
    pub frame_max: u32,
    pub max_message_size: u64,
    /// Queues to pump once the batch is handled (consumers got credit back).
    pub to_pump: &'a mut Vec<Arc<Queue>>,
    /// Exclusive queues this connection declared; deleted when it closes.
    pub exclusive_queues: &'a mut Vec<Arc<Queue>>,
    /// Set when the connection published: only publishers are blocked by alarms.
    pub published: &'a mut bool,
    /// Store writes of this batch, and enqueues held until they are submitted.
    pub batch: &'a mut StoreBatch,
}

/// A consumer opened on this channel.
#[derive(Debug)]
struct ChannelConsumer {
    consumer: Arc<Consumer>,
    queue: Arc<Queue>,
}

/// Publishes and settlements held back until `tx.commit`.
#[derive(Debug, Default)]
struct Transaction {
    publishes: Vec<(Arc<Exchange>, PublishedMessage, bool)>,
    /// Deliveries acked, rejected or nacked inside the transaction.
    settlements: Vec<(Unacked, Settlement)>,
}

#[derive(Debug)]
pub struct Channel {
    pub id: u16,
    content: ContentState,
    credit: Arc<ChannelCredit>,
    /// `basic.qos` with `global = false`: the prefetch given to consumers opened after it.
    consumer_prefetch: u32,
    /// `basic.qos` with `global = true`: shared by all the channel's consumers.
    global_prefetch: u32,
    consumers: HashMap<ConsumerTag, ChannelConsumer>,
    unacked: UnackedMap,
    next_delivery_tag: u64,
    confirms: Option<Confirms>,
    tx: Option<Transaction>,
    /// The queue last declared on this channel, for methods that name the queue as "".
    last_queue: Option<QueueName>,
    route_scratch: RouteScratch,
    /// The exchange of the last publish.
    exchange_cache: LookupCache<Exchange>,
    route_out: Vec<Arc<Queue>>,
    taken: Vec<Unacked>,
}

impl Channel {
    pub fn new(id: u16) -> Self {
        Self {
            id,
            content: ContentState::Idle,
            credit: Arc::new(ChannelCredit::default()),
            consumer_prefetch: 0,
            global_prefetch: 0,
            consumers: HashMap::default(),
            unacked: UnackedMap::default(),
            next_delivery_tag: 1,
            confirms: None,
            tx: None,
            last_queue: None,
            route_scratch: RouteScratch::default(),
            exchange_cache: LookupCache::default(),
            route_out: Vec::new(),
            taken: Vec::new(),
        }
    }

    /// Handles one frame addressed to this (open) channel.
    pub fn handle(&mut self, frame: Frame, ctx: &mut ChannelContext<'_>) -> ProtocolResult {
        match frame {
            Frame::Method { method, .. } => {
                if !matches!(self.content, ContentState::Idle) {
                    return Err(ProtocolError::unexpected_frame(format!(
                        "expected content header for class 60, got non content header frame instead on channel {}",
                        self.id
                    )));
                }
                let ids = method.ids();
                self.handle_method(method, ctx).map_err(|e| e.on(ids))
            }
            Frame::Header { header, .. } => self.on_header(header, ctx),
            Frame::Body { payload, .. } => self.on_body(payload, ctx),
            Frame::Heartbeat { .. } => Err(ProtocolError::unexpected_frame(format!(
                "heartbeat frame on channel {}",
                self.id
            ))),
        }
    }

    fn handle_method(&mut self, method: Method, ctx: &mut ChannelContext<'_>) -> ProtocolResult {
        match method {
            Method::Publish(publish) => self.on_publish(publish),
            Method::Ack(ack) => self.on_ack(ack.delivery_tag, ack.multiple, ctx),
            Method::Qos(qos) => self.on_qos(qos, ctx),
            Method::Deliver(_) => Err(ProtocolError::command_invalid(
                "basic.deliver is sent by the server, not the client",
            )),
            Method::Other(class) => self.handle_class(class, ctx),
        }
    }

    fn handle_class(&mut self, class: AMQPClass, ctx: &mut ChannelContext<'_>) -> ProtocolResult {
        match class {
            AMQPClass::Basic(m) => self.handle_basic(m, ctx),
            AMQPClass::Exchange(m) => self.handle_exchange(m, ctx),
            AMQPClass::Queue(m) => self.handle_queue(m, ctx),
            AMQPClass::Channel(channel::AMQPMethod::Flow(flow)) => {
                // RabbitMQ no longer lets clients pause deliveries with channel.flow; prefetch
                // is the flow control. Only the no-op `active = true` is accepted.
                if !flow.active {
                    return Err(ProtocolError::not_implemented("active=false"));
                }
                self.reply(
                    ctx,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: flow.active,
                    })),
                );
                Ok(())
            }
            AMQPClass::Channel(channel::AMQPMethod::FlowOk(_)) => Ok(()),
            AMQPClass::Confirm(confirm::AMQPMethod::Select(select)) => {
                if self.tx.is_some() {
                    return Err(ProtocolError::precondition_failed(
                        "cannot switch from tx to confirm mode",
                    ));
                }
                if self.confirms.is_none() {
                    self.confirms = Some(Confirms::new());
                }
                if !select.nowait {
                    self.reply(
                        ctx,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
                Ok(())
            }
            AMQPClass::Tx(m) => self.handle_tx(m, ctx),
            other => Err(ProtocolError::command_invalid(format!(
                "unexpected method {}.{} on channel {}",
                other.get_amqp_class_id(),
                other.get_amqp_method_id(),
                self.id
            ))),
        }
    }

    fn handle_basic(
        &mut self,
        method: basic::AMQPMethod,
        ctx: &mut ChannelContext<'_>,
    ) -> ProtocolResult {
        use basic::AMQPMethod as B;
        match method {
            B::Consume(consume) => self.on_consume(consume, ctx),
            B::Cancel(cancel) => self.on_cancel(cancel, ctx),
            B::Get(get) => self.on_get(get, ctx),
            B::Ack(ack) => self.on_ack(ack.delivery_tag, ack.multiple, ctx),
            B::Nack(nack) => self.on_reject(nack.delivery_tag, nack.multiple, nack.requeue, ctx),
            B::Reject(reject) => self.on_reject(reject.delivery_tag, false, reject.requeue, ctx),
            B::Recover(basic::Recover { requeue: false })
            | B::RecoverAsync(basic::RecoverAsync { requeue: false }) => {
                // As RabbitMQ: redelivering to the same consumer is not supported.
                Err(ProtocolError::not_implemented("requeue=false"))
            }
            B::Recover(_) => {
                self.requeue_all_unacked(ctx);
                self.reply(ctx, AMQPClass::Basic(B::RecoverOk(basic::RecoverOk {})));
                Ok(())
            }
            B::RecoverAsync(_) => {
                self.requeue_all_unacked(ctx);
                Ok(())
            }
            other => Err(ProtocolError::command_invalid(format!(
                "basic method {} is not sent by clients",
                AMQPClass::Basic(other).get_amqp_method_id()
            ))),
        }
    }

    fn handle_tx(
        &mut self,
        method: tx::AMQPMethod,
        ctx: &mut ChannelContext<'_>,
    ) -> ProtocolResult {
        match method {
            tx::AMQPMethod::Select(_) => {
                if self.confirms.is_some() {
                    return Err(ProtocolError::precondition_failed(
                        "cannot switch from confirm to tx mode",
                    ));
                }
                if self.tx.is_none() {
                    self.tx = Some(Transaction::default());
                }
                self.reply(
                    ctx,
                    AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                );
                Ok(())
            }
            tx::AMQPMethod::Commit(_) => {
                let Some(txn) = self.tx.take() else {
                    return Err(ProtocolError::precondition_failed(
                        "channel is not transactional",
                    ));
                };
                for (exchange, message, mandatory) in txn.publishes {
                    self.route_and_enqueue(&exchange, message, mandatory, ctx);
                }
                for kind in [Settlement::Ack, Settlement::Reject, Settlement::Requeue] {
                    let mut taken: Vec<Unacked> = txn
                        .settlements
                        .iter()
                        .filter(|(_, s)| *s == kind)
                        .map(|(u, _)| u.clone())
                        .collect();
                    self.settle_now(&mut taken, kind, ctx);
                }
                self.tx = Some(Transaction::default());
                self.reply(
                    ctx,
                    AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
                );
                Ok(())
            }
            tx::AMQPMethod::Rollback(_) => {
                let Some(txn) = self.tx.take() else {
                    return Err(ProtocolError::precondition_failed(
                        "channel is not transactional",
                    ));
                };
                self.unacked
                    .restore(txn.settlements.into_iter().map(|(u, _)| u).collect());
                self.tx = Some(Transaction::default());
                self.reply(
                    ctx,
                    AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                );
                Ok(())
            }
            _ => Err(ProtocolError::command_invalid("unexpected tx method")),
        }
    }

    fn on_ack(&mut self, tag: u64, multiple: bool, ctx: &mut ChannelContext<'_>) -> ProtocolResult {
        self.settle_tags(tag, multiple, Settlement::Ack, ctx)
    }

    fn on_reject(
        &mut self,
        tag: u64,
        multiple: bool,
        requeue: bool,
        ctx: &mut ChannelContext<'_>,
    ) -> ProtocolResult {
        let settlement = if requeue {
            Settlement::Requeue
        } else {
            Settlement::Reject
        };
        self.settle_tags(tag, multiple, settlement, ctx)
    }

    fn settle_tags(
        &mut self,
        tag: u64,
        multiple: bool,
        settlement: Settlement,
        ctx: &mut ChannelContext<'_>,
    ) -> ProtocolResult {
        let mut taken = std::mem::take(&mut self.taken);
        let result = self.unacked.take(tag, multiple, &mut taken);
        if let Some(txn) = &mut self.tx {
            txn.settlements
                .extend(taken.drain(..).map(|u| (u, settlement)));
        } else {
            self.settle_now(&mut taken, settlement, ctx);
            if self.credit_is_global() {
                self.pump_all(ctx);
            }
        }
        self.taken = taken;
        result
    }

    fn settle_now(
        &mut self,
        taken: &mut Vec<Unacked>,
        settlement: Settlement,
        ctx: &mut ChannelContext<'_>,
    ) {
        let mut settle_ctx = SettleContext {
            vhost: ctx.vhost,
            batch: ctx.batch,
            to_pump: ctx.to_pump,
            scratch: &mut self.route_scratch,
        };
        settle(taken, settlement, &mut settle_ctx);
    }

    fn credit_is_global(&self) -> bool {
        self.global_prefetch > 0
    }

    fn requeue_all_unacked(&mut self, ctx: &mut ChannelContext<'_>) {
        let mut taken: Vec<Unacked> = self.unacked.drain_all().collect();
        self.settle_now(&mut taken, Settlement::Requeue, ctx);
    }

    /// Schedules a pump of every queue this channel consumes from.
    fn pump_all(&self, ctx: &mut ChannelContext<'_>) {
        for c in self.consumers.values() {
            if !ctx.to_pump.iter().any(|q| Arc::ptr_eq(q, &c.queue)) {
                ctx.to_pump.push(Arc::clone(&c.queue));
            }
        }
    }

    fn reply(&self, ctx: &mut ChannelContext<'_>, method: AMQPClass) {
        encode::method(ctx.out, self.id, &method);
    }

    /// Writes a delivery handed over by a queue, or gives it back if its consumer is gone.
    pub fn deliver(
        &mut self,
        delivery: Delivery,
        out: &mut BytesMut,
        frame_max: u32,
        batch: &mut StoreBatch,
        now: std::time::Instant,
    ) {
        let Delivery {
            consumer,
            queue,
            entry,
        } = delivery;
        if consumer.is_cancelled() {
            consumer.release_credit(1);
            queue.requeue_unsent(entry, consumer.no_ack);
            return;
        }
        let tag = self.next_delivery_tag;
        self.next_delivery_tag += 1;
        let message = &entry.message;
        encode::deliver(
            out,
            self.id,
            consumer.tag.as_bytes(),
            tag,
            entry.redelivered,
            &message.exchange,
            &message.routing_key,
        );
        let properties = delivered_properties(&queue, &entry);
        encode::content(out, self.id, &properties, &message.body, frame_max);
        record_delivery(&queue, &entry, consumer.no_ack, batch);
        if !consumer.no_ack {
            self.unacked.push(Unacked {
                tag,
                queue,
                entry,
                consumer: Some(consumer),
                delivered_at: now,
            });
        }
    }

    /// A server-initiated cancel (the queue was deleted). Returns whether the consumer was
    /// still registered here, i.e. whether to tell the client.
    pub fn consumer_cancelled_by_queue(&mut self, tag: &ConsumerTag) -> bool {
        match self.consumers.remove(tag) {
            Some(c) => {
                c.consumer.cancel();
                true
            }
            None => false,
        }
    }

    /// Closing the channel: consumers go away and unacked messages return to their queues.
    /// Returns auto-delete queues left without consumers.
    pub fn close(
        &mut self,
        vhost: &VHost,
        to_pump: &mut Vec<Arc<Queue>>,
        batch: &mut StoreBatch,
    ) -> Vec<Arc<Queue>> {
        let mut unused = Vec::new();
        for (_, c) in self.consumers.drain() {
            c.consumer.cancel();
            if c.queue.remove_consumer(&c.consumer) {
                unused.push(Arc::clone(&c.queue));
            }
        }
        if let Some(txn) = self.tx.take() {
            self.unacked
                .restore(txn.settlements.into_iter().map(|(u, _)| u).collect());
        }
        let mut taken: Vec<Unacked> = self.unacked.drain_all().collect();
        let mut settle_ctx = SettleContext {
            vhost,
            batch,
            to_pump,
            scratch: &mut self.route_scratch,
        };
        settle(&mut taken, Settlement::Requeue, &mut settle_ctx);
        self.content = ContentState::Idle;
        unused
    }

    /// The consumer timeout (ms) of the first delivery unacked for longer than its queue
    /// allows, if any.
    pub fn ack_timeout_exceeded(&self, now: std::time::Instant) -> Option<u64> {
        self.unacked.iter().find_map(|u| {
            let timeout = u.queue.settings.policy.consumer_timeout_ms;
            (now.saturating_duration_since(u.delivered_at).as_millis() as u64 > timeout)
                .then_some(timeout)
        })
    }

    /// Every queue this channel consumes from, for pumping after the outbox drains.
    pub fn consumed_queues(&self) -> impl Iterator<Item = &Arc<Queue>> {
        self.consumers.values().map(|c| &c.queue)
    }
}

/// What the store must learn when a message leaves for a client: a no-ack delivery is gone
/// for good; a first delivery marks the entry delivered, so that after a crash it comes back
/// with `redelivered` set.
pub(crate) fn record_delivery(
    queue: &Queue,
    entry: &crate::message::QueueEntry,
    no_ack: bool,
    batch: &mut StoreBatch,
) {
    let (Some(index), Some(qs)) = (entry.index_entry(), &queue.store) else {
        return;
    };
    if no_ack {
        batch.push(warren_storage::WriteOp::Remove {
            queue: qs.id,
            seq: index.seq,
            message_id: index.message_id,
        });
    } else if !entry.redelivered {
        batch.push(warren_storage::WriteOp::UpdateEntry {
            queue: qs.id,
            entry: warren_storage::IndexEntry {
                delivered: true,
                ..index
            },
        });
    }
}

/// The properties a delivery carries: as published, plus `x-delivery-count` on redeliveries
/// from queues that count deliveries (quorum queues, or any queue with a delivery limit).
pub(crate) fn delivered_properties<'a>(
    queue: &Queue,
    entry: &'a crate::message::QueueEntry,
) -> std::borrow::Cow<'a, amqp_codec::RawProperties> {
    if queue.settings.policy.delivery_count_header && entry.delivery_count > 0 {
        std::borrow::Cow::Owned(crate::queue::dead_letter::with_delivery_count(
            &entry.message.properties,
            entry.delivery_count,
        ))
    } else {
        std::borrow::Cow::Borrowed(&entry.message.properties)
    }
}
