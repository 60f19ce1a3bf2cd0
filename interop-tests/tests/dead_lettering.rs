//! Dead-lettering and poison messages, checked against RabbitMQ's behaviour: `x-death` and the
//! first/last-death headers on rejection and expiry, the per-queue dead-letter routing key,
//! count increments for repeated deaths, delivery limits (`x-delivery-limit`, the quorum
//! default and its config override, `-1` = unlimited, channel close counting as a return),
//! queue and per-message TTL, dead-letter cycles, and what survives a restart.

mod common;
mod dlx;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use dlx::*;
use lapin::message::Delivery;
use lapin::options::BasicGetOptions;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Consumer, ExchangeKind};

/// The headers dead-lettering adds; everything else must come through unchanged.
const DEATH_HEADERS: [&str; 7] = [
    "x-death",
    "x-first-death-reason",
    "x-first-death-queue",
    "x-first-death-exchange",
    "x-last-death-reason",
    "x-last-death-queue",
    "x-last-death-exchange",
];

/// A message's properties with the dead-lettering headers taken out.
fn without_death_headers(props: &BasicProperties) -> BasicProperties {
    let kept: BTreeMap<_, _> = headers(props)
        .inner()
        .iter()
        .filter(|(k, _)| !DEATH_HEADERS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    props.clone().with_headers(FieldTable::from(kept))
}

/// A queue whose dead letters go to the exchange `dlx`, with extra `arguments`.
fn dead_lettering_to(dlx: &str, extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut entries = vec![("x-dead-letter-exchange", string(dlx))];
    entries.extend(extra.iter().cloned());
    args(&entries)
}

/// Receives `n` deliveries of the single message in play, nacking each with requeue, and
/// returns each one's `x-delivery-count` header and redelivered flag.
async fn nack_requeue_times(consumer: &mut Consumer, n: usize) -> Vec<(Option<i64>, bool)> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let d = next_delivery(consumer).await;
        seen.push((delivery_count(&d), d.redelivered));
        nack(&d, true).await;
    }
    seen
}

/// `(None, false)` for the first delivery, then `(Some(i), true)` for redelivery `i`.
fn expected_counts(deliveries: usize) -> Vec<(Option<i64>, bool)> {
    (0..deliveries)
        .map(|i| match i {
            0 => (None, false),
            i => (Some(i as i64), true),
        })
        .collect()
}

