//! `basic.qos`, `basic.consume`, `basic.cancel` and `basic.get` on a channel.

use std::sync::Arc;

use amqp_codec::protocol::{AMQPClass, basic};
use amqp_codec::{AMQPValue, Qos, encode};

use super::{Channel, ChannelConsumer, ChannelContext};
use crate::error::{ProtocolError, ProtocolResult};
use crate::names::{ConsumerTag, generated_suffix};
use crate::queue::{Consumer, Queue};

impl Channel {
    pub(super) fn on_qos(&mut self, qos: Qos, ctx: &mut ChannelContext<'_>) -> ProtocolResult {
        if qos.prefetch_size != 0 {
            return Err(ProtocolError::not_implemented(format!(
                "prefetch_size!=0 ({})",
                qos.prefetch_size
            )));
        }
        let count = u32::from(qos.prefetch_count);
        if qos.global {
            self.global_prefetch = count;
            self.credit.set_limit(count);
            self.pump_all(ctx);
        } else {
            self.consumer_prefetch = count;
        }
        self.reply(
            ctx,
            AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        );
        Ok(())
    }

    /// The queue a method names, where "" means the queue last declared on this channel.
    pub(super) fn resolve_queue_name(&self, name: &str) -> ProtocolResult<String> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        self.last_queue
            .as_ref()
            .map(|q| q.to_string())
            .ok_or_else(|| ProtocolError::not_found("no previously declared queue"))
    }

    pub(super) fn on_consume(
        &mut self,
        consume: basic::Consume,
        ctx: &mut ChannelContext<'_>,
    ) -> ProtocolResult {
        let name = self.resolve_queue_name(consume.queue.as_str())?;
        let queue = ctx.vhost.existing_queue(&name, ctx.conn_id)?;
        let tag = if consume.consumer_tag.as_str().is_empty() {
            ConsumerTag::new(&format!("amq.ctag-{}", generated_suffix()))
        } else {
            ConsumerTag::new(consume.consumer_tag.as_str())
        };
        if self.consumers.contains_key(&tag) {
            return Err(ProtocolError::not_allowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        let priority = match consume.arguments.inner().get("x-priority") {
            None => 0,
            Some(value) => int_argument(value).ok_or_else(|| {
                ProtocolError::precondition_failed(format!(
                    "invalid arg 'x-priority' for queue '{name}': {value:?}"
                ))
            })?,
        };
        let consumer = Arc::new(Consumer::new(
            tag.clone(),
            self.id,
            Arc::clone(ctx.outbox),
            consume.no_ack,
            consume.exclusive,
            priority,
            self.consumer_prefetch,
            Arc::clone(&self.credit),
        ));
        // Registered with the queue before consume-ok is written: the queue may hand it
        // messages at once, but they sit in the outbox until this frame's reply is out.
        queue.add_consumer(Arc::clone(&consumer))?;
        self.consumers
            .insert(tag.clone(), ChannelConsumer { consumer, queue });
        if !consume.nowait {
            self.reply(
                ctx,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                    consumer_tag: tag.as_str().into(),
                })),
            );
        }
        Ok(())
    }

    pub(super) fn on_cancel(
        &mut self,
        cancel: basic::Cancel,
        ctx: &mut ChannelContext<'_>,
    ) -> ProtocolResult {
        if let Some(c) = self.consumers.remove(cancel.consumer_tag.as_str()) {
            c.consumer.cancel();
            if c.queue.remove_consumer(&c.consumer) {
                ctx.vhost.remove_queue_if_present(&c.queue);
            }
        }
        if !cancel.nowait {
            self.reply(
                ctx,
                AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                    consumer_tag: cancel.consumer_tag,
                })),
            );
        }
        Ok(())
    }

    pub(super) fn on_get(
        &mut self,
        get: basic::Get,
        ctx: &mut ChannelContext<'_>,
    ) -> ProtocolResult {
        let name = self.resolve_queue_name(get.queue.as_str())?;
        let queue: Arc<Queue> = ctx.vhost.existing_queue(&name, ctx.conn_id)?;
        let Some((entry, remaining)) = queue.get(get.no_ack) else {
            self.reply(
                ctx,
                AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
            );
            return Ok(());
        };
        let tag = self.next_delivery_tag;
        self.next_delivery_tag += 1;
        let message = &entry.message;
        encode::get_ok(
            ctx.out,
            self.id,
            tag,
            entry.redelivered,
            &message.exchange,
            &message.routing_key,
            remaining,
        );
        let properties = super::delivered_properties(&queue, &entry);
        encode::content(ctx.out, self.id, &properties, &message.body, ctx.frame_max);
        super::record_delivery(&queue, &entry, get.no_ack, ctx.batch);
        if !get.no_ack {
            self.unacked.push(super::Unacked {
                tag,
                queue,
                entry,
                consumer: None,
                delivered_at: std::time::Instant::now(),
            });
        }
        Ok(())
    }
}

/// An integer argument of any width, as RabbitMQ accepts them.
pub(crate) fn int_argument(value: &AMQPValue) -> Option<i32> {
    let v: i64 = match value {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        _ => return None,
    };
    i32::try_from(v).ok()
}
