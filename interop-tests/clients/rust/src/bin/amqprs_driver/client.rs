//! The amqprs calls every scenario makes, shortened. amqprs reports what the broker sends on
//! its own (confirms, returns, a consumer cancel, a channel or connection close) through
//! callback traits; [`Forwarder`] and [`ConnectionEvents`] turn those callbacks into channels
//! a scenario can wait on. Every call returns a `Step`, so a client error becomes a failed
//! scenario with amqprs's text.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use amqprs::callbacks::{ChannelCallback, ConnectionCallback};
use amqprs::channel::{
    BasicAckArguments, BasicGetArguments, BasicPublishArguments, Channel, ConfirmSelectArguments,
    ExchangeDeclareArguments, ExchangeDeleteArguments, QueueBindArguments, QueueDeclareArguments,
    QueueDeleteArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{Ack, BasicProperties, Cancel, Close, CloseChannel, FieldTable, GetOk, Nack, Return};
use async_trait::async_trait;
use client_drivers::amqp_url::AmqpUrl;
use client_drivers::{Step, fail};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// A reply code and text from a broker close.
pub type Closed = (u16, String);

/// A `basic.return`.
pub struct Returned {
    pub reply_code: u16,
    pub reply_text: String,
    pub routing_key: String,
    pub body: Vec<u8>,
}

/// What the broker told a channel on its own.
pub struct Events {
    pub confirms: Confirms,
    pub returns: UnboundedReceiver<Returned>,
    /// Consumer tags the broker cancelled.
    pub cancels: UnboundedReceiver<String>,
    pub closes: UnboundedReceiver<Closed>,
}

impl Events {
    /// The broker's `channel.close`, if one arrives within `limit`.
    pub async fn close_within(&mut self, limit: Duration) -> Option<Closed> {
        tokio::time::timeout(limit, self.closes.recv())
            .await
            .ok()
            .flatten()
    }
}

/// amqprs's channel callback: everything goes into the channels of [`Events`].
struct Forwarder {
    confirms: UnboundedSender<(u64, bool, bool)>,
    returns: UnboundedSender<Returned>,
    cancels: UnboundedSender<String>,
    closes: UnboundedSender<Closed>,
}

// A receiver dropped by a scenario that no longer listens is not an error: sends are ignored.
#[async_trait]
impl ChannelCallback for Forwarder {
    async fn close(
        &mut self,
        _channel: &Channel,
        close: CloseChannel,
    ) -> Result<(), amqprs::error::Error> {
        let _ = self
            .closes
            .send((close.reply_code(), close.reply_text().clone()));
        Ok(())
    }

    async fn cancel(
        &mut self,
        _channel: &Channel,
        cancel: Cancel,
    ) -> Result<(), amqprs::error::Error> {
        let _ = self.cancels.send(cancel.consumer_tag().clone());
        Ok(())
    }

    async fn flow(
        &mut self,
        _channel: &Channel,
        active: bool,
    ) -> Result<bool, amqprs::error::Error> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _channel: &Channel, ack: Ack) {
        let _ = self
            .confirms
            .send((ack.delivery_tag(), ack.mutiple(), true));
    }

    async fn publish_nack(&mut self, _channel: &Channel, nack: Nack) {
        let _ = self
            .confirms
            .send((nack.delivery_tag(), nack.multiple(), false));
    }

    async fn publish_return(
        &mut self,
        _channel: &Channel,
        ret: Return,
        _properties: BasicProperties,
        body: Vec<u8>,
    ) {
        let _ = self.returns.send(Returned {
            reply_code: ret.reply_code(),
            reply_text: ret.reply_text().clone(),
            routing_key: ret.routing_key().clone(),
            body,
        });
    }
}

/// Publisher confirms on one channel: counts publishes and settles them as acks arrive
/// (one by one, or all up to a tag with `multiple`).
pub struct Confirms {
    rx: UnboundedReceiver<(u64, bool, bool)>,
    published: u64,
    /// Every tag up to here is acked.
    acked_upto: u64,
    /// Acked tags above `acked_upto`.
    acked: BTreeSet<u64>,
}

impl Confirms {
    /// Records one publish (delivery tags count from 1 per channel).
    pub fn published(&mut self) {
        self.published += 1;
    }

