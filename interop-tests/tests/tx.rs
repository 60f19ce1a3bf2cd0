//! Transactions: publishes and acks inside `tx.select` take effect at `tx.commit` and are
//! dropped by `tx.rollback`; commit/rollback need a transactional channel.

mod common;

use common::*;
use lapin::Channel;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions};

async fn tx_select(ch: &Channel) {
    within("tx.select", ch.tx_select())
        .await
        .expect("tx.select-ok");
}

async fn commit(ch: &Channel) {
    within("tx.commit", ch.tx_commit())
        .await
        .expect("tx.commit-ok");
}

async fn rollback(ch: &Channel) {
    within("tx.rollback", ch.tx_rollback())
        .await
        .expect("tx.rollback-ok");
}

async fn get_some(ch: &Channel, queue: &str) -> BasicGetMessage {
    within(
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions::default()),
    )
    .await
    .expect("basic.get")
    .expect("a message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_are_invisible_until_commit() {
    let (broker, _c, tx) = setup_channel().await;
    declare_queue(&tx, "txq").await;
    tx_select(&tx).await;
    for i in 0..3u8 {
        publish(&tx, "", "txq", &[i]).await;
    }
    let (_c2, observer) = broker.channel().await;
    // The publishes have reached the broker (a round trip on their channel) but wait there.
    declare_queue(&tx, "txq").await;
    assert_eq!(message_count(&observer, "txq").await, 0);
    let mut consumer = consume(&observer, "txq").await;
    assert_no_delivery(&mut consumer).await;
    commit(&tx).await;
    for i in 0..3u8 {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(d.data, vec![i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_discards_publishes_and_the_channel_stays_transactional() {
    let (broker, _c, tx) = setup_channel().await;
    declare_queue(&tx, "txr").await;
    tx_select(&tx).await;
    publish(&tx, "", "txr", b"discard me").await;
    rollback(&tx).await;
    let (_c2, observer) = broker.channel().await;
    assert_eq!(message_count(&observer, "txr").await, 0);
    // Still in a transaction: the next publish also waits for a commit.
    publish(&tx, "", "txr", b"keep me").await;
    declare_queue(&tx, "txr").await;
    assert_eq!(message_count(&observer, "txr").await, 0);
    commit(&tx).await;
    assert_eq!(message_count(&observer, "txr").await, 1);
    let m = get_some(&observer, "txr").await;
    assert_eq!(m.delivery.data, b"keep me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_in_a_transaction_take_effect_at_commit() {
    let (broker, _c, ch) = setup_channel().await;
    declare_queue(&ch, "txa").await;
    for i in 0..4u8 {
        publish(&ch, "", "txa", &[i]).await;
    }
    let (_c2, tx) = broker.channel().await;
    tx_select(&tx).await;
    let a = get_some(&tx, "txa").await;
    let b = get_some(&tx, "txa").await;
    within("basic.ack", a.delivery.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    commit(&tx).await;
    // b acked inside a transaction that is never committed.
    within("basic.ack", b.delivery.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    within("channel.close", tx.close(200, "bye".into()))
        .await
        .unwrap();
    // a is gone; b's uncommitted ack did not count, so b is back.
    let mut left = Vec::new();
    while let Some(m) = within(
        "basic.get",
        ch.basic_get("txa".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    {
        left.push((m.delivery.data[0], m.delivery.redelivered));
    }
    assert_eq!(left, vec![(1, true), (2, false), (3, false)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_acks_leave_messages_unacked() {
    let (broker, _c, ch) = setup_channel().await;
    declare_queue(&ch, "txb").await;
    publish(&ch, "", "txb", b"m").await;
    let (_c2, tx) = broker.channel().await;
    tx_select(&tx).await;
    let m = get_some(&tx, "txb").await;
    within("basic.ack", m.delivery.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    rollback(&tx).await;
    // Still unacked on tx (not requeued yet), so nothing is ready.
    assert_eq!(message_count(&ch, "txb").await, 0);
    // Acking it again for real, and committing, removes it.
    within(
        "basic.ack",
        tx.basic_ack(m.delivery.delivery_tag, BasicAckOptions::default()),
    )
    .await
    .unwrap();
    commit(&tx).await;
    within("channel.close", tx.close(200, "bye".into()))
        .await
        .unwrap();
    assert_eq!(message_count(&ch, "txb").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_without_tx_select_fails_with_406() {
    let (_b, _c, ch) = setup_channel().await;
    assert_code(
        within("tx.commit", ch.tx_commit()).await,
        code::PRECONDITION_FAILED,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_without_tx_select_fails_with_406() {
    let (_b, _c, ch) = setup_channel().await;
    assert_code(
        within("tx.rollback", ch.tx_rollback()).await,
        code::PRECONDITION_FAILED,
    );
}
