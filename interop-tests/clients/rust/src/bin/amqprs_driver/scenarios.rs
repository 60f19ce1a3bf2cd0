//! scenarios.json's scenarios with amqprs's API, one function each, in the list's order.
//! Every name declared starts with `amqprs.`; each function returns its detail on pass, and
//! fails with what it saw otherwise.

use std::sync::Arc;
use std::time::Duration;

use amqprs::BasicProperties;
use amqprs::channel::{
    BasicConsumeArguments, BasicNackArguments, BasicQosArguments, BasicRejectArguments,
    QueueDeclareArguments,
};
use amqprs::{FieldTable, FieldValue};
use client_drivers::check::{self, body_difference};
use client_drivers::spec::Canonical;
use client_drivers::{Ctx, Params, Step, fail};
use serde_json::{Value, json};
use tokio::time::{Instant, timeout, timeout_at};

use crate::client::*;
use crate::values;

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

fn plain() -> BasicProperties {
    BasicProperties::default()
}

/// Fails with every difference between a received message and the canonical one.
pub fn compared(canon: &Canonical, body: &[u8], props: &BasicProperties) -> Step<()> {
    let diffs = check::compare_canonical(
        canon,
        body,
        &values::properties_json(props),
        &values::headers_json(props),
    );
    if !diffs.is_empty() {
        fail!("{}", diffs.join("; "));
    }
    Ok(())
}

pub async fn connect(ctx: Arc<Ctx>, _p: Params) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let (ch, _events) = channel(&conn).await?;
    if !(conn.is_open() && ch.is_open()) {
        fail!("connection or channel not open");
    }
    finish(conn).await;
    Ok(
        "connection and channel open (URL taken apart by the driver: amqprs opens with host, \
        port, credentials and vhost)"
            .into(),
    )
}

pub async fn declare_topology(ctx: Arc<Ctx>, p: Params) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let (ch, mut events) = confirm_channel(&conn).await?;
    let q = n("topology");
    let kinds = ["direct", "fanout", "topic", "headers"];
    let exchanges: Vec<String> = kinds.iter().map(|k| n(k)).collect();
    for (kind, name) in kinds.iter().zip(&exchanges) {
        declare_exchange(&ch, name, kind).await?;
    }
    let queue_args = p.object("queue_arguments")?.clone();
    declare(&ch, &q, values::table(&queue_args)?).await?;
    let binding = p.object("headers_binding")?;
    let none = FieldTable::new;
    bind(&ch, &q, &exchanges[0], p.str("direct_key")?, none()).await?;
    bind(&ch, &q, &exchanges[1], "", none()).await?;
    bind(&ch, &q, &exchanges[2], p.str("topic_pattern")?, none()).await?;
    bind(&ch, &q, &exchanges[3], "", values::table(binding)?).await?;
    let matching: serde_json::Map<String, Value> = binding
        .iter()
        .filter(|(k, _)| !k.starts_with("x-"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let ev = &mut events;
    publish_acked(
        &ch,
        ev,
        &exchanges[0],
        p.str("direct_key")?,
        b"direct",
        plain(),
    )
    .await?;
    publish_acked(&ch, ev, &exchanges[1], "ignored", b"fanout", plain()).await?;
    publish_acked(
        &ch,
        ev,
        &exchanges[2],
        p.str("topic_key")?,
        b"topic",
        plain(),
    )
    .await?;
    let with_headers = plain().with_headers(values::table(&matching)?).finish();
    publish_acked(&ch, ev, &exchanges[3], "", b"headers", with_headers).await?;
    let mut routed = Vec::new();
    for _ in 0..4 {
        let got = basic_get(&ch, &q, true).await?;
        routed.push(got.map_or("<none>".into(), |m| text(&m.body)));
    }
    if routed != ["direct", "fanout", "topic", "headers"] {
        fail!("routed bodies {routed:?}");
    }
    let (overfill, max_length) = (p.u64("overfill")?, p.u64("max_length")?);
    for i in 0..overfill {
        publish_acked(&ch, ev, "", &q, format!("m{i}").as_bytes(), plain()).await?;
    }
    let count = message_count(&ch, &q).await?;
    if u64::from(count) != max_length {
        fail!("message_count {count} after overfill, want {max_length}");
    }
    let head = basic_get(&ch, &q, true).await?.map(|m| text(&m.body));
    let first = format!("m{}", overfill.saturating_sub(max_length));
    if head.as_deref() != Some(first.as_str()) {
        fail!("head after overfill {head:?}, want {first:?}");
    }
    let mut conflicting = queue_args;
    conflicting.insert(
        "x-max-length".into(),
        p.value("conflicting_max_length")?.clone(),
    );
    let code = p.u64("reply_code")?;
    let redeclare = declare(&ch, &q, values::table(&conflicting)?).await;
    // amqprs reports the broker's channel.close through the channel callback; the call
    // itself only fails.
    let closed = match (redeclare, events.close_within(Duration::from_secs(2)).await) {
        (Ok(()), _) => fail!("inequivalent redeclare succeeded"),
        (Err(_), Some((c, why))) if u64::from(c) == code => format!("{c} {why}"),
        (Err(e), close) => fail!("inequivalent redeclare: {e:?}, channel close {close:?}"),
    };
    let (ch2, _) = channel(&conn).await?;
    delete_queues(&ch2, &[&q]).await;
    let names: Vec<&str> = exchanges.iter().map(String::as_str).collect();
    delete_exchanges(&ch2, &names).await;
    finish(conn).await;
    Ok(format!(
        "4 exchange types routed; max-length kept {count}; redeclare: {closed}"
    ))
}

pub async fn publish_properties(ctx: Arc<Ctx>, _p: Params) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let (ch, _events) = channel(&conn).await?;
    let q = n("props");
    declare(&ch, &q, FieldTable::new()).await?;
    let canon = &ctx.spec.canonical;
    let props = values::canonical_properties(canon)?;
    publish(&ch, "", &q, canon.body.as_bytes(), props).await?;
    let Some(m) = get_eventually(&ch, &q, Duration::from_secs(5)).await? else {
        fail!("message not in queue");
    };
    ack(&ch, m.tag()).await?;
    delete_queues(&ch, &[&q]).await;
    finish(conn).await;
    compared(canon, &m.body, &m.properties)?;
    Ok("body, 12 properties and headers unchanged".into())
}

