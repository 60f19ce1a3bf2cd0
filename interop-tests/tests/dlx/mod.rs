//! Helpers shared by `dead_lettering.rs` and `queue_limits.rs`: queue arguments, declares that
//! may fail, dead-letter targets, settling deliveries, and reading the headers dead-lettering
//! adds (`x-death`, `x-first-death-*`, `x-last-death-*`, `x-delivery-count`).
//!
//! Header values are read leniently by kind (any integer width, long or short string), so the
//! tests pin down what RabbitMQ clients rely on, not which field tag Warren picks.

#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use crate::common::*;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicNackOptions, BasicPublishOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Consumer, ExchangeKind};

/// A queue-argument table from `(key, value)` pairs.
pub fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// A 32-bit integer argument, as the Java and .NET clients send numbers.
pub fn int(v: i32) -> AMQPValue {
    AMQPValue::LongInt(v)
}

pub fn string(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

pub fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// `queue.declare` that may be refused.
pub async fn try_declare(
    ch: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    arguments: FieldTable,
) -> lapin::Result<lapin::Queue> {
    within(
        "queue.declare",
        ch.queue_declare(name.into(), options, arguments),
    )
    .await
}

/// `queue.declare` that must succeed.
pub async fn declare(
    ch: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    arguments: FieldTable,
) -> lapin::Queue {
    try_declare(ch, name, options, arguments)
        .await
        .unwrap_or_else(|e| panic!("queue.declare {name}: {e:?}"))
}

pub async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind, durable: bool) {
    within(
        "exchange.declare",
        ch.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.declare");
}

pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    within(
        "queue.bind",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.bind");
}

/// A direct exchange `dlx` with the queue `dlq` bound to it under `key`: where dead letters of
/// the queues under test end up.
pub async fn dead_letter_target(ch: &Channel, dlx: &str, dlq: &str, key: &str) {
    declare_exchange(ch, dlx, ExchangeKind::Direct, false).await;
    declare(
        ch,
        dlq,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    bind(ch, dlq, dlx, key).await;
}

/// Publishes with properties; on a confirm channel, returns the broker's confirmation.
pub async fn publish_with(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Confirmation {
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .expect("basic.publish");
    within("publisher confirm", confirm)
        .await
        .expect("publisher confirm")
}

pub async fn confirm_select(ch: &Channel) {
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
}

pub async fn ack(d: &Delivery) {
    within("basic.ack", d.ack(BasicAckOptions::default()))
        .await
        .expect("basic.ack");
}

pub async fn nack(d: &Delivery, requeue: bool) {
    within(
        "basic.nack",
        d.nack(BasicNackOptions {
            requeue,
            ..BasicNackOptions::default()
        }),
    )
    .await
    .expect("basic.nack");
}

pub async fn reject(d: &Delivery, requeue: bool) {
    within("basic.reject", d.reject(BasicRejectOptions { requeue }))
        .await
        .expect("basic.reject");
}

pub async fn cancel(ch: &Channel, consumer: &Consumer) {
    within(
        "basic.cancel",
        ch.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("basic.cancel");
}

/// Waits until `queue` has been deleted: polls a passive declare (on a fresh channel each time,
/// since a 404 closes it) every `interval`. `interval` should exceed any lease a declare might
/// renew, so the polling itself cannot keep the queue alive.
pub async fn wait_for_deletion(broker: &TestBroker, queue: &str, interval: std::time::Duration) {
    let (conn, mut ch) = broker.channel().await;
    within("queue deletion", async {
        loop {
            tokio::time::sleep(interval).await;
            let res = ch
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match res {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(reply_code(&e), Some(code::NOT_FOUND), "{e:?}");
                    return;
                }
            }
            ch = open_channel(&conn).await;
        }
    })
    .await;
}

/// The message's header table (empty if it has none).
pub fn headers(props: &BasicProperties) -> FieldTable {
    props.headers().clone().unwrap_or_default()
}

pub fn header(props: &BasicProperties, key: &str) -> Option<AMQPValue> {
    headers(props).inner().get(key).cloned()
}

/// A string-valued field, long or short.
pub fn as_text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        other => panic!("expected a string, got {other:?}"),
    }
}

/// An integer-valued field of any width.
pub fn as_int(v: &AMQPValue) -> i64 {
    match *v {
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::LongLongInt(n) => n,
        ref other => panic!("expected an integer, got {other:?}"),
    }
}

/// The `x-delivery-count` header, if present.
pub fn delivery_count(d: &Delivery) -> Option<i64> {
    header(&d.properties, "x-delivery-count").map(|v| as_int(&v))
}

/// A string-valued top-level header that must be present.
pub fn text_header(d: &Delivery, key: &str) -> String {
    let v = header(&d.properties, key)
        .unwrap_or_else(|| panic!("header {key} missing from {:?}", d.properties.headers()));
    as_text(&v)
}

/// The `x-death` entries, most recent first.
pub fn x_death(d: &Delivery) -> Vec<FieldTable> {
    match header(&d.properties, "x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|e| match e {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("x-death entry is not a table: {other:?}"),
            })
            .collect(),
        other => panic!("x-death is not an array: {other:?}"),
    }
}

