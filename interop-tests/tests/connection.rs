//! Connection and channel lifecycle: handshake, server properties, tuning, authentication and
//! vhost refusal, many channels, channel.flow, heartbeats, shutdown.

mod common;

use amqp_codec::Frame;
use amqp_codec::protocol::{AMQPClass, connection};
use amqp_codec::types::AMQPValue;
use common::raw::RawClient;
use common::*;
use lapin::options::ChannelFlowOptions;
use lapin::{Connection, ConnectionProperties};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_handshake_connects_and_opens_a_channel() {
    let (_broker, conn) = setup().await;
    assert!(conn.status().connected());
    let ch = open_channel(&conn).await;
    assert!(ch.status().connected());
    let q = declare_queue(&ch, "handshake-q").await;
    assert_eq!(q.name().as_str(), "handshake-q");
    within("connection.close", conn.close(200, "bye".into()))
        .await
        .expect("connection.close-ok");
    assert!(!conn.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_properties_announce_all_rabbitmq_capabilities() {
    let broker = TestBroker::start().await;
    let (_c, hs) = RawClient::open(broker.addr()).await;
    let start = hs.start;
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let mechanisms = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
    assert!(
        mechanisms.split_whitespace().any(|m| m == "PLAIN"),
        "mechanisms: {mechanisms}"
    );
    let locales = String::from_utf8_lossy(start.locales.as_bytes()).into_owned();
    assert!(
        locales.split_whitespace().any(|l| l == "en_US"),
        "locales: {locales}"
    );
    let caps = match start.server_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => t.clone(),
        other => panic!("server_properties.capabilities is not a table: {other:?}"),
    };
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        assert_eq!(
            caps.inner().get(cap),
            Some(&AMQPValue::Boolean(true)),
            "capability {cap} missing or not true in {caps:?}"
        );
    }
    for key in ["product", "version"] {
        assert!(
            start.server_properties.contains_key(key),
            "server_properties lacks {key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tune_offers_channel_max_2047_frame_max_131072_heartbeat_60() {
    let broker = TestBroker::start().await;
    let (_c, hs) = RawClient::open(broker.addr()).await;
    assert_eq!(hs.tune.channel_max, 2047);
    assert_eq!(hs.tune.frame_max, 131_072);
    assert_eq!(hs.tune.heartbeat, 60);

    // lapin, asking for nothing in particular, settles on the broker's values.
    let conn = broker.connect().await;
    let cfg = conn.configuration();
    assert_eq!(cfg.channel_max(), 2047);
    assert_eq!(cfg.frame_max(), 131_072);
    assert_eq!(cfg.heartbeat(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tune_reflects_configured_limits() {
    let broker = TestBroker::start_with(|c| {
        c.channel_max = 16;
        c.frame_max = 8192;
        c.heartbeat = 5;
    })
    .await;
    let (_c, hs) = RawClient::open(broker.addr()).await;
    assert_eq!(
        (hs.tune.channel_max, hs.tune.frame_max, hs.tune.heartbeat),
        (16, 8192, 5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_refused_with_403_access_refused() {
    let broker = TestBroker::start().await;
    let res = within(
        "lapin connect",
        Connection::connect(
            &broker.uri_for("guest", "not-the-password", "%2f"),
            ConnectionProperties::default(),
        ),
    )
    .await;
    // (amq-protocol files 403 under soft errors whatever frame carried it; the raw test below
    // checks that it arrives as connection.close.)
    assert_code(res.map(|_| ()), code::ACCESS_REFUSED);

    // And a fresh connection with the right password still works.
    let conn = broker.connect().await;
    open_channel(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_gets_connection_close_403_when_client_has_authentication_failure_close() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr()).await;
    c.start("guest", "wrong").await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, code::ACCESS_REFUSED, "{close:?}");
    assert!(
        close.reply_text.as_str().starts_with("ACCESS_REFUSED"),
        "reply text: {}",
        close.reply_text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_is_refused_with_403_access_refused() {
    let broker = TestBroker::start().await;
    let res = within(
        "lapin connect",
        Connection::connect(
            &broker.uri_for("nobody", "guest", "%2f"),
            ConnectionProperties::default(),
        ),
    )
    .await;
    assert_code(res.map(|_| ()), code::ACCESS_REFUSED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vhost_is_refused_with_530_not_allowed() {
    let broker = TestBroker::start().await;
    let res = within(
        "lapin connect",
        Connection::connect(
            &broker.uri_for("guest", "guest", "no-such-vhost"),
            ConnectionProperties::default(),
        ),
    )
    .await;
    let err = assert_code(res.map(|_| ()), code::NOT_ALLOWED);
    assert!(err.is_amqp_hard_error(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vhost_close_arrives_over_raw_socket() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr()).await;
    c.start("guest", "guest").await;
    let tune = match c.read_method().await {
        (0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => t,
        other => panic!("expected tune, got {other:?}"),
    };
    c.tune_ok(&tune).await;
    c.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "no-such-vhost".into(),
        })),
    )
    .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, code::NOT_ALLOWED, "{close:?}");
    assert_eq!((close.class_id, close.method_id), (10, 40), "{close:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_channels_open_work_and_close() {
    let (_broker, conn) = setup().await;
    for round in 0..2 {
        let mut channels = Vec::new();
        for _ in 0..200 {
            channels.push(open_channel(&conn).await);
        }
        let mut ids: Vec<u16> = channels.iter().map(|c| c.id()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 200, "channel ids must be distinct");
        // Every channel is usable.
        for (i, ch) in channels.iter().enumerate() {
            declare_queue(ch, &format!("many-{round}-{i}")).await;
        }
        for ch in &channels {
            within("channel.close", ch.close(200, "done".into()))
                .await
                .expect("channel.close-ok");
        }
    }
    // The connection is still healthy after 400 open/close cycles.
    let ch = open_channel(&conn).await;
    assert_eq!(message_count(&ch, "many-1-0").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_one_channel_leaves_others_working() {
    let (_broker, conn) = setup().await;
    let a = open_channel(&conn).await;
    let b = open_channel(&conn).await;
    within("channel.close", a.close(200, "bye".into()))
        .await
        .expect("close a");
    declare_queue(&b, "still-works").await;
    assert!(b.status().connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_flow_active_true_is_confirmed() {
    let (_broker, _conn, ch) = setup_channel().await;
    let active = within(
        "channel.flow-ok",
        ch.channel_flow(ChannelFlowOptions { active: true }),
    )
    .await
    .expect("channel.flow-ok");
    assert!(active);
    declare_queue(&ch, "after-flow").await;
}

/// RabbitMQ refuses a client asking it to stop sending: `channel.flow{active=false}` closes the
/// connection with 540 NOT_IMPLEMENTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_flow_active_false_closes_connection_with_540() {
    let (_broker, conn, ch) = setup_channel().await;
    let mut events = conn.events_listener();
    let _ = within(
        "channel.flow",
        ch.channel_flow(ChannelFlowOptions { active: false }),
    )
    .await;
    expect_connection_close(&mut events, code::NOT_IMPLEMENTED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_sends_heartbeats_at_the_negotiated_interval() {
    let broker = TestBroker::start_with(|c| c.heartbeat = 1).await;
    let mut c = RawClient::connect(broker.addr()).await;
    c.start("guest", "guest").await;
    let tune = match c.read_method().await {
        (0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => t,
        other => panic!("expected tune, got {other:?}"),
    };
    assert_eq!(tune.heartbeat, 1);
    c.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: tune.channel_max,
            frame_max: tune.frame_max,
            heartbeat: 1,
        })),
    )
    .await;
    c.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    )
    .await;
    match c.read_method().await {
        (0, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))) => {}
        other => panic!("expected open-ok, got {other:?}"),
    }
    // Answer with our own heartbeats so the broker keeps us; count the broker's.
    let mut seen = 0;
    while seen < 2 {
        c.send_bytes(&[8, 0, 0, 0, 0, 0, 0, 0xCE]).await;
        match c.read_any_frame().await {
            Some(Frame::Heartbeat { channel: 0 }) => seen += 1,
            Some(other) => panic!("unexpected frame {other:?}"),
            None => panic!("broker closed a heartbeating connection"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_shutdown_closes_connections_with_320_connection_forced() {
    let (mut broker, conn) = setup().await;
    let mut events = conn.events_listener();
    broker.shutdown().await;
    expect_connection_close(&mut events, code::CONNECTION_FORCED).await;
}

/// RabbitMQ counts open channels against the negotiated channel_max and refuses one more with
/// 530 NOT_ALLOWED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_more_channels_than_channel_max_closes_with_530() {
    let broker = TestBroker::start_with(|c| c.channel_max = 4).await;
    let (mut c, hs) = RawClient::open(broker.addr()).await;
    assert_eq!(hs.tune.channel_max, 4);
    for ch in 1..=4 {
        c.open_channel(ch).await;
    }
    c.send_method(
        5,
        AMQPClass::Channel(amqp_codec::protocol::channel::AMQPMethod::Open(
            amqp_codec::protocol::channel::Open {},
        )),
    )
    .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, code::NOT_ALLOWED, "{close:?}");
}

/// A client that negotiated heartbeats and then goes silent is dropped after about two missed
/// intervals (RabbitMQ closes the socket without a close frame).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_disconnected_after_missed_heartbeats() {
    let broker = TestBroker::start_with(|c| c.heartbeat = 1).await;
    let mut c = RawClient::connect(broker.addr()).await;
    c.start("guest", "guest").await;
    let tune = match c.read_method().await {
        (0, AMQPClass::Connection(connection::AMQPMethod::Tune(t))) => t,
        other => panic!("expected tune, got {other:?}"),
    };
    c.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: tune.channel_max,
            frame_max: tune.frame_max,
            heartbeat: 1,
        })),
    )
    .await;
    c.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    )
    .await;
    // From here on the client sends nothing; read_to_eof fails the test if the broker never
    // closes the socket within the timeout.
    c.read_to_eof().await;
}

/// After close-ok the broker leaves closing the socket to the client, as RabbitMQ does (lapin
/// reports a socket closed under it right after close-ok as an error), and closes its side
/// once the client has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_leaves_the_socket_to_the_client_after_close_ok() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawClient::open(broker.addr()).await;
    c.send_method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    )
    .await;
    let (_, reply) = c.read_method().await;
    assert!(
        matches!(
            reply,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
        ),
        "{reply:?}"
    );
    assert!(
        c.stays_open_for(QUIET).await,
        "the broker closed the socket right after close-ok"
    );
    c.shutdown_write().await;
    assert!(c.read_to_eof().await.is_empty());
}