/// One delivery to a consumer: tag, redelivered, body.
struct Delivery {
    tag: u64,
    redelivered: bool,
    body: Vec<u8>,
}

fn delivery(msg: amqprs::channel::ConsumerMessage) -> Step<Delivery> {
    match (msg.deliver, msg.content) {
        (Some(d), Some(body)) => Ok(Delivery {
            tag: d.delivery_tag(),
            redelivered: d.redelivered(),
            body,
        }),
        _ => fail!("amqprs handed over a delivery without its method or body"),
    }
}

pub async fn consume_ack_prefetch(ctx: Arc<Ctx>, p: Params) -> Step<String> {
    let (messages, prefetch) = (p.usize("messages")?, p.usize("prefetch")?);
    let hold = Duration::from_millis(p.u64("hold_ms")?);
    let conn = open_connection(&ctx.url).await?;
    let (ch, mut events) = confirm_channel(&conn).await?;
    let q = n("prefetch");
    declare(&ch, &q, FieldTable::new()).await?;
    publish_numbered(&ch, &mut events, &q, messages).await?;
    let Ok(prefetch_count) = u16::try_from(prefetch) else {
        fail!("prefetch {prefetch} does not fit basic.qos");
    };
    ch.basic_qos(BasicQosArguments::new(0, prefetch_count, false))
        .await?;
    let consume = BasicConsumeArguments::new(&q, "").manual_ack(true).finish();
    let (_tag, mut deliveries) = ch.basic_consume_rx(consume).await?;
    let mut got: Vec<Delivery> = Vec::new();
    // Up to the prefetch, then whatever else arrives while no ack has been sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < prefetch {
        match timeout_at(deadline, deliveries.recv()).await {
            Ok(Some(m)) => got.push(delivery(m)?),
            Ok(None) => fail!("consumer ended after {} deliveries", got.len()),
            Err(_) => break,
        }
    }
    let hold_until = Instant::now() + hold;
    while let Ok(next) = timeout_at(hold_until, deliveries.recv()).await {
        match next {
            Some(m) => got.push(delivery(m)?),
            None => fail!("consumer ended after {} deliveries", got.len()),
        }
    }
    let before_ack = got.len();
    if before_ack != prefetch {
        fail!("{before_ack} delivered before any ack, want {prefetch}");
    }
    for acked in 0..messages {
        while acked >= got.len() {
            match timeout(Duration::from_secs(5), deliveries.recv()).await {
                Ok(Some(m)) => got.push(delivery(m)?),
                Ok(None) => fail!("consumer ended after {acked} acks"),
                Err(_) => fail!("stalled after {acked} acks, {} received", got.len()),
            }
        }
        ack(&ch, got[acked].tag).await?;
    }
    check::numbered_in_order(got.iter().map(|d| (d.body.as_slice(), d.redelivered)))?;
    let (ch2, _) = channel(&conn).await?;
    let left = message_count(&ch2, &q).await?;
    delete_queues(&ch2, &[&q]).await;
    finish(conn).await;
    if left != 0 {
        fail!("{left} messages left");
    }
    Ok(format!(
        "{before_ack} in flight before acks; {} in order",
        got.len()
    ))
}

