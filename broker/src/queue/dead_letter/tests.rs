//! Tests of RabbitMQ's dead-letter header rules.
use amqp_codec::protocol::BasicProperties;
use amqp_codec::{FieldArray, FieldTable, LongString, ShortString};

use super::*;

const T0: u64 = 1_700_000_000;

fn props(headers: Option<FieldTable>, expiration: Option<&str>) -> RawProperties {
    let mut p = BasicProperties::default();
    if let Some(h) = headers {
        p = p.with_headers(h);
    }
    if let Some(e) = expiration {
        p = p.with_expiration(ShortString::from(e));
    }
    RawProperties::from_properties(&p)
}

fn death<'a>(queue: &'a str, reason: DeathReason, time_secs: u64) -> Death<'a> {
    Death {
        queue,
        reason,
        exchange: b"orders",
        routing_keys: &[b"order.created"],
        time_secs,
    }
}

fn headers(p: &RawProperties) -> FieldTable {
    p.parse().unwrap().headers().clone().unwrap_or_default()
}

fn header(p: &RawProperties, key: &str) -> Option<AMQPValue> {
    headers(p).inner().get(key).cloned()
}

fn longstr(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn x_death(p: &RawProperties) -> Vec<FieldTable> {
    match header(p, "x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("x-death entry is not a table: {other:?}"),
            })
            .collect(),
        other => panic!("no x-death array: {other:?}"),
    }
}

fn field(entry: &FieldTable, key: &str) -> AMQPValue {
    entry.inner().get(key).cloned().unwrap_or(AMQPValue::Void)
}

/// (queue, reason, count) of each x-death entry, in order.
fn summary(p: &RawProperties) -> Vec<(String, String, i64)> {
    x_death(p)
        .iter()
        .map(|e| {
            let text = |k| match field(e, k) {
                AMQPValue::LongString(s) => s.to_string(),
                other => panic!("{k} is not a longstr: {other:?}"),
            };
            let AMQPValue::LongLongInt(count) = field(e, "count") else {
                panic!("count is not a long");
            };
            (text("queue"), text("reason"), count)
        })
        .collect()
}