    /// Waits until every publish so far is acked; a nack fails.
    pub async fn all_acked(&mut self, limit: Duration) -> Step<()> {
        let deadline = tokio::time::Instant::now() + limit;
        while self.acked_upto < self.published {
            let Ok(Some((tag, multiple, ack))) =
                tokio::time::timeout_at(deadline, self.rx.recv()).await
            else {
                fail!(
                    "{} of {} publishes confirmed",
                    self.acked_upto,
                    self.published
                );
            };
            if !ack {
                fail!("publish {tag} nacked (multiple: {multiple})");
            }
            if multiple {
                self.acked_upto = self.acked_upto.max(tag);
            } else {
                self.acked.insert(tag);
            }
            while self.acked.remove(&(self.acked_upto + 1)) {
                self.acked_upto += 1;
            }
        }
        Ok(())
    }
}

/// amqprs's connection callback: a broker `connection.close` goes into a channel.
struct ConnectionEvents(UnboundedSender<Closed>);

#[async_trait]
impl ConnectionCallback for ConnectionEvents {
    async fn close(
        &mut self,
        _connection: &Connection,
        close: Close,
    ) -> Result<(), amqprs::error::Error> {
        let _ = self
            .0
            .send((close.reply_code(), close.reply_text().clone()));
        Ok(())
    }

    async fn blocked(&mut self, _connection: &Connection, _reason: String) {}

    async fn unblocked(&mut self, _connection: &Connection) {}

    async fn secret_updated(&mut self, _connection: &Connection) {}
}

/// Connects to the URL's host, port, credentials and vhost (amqprs takes them apart, not as
/// a URL), with the URL's heartbeat unless `heartbeat` overrides it. Returns the connection
/// and the broker's `connection.close`, should one come.
pub async fn connect_with(
    url: &str,
    heartbeat: Option<u16>,
) -> Step<(Connection, UnboundedReceiver<Closed>)> {
    let u = AmqpUrl::parse(url)?;
    let mut args = OpenConnectionArguments::new(&u.host, u.port, &u.user, &u.password);
    args.virtual_host(&u.vhost);
    if let Some(h) = heartbeat.or(u.heartbeat) {
        args.heartbeat(h);
    }
    let conn = Connection::open(&args.finish()).await?;
    let (tx, rx) = unbounded_channel();
    conn.register_callback(ConnectionEvents(tx)).await?;
    Ok((conn, rx))
}

pub async fn open_connection(url: &str) -> Step<Connection> {
    Ok(connect_with(url, None).await?.0)
}

pub async fn channel(conn: &Connection) -> Step<(Channel, Events)> {
    let ch = conn.open_channel(None).await?;
    let (confirms, confirms_rx) = unbounded_channel();
    let (returns, returns_rx) = unbounded_channel();
    let (cancels, cancels_rx) = unbounded_channel();
    let (closes, closes_rx) = unbounded_channel();
    ch.register_callback(Forwarder {
        confirms,
        returns,
        cancels,
        closes,
    })
    .await?;
    let events = Events {
        confirms: Confirms {
            rx: confirms_rx,
            published: 0,
            acked_upto: 0,
            acked: BTreeSet::new(),
        },
        returns: returns_rx,
        cancels: cancels_rx,
        closes: closes_rx,
    };
    Ok((ch, events))
}

/// A channel in publisher-confirm mode.
pub async fn confirm_channel(conn: &Connection) -> Step<(Channel, Events)> {
    let (ch, events) = channel(conn).await?;
    ch.confirm_select(ConfirmSelectArguments::default()).await?;
    Ok((ch, events))
}

/// A non-durable queue with `args`.
pub async fn declare(ch: &Channel, queue: &str, args: FieldTable) -> Step<()> {
    ch.queue_declare(QueueDeclareArguments::new(queue).arguments(args).finish())
        .await?;
    Ok(())
}

pub async fn declare_exchange(ch: &Channel, name: &str, kind: &str) -> Step<()> {
    ch.exchange_declare(ExchangeDeclareArguments::new(name, kind))
        .await?;
    Ok(())
}

pub async fn bind(
    ch: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
    args: FieldTable,
) -> Step<()> {
    let mut bind = QueueBindArguments::new(queue, exchange, key);
    bind.arguments = args;
    ch.queue_bind(bind).await?;
    Ok(())
}

/// Ready messages in `queue`, by passive declare.
pub async fn message_count(ch: &Channel, queue: &str) -> Step<u32> {
    let args = QueueDeclareArguments::new(queue).passive(true).finish();
    match ch.queue_declare(args).await? {
        Some((_, count, _)) => Ok(count),
        None => fail!("passive queue.declare of {queue} had no reply"),
    }
}

