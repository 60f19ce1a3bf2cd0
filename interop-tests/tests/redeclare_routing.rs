//! A channel that keeps publishing while the exchange or queue it publishes to is deleted and
//! declared again: its messages must follow the new one (channels remember their last lookup;
//! these tests pin that a deletion invalidates it).
//!
//! Checks publish and then read counts on the same channel: the broker handles a channel's
//! methods in order, so every earlier publish has been routed by then.

mod common;

use common::*;
use lapin::ExchangeKind;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;

#[tokio::test]
async fn default_exchange_publishes_reach_a_redeclared_queue() {
    let (_broker, _conn, ch) = setup_channel().await;
    let queue = name("redeclared");
    declare_queue(&ch, &queue).await;
    publish(&ch, "", &queue, b"to the first").await;
    assert_eq!(message_count(&ch, &queue).await, 1);

    within(
        "queue.delete",
        ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("queue.delete");
    declare_queue(&ch, &queue).await;
    publish(&ch, "", &queue, b"to the second").await;
    publish(&ch, "", &queue, b"to the second again").await;
    assert_eq!(message_count(&ch, &queue).await, 2);
}

#[tokio::test]
async fn publishes_follow_an_exchange_declared_again_with_another_type() {
    let (_broker, _conn, ch) = setup_channel().await;
    let exchange = name("retyped");
    let (fanned, direct) = (name("fanned"), name("direct"));
    declare_queue(&ch, &fanned).await;
    declare_queue(&ch, &direct).await;
    let declare = |kind| {
        ch.exchange_declare(
            exchange.as_str().into(),
            kind,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
    };
    let bind = |queue: String, key: &'static str| {
        let ch = ch.clone();
        let exchange = exchange.clone();
        async move {
            ch.queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        }
    };

    within("exchange.declare", declare(ExchangeKind::Fanout))
        .await
        .expect("fanout declare");
    within("queue.bind", bind(fanned.clone(), ""))
        .await
        .expect("bind");
    publish(&ch, &exchange, "any", b"fanned out").await;
    assert_eq!(message_count(&ch, &fanned).await, 1);

    within(
        "exchange.delete",
        ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()),
    )
    .await
    .expect("exchange.delete");
    within("exchange.declare", declare(ExchangeKind::Direct))
        .await
        .expect("direct declare");
    within("queue.bind", bind(direct.clone(), "only"))
        .await
        .expect("bind");
    publish(&ch, &exchange, "only", b"direct").await;
    publish(&ch, &exchange, "other", b"unroutable").await;
    assert_eq!(message_count(&ch, &direct).await, 1);
    assert_eq!(
        message_count(&ch, &fanned).await,
        1,
        "old binding must be gone"
    );
}

#[tokio::test]
async fn publishing_to_a_deleted_exchange_closes_the_channel_with_404() {
    let (_broker, conn, ch) = setup_channel().await;
    let exchange = name("vanishing");
    within(
        "exchange.declare",
        ch.exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.declare");
    publish(&ch, &exchange, "", b"routed nowhere").await;
    within(
        "exchange.delete",
        ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()),
    )
    .await
    .expect("exchange.delete");
    publish(&ch, &exchange, "", b"too late").await;
    // The 404 closes the channel: the next method on it fails with that code.
    let err = assert_code(
        within(
            "queue.declare",
            ch.queue_declare("".into(), Default::default(), FieldTable::default()),
        )
        .await,
        code::NOT_FOUND,
    );
    drop(err);
    assert!(
        conn.status().connected(),
        "a channel error must not close the connection"
    );
}
