//! Queue limits and queue-level consumer rules, checked against RabbitMQ's behaviour:
//! `x-queue-type` validation, queue expiry (`x-expires`), length limits and their overflow
//! modes (`drop-head`, `reject-publish`, `reject-publish-dlx`), priorities (`x-max-priority`),
//! single active consumer, and the delivery acknowledgement timeout.

mod common;
mod dlx;

use common::*;
use dlx::*;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation};

/// Every message body in `queue`, fetched with auto-ack `basic.get` until it is empty.
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let got = within(
            "basic.get",
            ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic.get");
        match got {
            Some(m) => bodies.push(text(&m.delivery)),
            None => return bodies,
        }
    }
}

fn with_priority(p: u8) -> BasicProperties {
    BasicProperties::default().with_priority(p)
}

// --- queue types -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_durable_quorum_queue_is_refused_with_406() {
    let (_b, conn, ch) = setup_channel().await;
    let res = try_declare(
        &ch,
        "qq-transient",
        QueueDeclareOptions::default(),
        args(&[("x-queue-type", string("quorum"))]),
    )
    .await;
    let err = assert_code(res, code::PRECONDITION_FAILED);
    assert!(!is_hard(amqp_error(&err).unwrap()), "{err:?}");
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_quorum_queue_is_refused_with_406() {
    let (_b, _c, ch) = setup_channel().await;
    let res = try_declare(
        &ch,
        "qq-exclusive",
        QueueDeclareOptions {
            durable: true,
            exclusive: true,
            ..QueueDeclareOptions::default()
        },
        args(&[("x-queue-type", string("quorum"))]),
    )
    .await;
    assert_code(res, code::PRECONDITION_FAILED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_quorum_queue_is_refused_with_406() {
    let (_b, _c, ch) = setup_channel().await;
    let res = try_declare(
        &ch,
        "qq-auto-delete",
        QueueDeclareOptions {
            durable: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        args(&[("x-queue-type", string("quorum"))]),
    )
    .await;
    assert_code(res, code::PRECONDITION_FAILED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_queue_type_is_refused_with_406() {
    let (_b, _c, ch) = setup_channel().await;
    let res = try_declare(
        &ch,
        "a-stream",
        durable(),
        args(&[("x-queue-type", string("stream"))]),
    )
    .await;
    assert_code(res, code::PRECONDITION_FAILED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_queue_type_is_accepted() {
    let (_b, _c, ch) = setup_channel().await;
    declare(
        &ch,
        "explicitly-classic",
        QueueDeclareOptions::default(),
        args(&[("x-queue-type", string("classic"))]),
    )
    .await;
    publish(&ch, "", "explicitly-classic", b"m").await;
    assert_eq!(drain(&ch, "explicitly-classic").await, ["m"]);
}

// --- queue expiry ------------------------------------------------------------------------

/// A queue unused for `x-expires` is deleted; one with a consumer is in use and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_unused_for_x_expires_is_deleted_but_one_with_a_consumer_stays() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    let expiring = args(&[("x-expires", int(100))]);
    declare(
        &ch,
        "idle",
        QueueDeclareOptions::default(),
        expiring.clone(),
    )
    .await;
    declare(&ch, "in-use", QueueDeclareOptions::default(), expiring).await;
    let _consumer = consume(&ch, "in-use").await;

    // Polling slower than the lease, so that a passive declare renewing it cannot matter.
    wait_for_deletion(&broker, "idle", std::time::Duration::from_millis(300)).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(message_count(&ch, "in-use").await, 0);
}

// --- length limits -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_drops_the_oldest_and_dead_letters_it_with_reason_maxlen() {
    let (_b, _c, ch) = setup_channel().await;
    dead_letter_target(&ch, "len-dlx", "len-dlq", "capped").await;
    declare(
        &ch,
        "capped",
        QueueDeclareOptions::default(),
        args(&[
            ("x-max-length", int(2)),
            ("x-dead-letter-exchange", string("len-dlx")),
        ]),
    )
    .await;
    let mut dlq = consume(&ch, "len-dlq").await;
    for body in ["m1", "m2", "m3"] {
        publish(&ch, "", "capped", body.as_bytes()).await;
    }
    let dead = next_delivery(&mut dlq).await;
    assert_eq!(text(&dead), "m1");
    assert_single_death(&dead, "maxlen", "capped", "", &["capped"]);
    assert_first_death(&dead, "maxlen", "capped", "");
    assert_eq!(drain(&ch, "capped").await, ["m2", "m3"]);
    assert_no_delivery(&mut dlq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_bytes_drops_the_oldest_and_dead_letters_it_with_reason_maxlen() {
    let (_b, _c, ch) = setup_channel().await;
    dead_letter_target(&ch, "bytes-dlx", "bytes-dlq", "byte-capped").await;
    declare(
        &ch,
        "byte-capped",
        QueueDeclareOptions::default(),
        args(&[
            ("x-max-length-bytes", int(10)),
            ("x-dead-letter-exchange", string("bytes-dlx")),
        ]),
    )
    .await;
    let mut dlq = consume(&ch, "bytes-dlq").await;
    // Bodies count, not headers: two five-byte bodies fill the queue exactly.
    for body in ["aaaaa", "bbbbb", "ccccc"] {
        publish(&ch, "", "byte-capped", body.as_bytes()).await;
    }
    let dead = next_delivery(&mut dlq).await;
    assert_eq!(text(&dead), "aaaaa");
    assert_single_death(&dead, "maxlen", "byte-capped", "", &["byte-capped"]);
    assert_eq!(drain(&ch, "byte-capped").await, ["bbbbb", "ccccc"]);
    assert_no_delivery(&mut dlq).await;
}

/// `reject-publish` refuses the newcomer with a publisher nack and does not dead-letter it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_overflow_nacks_the_extra_publish_and_keeps_the_old_messages() {
    let (_b, _c, ch) = setup_channel().await;
    dead_letter_target(&ch, "rp-dlx", "rp-dlq", "full").await;
    declare(
        &ch,
        "full",
        QueueDeclareOptions::default(),
        args(&[
            ("x-max-length", int(2)),
            ("x-overflow", string("reject-publish")),
            ("x-dead-letter-exchange", string("rp-dlx")),
        ]),
    )
    .await;
    let mut dlq = consume(&ch, "rp-dlq").await;
    confirm_select(&ch).await;
    for body in ["m1", "m2"] {
        let c = publish_with(&ch, "", "full", body.as_bytes(), BasicProperties::default()).await;
        assert_eq!(c, Confirmation::Ack(None), "{body}");
    }
    let c = publish_with(&ch, "", "full", b"m3", BasicProperties::default()).await;
    assert!(matches!(c, Confirmation::Nack(_)), "got {c:?}");
    assert_eq!(drain(&ch, "full").await, ["m1", "m2"]);
    assert_no_delivery(&mut dlq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_dlx_overflow_nacks_and_dead_letters_the_rejected_message() {
    let (_b, _c, ch) = setup_channel().await;
    dead_letter_target(&ch, "rpd-dlx", "rpd-dlq", "full-dlx").await;
    declare(
        &ch,
        "full-dlx",
        QueueDeclareOptions::default(),
        args(&[
            ("x-max-length", int(2)),
            ("x-overflow", string("reject-publish-dlx")),
            ("x-dead-letter-exchange", string("rpd-dlx")),
        ]),
    )
    .await;
    let mut dlq = consume(&ch, "rpd-dlq").await;
    confirm_select(&ch).await;
    for body in ["m1", "m2"] {
        let c = publish_with(
            &ch,
            "",
            "full-dlx",
            body.as_bytes(),
            BasicProperties::default(),
        )
        .await;
        assert_eq!(c, Confirmation::Ack(None), "{body}");
    }
    let c = publish_with(&ch, "", "full-dlx", b"m3", BasicProperties::default()).await;
    assert!(matches!(c, Confirmation::Nack(_)), "got {c:?}");

    let dead = next_delivery(&mut dlq).await;
    assert_eq!(text(&dead), "m3");
    assert_single_death(&dead, "maxlen", "full-dlx", "", &["full-dlx"]);
    assert_eq!(drain(&ch, "full-dlx").await, ["m1", "m2"]);
}

// --- priorities --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_messages_are_delivered_first() {
    let (_b, _c, ch) = setup_channel().await;
    declare(
        &ch,
        "prio",
        QueueDeclareOptions::default(),
        args(&[("x-max-priority", int(10))]),
    )
    .await;
    for p in [1u8, 5, 9] {
        publish_with(
            &ch,
            "",
            "prio",
            format!("p{p}").as_bytes(),
            with_priority(p),
        )
        .await;
    }
    let mut consumer = consume(&ch, "prio").await;
    for want in ["p9", "p5", "p1"] {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(text(&d), want);
        ack(&d).await;
    }
}

/// A priority above `x-max-priority` ranks as the maximum: it neither overtakes an earlier
/// message at the maximum nor falls behind a lower one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_above_the_maximum_counts_as_the_maximum() {
    let (_b, _c, ch) = setup_channel().await;
    declare(
        &ch,
        "prio-cap",
        QueueDeclareOptions::default(),
        args(&[("x-max-priority", int(5))]),
    )
    .await;
    publish_with(&ch, "", "prio-cap", b"low", with_priority(1)).await;
    publish_with(&ch, "", "prio-cap", b"at-max", with_priority(5)).await;
    publish_with(&ch, "", "prio-cap", b"above-max", with_priority(200)).await;
    assert_eq!(drain(&ch, "prio-cap").await, ["at-max", "above-max", "low"]);
}

// --- single active consumer --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_gets_everything_until_it_cancels() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(
        &ch,
        "sac",
        QueueDeclareOptions::default(),
        args(&[(
            "x-single-active-consumer",
            lapin::types::AMQPValue::Boolean(true),
        )]),
    )
    .await;
    let (_ca, ch_a) = broker.channel().await;
    let (_cb, ch_b) = broker.channel().await;
    let mut a = consume(&ch_a, "sac").await;
    let mut b = consume(&ch_b, "sac").await;

    for body in ["1", "2", "3"] {
        publish(&ch, "", "sac", body.as_bytes()).await;
    }
    for want in ["1", "2", "3"] {
        let d = next_delivery(&mut a).await;
        assert_eq!(text(&d), want);
        ack(&d).await;
    }
    assert_no_delivery(&mut b).await;

    cancel(&ch_a, &a).await;
    for body in ["4", "5", "6"] {
        publish(&ch, "", "sac", body.as_bytes()).await;
    }
    for want in ["4", "5", "6"] {
        let d = next_delivery(&mut b).await;
        assert_eq!(text(&d), want);
        ack(&d).await;
    }
}

// --- delivery acknowledgement timeout ----------------------------------------------------

/// Holds one delivery unacked on its own connection until the broker closes the channel, then
/// checks the close and that another consumer gets the message again, marked redelivered.
async fn assert_ack_timeout_closes_channel_and_redelivers(broker: &TestBroker, queue: &str) {
    let (_c, ch) = broker.channel().await;
    publish(&ch, "", queue, b"slow").await;

    let (slow_conn, slow_ch) = broker.channel().await;
    let mut events = slow_conn.events_listener();
    let mut slow = consume(&slow_ch, queue).await;
    let held = next_delivery(&mut slow).await;
    assert!(!held.redelivered);

    let err = next_close(&mut events).await;
    assert_eq!(err.get_id(), code::PRECONDITION_FAILED, "{err:?}");
    assert!(!is_hard(&err), "expected a channel close, got {err:?}");
    let reason = err.get_message().as_str();
    assert!(
        reason.starts_with("PRECONDITION_FAILED - delivery acknowledgement on channel"),
        "close text: {reason}"
    );
    assert!(slow_conn.status().connected());

    let mut other = consume(&ch, queue).await;
    let d = next_delivery(&mut other).await;
    assert_eq!(text(&d), "slow");
    assert!(d.redelivered);
    ack(&d).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_that_never_acks_is_closed_after_x_consumer_timeout_and_the_message_redelivered() {
    let broker = TestBroker::start().await;
    let (_c, ch) = broker.channel().await;
    declare(
        &ch,
        "ack-timeout",
        QueueDeclareOptions::default(),
        args(&[("x-consumer-timeout", int(1000))]),
    )
    .await;
    assert_ack_timeout_closes_channel_and_redelivers(&broker, "ack-timeout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_wide_consumer_timeout_applies_without_a_queue_argument() {
    let broker = TestBroker::start_with(|c| c.consumer_timeout_ms = 1000).await;
    let (_c, ch) = broker.channel().await;
    declare(
        &ch,
        "default-timeout",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    assert_ack_timeout_closes_channel_and_redelivers(&broker, "default-timeout").await;
}
