//! The basic class: publish, consume, get, ack/nack/reject, requeue order, recover, round-robin,
//! prefetch (per consumer and global), no-ack, exclusive consumers, consumer priorities and
//! tags, requeue on channel/connection close, returns, and the refused `immediate` flag.

mod common;

use common::raw::{RawClient, frame_bytes};
use common::*;
use futures_lite::StreamExt;
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRecoverOptions, BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Consumer};

async fn get(ch: &Channel, queue: &str) -> Option<BasicGetMessage> {
    within(
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions::default()),
    )
    .await
    .expect("basic.get")
}

async fn get_some(ch: &Channel, queue: &str) -> BasicGetMessage {
    get(ch, queue)
        .await
        .expect("basic.get-empty, expected a message")
}

async fn publish_n(ch: &Channel, queue: &str, n: usize) {
    for i in 1..=n {
        publish(ch, "", queue, i.to_string().as_bytes()).await;
    }
}

async fn qos(ch: &Channel, count: u16, global: bool) {
    within("basic.qos", ch.basic_qos(count, BasicQosOptions { global }))
        .await
        .expect("basic.qos");
}

async fn ack(d: &Delivery) {
    assert!(
        within("basic.ack", d.ack(BasicAckOptions::default()))
            .await
            .expect("basic.ack")
    );
}