fn position(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

#[test]
fn first_death_creates_x_death_with_count_1_and_first_and_last_headers() {
    let out = dead_letter_properties(
        &props(None, None),
        &death("work", DeathReason::Rejected, T0),
    );
    let entries = x_death(&out);
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(field(e, "count"), AMQPValue::LongLongInt(1));
    assert_eq!(field(e, "reason"), longstr("rejected"));
    assert_eq!(field(e, "queue"), longstr("work"));
    assert_eq!(field(e, "time"), AMQPValue::Timestamp(T0));
    assert_eq!(field(e, "exchange"), longstr("orders"));
    assert_eq!(
        field(e, "routing-keys"),
        AMQPValue::FieldArray(FieldArray::from(vec![longstr("order.created")]))
    );
    assert!(!e.contains_key("original-expiration"));
    assert_eq!(e.inner().len(), 6);
    for prefix in ["x-first-death", "x-last-death"] {
        assert_eq!(
            header(&out, &format!("{prefix}-reason")),
            Some(longstr("rejected"))
        );
        assert_eq!(
            header(&out, &format!("{prefix}-queue")),
            Some(longstr("work"))
        );
        assert_eq!(
            header(&out, &format!("{prefix}-exchange")),
            Some(longstr("orders"))
        );
    }
    assert_eq!(headers(&out).inner().len(), 7);
}

#[test]
fn x_death_entry_fields_are_in_rabbitmq_order() {
    let out = dead_letter_properties(
        &props(None, Some("60000")),
        &death("work", DeathReason::Expired, T0),
    );
    let raw = out.as_bytes();
    let order = [
        &b"\x13original-expiration"[..],
        b"\x05count",
        b"\x06reason",
        b"\x05queue",
        b"\x04time",
        b"\x08exchange",
        b"\x0crouting-keys",
    ]
    .map(|k| position(raw, k));
    assert!(order.is_sorted(), "field offsets {order:?}");
    // count is a signed 64-bit long, time a timestamp.
    assert_eq!(raw[order[1] + 6], b'l');
    assert_eq!(raw[order[4] + 5], b'T');
}

#[test]
fn second_death_in_same_queue_with_same_reason_increments_count_and_moves_to_front() {
    let once = dead_letter_properties(&props(None, None), &death("a", DeathReason::Expired, T0));
    let twice = dead_letter_properties(&once, &death("b", DeathReason::Expired, T0 + 1));
    let thrice = dead_letter_properties(&twice, &death("a", DeathReason::Expired, T0 + 2));
    assert_eq!(
        summary(&thrice),
        [
            ("a".into(), "expired".into(), 2),
            ("b".into(), "expired".into(), 1)
        ]
    );
}

#[test]
fn repeat_death_keeps_first_time_exchange_and_routing_keys() {
    let first = dead_letter_properties(&props(None, None), &death("a", DeathReason::Rejected, T0));
    let later = Death {
        exchange: b"dlx",
        routing_keys: &[b"other"],
        ..death("a", DeathReason::Rejected, T0 + 60)
    };
    let again = dead_letter_properties(&first, &later);
    let e = &x_death(&again)[0];
    assert_eq!(field(e, "count"), AMQPValue::LongLongInt(2));
    assert_eq!(field(e, "time"), AMQPValue::Timestamp(T0));
    assert_eq!(field(e, "exchange"), longstr("orders"));
    assert_eq!(
        field(e, "routing-keys"),
        AMQPValue::FieldArray(FieldArray::from(vec![longstr("order.created")]))
    );
    // The last-death headers still follow the latest death.
    assert_eq!(
        header(&again, "x-last-death-exchange"),
        Some(longstr("dlx"))
    );
}

#[test]
fn different_reason_in_same_queue_adds_a_new_entry_at_the_front() {
    let expired = dead_letter_properties(&props(None, None), &death("a", DeathReason::Expired, T0));
    let rejected = dead_letter_properties(&expired, &death("a", DeathReason::Rejected, T0));
    assert_eq!(
        summary(&rejected),
        [
            ("a".into(), "rejected".into(), 1),
            ("a".into(), "expired".into(), 1)
        ]
    );
}

#[test]
fn first_death_headers_are_kept_and_last_death_headers_follow_each_death() {
    let first = dead_letter_properties(&props(None, None), &death("a", DeathReason::Maxlen, T0));
    let second = Death {
        exchange: b"dlx",
        ..death("b", DeathReason::DeliveryLimit, T0)
    };
    let out = dead_letter_properties(&first, &second);
    assert_eq!(
        header(&out, "x-first-death-reason"),
        Some(longstr("maxlen"))
    );
    assert_eq!(header(&out, "x-first-death-queue"), Some(longstr("a")));
    assert_eq!(
        header(&out, "x-first-death-exchange"),
        Some(longstr("orders"))
    );
    assert_eq!(
        header(&out, "x-last-death-reason"),
        Some(longstr("delivery_limit"))
    );
    assert_eq!(header(&out, "x-last-death-queue"), Some(longstr("b")));
    assert_eq!(header(&out, "x-last-death-exchange"), Some(longstr("dlx")));
}

#[test]
fn per_message_expiration_becomes_original_expiration_and_is_removed() {
    let out = dead_letter_properties(
        &props(None, Some("5000")),
        &death("a", DeathReason::Expired, T0),
    );
    assert_eq!(out.expiration(), None);
    assert_eq!(out.parse().unwrap().expiration(), &None);
    assert_eq!(
        field(&x_death(&out)[0], "original-expiration"),
        longstr("5000")
    );
    // The next death's entry has none: the TTL went with the first one.
    let again = dead_letter_properties(&out, &death("b", DeathReason::Expired, T0));
    let entries = x_death(&again);
    assert!(!entries[0].contains_key("original-expiration"));
    assert_eq!(field(&entries[1], "original-expiration"), longstr("5000"));
}

#[test]
fn original_expiration_is_the_parsed_ttl_printed_back() {
    let out = dead_letter_properties(
        &props(None, Some("+0100")),
        &death("a", DeathReason::Rejected, T0),
    );
    assert_eq!(
        field(&x_death(&out)[0], "original-expiration"),
        longstr("100")
    );
}

#[test]
fn recorded_routing_keys_include_cc_but_not_bcc() {
    let mut h = FieldTable::default();
    h.insert(
        "CC".into(),
        AMQPValue::FieldArray(vec![longstr("cc.1"), longstr("cc.2")].into()),
    );
    h.insert(
        "BCC".into(),
        AMQPValue::FieldArray(vec![longstr("bcc.1")].into()),
    );
    let original = props(Some(h), None);
    let keys = death_routing_keys(b"rk", &original);
    assert_eq!(keys, [&b"rk"[..], b"cc.1", b"cc.2"]);
    let borrowed: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let out = dead_letter_properties(
        &original,
        &Death {
            routing_keys: &borrowed,
            ..death("a", DeathReason::Rejected, T0)
        },
    );
    assert_eq!(
        field(&x_death(&out)[0], "routing-keys"),
        AMQPValue::FieldArray(vec![longstr("rk"), longstr("cc.1"), longstr("cc.2")].into())
    );
}

#[test]
fn bcc_removes_one_matching_key_like_erlang_list_subtraction() {
    let mut h = FieldTable::default();
    h.insert(
        "CC".into(),
        AMQPValue::FieldArray(vec![longstr("x"), longstr("x")].into()),
    );
    h.insert(
        "BCC".into(),
        AMQPValue::FieldArray(vec![longstr("x")].into()),
    );
    assert_eq!(
        death_routing_keys(b"rk", &props(Some(h), None)),
        [&b"rk"[..], b"x"]
    );
    assert_eq!(death_routing_keys(b"rk", &props(None, None)), [b"rk"]);
}

#[test]
fn other_properties_and_headers_are_preserved() {
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::LongInt(-7));
    let mut h = FieldTable::default();
    h.insert("app-header".into(), longstr("kept"));
    h.insert("flag".into(), AMQPValue::Boolean(true));
    h.insert("nested".into(), AMQPValue::FieldTable(nested));
    h.insert(
        "list".into(),
        AMQPValue::FieldArray(vec![AMQPValue::Double(1.5)].into()),
    );
    let all_but = |headers: FieldTable, expiration: Option<&str>| {
        let p = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("gzip".into())
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_priority(5)
            .with_correlation_id("corr".into())
            .with_reply_to("replies".into())
            .with_message_id("m-1".into())
            .with_timestamp(T0)
            .with_type("kind".into())
            .with_user_id("guest".into())
            .with_app_id("app".into())
            .with_cluster_id("c".into());
        match expiration {
            Some(e) => p.with_expiration(e.into()),
            None => p,
        }
    };
    let out = dead_letter_properties(
        &RawProperties::from_properties(&all_but(h.clone(), Some("1000"))),
        &death("a", DeathReason::Rejected, T0),
    )
    .parse()
    .unwrap();

    let out_headers = out.headers().clone().unwrap();
    assert_eq!(out, all_but(out_headers, None));
    for (key, value) in &h {
        assert_eq!(
            out.headers().as_ref().unwrap().inner().get(key),
            Some(value)
        );
    }
}

