//! The README's dead-letter example, run for real: a worker fails on one message three times
//! (then a fourth, the last allowed delivery) and the message lands in the DLQ with its
//! `x-death` history.

mod common;

use common::within;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};

fn header<'a>(headers: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
    headers.inner().get(key)
}

fn long_string(value: Option<&AMQPValue>) -> String {
    match value {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("expected a long string, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_failing_past_its_delivery_limit_lands_in_the_dlq_with_x_death() {
    let broker = common::TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("jobs.dlx".into()),
    );
    args.insert("x-delivery-limit".into(), AMQPValue::LongInt(3));
    ch.exchange_declare(
        "jobs.dlx".into(),
        ExchangeKind::Fanout,
        durable_exchange,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare("jobs.dlq".into(), durable_queue, FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        "jobs.dlq".into(),
        "jobs.dlx".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare("jobs".into(), durable_queue, args)
        .await
        .unwrap();
    for body in [&b"ok-1"[..], b"poison", b"ok-2"] {
        ch.basic_publish(
            "".into(),
            "jobs".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }

    let mut worker = ch
        .basic_consume(
            "jobs".into(),
            "worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut poison_counts = Vec::new();
    let mut ok = 0;
    while ok < 2 || poison_counts.len() < 4 {
        let delivery = within("worker delivery", worker.next())
            .await
            .expect("consumer stream")
            .expect("delivery");
        if delivery.data == b"poison" {
            let count = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| header(h, "x-delivery-count").cloned());
            poison_counts.push(count);
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .unwrap();
        } else {
            ok += 1;
            delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
    }
    assert_eq!(
        poison_counts,
        vec![
            None,
            Some(AMQPValue::LongLongInt(1)),
            Some(AMQPValue::LongLongInt(2)),
            Some(AMQPValue::LongLongInt(3)),
        ]
    );

    let (_c2, dlq_ch) = broker.channel().await;
    let mut dlq = dlq_ch
        .basic_consume(
            "jobs.dlq".into(),
            "dlq".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let dead = within("dead letter", dlq.next())
        .await
        .expect("consumer stream")
        .expect("delivery");
    assert_eq!(dead.data, b"poison");
    let headers = dead.properties.headers().clone().expect("headers");
    let Some(AMQPValue::FieldArray(deaths)) = header(&headers, "x-death") else {
        panic!("no x-death array: {headers:?}");
    };
    assert_eq!(deaths.as_slice().len(), 1);
    let AMQPValue::FieldTable(death) = &deaths.as_slice()[0] else {
        panic!("x-death entry is not a table");
    };
    assert_eq!(long_string(header(death, "reason")), "delivery_limit");
    assert_eq!(long_string(header(death, "queue")), "jobs");
    assert_eq!(long_string(header(death, "exchange")), "");
    assert!(matches!(
        header(death, "count"),
        Some(AMQPValue::LongLongInt(1))
    ));
    assert!(matches!(
        header(death, "time"),
        Some(AMQPValue::Timestamp(_))
    ));
    let Some(AMQPValue::FieldArray(keys)) = header(death, "routing-keys") else {
        panic!("no routing-keys");
    };
    assert_eq!(keys.as_slice().len(), 1);
    assert_eq!(
        long_string(header(&headers, "x-first-death-reason")),
        "delivery_limit"
    );
    assert_eq!(long_string(header(&headers, "x-first-death-queue")), "jobs");
    assert_eq!(long_string(header(&headers, "x-first-death-exchange")), "");
    dead.ack(BasicAckOptions::default()).await.unwrap();
}
