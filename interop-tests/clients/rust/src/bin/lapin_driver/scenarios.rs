//! scenarios.json's scenarios with lapin's API, one function each, in the list's order. Every
//! name declared starts with `lapin.`; each function returns its detail on pass, and fails
//! with what it saw otherwise.

use std::sync::Arc;
use std::time::Duration;

use client_drivers::check::{self, body_difference};
use client_drivers::{Ctx, Params, Step, fail};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};
use serde_json::{Value, json};
use tokio::time::{Instant, timeout, timeout_at};

use crate::client::*;
use crate::values;

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

pub async fn connect(ctx: Arc<Ctx>, _p: Params) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let ch = channel(&conn).await?;
    if !(conn.status().connected() && ch.status().connected()) {
        fail!("connection or channel not open");
    }
    finish(conn).await;
    Ok("connection and channel open".into())
}

pub async fn declare_topology(ctx: Arc<Ctx>, p: Params) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let ch = confirm_channel(&conn).await?;
    let q = n("topology");
    let kinds = [
        ("direct", ExchangeKind::Direct),
        ("fanout", ExchangeKind::Fanout),
        ("topic", ExchangeKind::Topic),
        ("headers", ExchangeKind::Headers),
    ];
    let exchanges: Vec<String> = kinds.iter().map(|(k, _)| n(k)).collect();
    for ((_, kind), name) in kinds.iter().zip(&exchanges) {
        ch.exchange_declare(
            name.as_str().into(),
            kind.clone(),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    let queue_args = p.object("queue_arguments")?.clone();
    declare(&ch, &q, values::table(&queue_args)).await?;
    let binding = p.object("headers_binding")?;
    let binds = [
        (&exchanges[0], p.str("direct_key")?, FieldTable::default()),
        (&exchanges[1], "", FieldTable::default()),
        (
            &exchanges[2],
            p.str("topic_pattern")?,
            FieldTable::default(),
        ),
        (&exchanges[3], "", values::table(binding)),
    ];
    for (exchange, key, args) in binds {
        ch.queue_bind(
            q.as_str().into(),
            exchange.as_str().into(),
            key.into(),
            QueueBindOptions::default(),
            args,
        )
        .await?;
    }
    let matching: serde_json::Map<String, Value> = binding
        .iter()
        .filter(|(k, _)| !k.starts_with("x-"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let plain = BasicProperties::default;
    publish_acked(&ch, &exchanges[0], p.str("direct_key")?, b"direct", plain()).await?;
    publish_acked(&ch, &exchanges[1], "ignored", b"fanout", plain()).await?;
    publish_acked(&ch, &exchanges[2], p.str("topic_key")?, b"topic", plain()).await?;
    let with_headers = plain().with_headers(values::table(&matching));
    publish_acked(&ch, &exchanges[3], "", b"headers", with_headers).await?;
    let mut routed = Vec::new();
    for _ in 0..4 {
        let got = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await?;
        routed.push(got.map_or("<none>".into(), |m| text(&m.delivery.data)));
    }
    if routed != ["direct", "fanout", "topic", "headers"] {
        fail!("routed bodies {routed:?}");
    }
    let (overfill, max_length) = (p.u64("overfill")?, p.u64("max_length")?);
    for i in 0..overfill {
        publish_acked(&ch, "", &q, format!("m{i}").as_bytes(), plain()).await?;
    }
    let count = message_count(&ch, &q).await?;
    if u64::from(count) != max_length {
        fail!("message_count {count} after overfill, want {max_length}");
    }
    let head = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await?
        .map(|m| text(&m.delivery.data));
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
    let redeclare = ch
        .queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            values::table(&conflicting),
        )
        .await;
    let closed = match redeclare {
        Ok(_) => fail!("inequivalent redeclare succeeded"),
        Err(e) => match broker_close(&e) {
            Some((c, why)) if u64::from(c) == code => format!("{c} {why}"),
            _ => fail!("inequivalent redeclare: {e}"),
        },
    };
    let ch2 = channel(&conn).await?;
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
    let ch = channel(&conn).await?;
    let q = n("props");
    declare(&ch, &q, FieldTable::default()).await?;
    let canon = &ctx.spec.canonical;
    let props = values::canonical_properties(canon)?;
    publish(&ch, "", &q, canon.body.as_bytes(), props).await?;
    let Some(m) = get_eventually(&ch, &q, Duration::from_secs(5)).await? else {
        fail!("message not in queue");
    };
    m.delivery.acker.ack(BasicAckOptions::default()).await?;
    delete_queues(&ch, &[&q]).await;
    finish(conn).await;
    compared(canon, &m.delivery)?;
    Ok("body, 12 properties and headers unchanged".into())
}

/// Fails with every difference between `d` and the canonical message.
pub fn compared(canon: &client_drivers::spec::Canonical, d: &Delivery) -> Step<()> {
    let diffs = check::compare_canonical(
        canon,
        &d.data,
        &values::properties_json(&d.properties),
        &values::headers_json(&d.properties),
    );
    if !diffs.is_empty() {
        fail!("{}", diffs.join("; "));
    }
    Ok(())
}

pub async fn consume_ack_prefetch(ctx: Arc<Ctx>, p: Params) -> Step<String> {
    let (messages, prefetch) = (p.usize("messages")?, p.usize("prefetch")?);
    let hold = Duration::from_millis(p.u64("hold_ms")?);
    let conn = open_connection(&ctx.url).await?;
    let ch = confirm_channel(&conn).await?;
    let q = n("prefetch");
    declare(&ch, &q, FieldTable::default()).await?;
    publish_numbered(&ch, &q, messages).await?;
    let Ok(prefetch_count) = u16::try_from(prefetch) else {
        fail!("prefetch {prefetch} does not fit basic.qos");
    };
    ch.basic_qos(prefetch_count, BasicQosOptions::default())
        .await?;
    let mut consumer = consume(&ch, &q).await?;
    let mut got: Vec<Delivery> = Vec::new();
    // Up to the prefetch, then whatever else arrives while no ack has been sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < prefetch {
        match timeout_at(deadline, consumer.next()).await {
            Ok(Some(d)) => got.push(d?),
            Ok(None) => fail!("consumer ended after {} deliveries", got.len()),
            Err(_) => break,
        }
    }
    let hold_until = Instant::now() + hold;
    while let Ok(next) = timeout_at(hold_until, consumer.next()).await {
        match next {
            Some(d) => got.push(d?),
            None => fail!("consumer ended after {} deliveries", got.len()),
        }
    }
    let before_ack = got.len();
    if before_ack != prefetch {
        fail!("{before_ack} delivered before any ack, want {prefetch}");
    }
    for acked in 0..messages {
        while acked >= got.len() {
            match timeout(Duration::from_secs(5), consumer.next()).await {
                Ok(Some(d)) => got.push(d?),
                Ok(None) => fail!("consumer ended after {acked} acks"),
                Err(_) => fail!("stalled after {acked} acks, {} received", got.len()),
            }
        }
        got[acked].acker.ack(BasicAckOptions::default()).await?;
    }
    check::numbered_in_order(got.iter().map(|d| (d.data.as_slice(), d.redelivered)))?;
    let ch2 = channel(&conn).await?;
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
    let ch = confirm_channel(&conn).await?;
    let q = n("get");
    declare(&ch, &q, FieldTable::default()).await?;
    publish_acked(&ch, "", &q, b"get-me", BasicProperties::default()).await?;
    let first = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await?;
    let Some(m) = first.filter(|m| m.delivery.data == b"get-me") else {
        fail!("first get returned no get-me");
    };
    if m.message_count != 0 || m.delivery.redelivered {
        fail!(
            "message_count {}, redelivered {}",
            m.message_count,
            m.delivery.redelivered
        );
    }
    m.delivery.acker.ack(BasicAckOptions::default()).await?;
    let second = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await?;
    delete_queues(&ch, &[&q]).await;
    finish(conn).await;
    if second.is_some() {
        fail!("second get was not get-empty");
    }
    Ok("get-ok (message_count 0) then get-empty".into())
}

pub async fn nack_requeue(ctx: Arc<Ctx>, _p: Params) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let ch = confirm_channel(&conn).await?;
    let q = n("nack");
    declare(&ch, &q, FieldTable::default()).await?;
    publish_acked(&ch, "", &q, b"nack-me", BasicProperties::default()).await?;
    let Some(m1) = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await?
    else {
        fail!("no message");
    };
    let requeue = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    m1.delivery.acker.nack(requeue).await?;
    let Some(m2) = get_eventually(&ch, &q, Duration::from_secs(5)).await? else {
        fail!("message not requeued");
    };
    m2.delivery.acker.ack(BasicAckOptions::default()).await?;
    delete_queues(&ch, &[&q]).await;
    finish(conn).await;
    let (r1, r2) = (m1.delivery.redelivered, m2.delivery.redelivered);
    if r1 || !r2 || m1.delivery.data != m2.delivery.data {
        fail!(
            "redelivered {r1}->{r2}, bodies {:?} {:?}",
            text(&m1.delivery.data),
            text(&m2.delivery.data)
        );
    }
    Ok("requeued with redelivered=true".into())
}

