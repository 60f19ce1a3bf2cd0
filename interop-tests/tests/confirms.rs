//! Publisher confirms: every publish on a confirm channel is acked, returns come before their
//! ack, confirm and tx modes exclude each other.

mod common;

use amqp_codec::protocol::{AMQPClass, basic, confirm};
use amqp_codec::{Frame, Method};
use common::raw::RawClient;
use common::*;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation};

async fn confirm_select(ch: &Channel) {
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select-ok");
}

async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    mandatory: bool,
    body: &[u8],
    props: BasicProperties,
) -> Confirmation {
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions {
                mandatory,
                ..Default::default()
            },
            body,
            props,
        ),
    )
    .await
    .expect("basic.publish");
    within("publisher confirm", confirm).await.expect("confirm")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_on_a_confirm_channel_are_acked() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "cq").await;
    confirm_select(&ch).await;
    let c = publish_confirmed(&ch, "", "cq", false, b"m", BasicProperties::default()).await;
    assert_eq!(c, Confirmation::Ack(None));
    assert_eq!(message_count(&ch, "cq").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_publishes_are_all_confirmed() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "many").await;
    confirm_select(&ch).await;
    let mut pending = Vec::new();
    for i in 0..2000u32 {
        pending.push(
            within(
                "basic.publish",
                ch.basic_publish(
                    "".into(),
                    "many".into(),
                    BasicPublishOptions::default(),
                    &i.to_be_bytes(),
                    BasicProperties::default(),
                ),
            )
            .await
            .expect("basic.publish"),
        );
    }
    for (i, p) in pending.into_iter().enumerate() {
        let c = within("publisher confirm", p).await.expect("confirm");
        assert!(c.is_ack(), "publish {i} got {c:?}");
    }
    assert!(
        within("wait_for_confirms", ch.wait_for_confirms())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(message_count(&ch, "many").await, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_messages_to_a_durable_queue_are_confirmed() {
    let (_b, _c, ch) = setup_channel().await;
    within(
        "queue.declare",
        ch.queue_declare(
            "durable-cq".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    confirm_select(&ch).await;
    for _ in 0..50 {
        let c = publish_confirmed(
            &ch,
            "",
            "durable-cq",
            false,
            b"persist me",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
        assert_eq!(c, Confirmation::Ack(None));
    }
    assert_eq!(message_count(&ch, "durable-cq").await, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_mandatory_message_is_returned_then_acked() {
    let (_b, _c, ch) = setup_channel().await;
    confirm_select(&ch).await;
    let c = publish_confirmed(
        &ch,
        "amq.direct",
        "nowhere",
        true,
        b"bounce",
        BasicProperties::default(),
    )
    .await;
    assert!(c.is_ack(), "RabbitMQ acks a returned message: {c:?}");
    let returned = c.take_message().expect("basic.return before the ack");
    assert_eq!(returned.reply_code, code::NO_ROUTE);
    assert_eq!(returned.delivery.data, b"bounce");
    assert_eq!(returned.delivery.routing_key.as_str(), "nowhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_non_mandatory_message_is_acked_without_return() {
    let (_b, _c, ch) = setup_channel().await;
    confirm_select(&ch).await;
    let c = publish_confirmed(
        &ch,
        "amq.direct",
        "nowhere",
        false,
        b"dropped",
        BasicProperties::default(),
    )
    .await;
    assert_eq!(c, Confirmation::Ack(None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_select_on_a_transactional_channel_fails_with_406() {
    let (_b, _c, ch) = setup_channel().await;
    within("tx.select", ch.tx_select()).await.unwrap();
    let res = within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await;
    assert_code(res, code::PRECONDITION_FAILED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tx_select_on_a_confirm_channel_fails_with_406() {
    let (_b, _c, ch) = setup_channel().await;
    confirm_select(&ch).await;
    let res = within("tx.select", ch.tx_select()).await;
    assert_code(res, code::PRECONDITION_FAILED);
}

/// On the wire: confirm delivery tags count from 1 per channel and cover every publish exactly
/// once (single or `multiple` acks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirm_tags_count_from_one_and_cover_every_publish() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    c.send_method(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    )
    .await;
    match c.read_method().await {
        (1, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))) => {}
        other => panic!("expected confirm.select-ok, got {other:?}"),
    }
    const N: u64 = 20;
    for i in 0..N {
        c.publish_raw(1, "", "nowhere", &[0, 0], &i.to_be_bytes())
            .await;
    }
    let mut confirmed = 0u64;
    while confirmed < N {
        match c.read_frame().await {
            Some(Frame::Method {
                channel: 1,
                method: Method::Ack(ack),
            }) => {
                assert!(
                    ack.delivery_tag > confirmed && ack.delivery_tag <= N,
                    "ack {ack:?} after {confirmed} confirmed"
                );
                if !ack.multiple {
                    assert_eq!(ack.delivery_tag, confirmed + 1, "gap before {ack:?}");
                }
                confirmed = ack.delivery_tag;
            }
            Some(Frame::Method {
                method: Method::Other(AMQPClass::Basic(basic::AMQPMethod::Nack(n))),
                ..
            }) => panic!("unexpected nack {n:?}"),
            other => panic!("expected basic.ack, got {other:?}"),
        }
    }
}