pub async fn publish(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Step<()> {
    let args = BasicPublishArguments::new(exchange, key);
    ch.basic_publish(props, body.to_vec(), args).await?;
    Ok(())
}

/// Publishes on a confirm channel and waits for the broker's ack.
pub async fn publish_acked(
    ch: &Channel,
    events: &mut Events,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Step<()> {
    publish(ch, exchange, key, body, props).await?;
    events.confirms.published();
    events.confirms.all_acked(Duration::from_secs(10)).await
}

/// Publishes the bodies `0`, `1`, ... `count - 1` to `queue` on a confirm channel, then
/// waits until the broker acked them all.
pub async fn publish_numbered(
    ch: &Channel,
    events: &mut Events,
    queue: &str,
    count: usize,
) -> Step<()> {
    for i in 0..count {
        let body = i.to_string();
        publish(ch, "", queue, body.as_bytes(), BasicProperties::default()).await?;
        events.confirms.published();
    }
    events.confirms.all_acked(Duration::from_secs(10)).await
}

/// A message from `basic.get`.
pub struct Got {
    pub get_ok: GetOk,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

impl Got {
    pub fn tag(&self) -> u64 {
        self.get_ok.delivery_tag()
    }
}

pub async fn basic_get(ch: &Channel, queue: &str, no_ack: bool) -> Step<Option<Got>> {
    let args = BasicGetArguments::new(queue).no_ack(no_ack).finish();
    Ok(ch
        .basic_get(args)
        .await?
        .map(|(get_ok, properties, body)| Got {
            get_ok,
            properties,
            body,
        }))
}

/// `basic.get` (acks required) until a message arrives or `limit` passes: dead-lettering is
/// asynchronous in RabbitMQ.
pub async fn get_eventually(ch: &Channel, queue: &str, limit: Duration) -> Step<Option<Got>> {
    let deadline = Instant::now() + limit;
    loop {
        let got = basic_get(ch, queue, false).await?;
        if got.is_some() || Instant::now() > deadline {
            return Ok(got);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn ack(ch: &Channel, tag: u64) -> Step<()> {
    ch.basic_ack(BasicAckArguments::new(tag, false)).await?;
    Ok(())
}

/// Deletes what a scenario declared; a failure here changes no result.
pub async fn delete_queues(ch: &Channel, queues: &[&str]) {
    for q in queues {
        let _ = ch.queue_delete(QueueDeleteArguments::new(q)).await;
    }
}

pub async fn delete_exchanges(ch: &Channel, exchanges: &[&str]) {
    for x in exchanges {
        let _ = ch.exchange_delete(ExchangeDeleteArguments::new(x)).await;
    }
}

/// Closes a connection at the end of a scenario, as an application does. Its result is the
/// `clean_close` scenario's business, not every scenario's (the Go driver defers `Close()`
/// the same way). amqprs 2.1.5 fails it now and then on any broker: `close()` marks the
/// connection closed before sending `connection.close`, and a reader task that has just
/// handled a frame sees the mark and stops the socket I/O first.
pub async fn finish(conn: Connection) {
    let _ = conn.close().await;
}

/// `amqprs.{what}`
pub fn n(what: &str) -> String {
    client_drivers::name(crate::CLIENT, what)
}

/// A fanout exchange `amqprs.dlx{suffix}` bound to the queue `amqprs.dlq{suffix}`.
pub async fn dead_letter_pair(ch: &Channel, suffix: &str) -> Step<(String, String)> {
    let (dlx, dlq) = (n(&format!("dlx{suffix}")), n(&format!("dlq{suffix}")));
    declare_exchange(ch, &dlx, "fanout").await?;
    declare(ch, &dlq, FieldTable::new()).await?;
    bind(ch, &dlq, &dlx, "", FieldTable::new()).await?;
    Ok((dlx, dlq))
}

/// Takes (and acks) what reached the dead-letter queue, then removes the scenario's queues
/// and exchange and closes the connection.
pub async fn last_dead_letter(
    conn: amqprs::connection::Connection,
    ch: &Channel,
    queue: &str,
    dlq: &str,
    dlx: &str,
) -> Step<Option<Got>> {
    let dead = get_eventually(ch, dlq, Duration::from_secs(5)).await?;
    if let Some(d) = &dead {
        ack(ch, d.tag()).await?;
    }
    delete_queues(ch, &[queue, dlq]).await;
    delete_exchanges(ch, &[dlx]).await;
    finish(conn).await;
    Ok(dead)
}
