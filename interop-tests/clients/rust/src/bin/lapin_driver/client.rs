//! The few lapin calls every scenario makes, shortened: connect, open a channel, declare,
//! publish (with or without waiting for the confirm), get until a message arrives, and the
//! reply code of a broker close. Every call returns a `Step`, so a client error becomes a
//! failed scenario with lapin's text.

use std::time::{Duration, Instant};

use client_drivers::{Step, fail};
use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ErrorKind, ExchangeKind};

pub async fn open_connection(url: &str) -> Step<Connection> {
    Ok(Connection::connect(url, ConnectionProperties::default()).await?)
}

pub async fn channel(conn: &Connection) -> Step<Channel> {
    Ok(conn.create_channel().await?)
}

/// A channel in publisher-confirm mode.
pub async fn confirm_channel(conn: &Connection) -> Step<Channel> {
    let ch = channel(conn).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// A non-durable queue with `args`.
pub async fn declare(ch: &Channel, queue: &str, args: FieldTable) -> Step<lapin::Queue> {
    Ok(ch
        .queue_declare(queue.into(), QueueDeclareOptions::default(), args)
        .await?)
}

/// Ready messages in `queue`, by passive declare.
pub async fn message_count(ch: &Channel, queue: &str) -> Step<u32> {
    let opts = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    Ok(ch
        .queue_declare(queue.into(), opts, FieldTable::default())
        .await?
        .message_count())
}

pub async fn publish(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Step<lapin::PublisherConfirm> {
    Ok(ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await?)
}

/// Publishes on a confirm channel and waits for the broker's ack.
pub async fn publish_acked(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Step<()> {
    let confirm = publish(ch, exchange, key, body, props).await?.await?;
    if !confirm.is_ack() {
        fail!("publish to {exchange:?}/{key:?} not acked: {confirm:?}");
    }
    Ok(())
}

/// Publishes the bodies `0`, `1`, ... `count - 1` to `queue` on a confirm channel, then
/// waits for every confirm; a nack fails.
pub async fn publish_numbered(ch: &Channel, queue: &str, count: usize) -> Step<()> {
    let mut pending = Vec::with_capacity(count);
    for i in 0..count {
        let body = i.to_string();
        pending.push(publish(ch, "", queue, body.as_bytes(), BasicProperties::default()).await?);
    }
    let mut nacked = 0;
    for confirm in pending {
        if !confirm.await?.is_ack() {
            nacked += 1;
        }
    }
    if nacked > 0 {
        fail!("{nacked} of {count} publishes nacked");
    }
    Ok(())
}

/// `basic.get` (acks required) until a message arrives or `limit` passes: dead-lettering is
/// asynchronous in RabbitMQ.
pub async fn get_eventually(
    ch: &Channel,
    queue: &str,
    limit: Duration,
) -> Step<Option<BasicGetMessage>> {
    let deadline = Instant::now() + limit;
    loop {
        let got = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await?;
        if got.is_some() || Instant::now() > deadline {
            return Ok(got);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A consumer (acks required) with a server-chosen tag.
pub async fn consume(ch: &Channel, queue: &str) -> Step<lapin::Consumer> {
    Ok(ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?)
}

/// Deletes what a scenario declared; a failure here changes no result.
pub async fn delete_queues(ch: &Channel, queues: &[&str]) {
    for q in queues {
        let _ = ch
            .queue_delete((*q).into(), QueueDeleteOptions::default())
            .await;
    }
}

pub async fn delete_exchanges(ch: &Channel, exchanges: &[&str]) {
    for x in exchanges {
        let _ = ch
            .exchange_delete((*x).into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// The reply code and text of the broker close an error reports, if it is one.
pub fn broker_close(err: &lapin::Error) -> Option<(u16, String)> {
    match err.kind() {
        ErrorKind::ProtocolError(e) => Some((e.get_id(), e.get_message().to_string())),
        _ => None,
    }
}

/// Closes a connection at the end of a scenario, as an application does. Its result is the
/// `clean_close` scenario's business, not every scenario's (the Go driver defers `Close()`
/// the same way).
pub async fn finish(conn: Connection) {
    let _ = conn.close(200, "OK".into()).await;
}

/// `lapin.{what}`
pub fn n(what: &str) -> String {
    client_drivers::name(crate::CLIENT, what)
}

/// A fanout exchange `lapin.dlx{suffix}` bound to the queue `lapin.dlq{suffix}`.
pub async fn dead_letter_pair(ch: &lapin::Channel, suffix: &str) -> Step<(String, String)> {
    let (dlx, dlq) = (n(&format!("dlx{suffix}")), n(&format!("dlq{suffix}")));
    ch.exchange_declare(
        dlx.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await?;
    declare(ch, &dlq, FieldTable::default()).await?;
    ch.queue_bind(
        dlq.as_str().into(),
        dlx.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok((dlx, dlq))
}

/// Takes (and acks) what reached the dead-letter queue, then removes the scenario's queues
/// and exchange and closes the connection.
pub async fn last_dead_letter(
    conn: lapin::Connection,
    ch: &lapin::Channel,
    queue: &str,
    dlq: &str,
    dlx: &str,
) -> Step<Option<lapin::message::BasicGetMessage>> {
    let dead = get_eventually(ch, dlq, Duration::from_secs(5)).await?;
    if let Some(d) = &dead {
        d.delivery.acker.ack(BasicAckOptions::default()).await?;
    }
    delete_queues(ch, &[queue, dlq]).await;
    delete_exchanges(ch, &[dlx]).await;
    finish(conn).await;
    Ok(dead)
}
