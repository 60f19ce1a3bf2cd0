//! Exchange and queue methods on a channel: declare, delete, bind, unbind, purge.

use std::sync::Arc;

use amqp_codec::protocol::{AMQPClass, exchange, queue};

use super::{Channel, ChannelContext};
use crate::error::{ProtocolError, ProtocolResult};
use crate::exchange::{Destination, ExchangeKind, ExchangeSettings};
use crate::names::QueueName;
use crate::queue::{QueueArguments, QueuePolicy, QueueSettings};

impl Channel {
    pub(super) fn handle_exchange(
        &mut self,
        method: exchange::AMQPMethod,
        ctx: &mut ChannelContext<'_>,
    ) -> ProtocolResult {
        use exchange::AMQPMethod as E;
        match method {
            E::Declare(d) => {
                let name = d.exchange.as_str();
                if name.is_empty() && !d.passive {
                    return Err(ProtocolError::access_refused(format!(
                        "operation not permitted on the default exchange in vhost '{}'",
                        ctx.vhost.name
                    )));
                }
                let kind: ExchangeKind = if d.passive {
                    ExchangeKind::Direct
                } else {
                    d.kind.as_str().parse().map_err(|_| {
                        ProtocolError::command_invalid(format!(
                            "invalid exchange type '{}'",
                            d.kind
                        ))
                    })?
                };
                let settings = ExchangeSettings {
                    kind,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: d.arguments,
                };
                ctx.vhost.declare_exchange(name, settings, d.passive)?;
                if !d.nowait {
                    self.reply(
                        ctx,
                        AMQPClass::Exchange(E::DeclareOk(exchange::DeclareOk {})),
                    );
                }
            }
            E::Delete(d) => {
                ctx.vhost
                    .delete_exchange(d.exchange.as_str(), d.if_unused)?;
                if !d.nowait {
                    self.reply(ctx, AMQPClass::Exchange(E::DeleteOk(exchange::DeleteOk {})));
                }
            }
            E::Bind(b) => {
                let destination = ctx.vhost.existing_exchange(b.destination.as_str())?;
                ctx.vhost.bind(
                    b.source.as_str(),
                    Destination::Exchange(destination),
                    b.routing_key.as_str(),
                    &b.arguments,
                )?;
                if !b.nowait {
                    self.reply(ctx, AMQPClass::Exchange(E::BindOk(exchange::BindOk {})));
                }
            }
            E::Unbind(u) => {
                if let Some(destination) = ctx.vhost.exchange(u.destination.as_str()) {
                    ctx.vhost.unbind(
                        u.source.as_str(),
                        Destination::Exchange(destination),
                        u.routing_key.as_str(),
                        &u.arguments,
                    )?;
                }
                if !u.nowait {
                    self.reply(ctx, AMQPClass::Exchange(E::UnbindOk(exchange::UnbindOk {})));
                }
            }
            _ => {
                return Err(ProtocolError::command_invalid(
                    "exchange method is not sent by clients",
                ));
            }
        }
        Ok(())
    }

    pub(super) fn handle_queue(
        &mut self,
        method: queue::AMQPMethod,
        ctx: &mut ChannelContext<'_>,
    ) -> ProtocolResult {
        use queue::AMQPMethod as Q;
        match method {
            Q::Declare(d) => {
                let name = if d.passive {
                    self.resolve_queue_name(d.queue.as_str())?
                } else {
                    d.queue.as_str().to_string()
                };
                let policy = if d.passive {
                    QueuePolicy::default()
                } else {
                    let arguments = QueueArguments::parse(&d.arguments, &name, &ctx.vhost.name)?;
                    let policy = QueuePolicy::resolve(arguments, ctx.vhost.queue_defaults());
                    policy.check_declare(
                        d.durable,
                        d.exclusive,
                        d.auto_delete,
                        &name,
                        &ctx.vhost.name,
                    )?;
                    policy
                };
                let settings = QueueSettings {
                    durable: d.durable,
                    exclusive_owner: d.exclusive.then_some(ctx.conn_id),
                    auto_delete: d.auto_delete,
                    arguments: d.arguments,
                    policy,
                };
                let (queue, counts) =
                    ctx.vhost
                        .declare_queue(&name, settings, d.passive, ctx.conn_id)?;
                if queue.settings.exclusive_owner == Some(ctx.conn_id)
                    && !ctx.exclusive_queues.iter().any(|q| Arc::ptr_eq(q, &queue))
                {
                    ctx.exclusive_queues.push(Arc::clone(&queue));
                }
                self.last_queue = Some(QueueName::clone(&queue.name));
                if !d.nowait {
                    self.reply(
                        ctx,
                        AMQPClass::Queue(Q::DeclareOk(queue::DeclareOk {
                            queue: queue.name.as_str().into(),
                            message_count: counts.ready,
                            consumer_count: counts.consumers,
                        })),
                    );
                }
            }
            Q::Bind(b) => {
                let name = self.resolve_queue_name(b.queue.as_str())?;
                let queue = ctx.vhost.existing_queue(&name, ctx.conn_id)?;
                ctx.vhost.bind(
                    b.exchange.as_str(),
                    Destination::Queue(queue),
                    b.routing_key.as_str(),
                    &b.arguments,
                )?;
                if !b.nowait {
                    self.reply(ctx, AMQPClass::Queue(Q::BindOk(queue::BindOk {})));
                }
            }
            Q::Unbind(u) => {
                let name = self.resolve_queue_name(u.queue.as_str())?;
                let queue = ctx.vhost.existing_queue(&name, ctx.conn_id)?;
                ctx.vhost.unbind(
                    u.exchange.as_str(),
                    Destination::Queue(queue),
                    u.routing_key.as_str(),
                    &u.arguments,
                )?;
                self.reply(ctx, AMQPClass::Queue(Q::UnbindOk(queue::UnbindOk {})));
            }
            Q::Purge(p) => {
                let name = self.resolve_queue_name(p.queue.as_str())?;
                let queue = ctx.vhost.existing_queue(&name, ctx.conn_id)?;
                let message_count = queue.purge(ctx.batch.ops_mut());
                if !p.nowait {
                    self.reply(
                        ctx,
                        AMQPClass::Queue(Q::PurgeOk(queue::PurgeOk { message_count })),
                    );
                }
            }
            Q::Delete(d) => {
                let name = self.resolve_queue_name(d.queue.as_str())?;
                let message_count =
                    ctx.vhost
                        .delete_queue(&name, d.if_unused, d.if_empty, ctx.conn_id)?;
                if !d.nowait {
                    self.reply(
                        ctx,
                        AMQPClass::Queue(Q::DeleteOk(queue::DeleteOk { message_count })),
                    );
                }
            }
            _ => {
                return Err(ProtocolError::command_invalid(
                    "queue method is not sent by clients",
                ));
            }
        }
        Ok(())
    }
}