/// A field of an `x-death` entry that must be present.
pub fn field<'a>(entry: &'a FieldTable, key: &str) -> &'a AMQPValue {
    entry
        .inner()
        .get(key)
        .unwrap_or_else(|| panic!("x-death entry lacks {key}: {entry:?}"))
}

pub fn field_text(entry: &FieldTable, key: &str) -> String {
    as_text(field(entry, key))
}

pub fn field_int(entry: &FieldTable, key: &str) -> i64 {
    as_int(field(entry, key))
}

/// The entry for `(queue, reason)`; there must be exactly one.
pub fn death_entry(d: &Delivery, queue: &str, reason: &str) -> FieldTable {
    let matching: Vec<FieldTable> = x_death(d)
        .into_iter()
        .filter(|e| field_text(e, "queue") == queue && field_text(e, "reason") == reason)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "expected one x-death entry for ({queue}, {reason}) in {:?}",
        x_death(d)
    );
    matching.into_iter().next().unwrap()
}

/// The single x-death entry of a message dead-lettered once, checked for the fields every
/// entry has: `count` 1, `reason`, `queue`, a `time` stamp, `exchange` and `routing-keys`.
pub fn assert_single_death(
    d: &Delivery,
    reason: &str,
    queue: &str,
    exchange: &str,
    routing_keys: &[&str],
) -> FieldTable {
    let deaths = x_death(d);
    assert_eq!(deaths.len(), 1, "x-death: {deaths:?}");
    let e = deaths.into_iter().next().unwrap();
    assert_eq!(field_int(&e, "count"), 1, "{e:?}");
    assert_eq!(field_text(&e, "reason"), reason, "{e:?}");
    assert_eq!(field_text(&e, "queue"), queue, "{e:?}");
    assert_eq!(field_text(&e, "exchange"), exchange, "{e:?}");
    let keys: Vec<String> = match field(&e, "routing-keys") {
        AMQPValue::FieldArray(a) => a.as_slice().iter().map(as_text).collect(),
        other => panic!("routing-keys is not an array: {other:?}"),
    };
    assert_eq!(keys, routing_keys, "{e:?}");
    assert_recent_timestamp(field(&e, "time"));
    e
}

/// A `T` timestamp within a day of now (it records when the message died, in seconds).
pub fn assert_recent_timestamp(v: &AMQPValue) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    match *v {
        AMQPValue::Timestamp(t) => assert!(
            t.abs_diff(now) < 86_400,
            "time {t} is not a recent timestamp in seconds (now {now})"
        ),
        ref other => panic!("time is not a timestamp: {other:?}"),
    }
}

/// The `x-first-death-*` and `x-last-death-*` headers equal `(reason, queue, exchange)`.
pub fn assert_first_death(d: &Delivery, reason: &str, queue: &str, exchange: &str) {
    assert_eq!(text_header(d, "x-first-death-reason"), reason);
    assert_eq!(text_header(d, "x-first-death-queue"), queue);
    assert_eq!(text_header(d, "x-first-death-exchange"), exchange);
}

pub fn assert_last_death(d: &Delivery, reason: &str, queue: &str, exchange: &str) {
    assert_eq!(text_header(d, "x-last-death-reason"), reason);
    assert_eq!(text_header(d, "x-last-death-queue"), queue);
    assert_eq!(text_header(d, "x-last-death-exchange"), exchange);
}