pub async fn get(ctx: Arc<Ctx>, _p: Params) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let (ch, mut events) = confirm_channel(&conn).await?;
    let q = n("get");
    declare(&ch, &q, FieldTable::new()).await?;
    publish_acked(&ch, &mut events, "", &q, b"get-me", plain()).await?;
    let Some(m) = basic_get(&ch, &q, false)
        .await?
        .filter(|m| m.body == b"get-me")
    else {
        fail!("first get returned no get-me");
    };
    let (count, redelivered) = (m.get_ok.message_count(), m.get_ok.redelivered());
    if count != 0 || redelivered {
        fail!("message_count {count}, redelivered {redelivered}");
    }
    ack(&ch, m.tag()).await?;
    let second = basic_get(&ch, &q, false).await?;
    delete_queues(&ch, &[&q]).await;
    finish(conn).await;
    if second.is_some() {
        fail!("second get was not get-empty");
    }
    Ok("get-ok (message_count 0) then get-empty".into())
}

pub async fn nack_requeue(ctx: Arc<Ctx>, _p: Params) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let (ch, mut events) = confirm_channel(&conn).await?;
    let q = n("nack");
    declare(&ch, &q, FieldTable::new()).await?;
    publish_acked(&ch, &mut events, "", &q, b"nack-me", plain()).await?;
    let Some(m1) = basic_get(&ch, &q, false).await? else {
        fail!("no message");
    };
    ch.basic_nack(BasicNackArguments::new(m1.tag(), false, true))
        .await?;
    let Some(m2) = get_eventually(&ch, &q, Duration::from_secs(5)).await? else {
        fail!("message not requeued");
    };
    ack(&ch, m2.tag()).await?;
    delete_queues(&ch, &[&q]).await;
    finish(conn).await;
    let (r1, r2) = (m1.get_ok.redelivered(), m2.get_ok.redelivered());
    if r1 || !r2 || m1.body != m2.body {
        fail!(
            "redelivered {r1}->{r2}, bodies {:?} {:?}",
            text(&m1.body),
            text(&m2.body)
        );
    }
    Ok("requeued with redelivered=true".into())
}

pub async fn reject_dlx(ctx: Arc<Ctx>, p: Params) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let (ch, mut events) = confirm_channel(&conn).await?;
    let (dlx, dlq) = dead_letter_pair(&ch, "").await?;
    let q = n("work");
    let args = values::table(
        json!({ "x-dead-letter-exchange": dlx })
            .as_object()
            .unwrap_or(&serde_json::Map::new()),
    )?;
    declare(&ch, &q, args).await?;
    publish_acked(&ch, &mut events, "", &q, b"reject-me", plain()).await?;
    let Some(m) = basic_get(&ch, &q, false).await? else {
        fail!("no message");
    };
    ch.basic_reject(BasicRejectArguments::new(m.tag(), false))
        .await?;
    let dead = last_dead_letter(conn, &ch, &q, &dlq, &dlx).await?;
    let Some(d) = dead else {
        fail!("nothing in the dead-letter queue");
    };
    if d.body != b"reject-me" {
        fail!("dead-lettered body {:?}", text(&d.body));
    }
    let more = [
        ("count", json!(1)),
        ("exchange", json!("")),
        ("routing-keys", json!([q])),
    ];
    let headers = values::headers_json(&d.properties);
    let first = check::x_death(&headers, p.str("reason")?, &q, &more)?;
    Ok(format!(
        "x-death reason {}, count {}",
        check::plain(&first["reason"]),
        first["count"]
    ))
}