/// A headers table written by hand: keys out of order, a nested table whose fields are
/// out of order too, and a `U` (short int) that amq-protocol would re-encode as `s`.
fn hand_written_headers() -> RawProperties {
    let mut table = Vec::new();
    table.extend_from_slice(b"\x04zeta\x55\x00\x07");
    table.extend_from_slice(b"\x05alpha\x46\x00\x00\x00\x08\x01b\x74\x01\x01a\x74\x00");
    let mut raw = vec![0x20, 0x00];
    raw.extend_from_slice(&(table.len() as u32).to_be_bytes());
    raw.extend_from_slice(&table);
    RawProperties::new(Bytes::from(raw)).unwrap()
}

#[test]
fn untouched_header_values_keep_their_bytes() {
    let out = dead_letter_properties(
        &hand_written_headers(),
        &death("a", DeathReason::Rejected, T0),
    );
    let raw = out.as_bytes();
    position(raw, b"\x04zeta\x55\x00\x07");
    position(
        raw,
        b"\x05alpha\x46\x00\x00\x00\x08\x01b\x74\x01\x01a\x74\x00",
    );
}

#[test]
fn headers_come_out_sorted_by_key() {
    let out = dead_letter_properties(
        &hand_written_headers(),
        &death("a", DeathReason::Rejected, T0),
    );
    let raw = out.as_bytes();
    let keys = [
        "alpha",
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "zeta",
    ]
    .map(|k| {
        let mut needle = vec![k.len() as u8];
        needle.extend_from_slice(k.as_bytes());
        position(raw, &needle)
    });
    assert!(keys.is_sorted(), "key offsets {keys:?}");
}

#[test]
fn fresh_history_ignores_a_publishers_x_death_and_rewrites_first_death_headers() {
    let republished =
        dead_letter_properties(&props(None, None), &death("a", DeathReason::Rejected, T0));
    let out = dead_letter_properties_fresh(&republished, &death("b", DeathReason::Expired, T0 + 5));
    assert_eq!(summary(&out), [("b".into(), "expired".into(), 1)]);
    assert_eq!(header(&out, "x-first-death-queue"), Some(longstr("b")));
    assert_eq!(
        header(&out, "x-first-death-reason"),
        Some(longstr("expired"))
    );
    assert_eq!(header(&out, "x-last-death-queue"), Some(longstr("b")));
}

#[test]
fn publisher_first_death_headers_give_way_to_the_first_real_death() {
    let mut h = FieldTable::default();
    h.insert("x-first-death-queue".into(), longstr("forged"));
    let out = dead_letter_properties(
        &props(Some(h), None),
        &death("a", DeathReason::Rejected, T0),
    );
    assert_eq!(header(&out, "x-first-death-queue"), Some(longstr("a")));
}

