//! Memory flow control: past `memory_high_watermark` a publishing connection is told
//! `connection.blocked` and is no longer read; draining the queue brings `connection.unblocked`
//! and publishing resumes. Connections that do not publish are not blocked and keep working.
//!
//! Every wait is bounded; the only timing-dependent checks are "this did not happen", which a
//! slow broker can only make pass wrongly, never fail wrongly.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use futures_lite::{Stream, StreamExt};
use lapin::options::{BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Event};

const WATERMARK: u64 = 1 << 20;
const BODY: usize = 64 * 1024;
/// 12.5 MiB in all: far past the watermark and past what loopback socket buffers absorb.
const MESSAGES: usize = 200;

async fn wait_for_event(
    events: &mut (impl Stream<Item = Event> + Unpin),
    what: &str,
    want: impl Fn(&Event) -> bool,
) {
    within(what, async {
        loop {
            match events.next().await {
                Some(e) if want(&e) => return,
                Some(Event::Error(e)) => panic!("connection error while waiting for {what}: {e:?}"),
                Some(_) => {}
                None => panic!("event stream ended while waiting for {what}"),
            }
        }
    })
    .await
}

fn body(i: usize) -> Vec<u8> {
    let mut b = vec![(i % 251) as u8; BODY];
    b[..8].copy_from_slice(&(i as u64).to_be_bytes());
    b
}

fn index(data: &[u8]) -> usize {
    u64::from_be_bytes(data[..8].try_into().unwrap()) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publisher_is_blocked_past_the_watermark_and_unblocked_after_draining() {
    let broker = TestBroker::start_with(|c| c.memory_high_watermark = WATERMARK).await;
    let (consumer_conn, cch) = broker.channel().await;
    let mut consumer_events = consumer_conn.events_listener();
    declare_queue(&cch, "flow").await;

    let publisher = broker.connect().await;
    let mut events = publisher.events_listener();
    let pch = open_channel(&publisher).await;
    let published = Arc::new(AtomicUsize::new(0));
    let task = {
        let published = Arc::clone(&published);
        let pch = pch.clone();
        tokio::spawn(async move {
            for i in 0..MESSAGES {
                pch.basic_publish(
                    "".into(),
                    "flow".into(),
                    BasicPublishOptions::default(),
                    &body(i),
                    BasicProperties::default(),
                )
                .await
                .expect("basic.publish");
                published.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    wait_for_event(&mut events, "connection.blocked", |e| {
        matches!(e, Event::ConnectionBlocked(_))
    })
    .await;

    // The broker stopped reading the publisher: the queue holds only part of what was sent.
    let held = message_count(&cch, "flow").await;
    assert!(
        (held as usize) < MESSAGES,
        "all {MESSAGES} messages were taken in despite the alarm"
    );
    tokio::time::sleep(QUIET).await;
    let held_later = message_count(&cch, "flow").await;
    assert!(
        (held_later as usize) < MESSAGES,
        "the broker kept reading a blocked publisher ({held_later} queued)"
    );

    // Other connections keep working, and one that never published is not blocked.
    declare_queue(&cch, "side").await;
    let (_third, tch) = broker.channel().await;
    declare_queue(&tch, "third").await;
    if let Ok(Some(Event::ConnectionBlocked(_))) =
        tokio::time::timeout(QUIET, consumer_events.next()).await
    {
        panic!("a connection that never published was sent connection.blocked");
    }

    // Drain: everything the publisher sent arrives, in order.
    let mut consumer = consume_with(
        &cch,
        "flow",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    for i in 0..MESSAGES {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(d.data.len(), BODY);
        assert_eq!(index(&d.data), i, "message out of order");
    }

    wait_for_event(&mut events, "connection.unblocked", |e| {
        matches!(e, Event::ConnectionUnblocked)
    })
    .await;
    within("the publisher to finish", task).await.unwrap();
    assert_eq!(published.load(Ordering::Relaxed), MESSAGES);

    // Publishing works again.
    publish(&pch, "", "flow", b"after").await;
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishing_below_the_watermark_is_never_blocked() {
    let broker = TestBroker::start_with(|c| c.memory_high_watermark = WATERMARK).await;
    let (conn, ch) = broker.channel().await;
    let mut events = conn.events_listener();
    declare_queue(&ch, "small").await;
    // Half the watermark.
    for i in 0..8 {
        publish(&ch, "", "small", &body(i)).await;
    }
    assert_eq!(message_count(&ch, "small").await, 8);
    if let Ok(Some(Event::ConnectionBlocked(_))) = tokio::time::timeout(QUIET, events.next()).await
    {
        panic!("blocked below the watermark");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_alarm_blocks_publishers_while_consumers_keep_draining() {
    let broker = TestBroker::start().await;
    let (_consumer_conn, cch) = broker.channel().await;
    declare_queue(&cch, "disk").await;
    let publisher = broker.connect().await;
    let mut events = publisher.events_listener();
    let pch = open_channel(&publisher).await;
    publish(&pch, "", "disk", b"before the alarm").await;

    // No filesystem has this much free space: the alarm goes off at the next check.
    broker
        .broker
        .as_ref()
        .expect("running")
        .set_disk_free_limit(u64::MAX);
    wait_for_event(&mut events, "connection.blocked", |e| {
        matches!(e, Event::ConnectionBlocked(_))
    })
    .await;

    // Consumers keep draining while publishers are blocked.
    let mut consumer = consume_with(
        &cch,
        "disk",
        BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    assert_eq!(next_delivery(&mut consumer).await.data, b"before the alarm");

    // A publish sent now waits in the socket until space returns.
    let pending = {
        let pch = pch.clone();
        tokio::spawn(async move { publish(&pch, "", "disk", b"after the alarm").await })
    };
    assert!(
        tokio::time::timeout(QUIET, consumer.next()).await.is_err(),
        "a blocked publisher's message was delivered"
    );

    broker
        .broker
        .as_ref()
        .expect("running")
        .set_disk_free_limit(0);
    wait_for_event(&mut events, "connection.unblocked", |e| {
        matches!(e, Event::ConnectionUnblocked)
    })
    .await;
    within("the blocked publish", pending).await.unwrap();
    assert_eq!(next_delivery(&mut consumer).await.data, b"after the alarm");
}