pub async fn reject_dlx(ctx: Arc<Ctx>, p: Params) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let ch = confirm_channel(&conn).await?;
    let (dlx, dlq) = dead_letter_pair(&ch, "").await?;
    let q = n("work");
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dlx.as_str().into()),
    );
    declare(&ch, &q, args).await?;
    publish_acked(&ch, "", &q, b"reject-me", BasicProperties::default()).await?;
    let Some(m) = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await?
    else {
        fail!("no message");
    };
    m.delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await?;
    let dead = last_dead_letter(conn, &ch, &q, &dlq, &dlx).await?;
    let Some(d) = dead else {
        fail!("nothing in the dead-letter queue");
    };
    if d.delivery.data != b"reject-me" {
        fail!("dead-lettered body {:?}", text(&d.delivery.data));
    }
    let more = [
        ("count", json!(1)),
        ("exchange", json!("")),
        ("routing-keys", json!([q])),
    ];
    let headers = values::headers_json(&d.delivery.properties);
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
    let ch = confirm_channel(&conn).await?;
    let (dlx, dlq) = dead_letter_pair(&ch, "2").await?;
    let q = n("limited");
    let args = values::table(
        json!({
            "x-queue-type": "quorum",
            "x-delivery-limit": p.value("delivery_limit")?,
            "x-dead-letter-exchange": dlx,
        })
        .as_object()
        .unwrap_or(&serde_json::Map::new()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(q.as_str().into(), durable, args).await?;
    publish_acked(&ch, "", &q, b"limit-me", BasicProperties::default()).await?;
    let mut deliveries = 0;
    while let Some(m) = get_eventually(&ch, &q, Duration::from_secs(1)).await? {
        deliveries += 1;
        if deliveries > want + 2 {
            break;
        }
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        m.delivery.acker.nack(requeue).await?;
    }
    let dead = last_dead_letter(conn, &ch, &q, &dlq, &dlx).await?;
    if deliveries != want {
        fail!("delivered {deliveries} times, want {want}");
    }
    let Some(d) = dead else {
        fail!("nothing in the dead-letter queue");
    };
    let headers = values::headers_json(&d.delivery.properties);
    let first = check::x_death(&headers, p.str("reason")?, &q, &[])?;
    Ok(format!(
        "{deliveries} deliveries, then x-death reason {}",
        check::plain(&first["reason"])
    ))
}

pub async fn publisher_confirms(ctx: Arc<Ctx>, p: Params) -> Step<String> {
    let messages = p.usize("messages")?;
    let conn = open_connection(&ctx.url).await?;
    let ch = confirm_channel(&conn).await?;
    let q = n("confirms");
    declare(&ch, &q, FieldTable::default()).await?;
    publish_numbered(&ch, &q, messages).await?;
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
    let ch = channel(&conn).await?;
    let key = n("nowhere");
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    ch.basic_publish(
        "".into(),
        key.as_str().into(),
        mandatory,
        check::RETURN_BODY,
        BasicProperties::default(),
    )
    .await?;
    // Without confirm mode lapin keeps returned messages until asked for them.
    let deadline = Instant::now() + Duration::from_secs(5);
    let returned = loop {
        let mut returned = ch.wait_for_confirms().await?;
        if !returned.is_empty() {
            break returned.remove(0);
        }
        if Instant::now() > deadline {
            fail!("no basic.return");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    finish(conn).await;
    check::basic_return(
        &p,
        &key,
        returned.reply_code,
        returned.reply_text.as_str(),
        returned.delivery.routing_key.as_str(),
        &returned.delivery.data,
    )
}

pub async fn server_cancel(ctx: Arc<Ctx>, _p: Params) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let ch = channel(&conn).await?;
    let q = n("cancelme");
    declare(&ch, &q, FieldTable::default()).await?;
    let mut consumer = consume(&ch, &q).await?;
    let other = channel(&conn).await?;
    delete_queues(&other, &[&q]).await;
    // lapin ends a consumer's stream when the broker cancels it.
    let ended = timeout(Duration::from_secs(5), async {
        loop {
            match consumer.next().await {
                None => return Ok(()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
            }
        }
    })
    .await;
    match ended {
        Err(_) => fail!("no basic.cancel from the server"),
        Ok(Err(e)) => fail!("consumer failed instead of being cancelled: {e}"),
        Ok(Ok(())) => {}
    }
    let open_after = ch.status().connected();
    finish(conn).await;
    if !open_after {
        fail!("consuming channel closed");
    }
    Ok("basic.cancel received; channel open".into())
}

pub async fn empty_body(ctx: Arc<Ctx>, p: Params) -> Step<String> {
    let content_type = p.str("content_type")?;
    let conn = open_connection(&ctx.url).await?;
    let ch = channel(&conn).await?;
    let q = n("empty");
    declare(&ch, &q, FieldTable::default()).await?;
    let props = BasicProperties::default().with_content_type(content_type.into());
    publish(&ch, "", &q, b"", props).await?;
    let m = get_eventually(&ch, &q, Duration::from_secs(5)).await?;
    delete_queues(&ch, &[&q]).await;
    finish(conn).await;
    let Some(m) = m else {
        fail!("no message");
    };
    let got_type = m.delivery.properties.content_type().as_ref();
    if !m.delivery.data.is_empty() || got_type.map(|t| t.as_str()) != Some(content_type) {
        fail!(
            "body {} bytes, content type {got_type:?}",
            m.delivery.data.len()
        );
    }
    Ok("0-byte body".into())
}

pub async fn large_body(ctx: Arc<Ctx>, p: Params) -> Step<String> {
    let data = check::large_body(p.usize("size")?, p.usize("modulus")?);
    let conn = open_connection(&ctx.url).await?;
    let ch = channel(&conn).await?;
    let q = n("large");
    declare(&ch, &q, FieldTable::default()).await?;
    publish(&ch, "", &q, &data, BasicProperties::default()).await?;
    let m = get_eventually(&ch, &q, Duration::from_secs(10)).await?;
    delete_queues(&ch, &[&q]).await;
    finish(conn).await;
    let Some(m) = m else {
        fail!("no message");
    };
    if let Some(diff) = body_difference(&m.delivery.data, &data) {
        fail!("{diff}");
    }
    Ok(format!("{} bytes unchanged", m.delivery.data.len()))
}

pub async fn heartbeat_idle(ctx: Arc<Ctx>, p: Params) -> Step<String> {
    let (heartbeat, idle) = (p.u64("heartbeat_s")?, p.u64("idle_s")?);
    let sep = if ctx.url.contains('?') { '&' } else { '?' };
    let conn = open_connection(&format!("{}{sep}heartbeat={heartbeat}", ctx.url)).await?;
    let negotiated = u64::from(conn.configuration().heartbeat());
    if negotiated != heartbeat {
        fail!("negotiated heartbeat {negotiated}");
    }
    // lapin's own tasks keep sending heartbeats while this one sleeps.
    tokio::time::sleep(Duration::from_secs(idle)).await;
    if !conn.status().connected() {
        fail!("connection closed while idle");
    }
    let ch = channel(&conn).await?;
    let q = n("heartbeat");
    declare(&ch, &q, FieldTable::default()).await?;
    publish(&ch, "", &q, b"alive", BasicProperties::default()).await?;
    let m = get_eventually(&ch, &q, Duration::from_secs(5)).await?;
    delete_queues(&ch, &[&q]).await;
    finish(conn).await;
    match m {
        Some(m) if m.delivery.data == b"alive" => {}
        _ => fail!("round trip after idle failed"),
    }
    Ok(format!(
        "heartbeat {negotiated}s; usable after {idle}s idle"
    ))
}

pub async fn clean_close(ctx: Arc<Ctx>, _p: Params) -> Step<String> {
    let conn = open_connection(&ctx.url).await?;
    let ch = channel(&conn).await?;
    ch.close(200, "OK".into()).await?;
    conn.close(200, "OK".into()).await?;
    // close() returns on close-ok; lapin's internal task marks the state closed just after.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !conn.status().closed() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if !conn.status().closed() || ch.status().connected() {
        let s = conn.status();
        let state = [
            (s.closing(), "closing"),
            (s.errored(), "errored"),
            (s.connected(), "connected"),
        ]
        .iter()
        .find(|(yes, _)| *yes)
        .map_or("in another state", |(_, name)| *name);
        fail!(
            "after close-ok lapin reports the connection {state}, not closed (channel connected: {})",
            ch.status().connected()
        );
    }
    Ok("channel and connection closed".into())
}
