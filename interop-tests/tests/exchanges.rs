//! Exchanges: the predeclared ones, declare/delete rules and their reply codes, routing by
//! direct, fanout, topic and headers exchanges, exchange-to-exchange bindings, alternate
//! exchanges, auto-delete.
//!
//! Routing checks publish and then `basic.get` on the same channel: the broker handles a
//! channel's methods in order, so every earlier publish has been routed by then.

mod common;

use common::*;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeBindOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, ExchangeUnbindOptions, QueueBindOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};

async fn declare_exchange(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    options: ExchangeDeclareOptions,
    args: FieldTable,
) -> lapin::Result<()> {
    within(
        "exchange.declare",
        ch.exchange_declare(name.into(), kind, options, args),
    )
    .await
}

async fn exchange_exists(conn: &lapin::Connection, name: &str) -> bool {
    let ch = open_channel(conn).await;
    let res = declare_exchange(
        &ch,
        name,
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    match res {
        Ok(()) => {
            let _ = ch.close(200, "done".into()).await;
            true
        }
        Err(e) => {
            assert_eq!(reply_code(&e), Some(code::NOT_FOUND), "{e:?}");
            false
        }
    }
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    within(
        "queue.bind",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            args,
        ),
    )
    .await
    .expect("queue.bind");
}

async fn publish_with_headers(ch: &Channel, exchange: &str, body: &str, headers: FieldTable) {
    within(
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            "".into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default().with_headers(headers),
        ),
    )
    .await
    .expect("basic.publish");
}

/// Every message in `queue`, in order, taken with no-ack `basic.get`.
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        let got = within(
            "basic.get",
            ch.basic_get(queue.into(), BasicGetOptions { no_ack: true }),
        )
        .await
        .expect("basic.get");
        match got {
            Some(m) => out.push(String::from_utf8_lossy(&m.delivery.data).into_owned()),
            None => return out,
        }
    }
    panic!("queue {queue} never ran empty");
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