pub async fn delivery_limit_dlq(ctx: Arc<Ctx>, p: Params) -> Step<String> {
    let want = p.u64("deliveries")?;
    let conn = open_connection(&ctx.url).await?;
    let (ch, mut events) = confirm_channel(&conn).await?;
    let (dlx, dlq) = dead_letter_pair(&ch, "2").await?;
    let q = n("limited");
    let mut args = FieldTable::new();
    let arg = |s: &str| {
        s.try_into()
            .map_err(|_| client_drivers::Outcome::Fail(s.into()))
    };
    args.insert(arg("x-queue-type")?, FieldValue::from("quorum"));
    args.insert(
        arg("x-delivery-limit")?,
        values::to_amqp(p.value("delivery_limit")?)?,
    );
    args.insert(
        arg("x-dead-letter-exchange")?,
        FieldValue::from(dlx.as_str()),
    );
    let durable = QueueDeclareArguments::durable_client_named(&q)
        .arguments(args)
        .finish();
    ch.queue_declare(durable).await?;
    publish_acked(&ch, &mut events, "", &q, b"limit-me", plain()).await?;
    let mut deliveries = 0;
    while let Some(m) = get_eventually(&ch, &q, Duration::from_secs(1)).await? {
        deliveries += 1;
        if deliveries > want + 2 {
            break;
        }
        ch.basic_nack(BasicNackArguments::new(m.tag(), false, true))
            .await?;
    }
    let dead = last_dead_letter(conn, &ch, &q, &dlq, &dlx).await?;
    if deliveries != want {
        fail!("delivered {deliveries} times, want {want}");
    }
    let Some(d) = dead else {
        fail!("nothing in the dead-letter queue");
    };
    let headers = values::headers_json(&d.properties);
    let first = check::x_death(&headers, p.str("reason")?, &q, &[])?;
    Ok(format!(
        "{deliveries} deliveries, then x-death reason {}",
        check::plain(&first["reason"])
    ))
}

pub async fn publisher_confirms(ctx: Arc<Ctx>, p: Params) -> Step<String> {
    let messages = p.usize("messages")?;
    let conn = open_connection(&ctx.url).await?;
    let (ch, mut events) = confirm_channel(&conn).await?;
    let q = n("confirms");
    declare(&ch, &q, FieldTable::new()).await?;
    publish_numbered(&ch, &mut events, &q, messages).await?;
    let count = message_count(&ch, &q).await?;
    delete_queues(&ch, &[&q]).await;
    finish(conn).await;
    if count as usize != messages {
        fail!("{count} messages in queue");
    }
    Ok(format!("{messages} acked"))
}

pub async fn mandatory_return(ctx: Arc<Ctx>, p: Params) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let (ch, mut events) = channel(&conn).await?;
    let key = n("nowhere");
    let mut args = amqprs::channel::BasicPublishArguments::new("", &key);
    args.mandatory = true;
    ch.basic_publish(plain(), check::RETURN_BODY.to_vec(), args)
        .await?;
    let returned = timeout(Duration::from_secs(5), events.returns.recv()).await;
    finish(conn).await;
    let Ok(Some(r)) = returned else {
        fail!("no basic.return");
    };
    check::basic_return(
        &p,
        &key,
        r.reply_code,
        &r.reply_text,
        &r.routing_key,
        &r.body,
    )
}

pub async fn server_cancel(ctx: Arc<Ctx>, _p: Params) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let (ch, mut events) = channel(&conn).await?;
    let q = n("cancelme");
    declare(&ch, &q, FieldTable::new()).await?;
    let consume = BasicConsumeArguments::new(&q, "").manual_ack(true).finish();
    let (tag, _deliveries) = ch.basic_consume_rx(consume).await?;
    let (other, _) = channel(&conn).await?;
    delete_queues(&other, &[&q]).await;
    let cancelled = timeout(Duration::from_secs(5), events.cancels.recv()).await;
    let Ok(Some(cancelled)) = cancelled else {
        fail!("no basic.cancel from the server");
    };
    if cancelled != tag {
        fail!("cancel for {cancelled}, consumer was {tag}");
    }
    // A close would have come right behind the cancel.
    let closed = events.close_within(Duration::from_millis(100)).await;
    let open_after = ch.is_open();
    finish(conn).await;
    if let Some(c) = closed {
        fail!("consuming channel closed: {c:?}");
    }
    if !open_after {
        fail!("consuming channel closed");
    }
    Ok("basic.cancel received; channel open".into())
}