#[test]
fn unreadable_x_death_is_replaced_by_a_new_history() {
    let mut h = FieldTable::default();
    h.insert("x-death".into(), longstr("garbage"));
    let out = dead_letter_properties(
        &props(Some(h), None),
        &death("a", DeathReason::Rejected, T0),
    );
    assert_eq!(summary(&out), [("a".into(), "rejected".into(), 1)]);
}

/// Dead-letters `props(None, None)` through each (queue, reason), oldest first.
fn history(deaths: &[(&str, DeathReason)]) -> RawProperties {
    deaths
        .iter()
        .fold(props(None, None), |p, &(queue, reason)| {
            dead_letter_properties(&p, &death(queue, reason, T0))
        })
}

#[test]
fn message_that_never_died_is_not_a_cycle() {
    assert!(!is_cycle(&props(None, None), "a"));
}

#[test]
fn expiring_back_into_the_same_queue_is_a_cycle() {
    assert!(is_cycle(&history(&[("a", DeathReason::Expired)]), "a"));
}

#[test]
fn dead_lettering_into_a_queue_it_never_died_in_is_not_a_cycle() {
    assert!(!is_cycle(&history(&[("a", DeathReason::Expired)]), "b"));
}

#[test]
fn automatic_loop_through_two_queues_is_a_cycle() {
    let p = history(&[("a", DeathReason::Expired), ("b", DeathReason::Maxlen)]);
    assert!(is_cycle(&p, "a"));
    let p = history(&[
        ("a", DeathReason::DeliveryLimit),
        ("b", DeathReason::Expired),
    ]);
    assert!(is_cycle(&p, "a"));
}

#[test]
fn rejection_now_breaks_the_cycle() {
    assert!(!is_cycle(&history(&[("a", DeathReason::Rejected)]), "a"));
    let p = history(&[("a", DeathReason::Expired), ("b", DeathReason::Rejected)]);
    assert!(!is_cycle(&p, "a"));
}

#[test]
fn rejection_inside_the_cycle_breaks_it() {
    let p = history(&[("a", DeathReason::Rejected), ("b", DeathReason::Expired)]);
    assert!(!is_cycle(&p, "a"));
}

#[test]
fn rejection_older_than_the_cycle_does_not_break_it() {
    let p = history(&[
        ("c", DeathReason::Rejected),
        ("a", DeathReason::Expired),
        ("b", DeathReason::Expired),
    ]);
    assert!(is_cycle(&p, "a"));
}

#[test]
fn only_the_latest_death_in_the_target_queue_bounds_the_cycle() {
    // a rejected long ago, then a expired: the cycle starts at the newest death in "a".
    let p = history(&[("a", DeathReason::Rejected), ("a", DeathReason::Expired)]);
    assert!(is_cycle(&p, "a"));
}

#[test]
fn first_delivery_has_no_delivery_count() {
    let original = props(None, Some("100"));
    assert_eq!(with_delivery_count(&original, 0), original);
}

#[test]
fn redelivery_sets_x_delivery_count_as_a_long() {
    let mut h = FieldTable::default();
    h.insert("app".into(), longstr("kept"));
    let original = props(Some(h), Some("100"));
    let once = with_delivery_count(&original, 1);
    assert_eq!(
        header(&once, "x-delivery-count"),
        Some(AMQPValue::LongLongInt(1))
    );
    assert_eq!(header(&once, "app"), Some(longstr("kept")));
    assert_eq!(once.expiration(), Some(&b"100"[..]));
    let thrice = with_delivery_count(&once, 3);
    assert_eq!(
        header(&thrice, "x-delivery-count"),
        Some(AMQPValue::LongLongInt(3))
    );
    assert_eq!(headers(&thrice).inner().len(), 2);
}

#[test]
fn delivery_count_is_added_to_properties_without_headers() {
    let original = RawProperties::from_properties(
        &BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_delivery_mode(2),
    );
    let out = with_delivery_count(&original, 2).parse().unwrap();
    assert_eq!(out.content_type(), &Some("text/plain".into()));
    assert_eq!(out.delivery_mode(), &Some(2));
    assert_eq!(
        out.headers()
            .as_ref()
            .unwrap()
            .inner()
            .get("x-delivery-count"),
        Some(&AMQPValue::LongLongInt(2))
    );
}

#[test]
fn reasons_are_named_as_rabbitmq_names_them() {
    let names = [
        DeathReason::Rejected,
        DeathReason::Expired,
        DeathReason::Maxlen,
        DeathReason::DeliveryLimit,
    ]
    .map(DeathReason::as_str);
    assert_eq!(names, ["rejected", "expired", "maxlen", "delivery_limit"]);
}
