//! Queues: declare-ok counts, server-named queues, passive/exclusive/equivalence rules and their
//! reply codes, purge, delete (with if-unused / if-empty), consumer cancel notification on
//! delete, auto-delete, exclusive queue lifetime, bind/unbind.

mod common;

use common::*;
use lapin::options::{
    BasicCancelOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

async fn declare(
    ch: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> lapin::Result<lapin::Queue> {
    within(
        "queue.declare",
        ch.queue_declare(name.into(), options, args),
    )
    .await
}

async fn passive(ch: &Channel, name: &str) -> lapin::Result<lapin::Queue> {
    declare(
        ch,
        name,
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

/// Whether `name` exists, checked on a fresh channel of `conn` (a 404 closes that channel).
async fn queue_exists(conn: &Connection, name: &str) -> bool {
    let ch = open_channel(conn).await;
    match passive(&ch, name).await {
        Ok(_) => true,
        Err(e) => {
            assert_eq!(reply_code(&e), Some(code::NOT_FOUND), "{e:?}");
            false
        }
    }
}

fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

async fn delete(ch: &Channel, name: &str, options: QueueDeleteOptions) -> lapin::Result<u32> {
    within("queue.delete", ch.queue_delete(name.into(), options)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_ok_reports_ready_message_and_consumer_counts() {
    let (broker, _conn, ch) = setup_channel().await;
    let q = declare_queue(&ch, "counts").await;
    assert_eq!((q.message_count(), q.consumer_count()), (0, 0));
    for n in 0..3u8 {
        publish(&ch, "", "counts", &[n]).await;
    }
    let q = declare_queue(&ch, "counts").await;
    assert_eq!((q.message_count(), q.consumer_count()), (3, 0));

    // Two consumers with prefetch 1 each hold one unacked message apiece: one stays ready.
    let (_c2, ch2) = broker.channel().await;
    within(
        "basic.qos",
        ch2.basic_qos(1, lapin::options::BasicQosOptions::default()),
    )
    .await
    .unwrap();
    let mut a = consume(&ch2, "counts").await;
    let mut b = consume(&ch2, "counts").await;
    next_delivery(&mut a).await;
    next_delivery(&mut b).await;
    let q = declare_queue(&ch, "counts").await;
    assert_eq!((q.message_count(), q.consumer_count()), (1, 2));
    let q = passive(&ch, "counts").await.unwrap();
    assert_eq!((q.message_count(), q.consumer_count()), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_named_queues_get_distinct_amq_gen_names() {
    let (_b, _conn, ch) = setup_channel().await;
    let a = declare(
        &ch,
        "",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let b = declare(
        &ch,
        "",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    assert!(a.name().as_str().starts_with("amq.gen-"), "{}", a.name());
    assert!(b.name().as_str().starts_with("amq.gen-"), "{}", b.name());
    assert_ne!(a.name(), b.name());
    // The name is real: it can be published to and read from.
    publish(&ch, "", a.name().as_str(), b"to-gen").await;
    let got = within(
        "basic.get",
        ch.basic_get(a.name().clone(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .expect("message in server-named queue");
    assert_eq!(got.delivery.data, b"to-gen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_missing_queue_fails_with_404() {
    let (_b, conn, ch) = setup_channel().await;
    let err = assert_code(passive(&ch, "nope").await, code::NOT_FOUND);
    assert!(err.is_amqp_soft_error());
    assert!(!ch.status().connected());
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declaring_an_amq_prefixed_queue_is_refused_with_403() {
    let (_b, _conn, ch) = setup_channel().await;
    let res = declare(
        &ch,
        "amq.mine",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    assert_code(res, code::ACCESS_REFUSED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_is_locked_405_for_other_connections() {
    let broker = TestBroker::start().await;
    let (_owner, ch) = broker.channel().await;
    declare(
        &ch,
        "mine",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();

    let other = broker.connect().await;
    // Declare with the same flags.
    let ch2 = open_channel(&other).await;
    let res = declare(
        &ch2,
        "mine",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    assert_code(res, code::RESOURCE_LOCKED);
    // Passive declare.
    let ch2 = open_channel(&other).await;
    assert_code(passive(&ch2, "mine").await, code::RESOURCE_LOCKED);
    // Consume.
    let ch2 = open_channel(&other).await;
    let res = within(
        "basic.consume",
        ch2.basic_consume(
            "mine".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res.map(|c| c.tag()), code::RESOURCE_LOCKED);
    // The owner still uses it.
    let q = passive(&ch, "mine").await.unwrap();
    assert_eq!(q.message_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclaring_with_a_different_durable_flag_fails_with_406() {
    let (_b, _conn, ch) = setup_channel().await;
    declare(
        &ch,
        "dur",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let res = declare(
        &ch,
        "dur",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    assert_code(res, code::PRECONDITION_FAILED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclaring_with_a_different_argument_fails_with_406() {
    let (b, _conn, ch) = setup_channel().await;
    let ten = args(&[("x-max-length", AMQPValue::LongInt(10))]);
    declare(&ch, "argq", QueueDeclareOptions::default(), ten.clone())
        .await
        .unwrap();
    // Same arguments: fine.
    declare(&ch, "argq", QueueDeclareOptions::default(), ten)
        .await
        .unwrap();
    let twenty = args(&[("x-max-length", AMQPValue::LongInt(20))]);
    let res = declare(&ch, "argq", QueueDeclareOptions::default(), twenty).await;
    assert_code(res, code::PRECONDITION_FAILED);
    // Leaving the argument out is inequivalent too.
    let (_c, ch) = b.channel().await;
    let res = declare(
        &ch,
        "argq",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    assert_code(res, code::PRECONDITION_FAILED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_queue_argument_is_refused_with_406() {
    let (_b, conn, ch) = setup_channel().await;
    let bad = args(&[("x-max-length", AMQPValue::LongString("lots".into()))]);
    let res = declare(&ch, "badarg", QueueDeclareOptions::default(), bad).await;
    assert_code(res, code::PRECONDITION_FAILED);
    assert!(!queue_exists(&conn, "badarg").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_returns_the_number_of_ready_messages_removed() {
    let (_b, _conn, ch) = setup_channel().await;
    declare_queue(&ch, "purge").await;
    for n in 0..5u8 {
        publish(&ch, "", "purge", &[n]).await;
    }
    // One is delivered and unacked: purge leaves it alone.
    let held = within(
        "basic.get",
        ch.basic_get("purge".into(), BasicGetOptions::default()),
    )
    .await
    .unwrap()
    .expect("a message");
    let purged = within(
        "queue.purge",
        ch.queue_purge("purge".into(), QueuePurgeOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(purged, 4);
    assert_eq!(message_count(&ch, "purge").await, 0);
    // The unacked one comes back on reject-requeue.
    within(
        "basic.reject",
        held.delivery
            .reject(lapin::options::BasicRejectOptions { requeue: true }),
    )
    .await
    .unwrap();
    assert_eq!(message_count(&ch, "purge").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_returns_the_message_count() {
    let (_b, conn, ch) = setup_channel().await;
    declare_queue(&ch, "del").await;
    for n in 0..3u8 {
        publish(&ch, "", "del", &[n]).await;
    }
    assert_eq!(
        delete(&ch, "del", QueueDeleteOptions::default())
            .await
            .unwrap(),
        3
    );
    assert!(!queue_exists(&conn, "del").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_missing_queue_returns_zero() {
    let (_b, _conn, ch) = setup_channel().await;
    assert_eq!(
        delete(&ch, "never-was", QueueDeleteOptions::default())
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_unused_with_a_consumer_fails_with_406() {
    let (broker, conn, ch) = setup_channel().await;
    declare_queue(&ch, "used").await;
    let (_c2, ch2) = broker.channel().await;
    let _consumer = consume(&ch2, "used").await;
    let res = delete(
        &ch,
        "used",
        QueueDeleteOptions {
            if_unused: true,
            ..Default::default()
        },
    )
    .await;
    assert_code(res, code::PRECONDITION_FAILED);
    assert!(queue_exists(&conn, "used").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_empty_with_messages_fails_with_406() {
    let (_b, conn, ch) = setup_channel().await;
    declare_queue(&ch, "full").await;
    publish(&ch, "", "full", b"m").await;
    let res = delete(
        &ch,
        "full",
        QueueDeleteOptions {
            if_empty: true,
            ..Default::default()
        },
    )
    .await;
    assert_code(res, code::PRECONDITION_FAILED);
    assert!(queue_exists(&conn, "full").await);

    // Empty and unused: both conditions hold, the delete goes through.
    let ch = open_channel(&conn).await;
    within(
        "queue.purge",
        ch.queue_purge("full".into(), QueuePurgeOptions::default()),
    )
    .await
    .unwrap();
    let n = delete(
        &ch,
        "full",
        QueueDeleteOptions {
            if_empty: true,
            if_unused: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(n, 0);
    assert!(!queue_exists(&conn, "full").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_cancels_its_consumers_with_basic_cancel() {
    let (broker, _conn, ch) = setup_channel().await;
    declare_queue(&ch, "doomed").await;
    let (_c2, ch2) = broker.channel().await;
    let mut consumer = consume(&ch2, "doomed").await;
    delete(&ch, "doomed", QueueDeleteOptions::default())
        .await
        .unwrap();
    assert!(
        consumer_ends(&mut consumer).await,
        "consumer stream must end cleanly on basic.cancel"
    );
    // The consumer's channel stays open.
    assert!(ch2.status().connected());
    declare_queue(&ch2, "survivor").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_queue_is_deleted_after_its_last_consumer_cancels() {
    let (broker, conn, ch) = setup_channel().await;
    declare(
        &ch,
        "ad",
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Never consumed from: stays.
    assert!(queue_exists(&conn, "ad").await);
    let (_c2, ch2) = broker.channel().await;
    let a = consume(&ch2, "ad").await;
    let b = consume(&ch2, "ad").await;
    within(
        "basic.cancel",
        ch2.basic_cancel(a.tag(), BasicCancelOptions::default()),
    )
    .await
    .unwrap();
    assert!(queue_exists(&conn, "ad").await, "one consumer left");
    within(
        "basic.cancel",
        ch2.basic_cancel(b.tag(), BasicCancelOptions::default()),
    )
    .await
    .unwrap();
    assert!(!queue_exists(&conn, "ad").await, "last consumer gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_queue_is_deleted_when_its_consumers_channel_closes() {
    let (broker, conn, ch) = setup_channel().await;
    declare(
        &ch,
        "ad2",
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let (_c2, ch2) = broker.channel().await;
    let _a = consume(&ch2, "ad2").await;
    within("channel.close", ch2.close(200, "bye".into()))
        .await
        .unwrap();
    assert!(!queue_exists(&conn, "ad2").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_is_deleted_when_its_connection_closes() {
    let broker = TestBroker::start().await;
    let (owner, ch) = broker.channel().await;
    declare(
        &ch,
        "excl",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    within("connection.close", owner.close(200, "bye".into()))
        .await
        .unwrap();
    let other = broker.connect().await;
    assert!(!queue_exists(&other, "excl").await);
    // And the name is free to take.
    let ch = open_channel(&other).await;
    declare(
        &ch,
        "excl",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("name free after owner left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_routes_and_unbind_stops_routing() {
    let (_b, _conn, ch) = setup_channel().await;
    declare_queue(&ch, "bq").await;
    within(
        "queue.bind",
        ch.queue_bind(
            "bq".into(),
            "amq.topic".into(),
            "x.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    publish(&ch, "amq.topic", "x.y", b"1").await;
    assert_eq!(message_count(&ch, "bq").await, 1);
    within(
        "queue.unbind",
        ch.queue_unbind(
            "bq".into(),
            "amq.topic".into(),
            "x.*".into(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    publish(&ch, "amq.topic", "x.y", b"2").await;
    assert_eq!(message_count(&ch, "bq").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_to_a_missing_exchange_fails_with_404() {
    let (_b, _conn, ch) = setup_channel().await;
    declare_queue(&ch, "bq2").await;
    let res = within(
        "queue.bind",
        ch.queue_bind(
            "bq2".into(),
            "no-such-x".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, code::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_a_missing_queue_fails_with_404() {
    let (_b, _conn, ch) = setup_channel().await;
    let res = within(
        "queue.bind",
        ch.queue_bind(
            "no-such-q".into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, code::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_queue_keeps_persistent_messages_across_a_restart() {
    let mut broker = TestBroker::start().await;
    {
        let (conn, ch) = broker.channel().await;
        declare(
            &ch,
            "durable-q",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        declare_queue(&ch, "transient-q").await;
        within(
            "queue.bind",
            ch.queue_bind(
                "durable-q".into(),
                "amq.direct".into(),
                "k".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
        within("confirm.select", ch.confirm_select(Default::default()))
            .await
            .unwrap();
        for (body, mode) in [("persistent-1", 2u8), ("transient", 1), ("persistent-2", 2)] {
            let confirm = within(
                "basic.publish",
                ch.basic_publish(
                    "amq.direct".into(),
                    "k".into(),
                    Default::default(),
                    body.as_bytes(),
                    lapin::BasicProperties::default().with_delivery_mode(mode),
                ),
            )
            .await
            .unwrap();
            assert!(within("confirm", confirm).await.unwrap().is_ack());
        }
        let _ = within("connection.close", conn.close(200, "bye".into())).await;
    }
    broker.restart().await;
    let (conn, ch) = broker.channel().await;
    assert!(
        !queue_exists(&conn, "transient-q").await,
        "non-durable queue survived a restart"
    );
    let mut left = Vec::new();
    while let Some(m) = within(
        "basic.get",
        ch.basic_get("durable-q".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .expect("durable queue gone after restart")
    {
        left.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    // RabbitMQ keeps persistent messages of a durable queue and drops transient ones.
    assert_eq!(left, vec!["persistent-1", "persistent-2"]);
    // The binding is durable too.
    publish(&ch, "amq.direct", "k", b"rebound").await;
    assert_eq!(message_count(&ch, "durable-q").await, 1);
}