pub async fn empty_body(ctx: Arc<Ctx>, p: Params) -> Step<String> {
    let content_type = p.str("content_type")?;
    let conn = open_connection(&ctx.url).await?;
    let (ch, _events) = channel(&conn).await?;
    let q = n("empty");
    declare(&ch, &q, FieldTable::new()).await?;
    let props = plain().with_content_type(content_type).finish();
    publish(&ch, "", &q, b"", props).await?;
    let m = get_eventually(&ch, &q, Duration::from_secs(5)).await?;
    delete_queues(&ch, &[&q]).await;
    finish(conn).await;
    let Some(m) = m else {
        fail!("no message");
    };
    let got_type = m.properties.content_type();
    if !m.body.is_empty() || got_type.map(String::as_str) != Some(content_type) {
        fail!("body {} bytes, content type {got_type:?}", m.body.len());
    }
    Ok("0-byte body".into())
}

pub async fn large_body(ctx: Arc<Ctx>, p: Params) -> Step<String> {
    let data = check::large_body(p.usize("size")?, p.usize("modulus")?);
    let conn = open_connection(&ctx.url).await?;
    let (ch, _events) = channel(&conn).await?;
    let q = n("large");
    declare(&ch, &q, FieldTable::new()).await?;
    publish(&ch, "", &q, &data, plain()).await?;
    let m = get_eventually(&ch, &q, Duration::from_secs(10)).await?;
    delete_queues(&ch, &[&q]).await;
    finish(conn).await;
    let Some(m) = m else {
        fail!("no message");
    };
    if let Some(diff) = body_difference(&m.body, &data) {
        fail!("{diff}");
    }
    Ok(format!("{} bytes unchanged", m.body.len()))
}

pub async fn heartbeat_idle(ctx: Arc<Ctx>, p: Params) -> Step<String> {
    let (heartbeat, idle) = (p.u64("heartbeat_s")?, p.u64("idle_s")?);
    let Ok(asked) = u16::try_from(heartbeat) else {
        fail!("heartbeat {heartbeat} does not fit connection.tune-ok");
    };
    let (conn, mut conn_closes) = connect_with(&ctx.url, Some(asked)).await?;
    let negotiated = conn.heartbeat();
    if negotiated != asked {
        fail!("negotiated heartbeat {negotiated}");
    }
    // amqprs's own tasks keep sending heartbeats while this one waits.
    if let Ok(closed) = timeout(Duration::from_secs(idle), conn_closes.recv()).await {
        fail!("connection closed while idle: {closed:?}");
    }
    if !conn.is_open() {
        fail!("connection closed while idle");
    }
    let (ch, _events) = channel(&conn).await?;
    let q = n("heartbeat");
    declare(&ch, &q, FieldTable::new()).await?;
    publish(&ch, "", &q, b"alive", plain()).await?;
    let m = get_eventually(&ch, &q, Duration::from_secs(5)).await?;
    delete_queues(&ch, &[&q]).await;
    finish(conn).await;
    match m {
        Some(m) if m.body == b"alive" => {}
        _ => fail!("round trip after idle failed"),
    }
    Ok(format!(
        "heartbeat {negotiated}s; usable after {idle}s idle"
    ))
}

pub async fn clean_close(ctx: Arc<Ctx>, _p: Params) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let (ch, _events) = channel(&conn).await?;
    // close() takes the handle; the clones report the state afterwards.
    let (ch_view, conn_view) = (ch.clone(), conn.clone());
    ch.close().await?;
    // Give amqprs's reader task the moment to finish the frame it has just handled
    // (channel.close-ok): amqprs 2.1.5 races close() against it on any broker (see `finish`).
    tokio::time::sleep(Duration::from_millis(20)).await;
    conn.close().await?;
    if conn_view.is_open() || ch_view.is_open() {
        fail!(
            "not closed: connection open {}, channel open {}",
            conn_view.is_open(),
            ch_view.is_open()
        );
    }
    Ok("channel and connection closed".into())
}