/// Waits until `queue` holds `n` ready messages.
async fn wait_for_count(ch: &Channel, queue: &str, n: u32) {
    within(&format!("{n} messages in {queue}"), async {
        while message_count(ch, queue).await != n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Arguments of a quorum queue, plus `extra`.
fn quorum(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = args(extra);
    t.insert("x-queue-type".into(), string("quorum"));
    t
}

// --- rejection ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_without_requeue_dead_letters_with_reason_rejected() {
    let (_b, _c, ch) = setup_channel().await;
    // Bound under the source queue's name: the message keeps its original routing key.
    dead_letter_target(&ch, "nack-dlx", "nack-dlq", "nacked").await;
    declare(
        &ch,
        "nacked",
        QueueDeclareOptions::default(),
        dead_lettering_to("nack-dlx", &[]),
    )
    .await;
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_message_id("m-1".into())
        .with_correlation_id("corr-1".into())
        .with_timestamp(1_700_000_000)
        .with_headers(args(&[("app", string("kept")), ("n", int(7))]));
    publish_with(&ch, "", "nacked", b"payload", props.clone()).await;

    let mut source = consume(&ch, "nacked").await;
    let d = next_delivery(&mut source).await;
    nack(&d, false).await;

    let mut dlq = consume(&ch, "nack-dlq").await;
    let dead = next_delivery(&mut dlq).await;
    assert_eq!(dead.data, b"payload");
    assert_eq!(dead.exchange.as_str(), "nack-dlx");
    assert_eq!(dead.routing_key.as_str(), "nacked");
    assert_eq!(without_death_headers(&dead.properties), props);
    assert_single_death(&dead, "rejected", "nacked", "", &["nacked"]);
    assert_first_death(&dead, "rejected", "nacked", "");
    assert_last_death(&dead, "rejected", "nacked", "");
    assert_no_delivery(&mut source).await;
    assert_eq!(message_count(&ch, "nacked").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_without_requeue_dead_letters_under_the_dead_letter_routing_key() {
    let (_b, _c, ch) = setup_channel().await;
    declare_exchange(&ch, "work-ex", ExchangeKind::Direct, false).await;
    dead_letter_target(&ch, "rk-dlx", "rk-dlq", "parked").await;
    declare(
        &ch,
        "rk-work",
        QueueDeclareOptions::default(),
        dead_lettering_to("rk-dlx", &[("x-dead-letter-routing-key", string("parked"))]),
    )
    .await;
    bind(&ch, "rk-work", "work-ex", "orig").await;
    publish(&ch, "work-ex", "orig", b"reroute me").await;

    let mut source = consume(&ch, "rk-work").await;
    reject(&next_delivery(&mut source).await, false).await;

    let mut dlq = consume(&ch, "rk-dlq").await;
    let dead = next_delivery(&mut dlq).await;
    assert_eq!(text(&dead), "reroute me");
    assert_eq!(dead.exchange.as_str(), "rk-dlx");
    assert_eq!(dead.routing_key.as_str(), "parked");
    // x-death records where the message was published, not where it was dead-lettered to.
    assert_single_death(&dead, "rejected", "rk-work", "work-ex", &["orig"]);
    assert_first_death(&dead, "rejected", "rk-work", "work-ex");
    assert_last_death(&dead, "rejected", "rk-work", "work-ex");
}

/// The retry-with-delay pattern: rejected messages park in a TTL queue that dead-letters them
/// back. The cycle contains a rejection, so RabbitMQ lets it run; each `(queue, reason)` keeps
/// one x-death entry whose count goes up, most recent first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejecting_the_same_message_again_in_the_same_queue_increments_the_x_death_count() {
    let (_b, _c, ch) = setup_channel().await;
    declare_exchange(&ch, "retry-dlx", ExchangeKind::Direct, false).await;
    declare(
        &ch,
        "retry-work",
        QueueDeclareOptions::default(),
        dead_lettering_to(
            "retry-dlx",
            &[("x-dead-letter-routing-key", string("to-parking"))],
        ),
    )
    .await;
    declare(
        &ch,
        "retry-parking",
        QueueDeclareOptions::default(),
        dead_lettering_to(
            "retry-dlx",
            &[
                ("x-dead-letter-routing-key", string("to-work")),
                ("x-message-ttl", int(20)),
            ],
        ),
    )
    .await;
    bind(&ch, "retry-work", "retry-dlx", "to-work").await;
    bind(&ch, "retry-parking", "retry-dlx", "to-parking").await;
    publish(&ch, "", "retry-work", b"try again").await;

    let mut work = consume(&ch, "retry-work").await;
    let first = next_delivery(&mut work).await;
    assert_eq!(header(&first.properties, "x-death"), None);
    reject(&first, false).await;

    let second = next_delivery(&mut work).await;
    assert_eq!(x_death(&second).len(), 2, "{:?}", x_death(&second));
    assert_eq!(
        field_int(&death_entry(&second, "retry-work", "rejected"), "count"),
        1
    );
    reject(&second, false).await;

    let third = next_delivery(&mut work).await;
    assert_eq!(text(&third), "try again");
    let deaths = x_death(&third);
    assert_eq!(deaths.len(), 2, "one entry per (queue, reason): {deaths:?}");
    assert_eq!(field_text(&deaths[0], "queue"), "retry-parking");
    assert_eq!(field_text(&deaths[0], "reason"), "expired");
    assert_eq!(
        field_int(&death_entry(&third, "retry-work", "rejected"), "count"),
        2
    );
    assert_eq!(
        field_int(&death_entry(&third, "retry-parking", "expired"), "count"),
        2
    );
    assert_first_death(&third, "rejected", "retry-work", "");
    assert_last_death(&third, "expired", "retry-parking", "retry-dlx");
    ack(&third).await;
}

// --- delivery limits ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_limit_dead_letters_once_returns_exceed_it_with_reason_delivery_limit() {
    let (_b, _c, ch) = setup_channel().await;
    dead_letter_target(&ch, "poison-dlx", "poison-dlq", "poison").await;
    declare(
        &ch,
        "poison",
        durable(),
        quorum(&[
            ("x-delivery-limit", int(3)),
            ("x-dead-letter-exchange", string("poison-dlx")),
        ]),
    )
    .await;
    publish(&ch, "", "poison", b"bad").await;
    let mut dlq = consume(&ch, "poison-dlq").await;
    let mut source = consume(&ch, "poison").await;

    let seen = nack_requeue_times(&mut source, 4).await;
    assert_eq!(seen, expected_counts(4));

    let dead = next_delivery(&mut dlq).await;
    assert_eq!(text(&dead), "bad");
    assert_single_death(&dead, "delivery_limit", "poison", "", &["poison"]);
    assert_first_death(&dead, "delivery_limit", "poison", "");
    assert_no_delivery(&mut source).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_limit_without_dead_letter_exchange_drops_the_message() {
    let (_b, _c, ch) = setup_channel().await;
    declare(
        &ch,
        "poison-drop",
        durable(),
        quorum(&[("x-delivery-limit", int(3))]),
    )
    .await;
    publish(&ch, "", "poison-drop", b"bad").await;
    let mut source = consume(&ch, "poison-drop").await;
    assert_eq!(nack_requeue_times(&mut source, 4).await, expected_counts(4));
    assert_no_delivery(&mut source).await;
    cancel(&ch, &source).await;
    assert_eq!(message_count(&ch, "poison-drop").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_delivery_on_a_closed_channel_counts_as_a_return() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    dead_letter_target(&ch, "close-dlx", "close-dlq", "close-poison").await;
    declare(
        &ch,
        "close-poison",
        durable(),
        quorum(&[
            ("x-delivery-limit", int(1)),
            ("x-dead-letter-exchange", string("close-dlx")),
        ]),
    )
    .await;
    publish(&ch, "", "close-poison", b"crashes consumers").await;
    let mut dlq = consume(&ch, "close-dlq").await;

    let (_c1, ch1) = broker.channel().await;
    let mut first = consume(&ch1, "close-poison").await;
    assert_eq!(delivery_count(&next_delivery(&mut first).await), None);
    within("channel.close", ch1.close(200, "crash".into()))
        .await
        .unwrap();

    let (_c2, ch2) = broker.channel().await;
    let mut second = consume(&ch2, "close-poison").await;
    let d = next_delivery(&mut second).await;
    assert!(d.redelivered);
    assert_eq!(delivery_count(&d), Some(1));
    within("channel.close", ch2.close(200, "crash".into()))
        .await
        .unwrap();

    let dead = next_delivery(&mut dlq).await;
    assert_eq!(text(&dead), "crashes consumers");
    assert_single_death(
        &dead,
        "delivery_limit",
        "close-poison",
        "",
        &["close-poison"],
    );
    assert_eq!(message_count(&ch, "close-poison").await, 0);
}

/// RabbitMQ's classic queues ignore `x-delivery-limit`; Warren honours it on every queue type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_limit_applies_to_classic_queues_too() {
    let (_b, _c, ch) = setup_channel().await;
    dead_letter_target(&ch, "classic-dlx", "classic-dlq", "classic-poison").await;
    declare(
        &ch,
        "classic-poison",
        QueueDeclareOptions::default(),
        dead_lettering_to("classic-dlx", &[("x-delivery-limit", int(2))]),
    )
    .await;
    publish(&ch, "", "classic-poison", b"bad").await;
    let mut dlq = consume(&ch, "classic-dlq").await;
    let mut source = consume(&ch, "classic-poison").await;
    assert_eq!(nack_requeue_times(&mut source, 3).await, expected_counts(3));
    let dead = next_delivery(&mut dlq).await;
    assert_single_death(
        &dead,
        "delivery_limit",
        "classic-poison",
        "",
        &["classic-poison"],
    );
    assert_no_delivery(&mut source).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_queue_without_a_delivery_limit_dead_letters_after_twenty_returns() {
    let (_b, _c, ch) = setup_channel().await;
    dead_letter_target(&ch, "q20-dlx", "q20-dlq", "q20").await;
    declare(
        &ch,
        "q20",
        durable(),
        quorum(&[("x-dead-letter-exchange", string("q20-dlx"))]),
    )
    .await;
    publish(&ch, "", "q20", b"bad").await;
    let mut dlq = consume(&ch, "q20-dlq").await;
    let mut source = consume(&ch, "q20").await;
    assert_eq!(
        nack_requeue_times(&mut source, 21).await,
        expected_counts(21)
    );
    let dead = next_delivery(&mut dlq).await;
    assert_single_death(&dead, "delivery_limit", "q20", "", &["q20"]);
    assert_no_delivery(&mut source).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_default_delivery_limit_comes_from_the_config() {
    let broker = TestBroker::start_with(|c| c.quorum_delivery_limit = 2).await;
    let (_c, ch) = broker.channel().await;
    dead_letter_target(&ch, "q2-dlx", "q2-dlq", "q2").await;
    declare(
        &ch,
        "q2",
        durable(),
        quorum(&[("x-dead-letter-exchange", string("q2-dlx"))]),
    )
    .await;
    publish(&ch, "", "q2", b"bad").await;
    let mut dlq = consume(&ch, "q2-dlq").await;
    let mut source = consume(&ch, "q2").await;
    assert_eq!(nack_requeue_times(&mut source, 3).await, expected_counts(3));
    let dead = next_delivery(&mut dlq).await;
    assert_single_death(&dead, "delivery_limit", "q2", "", &["q2"]);
    assert_no_delivery(&mut source).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_delivery_limit_means_unlimited() {
    let (_b, _c, ch) = setup_channel().await;
    dead_letter_target(&ch, "unl-dlx", "unl-dlq", "unlimited").await;
    declare(
        &ch,
        "unlimited",
        durable(),
        quorum(&[
            ("x-delivery-limit", int(-1)),
            ("x-dead-letter-exchange", string("unl-dlx")),
        ]),
    )
    .await;
    publish(&ch, "", "unlimited", b"again and again").await;
    let mut dlq = consume(&ch, "unl-dlq").await;
    let mut source = consume(&ch, "unlimited").await;
    assert_eq!(
        nack_requeue_times(&mut source, 30).await,
        expected_counts(30)
    );
    let d = next_delivery(&mut source).await;
    assert_eq!(text(&d), "again and again");
    assert_eq!(delivery_count(&d), Some(30));
    ack(&d).await;
    assert_no_delivery(&mut dlq).await;
}

// --- TTL ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_ttl_dead_letters_expired_messages_with_reason_expired_without_a_consumer() {
    let (_b, _c, ch) = setup_channel().await;
    dead_letter_target(&ch, "ttl-dlx", "ttl-dlq", "ttl").await;
    declare(
        &ch,
        "ttl",
        QueueDeclareOptions::default(),
        dead_lettering_to("ttl-dlx", &[("x-message-ttl", int(50))]),
    )
    .await;
    publish(&ch, "", "ttl", b"stale").await;

    let mut dlq = consume(&ch, "ttl-dlq").await;
    let dead = next_delivery(&mut dlq).await;
    assert_eq!(text(&dead), "stale");
    let entry = assert_single_death(&dead, "expired", "ttl", "", &["ttl"]);
    assert!(
        !entry.contains_key("original-expiration"),
        "queue TTL is not a per-message expiration: {entry:?}"
    );
    assert_first_death(&dead, "expired", "ttl", "");
    assert_eq!(message_count(&ch, "ttl").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_message_expiration_dead_letters_with_original_expiration_and_drops_the_property() {
    let (_b, _c, ch) = setup_channel().await;
    dead_letter_target(&ch, "exp-dlx", "exp-dlq", "exp").await;
    declare(
        &ch,
        "exp",
        QueueDeclareOptions::default(),
        dead_lettering_to("exp-dlx", &[]),
    )
    .await;
    let props = BasicProperties::default()
        .with_expiration("50".into())
        .with_message_id("short-lived".into());
    publish_with(&ch, "", "exp", b"stale", props).await;

    let mut dlq = consume(&ch, "exp-dlq").await;
    let dead = next_delivery(&mut dlq).await;
    assert_eq!(text(&dead), "stale");
    let entry = assert_single_death(&dead, "expired", "exp", "", &["exp"]);
    assert_eq!(field_text(&entry, "original-expiration"), "50");
    assert_eq!(dead.properties.expiration(), &None);
    assert_eq!(
        dead.properties.message_id().as_ref().map(|s| s.as_str()),
        Some("short-lived")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_ttl_delivers_to_a_waiting_consumer_but_expires_otherwise() {
    let (_b, _c, ch) = setup_channel().await;
    dead_letter_target(&ch, "ttl0-dlx", "ttl0-dlq", "ttl0").await;
    declare(
        &ch,
        "ttl0",
        QueueDeclareOptions::default(),
        dead_lettering_to("ttl0-dlx", &[("x-message-ttl", int(0))]),
    )
    .await;
    let mut dlq = consume(&ch, "ttl0-dlq").await;

    publish(&ch, "", "ttl0", b"nobody waiting").await;
    let dead = next_delivery(&mut dlq).await;
    assert_eq!(text(&dead), "nobody waiting");
    assert_single_death(&dead, "expired", "ttl0", "", &["ttl0"]);

    let mut source = consume(&ch, "ttl0").await;
    publish(&ch, "", "ttl0", b"waited for").await;
    let d = next_delivery(&mut source).await;
    assert_eq!(text(&d), "waited for");
    ack(&d).await;
    assert_no_delivery(&mut dlq).await;
}

// --- cycles ------------------------------------------------------------------------------

/// A queue whose expired messages are dead-lettered back to itself: RabbitMQ drops a message
/// that would reach the same queue twice with no rejection in the cycle. An observer queue on
/// the same binding sees each dead-lettering, so a looping message would show up there again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_cycle_back_to_the_same_queue_drops_the_message() {
    let (_b, _c, ch) = setup_channel().await;
    declare_exchange(&ch, "cycle-ex", ExchangeKind::Direct, false).await;
    declare(
        &ch,
        "cycle",
        QueueDeclareOptions::default(),
        dead_lettering_to("cycle-ex", &[("x-message-ttl", int(50))]),
    )
    .await;
    declare_queue(&ch, "cycle-observer").await;
    bind(&ch, "cycle", "cycle-ex", "cycle").await;
    bind(&ch, "cycle-observer", "cycle-ex", "cycle").await;
    publish(&ch, "", "cycle", b"round and round").await;

    let mut observer = consume(&ch, "cycle-observer").await;
    let d = next_delivery(&mut observer).await;
    assert_single_death(&d, "expired", "cycle", "", &["cycle"]);
    assert_no_delivery(&mut observer).await;
    assert_eq!(message_count(&ch, "cycle").await, 0);
}

// --- restarts ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_count_survives_a_restart() {
    let mut broker = TestBroker::start().await;
    {
        let (_c, ch) = broker.channel().await;
        declare(
            &ch,
            "counted",
            durable(),
            quorum(&[("x-delivery-limit", int(10))]),
        )
        .await;
        confirm_select(&ch).await;
        publish_with(
            &ch,
            "",
            "counted",
            b"durable poison",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
        for expected in [None, Some(1)] {
            let m = within(
                "basic.get",
                ch.basic_get("counted".into(), BasicGetOptions::default()),
            )
            .await
            .expect("basic.get")
            .expect("a message in counted");
            assert_eq!(delivery_count(&m.delivery), expected);
            nack(&m.delivery, true).await;
        }
        assert_eq!(message_count(&ch, "counted").await, 1);
    }
    broker.restart().await;
    let (_c, ch) = broker.channel().await;
    let mut source = consume(&ch, "counted").await;
    let d: Delivery = next_delivery(&mut source).await;
    assert_eq!(text(&d), "durable poison");
    assert_eq!(delivery_count(&d), Some(2));
    assert!(d.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettered_persistent_message_keeps_x_death_across_a_restart() {
    let mut broker = TestBroker::start().await;
    {
        let (_c, ch) = broker.channel().await;
        declare_exchange(&ch, "keep-dlx", ExchangeKind::Direct, true).await;
        declare(&ch, "keep-dlq", durable(), FieldTable::default()).await;
        bind(&ch, "keep-dlq", "keep-dlx", "keep").await;
        declare(&ch, "keep", durable(), dead_lettering_to("keep-dlx", &[])).await;
        confirm_select(&ch).await;
        publish_with(
            &ch,
            "",
            "keep",
            b"evidence",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
        let m = within(
            "basic.get",
            ch.basic_get("keep".into(), BasicGetOptions::default()),
        )
        .await
        .expect("basic.get")
        .expect("a message in keep");
        reject(&m.delivery, false).await;
        wait_for_count(&ch, "keep-dlq", 1).await;
    }
    broker.restart().await;
    let (_c, ch) = broker.channel().await;
    let mut dlq = consume(&ch, "keep-dlq").await;
    let dead = next_delivery(&mut dlq).await;
    assert_eq!(text(&dead), "evidence");
    assert_eq!(dead.properties.delivery_mode(), &Some(2));
    assert_single_death(&dead, "rejected", "keep", "", &["keep"]);
    assert_first_death(&dead, "rejected", "keep", "");
    assert_last_death(&dead, "rejected", "keep", "");
}