/// Exactly `expected` deliveries from two consumers, tagged 0 or 1: waits up to [`TIMEOUT`]
/// for them, then fails if another arrives within [`QUIET`].
async fn collect_two(
    a: &mut Consumer,
    b: &mut Consumer,
    expected: usize,
) -> Vec<(usize, Delivery)> {
    let mut merged = (&mut *a)
        .map(|d| (0usize, d))
        .or((&mut *b).map(|d| (1usize, d)));
    let mut out = Vec::new();
    while out.len() < expected {
        match within("a delivery", merged.next()).await {
            Some((i, Ok(d))) => out.push((i, d)),
            Some((_, Err(e))) => panic!("consumer error: {e:?}"),
            None => panic!("consumers ended"),
        }
    }
    if let Ok(extra) = tokio::time::timeout(QUIET, merged.next()).await {
        match extra {
            Some((i, Ok(d))) => panic!(
                "delivery beyond the expected {expected} (consumer {i}): {:?}",
                String::from_utf8_lossy(&d.data)
            ),
            other => panic!("consumer error or end: {other:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_then_consume_delivers_body_routing_info_and_tag() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "pc").await;
    let mut consumer = consume(&ch, "pc").await;
    publish(&ch, "", "pc", b"hello").await;
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"hello");
    assert_eq!(d.exchange.as_str(), "");
    assert_eq!(d.routing_key.as_str(), "pc");
    assert!(!d.redelivered);
    assert_eq!(d.delivery_tag, 1);
    ack(&d).await;
    publish(&ch, "", "pc", b"again").await;
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.delivery_tag, 2, "delivery tags count up per channel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_preserves_publish_order() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "order").await;
    publish_n(&ch, "order", 100).await;
    let mut consumer = consume(&ch, "order").await;
    for i in 1..=100 {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(text(&d), i.to_string());
        ack(&d).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_empty_bodies_round_trip() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "sizes").await;
    // Larger than frame_max (131072): split into several body frames both ways.
    let big: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
    publish(&ch, "", "sizes", &big).await;
    publish(&ch, "", "sizes", b"").await;
    let m = get_some(&ch, "sizes").await;
    assert_eq!(m.delivery.data.len(), big.len());
    assert!(m.delivery.data == big, "large body corrupted");
    let m = get_some(&ch, "sizes").await;
    assert!(m.delivery.data.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_reports_remaining_message_count_and_get_empty_when_drained() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "get").await;
    publish_n(&ch, "get", 3).await;
    for (body, remaining) in [("1", 2), ("2", 1), ("3", 0)] {
        let m = get_some(&ch, "get").await;
        assert_eq!(text(&m.delivery), body);
        assert_eq!(m.message_count, remaining);
        assert!(!m.delivery.redelivered);
        assert_eq!(m.delivery.exchange.as_str(), "");
        assert_eq!(m.delivery.routing_key.as_str(), "get");
    }
    assert!(get(&ch, "get").await.is_none(), "expected basic.get-empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_on_a_missing_queue_fails_with_404() {
    let (_b, _c, ch) = setup_channel().await;
    let res = within(
        "basic.get",
        ch.basic_get("nope".into(), BasicGetOptions::default()),
    )
    .await;
    assert_code(res, code::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_on_a_missing_queue_fails_with_404() {
    let (_b, _c, ch) = setup_channel().await;
    let res = within(
        "basic.consume",
        ch.basic_consume(
            "nope".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res.map(|c| c.tag()), code::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_are_gone_and_unacked_ones_come_back_on_close() {
    let (broker, _c, ch) = setup_channel().await;
    declare_queue(&ch, "ack").await;
    publish_n(&ch, "ack", 2).await;
    let (_c2, ch2) = broker.channel().await;
    let m1 = get_some(&ch2, "ack").await;
    let _m2 = get_some(&ch2, "ack").await;
    ack(&m1.delivery).await;
    within("channel.close", ch2.close(200, "bye".into()))
        .await
        .unwrap();
    let back = get_some(&ch, "ack").await;
    assert_eq!(text(&back.delivery), "2");
    assert!(back.delivery.redelivered);
    assert!(get(&ch, "ack").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_multiple_acks_every_delivery_up_to_the_tag() {
    let (broker, _c, ch) = setup_channel().await;
    declare_queue(&ch, "ackm").await;
    publish_n(&ch, "ackm", 5).await;
    let (_c2, ch2) = broker.channel().await;
    let mut consumer = consume(&ch2, "ackm").await;
    let mut ds = Vec::new();
    for _ in 0..5 {
        ds.push(next_delivery(&mut consumer).await);
    }
    within(
        "basic.ack",
        ch2.basic_ack(ds[2].delivery_tag, BasicAckOptions { multiple: true }),
    )
    .await
    .unwrap();
    within("channel.close", ch2.close(200, "bye".into()))
        .await
        .unwrap();
    let mut back = Vec::new();
    while let Some(m) = get(&ch, "ackm").await {
        assert!(m.delivery.redelivered);
        back.push(text(&m.delivery));
    }
    assert_eq!(back, vec!["4", "5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_multiple_with_tag_zero_acks_everything_outstanding() {
    let (broker, _c, ch) = setup_channel().await;
    declare_queue(&ch, "ack0").await;
    publish_n(&ch, "ack0", 3).await;
    let (_c2, ch2) = broker.channel().await;
    for _ in 0..3 {
        get_some(&ch2, "ack0").await;
    }
    within(
        "basic.ack",
        ch2.basic_ack(0, BasicAckOptions { multiple: true }),
    )
    .await
    .unwrap();
    within("channel.close", ch2.close(200, "bye".into()))
        .await
        .unwrap();
    assert_eq!(message_count(&ch, "ack0").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_multiple_with_requeue_requeues_all_in_order_as_redelivered() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "nackm").await;
    publish_n(&ch, "nackm", 4).await;
    let mut tags = Vec::new();
    for _ in 0..3 {
        tags.push(get_some(&ch, "nackm").await.delivery.delivery_tag);
    }
    within(
        "basic.nack",
        ch.basic_nack(
            tags[2],
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        ),
    )
    .await
    .unwrap();
    let mut back = Vec::new();
    while let Some(m) = get(&ch, "nackm").await {
        back.push((text(&m.delivery), m.delivery.redelivered));
    }
    assert_eq!(
        back,
        vec![
            ("1".into(), true),
            ("2".into(), true),
            ("3".into(), true),
            ("4".into(), false)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_without_requeue_discards() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "nackd").await;
    publish_n(&ch, "nackd", 2).await;
    let m = get_some(&ch, "nackd").await;
    within(
        "basic.nack",
        m.delivery.nack(BasicNackOptions {
            multiple: false,
            requeue: false,
        }),
    )
    .await
    .unwrap();
    let rest = get_some(&ch, "nackd").await;
    assert_eq!(text(&rest.delivery), "2");
    assert!(get(&ch, "nackd").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_with_requeue_redelivers_with_redelivered_flag() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "rej").await;
    publish(&ch, "", "rej", b"again").await;
    let m = get_some(&ch, "rej").await;
    assert!(!m.delivery.redelivered);
    within(
        "basic.reject",
        m.delivery.reject(BasicRejectOptions { requeue: true }),
    )
    .await
    .unwrap();
    let m2 = get_some(&ch, "rej").await;
    assert_eq!(m2.delivery.data, b"again");
    assert!(m2.delivery.redelivered);
    assert!(m2.delivery.delivery_tag > m.delivery.delivery_tag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_without_requeue_discards() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "rejd").await;
    publish(&ch, "", "rejd", b"bye").await;
    let m = get_some(&ch, "rejd").await;
    within(
        "basic.reject",
        m.delivery.reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .unwrap();
    assert!(get(&ch, "rejd").await.is_none());
}

/// RabbitMQ's classic queues put a requeued message back at its original position, not at the
/// tail, and not in the order the requeues happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_messages_go_back_to_their_original_position() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "pos").await;
    publish_n(&ch, "pos", 5).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(get_some(&ch, "pos").await);
    }
    // Requeue 4 first, then 2.
    for i in [3usize, 1] {
        within(
            "basic.nack",
            held[i].delivery.nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            }),
        )
        .await
        .unwrap();
    }
    let a = get_some(&ch, "pos").await;
    let b = get_some(&ch, "pos").await;
    assert_eq!(
        (text(&a.delivery), text(&b.delivery)),
        ("2".into(), "4".into())
    );
    assert!(a.delivery.redelivered && b.delivery.redelivered);
    assert!(get(&ch, "pos").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeued_messages_go_back_ahead_of_never_delivered_ones() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "pos2").await;
    publish_n(&ch, "pos2", 5).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(get_some(&ch, "pos2").await);
    }
    // Requeue 3, then 1; 2 stays unacked.
    for i in [2usize, 0] {
        within(
            "basic.nack",
            held[i].delivery.nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            }),
        )
        .await
        .unwrap();
    }
    let mut order = Vec::new();
    while let Some(m) = get(&ch, "pos2").await {
        order.push((text(&m.delivery), m.delivery.redelivered));
    }
    assert_eq!(
        order,
        vec![
            ("1".into(), true),
            ("3".into(), true),
            ("4".into(), false),
            ("5".into(), false)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_with_requeue_redelivers_unacked_messages() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "recover").await;
    publish_n(&ch, "recover", 2).await;
    let first = get_some(&ch, "recover").await;
    let _second = get_some(&ch, "recover").await;
    ack(&first.delivery).await;
    within(
        "basic.recover",
        ch.basic_recover(BasicRecoverOptions { requeue: true }),
    )
    .await
    .expect("basic.recover-ok");
    let again = get_some(&ch, "recover").await;
    assert_eq!(text(&again.delivery), "2");
    assert!(again.delivery.redelivered);
    assert!(get(&ch, "recover").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_round_robin_across_two_consumers() {
    let (broker, _c, ch) = setup_channel().await;
    declare_queue(&ch, "rr").await;
    let (_c2, ch2) = broker.channel().await;
    let mut a = consume(&ch2, "rr").await;
    let mut b = consume(&ch2, "rr").await;
    publish_n(&ch, "rr", 10).await;
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    for _ in 0..5 {
        got_a.push(text(&next_delivery(&mut a).await).parse::<u32>().unwrap());
        got_b.push(text(&next_delivery(&mut b).await).parse::<u32>().unwrap());
    }
    let odd = vec![1, 3, 5, 7, 9];
    let even = vec![2, 4, 6, 8, 10];
    assert!(
        (got_a == odd && got_b == even) || (got_a == even && got_b == odd),
        "not round-robin: a={got_a:?} b={got_b:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_count_stops_deliveries_until_an_ack() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "pf").await;
    publish_n(&ch, "pf", 5).await;
    qos(&ch, 3, false).await;
    let mut consumer = consume(&ch, "pf").await;
    let mut ds = Vec::new();
    for _ in 0..3 {
        ds.push(next_delivery(&mut consumer).await);
    }
    assert_no_delivery(&mut consumer).await;
    assert_eq!(message_count(&ch, "pf").await, 2);
    ack(&ds[0]).await;
    let d4 = next_delivery(&mut consumer).await;
    assert_eq!(text(&d4), "4");
    assert_no_delivery(&mut consumer).await;
    // A multiple ack frees three slots; only one message is left.
    within(
        "basic.ack",
        ch.basic_ack(d4.delivery_tag, BasicAckOptions { multiple: true }),
    )
    .await
    .unwrap();
    let d5 = next_delivery(&mut consumer).await;
    assert_eq!(text(&d5), "5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_is_per_consumer_without_global() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "pfa").await;
    declare_queue(&ch, "pfb").await;
    publish_n(&ch, "pfa", 3).await;
    publish_n(&ch, "pfb", 3).await;
    qos(&ch, 1, false).await;
    let mut a = consume(&ch, "pfa").await;
    let mut b = consume(&ch, "pfb").await;
    let got = collect_two(&mut a, &mut b, 2).await;
    let per: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
    assert_eq!(per.iter().filter(|i| **i == 0).count(), 1, "{per:?}");
    assert_eq!(per.iter().filter(|i| **i == 1).count(), 1, "{per:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_qos_shares_the_limit_across_the_channels_consumers() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "ga").await;
    declare_queue(&ch, "gb").await;
    publish_n(&ch, "ga", 3).await;
    publish_n(&ch, "gb", 3).await;
    qos(&ch, 2, true).await;
    let mut a = consume(&ch, "ga").await;
    let mut b = consume(&ch, "gb").await;
    // Global prefetch 2 across both consumers.
    let got = collect_two(&mut a, &mut b, 2).await;
    ack(&got[0].1).await;
    // One ack frees exactly one slot.
    collect_two(&mut a, &mut b, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack_consumer_gets_everything_and_nothing_is_requeued() {
    let (broker, _c, ch) = setup_channel().await;
    declare_queue(&ch, "noack").await;
    publish_n(&ch, "noack", 5).await;
    let (_c2, ch2) = broker.channel().await;
    qos(&ch2, 1, false).await; // prefetch does not apply to no-ack consumers
    let mut consumer = consume_with(
        &ch2,
        "noack",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    for i in 1..=5 {
        assert_eq!(text(&next_delivery(&mut consumer).await), i.to_string());
    }
    within("channel.close", ch2.close(200, "bye".into()))
        .await
        .unwrap();
    assert_eq!(message_count(&ch, "noack").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_consumer_gets_no_more_messages() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "cancel").await;
    let mut consumer = consume(&ch, "cancel").await;
    within(
        "basic.cancel",
        ch.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
    )
    .await
    .unwrap();
    publish(&ch, "", "cancel", b"stays").await;
    assert_eq!(message_count(&ch, "cancel").await, 1);
    assert!(consumer_ends(&mut consumer).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_consumer_makes_a_second_consumer_fail_with_403() {
    let (broker, _c, ch) = setup_channel().await;
    declare_queue(&ch, "exc").await;
    let _first = consume_with(
        &ch,
        "exc",
        BasicConsumeOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    let (_c2, ch2) = broker.channel().await;
    let res = within(
        "basic.consume",
        ch2.basic_consume(
            "exc".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res.map(|c| c.tag()), code::ACCESS_REFUSED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_consume_on_a_queue_with_consumers_fails_with_403() {
    let (broker, _c, ch) = setup_channel().await;
    declare_queue(&ch, "exc2").await;
    let _first = consume(&ch, "exc2").await;
    let (_c2, ch2) = broker.channel().await;
    let res = within(
        "basic.consume",
        ch2.basic_consume(
            "exc2".into(),
            "".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res.map(|c| c.tag()), code::ACCESS_REFUSED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_x_priority_consumer_is_served_first_until_blocked_by_prefetch() {
    let (broker, _c, ch) = setup_channel().await;
    declare_queue(&ch, "prio").await;
    let (_c2, ch2) = broker.channel().await;
    qos(&ch2, 2, false).await;
    let mut low = consume(&ch2, "prio").await;
    let mut args = FieldTable::default();
    args.insert("x-priority".into(), AMQPValue::LongInt(10));
    let mut high = consume_with(&ch2, "prio", BasicConsumeOptions::default(), args).await;
    publish_n(&ch, "prio", 6).await;
    let mut got_high = Vec::new();
    for _ in 0..2 {
        got_high.push(text(&next_delivery(&mut high).await));
    }
    assert_eq!(got_high, vec!["1", "2"]);
    let mut got_low = Vec::new();
    for _ in 0..2 {
        got_low.push(text(&next_delivery(&mut low).await));
    }
    assert_eq!(got_low, vec!["3", "4"]);
    assert_no_delivery(&mut high).await;
    assert_eq!(message_count(&ch, "prio").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_generated_consumer_tags_start_with_amq_ctag() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "tags").await;
    let a = consume(&ch, "tags").await;
    let b = consume(&ch, "tags").await;
    assert!(a.tag().as_str().starts_with("amq.ctag-"), "{}", a.tag());
    assert!(b.tag().as_str().starts_with("amq.ctag-"), "{}", b.tag());
    assert_ne!(a.tag(), b.tag());
    let mine = within(
        "basic.consume",
        ch.basic_consume(
            "tags".into(),
            "my-tag".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(mine.tag().as_str(), "my-tag");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_consumer_tag_on_a_channel_closes_the_connection_with_530() {
    let (_b, conn, ch) = setup_channel().await;
    declare_queue(&ch, "dup").await;
    let _a = within(
        "basic.consume",
        ch.basic_consume(
            "dup".into(),
            "same".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let mut events = conn.events_listener();
    let _ = within(
        "basic.consume",
        ch.basic_consume(
            "dup".into(),
            "same".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_connection_close(&mut events, code::NOT_ALLOWED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_channel_requeues_its_unacked_messages_as_redelivered() {
    let (broker, _c, ch) = setup_channel().await;
    declare_queue(&ch, "cc").await;
    publish_n(&ch, "cc", 3).await;
    let (_c1, ch1) = broker.channel().await;
    let mut first = consume(&ch1, "cc").await;
    let d1 = next_delivery(&mut first).await;
    let _d2 = next_delivery(&mut first).await;
    let _d3 = next_delivery(&mut first).await;
    ack(&d1).await;
    within("channel.close", ch1.close(200, "bye".into()))
        .await
        .unwrap();
    let (_c2, ch2) = broker.channel().await;
    let mut second = consume(&ch2, "cc").await;
    for want in ["2", "3"] {
        let d = next_delivery(&mut second).await;
        assert_eq!(text(&d), want);
        assert!(d.redelivered, "requeued message must be marked redelivered");
    }
    assert_no_delivery(&mut second).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_connection_requeues_its_unacked_messages_as_redelivered() {
    let (broker, _c, ch) = setup_channel().await;
    declare_queue(&ch, "cx").await;
    publish_n(&ch, "cx", 2).await;
    let (c1, ch1) = broker.channel().await;
    let mut first = consume(&ch1, "cx").await;
    next_delivery(&mut first).await;
    next_delivery(&mut first).await;
    within("connection.close", c1.close(200, "bye".into()))
        .await
        .unwrap();
    let (_c2, ch2) = broker.channel().await;
    let mut second = consume(&ch2, "cx").await;
    for want in ["1", "2"] {
        let d = next_delivery(&mut second).await;
        assert_eq!(text(&d), want);
        assert!(d.redelivered);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_of_an_unknown_delivery_tag_closes_the_channel_with_406() {
    let (_b, conn, ch) = setup_channel().await;
    let mut events = conn.events_listener();
    let _ = within("basic.ack", ch.basic_ack(42, BasicAckOptions::default())).await;
    expect_channel_close(&mut events, code::PRECONDITION_FAILED).await;
    assert!(conn.status().connected());
    let ch2 = open_channel(&conn).await;
    declare_queue(&ch2, "still-fine").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acking_the_same_tag_twice_closes_the_channel_with_406() {
    let (_b, conn, ch) = setup_channel().await;
    declare_queue(&ch, "twice").await;
    publish(&ch, "", "twice", b"m").await;
    let m = get_some(&ch, "twice").await;
    let tag = m.delivery.delivery_tag;
    within("basic.ack", ch.basic_ack(tag, BasicAckOptions::default()))
        .await
        .unwrap();
    let mut events = conn.events_listener();
    let _ = within("basic.ack", ch.basic_ack(tag, BasicAckOptions::default())).await;
    expect_channel_close(&mut events, code::PRECONDITION_FAILED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_publish_to_unbound_key_is_returned_with_312() {
    let (_b, _c, ch) = setup_channel().await;
    within(
        "basic.publish",
        ch.basic_publish(
            "amq.direct".into(),
            "nobody-home".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"come back",
            BasicProperties::default().with_message_id("m-1".into()),
        ),
    )
    .await
    .unwrap();
    // A round trip on the same channel: the return was sent before its reply.
    declare_queue(&ch, "barrier").await;
    let returned = within("returns", ch.wait_for_confirms()).await.unwrap();
    assert_eq!(returned.len(), 1, "{returned:?}");
    let r = &returned[0];
    assert_eq!(r.reply_code, code::NO_ROUTE);
    assert_eq!(r.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(r.delivery.exchange.as_str(), "amq.direct");
    assert_eq!(r.delivery.routing_key.as_str(), "nobody-home");
    assert_eq!(r.delivery.data, b"come back");
    assert_eq!(
        r.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("m-1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_mandatory_unroutable_publish_is_dropped_silently() {
    let (_b, conn, ch) = setup_channel().await;
    publish(&ch, "amq.direct", "nobody-home", b"dropped").await;
    declare_queue(&ch, "barrier").await;
    let returned = within("returns", ch.wait_for_confirms()).await.unwrap();
    assert!(returned.is_empty());
    assert!(ch.status().connected() && conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_publish_closes_the_connection_with_540() {
    let (_b, conn, ch) = setup_channel().await;
    declare_queue(&ch, "imm").await;
    let mut events = conn.events_listener();
    let _ = ch
        .basic_publish(
            "".into(),
            "imm".into(),
            BasicPublishOptions {
                immediate: true,
                ..Default::default()
            },
            b"now",
            BasicProperties::default(),
        )
        .await;
    expect_connection_close(&mut events, code::NOT_IMPLEMENTED).await;
}

/// RabbitMQ does not implement a byte-based prefetch window: `prefetch_size != 0` closes the
/// connection with 540 NOT_IMPLEMENTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_with_prefetch_size_closes_the_connection_with_540() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    // amq-protocol drops prefetch_size, so the frame is built by hand: class 60 method 10,
    // prefetch-size 65536, prefetch-count 0, global 0.
    let mut payload = vec![0, 60, 0, 10];
    payload.extend_from_slice(&65536u32.to_be_bytes());
    payload.extend_from_slice(&0u16.to_be_bytes());
    payload.push(0);
    c.send_bytes(&frame_bytes(1, 1, &payload, 0xCE)).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, code::NOT_IMPLEMENTED, "{close:?}");
}

/// `basic.recover{requeue=false}` is not implemented by RabbitMQ: 540 on the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_without_requeue_closes_the_connection_with_540() {
    let (_b, conn, ch) = setup_channel().await;
    let mut events = conn.events_listener();
    let _ = within(
        "basic.recover",
        ch.basic_recover(BasicRecoverOptions { requeue: false }),
    )
    .await;
    expect_connection_close(&mut events, code::NOT_IMPLEMENTED).await;
}
