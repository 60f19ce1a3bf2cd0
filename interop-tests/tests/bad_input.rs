//! Malformed and out-of-order input over a raw socket, and the close RabbitMQ answers each with.
//! After every one, a fresh lapin connection to the same broker must still work.

mod common;

use amqp_codec::encode;
use amqp_codec::protocol::{AMQPClass, channel, connection, queue};
use bytes::BytesMut;
use common::raw::{RawClient, frame_bytes};
use common::*;

const FRAME_BODY: u8 = 3;
const FRAME_HEADER: u8 = 2;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;

/// The broker still serves a normal client.
async fn assert_broker_healthy(broker: &TestBroker) {
    let (conn, ch) = broker.channel().await;
    declare_queue(&ch, &name("healthy")).await;
    within("connection.close", conn.close(200, "ok".into()))
        .await
        .expect("clean close");
}

fn method_frame(ch: u16, method: AMQPClass) -> BytesMut {
    let mut out = BytesMut::new();
    encode::method(&mut out, ch, &method);
    out
}

fn queue_declare(name: &str) -> AMQPClass {
    AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: name.into(),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: Default::default(),
    }))
}

/// A content header frame payload: class 60, weight 0, body size, no properties.
fn header_payload(body_size: u64) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&60u16.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes());
    p.extend_from_slice(&body_size.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_the_protocol_header_gets_amqp_0_9_1_header_and_close() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr()).await;
    c.send_bytes(b"HELLO, BROKER!\r\n").await;
    let reply = c.read_to_eof().await;
    assert_eq!(reply, b"AMQP\x00\x00\x09\x01");
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_gets_amqp_0_9_1_header_and_close() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr()).await;
    c.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.read_to_eof().await, b"AMQP\x00\x00\x09\x01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_header_split_across_writes_is_accepted() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::connect(broker.addr()).await;
    c.send_bytes(b"AMQ").await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    c.send_bytes(b"P\x00\x00\x09\x01").await;
    match c.read_method().await {
        (0, AMQPClass::Connection(connection::AMQPMethod::Start(_))) => {}
        other => panic!("expected connection.start, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_frame_end_octet_closes_the_connection_with_501() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawClient::open(broker.addr()).await;
    let mut frame = method_frame(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    let last = frame.len() - 1;
    frame[last] = 0x00;
    c.send_bytes(&frame).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, code::FRAME_ERROR, "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_larger_than_frame_max_closes_the_connection_with_501() {
    let broker = TestBroker::start().await;
    let (mut c, hs) = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    let payload = vec![b'x'; hs.tune.frame_max as usize + 4096];
    c.send_bytes_lossy(&frame_bytes(FRAME_BODY, 1, &payload, FRAME_END))
        .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, code::FRAME_ERROR, "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_frame_type_closes_the_connection_with_501() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawClient::open(broker.addr()).await;
    c.send_bytes(&frame_bytes(9, 0, b"??", FRAME_END)).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, code::FRAME_ERROR, "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_on_a_channel_never_opened_closes_the_connection_with_504() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawClient::open(broker.addr()).await;
    c.send_bytes(&method_frame(5, queue_declare("q"))).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, code::CHANNEL_ERROR, "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_channel_open_on_an_open_channel_closes_the_connection_with_504() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    c.send_bytes(&method_frame(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    ))
    .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, code::CHANNEL_ERROR, "{close:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_connection_method_on_channel_zero_closes_the_connection_with_504() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawClient::open(broker.addr()).await;
    c.send_bytes(&method_frame(0, queue_declare("q0"))).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, code::CHANNEL_ERROR, "{close:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_frame_without_a_method_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    c.send_bytes(&frame_bytes(FRAME_BODY, 1, b"orphan body", FRAME_END))
        .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, code::UNEXPECTED_FRAME, "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_header_without_a_method_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    c.send_bytes(&frame_bytes(FRAME_HEADER, 1, &header_payload(5), FRAME_END))
        .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, code::UNEXPECTED_FRAME, "{close:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_where_a_content_header_is_due_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    let mut out = BytesMut::new();
    encode::publish(&mut out, 1, b"", b"q", false);
    encode::method(&mut out, 1, &queue_declare("interleaved"));
    c.send_bytes(&out).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, code::UNEXPECTED_FRAME, "{close:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_on_a_non_zero_channel_closes_the_connection_with_505() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    c.send_bytes(&frame_bytes(FRAME_HEARTBEAT, 1, b"", FRAME_END))
        .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, code::UNEXPECTED_FRAME, "{close:?}");
}

/// RabbitMQ checks `max_message_size` on the assembled message and closes the channel:
/// "PRECONDITION_FAILED - message size N is larger than configured max size M".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_larger_than_max_message_size_closes_the_channel_with_406() {
    let broker = TestBroker::start_with(|c| c.max_message_size = 1024).await;
    let (mut c, _) = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    c.publish_raw(1, "", "anywhere", &[0, 0], &[7u8; 2048])
        .await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(close.reply_code, code::PRECONDITION_FAILED, "{close:?}");
    assert!(
        close
            .reply_text
            .as_str()
            .contains("larger than configured max size"),
        "reply text: {}",
        close.reply_text
    );
    // Only the channel is gone.
    c.open_channel(2).await;
    c.send_bytes(&method_frame(2, queue_declare("after-oversize")))
        .await;
    match c.read_method().await {
        (2, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))) => {}
        other => panic!("expected queue.declare-ok, got {other:?}"),
    }
    // A message at the limit is fine.
    c.publish_raw(2, "", "after-oversize", &[0, 0], &[1u8; 1024])
        .await;
    assert_broker_healthy(&broker).await;
}

/// A content header announcing more than RabbitMQ's absolute limit (512 MiB) is a frame error
/// on the connection, raised before any body arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_header_announcing_over_512_mib_closes_the_connection_with_501() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    let mut out = BytesMut::new();
    encode::publish(&mut out, 1, b"", b"q", false);
    out.extend_from_slice(&frame_bytes(
        FRAME_HEADER,
        1,
        &header_payload(1 << 30),
        FRAME_END,
    ));
    c.send_bytes(&out).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.reply_code, code::FRAME_ERROR, "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_closing_the_socket_mid_frame_leaves_the_broker_healthy() {
    let broker = TestBroker::start().await;
    {
        let (mut c, _) = RawClient::open(broker.addr()).await;
        c.open_channel(1).await;
        let frame = method_frame(1, queue_declare("half"));
        c.send_bytes(&frame[..frame.len() / 2]).await;
    }
    assert_broker_healthy(&broker).await;
}