fn i(v: i32) -> AMQPValue {
    AMQPValue::LongInt(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_exchange_routes_to_the_queue_named_by_the_routing_key() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "by-name").await;
    publish(&ch, "", "by-name", b"hello").await;
    publish(&ch, "", "no-such-queue", b"lost").await;
    assert_eq!(drain(&ch, "by-name").await, vec!["hello"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predeclared_amq_exchanges_exist_with_their_types() {
    let (_b, conn, ch) = setup_channel().await;
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        assert!(exchange_exists(&conn, name).await, "{name} missing");
        // A non-passive redeclare with the same type and durability is accepted…
        declare_exchange(
            &ch,
            name,
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("redeclare {name}: {e:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predeclared_exchanges_route_like_their_type() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "q-direct").await;
    declare_queue(&ch, "q-topic").await;
    bind(&ch, "q-direct", "amq.direct", "k", FieldTable::default()).await;
    bind(&ch, "q-topic", "amq.topic", "a.*", FieldTable::default()).await;
    publish(&ch, "amq.direct", "k", b"d1").await;
    publish(&ch, "amq.direct", "other", b"d2").await;
    publish(&ch, "amq.topic", "a.b", b"t1").await;
    publish(&ch, "amq.topic", "a.b.c", b"t2").await;
    assert_eq!(drain(&ch, "q-direct").await, vec!["d1"]);
    assert_eq!(drain(&ch, "q-topic").await, vec!["t1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_auto_delete_and_internal_exchanges_can_be_declared_and_redeclared() {
    let (_b, conn, ch) = setup_channel().await;
    let variants = [
        (
            "x-durable",
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
        ),
        (
            "x-auto-delete",
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
        ),
        (
            "x-internal",
            ExchangeDeclareOptions {
                internal: true,
                ..Default::default()
            },
        ),
    ];
    for (name, opts) in variants {
        declare_exchange(&ch, name, ExchangeKind::Topic, opts, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("declare {name}: {e:?}"));
        // Same declaration again: idempotent.
        declare_exchange(&ch, name, ExchangeKind::Topic, opts, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("redeclare {name}: {e:?}"));
        assert!(exchange_exists(&conn, name).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_declare_of_missing_exchange_fails_with_404_and_closes_the_channel() {
    let (_b, conn, ch) = setup_channel().await;
    let res = declare_exchange(
        &ch,
        "does-not-exist",
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    let err = assert_code(res, code::NOT_FOUND);
    assert!(err.is_amqp_soft_error(), "{err:?}");
    // The channel is gone, the connection is not.
    assert!(!ch.status().connected());
    assert!(conn.status().connected());
    let ch2 = open_channel(&conn).await;
    declare_queue(&ch2, "after-404").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclaring_exchange_with_a_different_type_fails_with_406() {
    let (_b, conn, ch) = setup_channel().await;
    declare_exchange(
        &ch,
        "typed",
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let res = declare_exchange(
        &ch,
        "typed",
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await;
    assert_code(res, code::PRECONDITION_FAILED);
    assert!(exchange_exists(&conn, "typed").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeclaring_exchange_with_a_different_durable_flag_fails_with_406() {
    let (_b, _conn, ch) = setup_channel().await;
    declare_exchange(
        &ch,
        "durable-x",
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let res = declare_exchange(
        &ch,
        "durable-x",
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await;
    assert_code(res, code::PRECONDITION_FAILED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declaring_an_amq_prefixed_exchange_is_refused_with_403() {
    let (_b, conn, ch) = setup_channel().await;
    let res = declare_exchange(
        &ch,
        "amq.foo",
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await;
    assert_code(res, code::ACCESS_REFUSED);
    assert!(!exchange_exists(&conn, "amq.foo").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_amq_exchange_is_refused_with_403() {
    let (_b, conn, ch) = setup_channel().await;
    let res = within(
        "exchange.delete",
        ch.exchange_delete("amq.direct".into(), ExchangeDeleteOptions::default()),
    )
    .await;
    assert_code(res, code::ACCESS_REFUSED);
    assert!(exchange_exists(&conn, "amq.direct").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_a_queue_to_the_default_exchange_is_refused_with_403() {
    let (_b, _conn, ch) = setup_channel().await;
    declare_queue(&ch, "q").await;
    let res = within(
        "queue.bind",
        ch.queue_bind(
            "q".into(),
            "".into(),
            "q".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, code::ACCESS_REFUSED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_missing_exchange_succeeds() {
    let (_b, _conn, ch) = setup_channel().await;
    within(
        "exchange.delete",
        ch.exchange_delete("never-declared".into(), ExchangeDeleteOptions::default()),
    )
    .await
    .expect("RabbitMQ answers delete-ok for a missing exchange");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_if_unused_of_a_bound_exchange_fails_with_406_until_unbound() {
    let (_b, conn, ch) = setup_channel().await;
    declare_exchange(
        &ch,
        "used",
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare_queue(&ch, "q-used").await;
    bind(&ch, "q-used", "used", "k", FieldTable::default()).await;
    let res = within(
        "exchange.delete",
        ch.exchange_delete(
            "used".into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await;
    assert_code(res, code::PRECONDITION_FAILED);
    assert!(exchange_exists(&conn, "used").await);

    let ch = open_channel(&conn).await;
    within(
        "queue.unbind",
        ch.queue_unbind(
            "q-used".into(),
            "used".into(),
            "k".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.unbind");
    within(
        "exchange.delete",
        ch.exchange_delete(
            "used".into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("if-unused delete of an unbound exchange");
    assert!(!exchange_exists(&conn, "used").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_exchange_removes_its_bindings() {
    let (_b, _conn, ch) = setup_channel().await;
    declare_exchange(
        &ch,
        "gone",
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare_queue(&ch, "q-gone").await;
    bind(&ch, "q-gone", "gone", "", FieldTable::default()).await;
    within(
        "exchange.delete",
        ch.exchange_delete("gone".into(), ExchangeDeleteOptions::default()),
    )
    .await
    .unwrap();
    // Redeclared fresh: the old binding must not have survived.
    declare_exchange(
        &ch,
        "gone",
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "gone", "", b"m").await;
    assert!(drain(&ch, "q-gone").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_an_internal_exchange_closes_the_channel_with_403() {
    let (_b, conn, ch) = setup_channel().await;
    declare_exchange(
        &ch,
        "internal-x",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut events = conn.events_listener();
    let _ = ch
        .basic_publish(
            "internal-x".into(),
            "".into(),
            BasicPublishOptions::default(),
            b"nope",
            BasicProperties::default(),
        )
        .await;
    expect_channel_close(&mut events, code::ACCESS_REFUSED).await;
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_missing_exchange_closes_the_channel_with_404() {
    let (_b, conn, ch) = setup_channel().await;
    let mut events = conn.events_listener();
    let _ = ch
        .basic_publish(
            "no-such-exchange".into(),
            "k".into(),
            BasicPublishOptions::default(),
            b"nope",
            BasicProperties::default(),
        )
        .await;
    expect_channel_close(&mut events, code::NOT_FOUND).await;
    assert!(conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_exchange_routes_by_exact_key_to_every_matching_queue() {
    let (_b, _c, ch) = setup_channel().await;
    declare_exchange(
        &ch,
        "dx",
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for q in ["d1", "d2", "d3"] {
        declare_queue(&ch, q).await;
    }
    bind(&ch, "d1", "dx", "red", FieldTable::default()).await;
    bind(&ch, "d2", "dx", "red", FieldTable::default()).await;
    bind(&ch, "d2", "dx", "green", FieldTable::default()).await;
    bind(&ch, "d3", "dx", "blue", FieldTable::default()).await;
    publish(&ch, "dx", "red", b"r").await;
    publish(&ch, "dx", "green", b"g").await;
    publish(&ch, "dx", "Red", b"R").await;
    assert_eq!(drain(&ch, "d1").await, vec!["r"]);
    assert_eq!(drain(&ch, "d2").await, vec!["r", "g"]);
    assert!(drain(&ch, "d3").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_twice_delivers_once() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "twice").await;
    bind(&ch, "twice", "amq.direct", "k", FieldTable::default()).await;
    bind(&ch, "twice", "amq.direct", "k", FieldTable::default()).await;
    bind(&ch, "twice", "amq.topic", "#", FieldTable::default()).await;
    bind(&ch, "twice", "amq.topic", "k", FieldTable::default()).await;
    publish(&ch, "amq.direct", "k", b"one").await;
    publish(&ch, "amq.topic", "k", b"two").await;
    assert_eq!(drain(&ch, "twice").await, vec!["one", "two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_exchange_ignores_the_routing_key() {
    let (_b, _c, ch) = setup_channel().await;
    declare_exchange(
        &ch,
        "fx",
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare_queue(&ch, "f1").await;
    declare_queue(&ch, "f2").await;
    bind(&ch, "f1", "fx", "", FieldTable::default()).await;
    bind(&ch, "f2", "fx", "whatever", FieldTable::default()).await;
    publish(&ch, "fx", "some.key", b"m").await;
    assert_eq!(drain(&ch, "f1").await, vec!["m"]);
    assert_eq!(drain(&ch, "f2").await, vec!["m"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_exchange_matches_star_and_hash_including_hash_as_zero_words() {
    let (_b, _c, ch) = setup_channel().await;
    declare_exchange(
        &ch,
        "tx",
        ExchangeKind::Topic,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let bindings = [
        ("t-star", "a.*.c"),
        ("t-a-hash", "a.#"),
        ("t-hash-c", "#.c"),
        ("t-a-hash-b", "a.#.b"),
        ("t-hash", "#"),
        ("t-one", "*"),
        ("t-exact", "a.b"),
        ("t-mid", "*.b.*"),
    ];
    for (q, pattern) in bindings {
        declare_queue(&ch, q).await;
        bind(&ch, q, "tx", pattern, FieldTable::default()).await;
    }
    for key in [
        "a.b.c", "a", "a.b", "a.x.y.b", "c", "b.c.a", "x.b.y", "a.b.b",
    ] {
        publish(&ch, "tx", key, key.as_bytes()).await;
    }
    let expect: [(&str, &[&str]); 8] = [
        ("t-star", &["a.b.c"]),
        ("t-a-hash", &["a.b.c", "a", "a.b", "a.x.y.b", "a.b.b"]),
        ("t-hash-c", &["a.b.c", "c"]),
        ("t-a-hash-b", &["a.b", "a.x.y.b", "a.b.b"]),
        (
            "t-hash",
            &[
                "a.b.c", "a", "a.b", "a.x.y.b", "c", "b.c.a", "x.b.y", "a.b.b",
            ],
        ),
        ("t-one", &["a", "c"]),
        ("t-exact", &["a.b"]),
        ("t-mid", &["a.b.c", "x.b.y", "a.b.b"]),
    ];
    for (q, want) in expect {
        assert_eq!(drain(&ch, q).await, want, "queue {q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_exchange_x_match_all_and_any_ignore_x_headers() {
    let (_b, _c, ch) = setup_channel().await;
    declare_exchange(
        &ch,
        "hx",
        ExchangeKind::Headers,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for q in [
        "h-all",
        "h-any",
        "h-default",
        "h-all-only-x",
        "h-any-only-x",
        "h-void",
    ] {
        declare_queue(&ch, q).await;
    }
    bind(
        &ch,
        "h-all",
        "hx",
        "",
        table(&[("x-match", s("all")), ("a", i(1)), ("b", s("two"))]),
    )
    .await;
    bind(
        &ch,
        "h-any",
        "hx",
        "",
        table(&[("x-match", s("any")), ("a", i(1)), ("b", s("two"))]),
    )
    .await;
    // No x-match: "all".
    bind(
        &ch,
        "h-default",
        "hx",
        "",
        table(&[("a", i(1)), ("b", s("two"))]),
    )
    .await;
    // With "all", x- arguments are ignored, so nothing is left to fail: matches everything.
    bind(
        &ch,
        "h-all-only-x",
        "hx",
        "",
        table(&[("x-match", s("all")), ("x-foo", s("bar"))]),
    )
    .await;
    // With "any", x- arguments are ignored, so nothing can match.
    bind(
        &ch,
        "h-any-only-x",
        "hx",
        "",
        table(&[("x-match", s("any")), ("x-foo", s("bar"))]),
    )
    .await;
    // A void argument matches on presence of the header, whatever its value.
    bind(
        &ch,
        "h-void",
        "hx",
        "",
        table(&[("x-match", s("all")), ("present", AMQPValue::Void)]),
    )
    .await;

    publish_with_headers(&ch, "hx", "both", table(&[("a", i(1)), ("b", s("two"))])).await;
    publish_with_headers(&ch, "hx", "only-a", table(&[("a", i(1))])).await;
    publish_with_headers(&ch, "hx", "wrong-b", table(&[("a", i(2)), ("b", s("3"))])).await;
    publish_with_headers(
        &ch,
        "hx",
        "extra",
        table(&[("a", i(1)), ("b", s("two")), ("c", i(3)), ("present", i(0))]),
    )
    .await;
    publish_with_headers(&ch, "hx", "x-only", table(&[("x-foo", s("bar"))])).await;
    publish_with_headers(&ch, "hx", "none", FieldTable::default()).await;

    assert_eq!(drain(&ch, "h-all").await, vec!["both", "extra"]);
    assert_eq!(drain(&ch, "h-any").await, vec!["both", "only-a", "extra"]);
    assert_eq!(drain(&ch, "h-default").await, vec!["both", "extra"]);
    assert_eq!(
        drain(&ch, "h-all-only-x").await,
        vec!["both", "only-a", "wrong-b", "extra", "x-only", "none"]
    );
    assert!(drain(&ch, "h-any-only-x").await.is_empty());
    assert_eq!(drain(&ch, "h-void").await, vec!["extra"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_exchange_all_with_x_and_any_with_x_match_x_headers() {
    let (_b, _c, ch) = setup_channel().await;
    declare_exchange(
        &ch,
        "hxx",
        ExchangeKind::Headers,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare_queue(&ch, "h-allx").await;
    declare_queue(&ch, "h-anyx").await;
    bind(
        &ch,
        "h-allx",
        "hxx",
        "",
        table(&[
            ("x-match", s("all-with-x")),
            ("x-foo", s("bar")),
            ("c", i(3)),
        ]),
    )
    .await;
    bind(
        &ch,
        "h-anyx",
        "hxx",
        "",
        table(&[
            ("x-match", s("any-with-x")),
            ("x-foo", s("bar")),
            ("c", i(3)),
        ]),
    )
    .await;
    publish_with_headers(
        &ch,
        "hxx",
        "x-and-c",
        table(&[("x-foo", s("bar")), ("c", i(3))]),
    )
    .await;
    publish_with_headers(&ch, "hxx", "x-only", table(&[("x-foo", s("bar"))])).await;
    publish_with_headers(&ch, "hxx", "c-only", table(&[("c", i(3))])).await;
    publish_with_headers(&ch, "hxx", "x-wrong", table(&[("x-foo", s("baz"))])).await;

    assert_eq!(drain(&ch, "h-allx").await, vec!["x-and-c"]);
    assert_eq!(
        drain(&ch, "h-anyx").await,
        vec!["x-and-c", "x-only", "c-only"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_to_exchange_bindings_route_through_and_unbind_stops_them() {
    let (_b, _c, ch) = setup_channel().await;
    declare_exchange(
        &ch,
        "src",
        ExchangeKind::Topic,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare_exchange(
        &ch,
        "dst",
        ExchangeKind::Direct,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare_queue(&ch, "e2e").await;
    bind(&ch, "e2e", "dst", "a.b", FieldTable::default()).await;
    within(
        "exchange.bind",
        ch.exchange_bind(
            "dst".into(),
            "src".into(),
            "a.*".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.bind");
    publish(&ch, "src", "a.b", b"through").await;
    // Matches src's binding but not dst's.
    publish(&ch, "src", "a.c", b"stopped-at-dst").await;
    // Does not match src's binding.
    publish(&ch, "src", "b.b", b"stopped-at-src").await;
    assert_eq!(drain(&ch, "e2e").await, vec!["through"]);

    within(
        "exchange.unbind",
        ch.exchange_unbind(
            "dst".into(),
            "src".into(),
            "a.*".into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.unbind");
    publish(&ch, "src", "a.b", b"after-unbind").await;
    assert!(drain(&ch, "e2e").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_binding_cycle_delivers_each_message_once() {
    let (_b, _c, ch) = setup_channel().await;
    for x in ["cyc-a", "cyc-b"] {
        declare_exchange(
            &ch,
            x,
            ExchangeKind::Fanout,
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    for (dst, src) in [("cyc-b", "cyc-a"), ("cyc-a", "cyc-b")] {
        within(
            "exchange.bind",
            ch.exchange_bind(
                dst.into(),
                src.into(),
                "".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("exchange.bind");
    }
    declare_queue(&ch, "cyc-q").await;
    bind(&ch, "cyc-q", "cyc-a", "", FieldTable::default()).await;
    bind(&ch, "cyc-q", "cyc-b", "", FieldTable::default()).await;
    publish(&ch, "cyc-a", "", b"once").await;
    assert_eq!(drain(&ch, "cyc-q").await, vec!["once"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternate_exchange_receives_unroutable_messages() {
    let (_b, _c, ch) = setup_channel().await;
    declare_exchange(
        &ch,
        "ae",
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare_exchange(
        &ch,
        "main",
        ExchangeKind::Direct,
        Default::default(),
        table(&[("alternate-exchange", s("ae"))]),
    )
    .await
    .unwrap();
    declare_queue(&ch, "routed").await;
    declare_queue(&ch, "unrouted").await;
    bind(&ch, "routed", "main", "known", FieldTable::default()).await;
    bind(&ch, "unrouted", "ae", "", FieldTable::default()).await;
    publish(&ch, "main", "known", b"normal").await;
    publish(&ch, "main", "unknown", b"caught").await;
    assert_eq!(drain(&ch, "routed").await, vec!["normal"]);
    assert_eq!(drain(&ch, "unrouted").await, vec!["caught"]);

    // A mandatory message caught by the alternate exchange counts as routed: no basic.return.
    within(
        "basic.publish",
        ch.basic_publish(
            "main".into(),
            "unknown".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"mandatory-caught",
            BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(drain(&ch, "unrouted").await, vec!["mandatory-caught"]);
    let returned = within("returns", ch.wait_for_confirms()).await.unwrap();
    assert!(returned.is_empty(), "unexpected basic.return: {returned:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_exchange_goes_away_when_its_last_binding_is_removed() {
    let (_b, conn, ch) = setup_channel().await;
    declare_exchange(
        &ch,
        "ad",
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Never bound: stays.
    assert!(exchange_exists(&conn, "ad").await);
    declare_queue(&ch, "ad-q1").await;
    declare_queue(&ch, "ad-q2").await;
    bind(&ch, "ad-q1", "ad", "k1", FieldTable::default()).await;
    bind(&ch, "ad-q2", "ad", "k2", FieldTable::default()).await;
    within(
        "queue.unbind",
        ch.queue_unbind(
            "ad-q1".into(),
            "ad".into(),
            "k1".into(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    // One binding left: still there.
    assert!(exchange_exists(&conn, "ad").await);
    // Deleting the queue removes the last binding.
    within(
        "queue.delete",
        ch.queue_delete("ad-q2".into(), QueueDeleteOptions::default()),
    )
    .await
    .unwrap();
    assert!(!exchange_exists(&conn, "ad").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbinding_a_queue_stops_routing_to_it() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "ub").await;
    bind(&ch, "ub", "amq.direct", "k", FieldTable::default()).await;
    publish(&ch, "amq.direct", "k", b"before").await;
    within(
        "queue.unbind",
        ch.queue_unbind(
            "ub".into(),
            "amq.direct".into(),
            "k".into(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    publish(&ch, "amq.direct", "k", b"after").await;
    assert_eq!(drain(&ch, "ub").await, vec!["before"]);
}
