//! Dead-lettering's header rules: what a message carries when it leaves a queue for a
//! dead-letter exchange, when that would be a cycle, and the quorum-queue delivery count.
//!
//! Pure functions over raw property bytes; the queue decides *when* to dead-letter, this module
//! says *what the copy looks like*. The rules are RabbitMQ 4.x's (`mc:record_death/4`,
//! `mc_amqpl:protocol_state/2`, `rabbit_dead_letter:detect_cycles/3`):
//!
//! - `x-death` is an array of tables, one per (queue, reason), most recent first. A repeat
//!   death increments `count` and moves the entry to the front; `time`, `exchange`,
//!   `routing-keys` and `original-expiration` stay as the first such death wrote them. Each
//!   table is written in RabbitMQ's field order: `original-expiration` (only when the message
//!   had a per-message TTL), `count` (long), `reason`, `queue` (longstr), `time` (timestamp,
//!   seconds), `exchange` (longstr), `routing-keys` (array of longstr).
//! - `x-first-death-{reason,queue,exchange}` are written by the first death only;
//!   `x-last-death-{reason,queue,exchange}` by every death (all longstr; 3.13 added the
//!   `x-last-*` ones).
//! - The `expiration` property is removed (its value lives on as `original-expiration`).
//! - The headers table comes out sorted by key with duplicates dropped, as RabbitMQ re-encodes
//!   it; header values nobody touched keep their bytes.
//!
//! One difference is left to the caller. RabbitMQ 4.x keeps the death history beside the
//! message, not in its headers, so an `x-death` a *publisher* sent (a client republishing a
//! dead-lettered message) is not history: its next death starts over with one entry and new
//! `x-first-death-*` headers. Here the headers are the history, so
//! [`dead_letter_properties`] is right for a message Warren itself dead-lettered before, and
//! [`dead_letter_properties_fresh`] is right for one whose `x-death` came from a client.

use amqp_codec::types::parsing::parse_value;
use amqp_codec::{AMQPValue, PropertyFlags, RawProperties};
use bytes::Bytes;

/// Why a message left its queue; the `reason` RabbitMQ records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    /// `basic.reject` / `basic.nack` with `requeue=false`.
    Rejected,
    /// Per-message or per-queue TTL ran out.
    Expired,
    /// Dropped from the head (`drop-head`) or refused (`reject-publish-dlx`) at `x-max-length`.
    Maxlen,
    /// Returned more often than a quorum queue's `x-delivery-limit` allows.
    DeliveryLimit,
}

impl DeathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Maxlen => "maxlen",
            Self::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Everything about one dead-lettering event.
#[derive(Debug, Clone, Copy)]
pub struct Death<'a> {
    /// The queue the message is leaving.
    pub queue: &'a str,
    pub reason: DeathReason,
    /// The exchange the message was last published to (by a client, or as a dead letter).
    pub exchange: &'a [u8],
    /// The routing key it was published with, then its `CC` keys, never its `BCC` keys
    /// ([`death_routing_keys`] computes them).
    pub routing_keys: &'a [&'a [u8]],
    /// Unix seconds, for the `time` field.
    pub time_secs: u64,
}

/// New properties for the dead-lettered copy of a message whose `x-death` header is history
/// Warren wrote (see the module docs for a publisher's `x-death`).
pub fn dead_letter_properties(original: &RawProperties, death: &Death) -> RawProperties {
    record(original, death, true)
}

/// New properties for the dead-lettered copy of a message whose `x-death` header, if any, came
/// from its publisher: RabbitMQ 4.x ignores that header, so the history starts over with this
/// death and the `x-first-death-*` headers are rewritten.
pub fn dead_letter_properties_fresh(original: &RawProperties, death: &Death) -> RawProperties {
    record(original, death, false)
}

/// Whether dead-lettering into `target_queue` closes a cycle, in which case RabbitMQ drops the
/// message for that queue (and logs it once). Call it on the properties
/// [`dead_letter_properties`] returned, as RabbitMQ checks after recording the death: it is a
/// cycle when the message already died in `target_queue` and no death from then on, this one
/// included, was `rejected` (a client in the loop breaks it).
pub fn is_cycle(properties: &RawProperties, target_queue: &str) -> bool {
    let deaths = HeaderTable::read(properties).deaths();
    match deaths
        .iter()
        .position(|d| d.queue == target_queue.as_bytes())
    {
        Some(at) => deaths[..=at]
            .iter()
            .all(|d| d.reason != DeathReason::Rejected.as_str().as_bytes()),
        None => false,
    }
}

/// The properties a quorum queue delivers a message with after `count` returns: an
/// `x-delivery-count` header (long) set to `count`, or the properties unchanged when
/// `count` is 0 (RabbitMQ sends no header on a first delivery).
///
/// For the outgoing delivery only: RabbitMQ does not store the header with the message, so a
/// dead-lettered copy does not carry it.
pub fn with_delivery_count(original: &RawProperties, count: u32) -> RawProperties {
    if count == 0 {
        return original.clone();
    }
    let mut headers = HeaderTable::read(original);
    headers.set("x-delivery-count", long(i64::from(count)));
    rebuild(original, &headers.encode(), false)
}

/// The routing keys a death records: the message's routing key followed by its `CC` header's
/// keys, minus its `BCC` header's keys (each removed once, as Erlang's `--` does) when that
/// header is still there. `BCC` keys do route the dead letter when the queue has no
/// `x-dead-letter-routing-key`; they are only kept out of the record.
pub fn death_routing_keys(routing_key: &[u8], properties: &RawProperties) -> Vec<Vec<u8>> {
    let headers = HeaderTable::read(properties);
    let mut keys = vec![routing_key.to_vec()];
    keys.extend(headers.string_array("CC"));
    for bcc in headers.string_array("BCC") {
        if let Some(at) = keys.iter().position(|k| *k == bcc) {
            keys.remove(at);
        }
    }
    keys
}

fn record(original: &RawProperties, death: &Death, keep_history: bool) -> RawProperties {
    let mut headers = HeaderTable::read(original);
    let mut deaths = if keep_history {
        headers.deaths()
    } else {
        Vec::new()
    };
    let first_death = deaths.is_empty();
    let reason = death.reason.as_str().as_bytes();
    let queue = death.queue.as_bytes();

    match deaths
        .iter()
        .position(|d| d.queue == queue && d.reason == reason)
    {
        Some(at) => {
            let mut again = deaths.remove(at);
            again.count += 1;
            deaths.insert(0, again);
        }
        None => deaths.insert(
            0,
            DeathRecord {
                queue: queue.to_vec(),
                reason: reason.to_vec(),
                count: 1,
                time: death.time_secs,
                exchange: death.exchange.to_vec(),
                routing_keys: death.routing_keys.iter().map(|k| k.to_vec()).collect(),
                original_expiration: original.expiration().map(normalise_expiration),
            },
        ),
    }

    headers.set(
        "x-death",
        array(deaths.iter().map(DeathRecord::encode).collect()),
    );
    let named = [
        ("reason", reason),
        ("queue", queue),
        ("exchange", death.exchange),
    ];
    for (field, value) in named {
        let first = format!("x-first-death-{field}");
        if first_death || headers.get(&first).is_none() {
            headers.set(&first, long_string(value));
        }
        headers.set(&format!("x-last-death-{field}"), long_string(value));
    }
    rebuild(original, &headers.encode(), true)
}

/// `original-expiration` is the TTL RabbitMQ parsed from `expiration`, printed back: "+05"
/// becomes "5". Text that is not a number is kept as it was.
fn normalise_expiration(text: &[u8]) -> Vec<u8> {
    std::str::from_utf8(text)
        .ok()
        .map(|t| t.strip_prefix('+').unwrap_or(t))
        .and_then(|t| t.parse::<u64>().ok())
        .map_or_else(|| text.to_vec(), |ms| ms.to_string().into_bytes())
}

/// One `x-death` entry.
#[derive(Debug, Clone, PartialEq)]
struct DeathRecord {
    queue: Vec<u8>,
    reason: Vec<u8>,
    count: i64,
    /// Seconds; when this (queue, reason) first happened.
    time: u64,
    exchange: Vec<u8>,
    routing_keys: Vec<Vec<u8>>,
    original_expiration: Option<Vec<u8>>,
}

impl DeathRecord {
    /// Reads an entry back; one without a queue or a reason is not one.
    fn from_value(value: &AMQPValue) -> Option<Self> {
        let AMQPValue::FieldTable(table) = value else {
            return None;
        };
        let field = |name: &str| table.inner().get(name);
        let text = |name: &str| field(name).and_then(value_bytes);
        Some(Self {
            queue: text("queue")?,
            reason: text("reason")?,
            count: field("count").and_then(value_integer).unwrap_or(1),
            time: match field("time") {
                Some(AMQPValue::Timestamp(t)) => *t,
                other => other
                    .and_then(value_integer)
                    .and_then(|t| u64::try_from(t).ok())
                    .unwrap_or(0),
            },
            exchange: text("exchange").unwrap_or_default(),
            routing_keys: match field("routing-keys") {
                Some(AMQPValue::FieldArray(keys)) => {
                    keys.as_slice().iter().filter_map(value_bytes).collect()
                }
                _ => Vec::new(),
            },
            original_expiration: text("original-expiration"),
        })
    }

    /// The entry as a table value, fields in RabbitMQ's order.
    fn encode(&self) -> Vec<u8> {
        let mut fields = Vec::with_capacity(7);
        if let Some(expiration) = &self.original_expiration {
            fields.push(("original-expiration", long_string(expiration)));
        }
        fields.push(("count", long(self.count)));
        fields.push(("reason", long_string(&self.reason)));
        fields.push(("queue", long_string(&self.queue)));
        fields.push(("time", timestamp(self.time)));
        fields.push(("exchange", long_string(&self.exchange)));
        let keys = self.routing_keys.iter().map(|k| long_string(k)).collect();
        fields.push(("routing-keys", array(keys)));
        table(&fields)
    }
}

fn value_bytes(value: &AMQPValue) -> Option<Vec<u8>> {
    match value {
        AMQPValue::LongString(s) => Some(s.as_bytes().to_vec()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes().to_vec()),
        AMQPValue::ByteArray(b) => Some(b.as_slice().to_vec()),
        _ => None,
    }
}

fn value_integer(value: &AMQPValue) -> Option<i64> {
    Some(match *value {
        AMQPValue::ShortShortInt(v) => v.into(),
        AMQPValue::ShortShortUInt(v) => v.into(),
        AMQPValue::ShortInt(v) => v.into(),
        AMQPValue::ShortUInt(v) => v.into(),
        AMQPValue::LongInt(v) => v.into(),
        AMQPValue::LongUInt(v) => v.into(),
        AMQPValue::LongLongInt(v) => v,
        AMQPValue::Timestamp(v) => i64::try_from(v).ok()?,
        _ => return None,
    })
}

/// A headers table as (key, encoded value) pairs in wire order, so values nobody touches are
/// written back byte for byte.
struct HeaderTable {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl HeaderTable {
    /// The message's headers; a table that stops parsing keeps the entries before the fault.
    fn read(properties: &RawProperties) -> Self {
        let mut entries = Vec::new();
        let table = present_fields(properties.as_bytes())
            .and_then(|fields| {
                fields
                    .into_iter()
                    .find(|(f, _)| *f == PropertyFlags::HEADERS)
            })
            .map_or(&[][..], |(_, bytes)| &bytes[4..]);
        let mut rest = table;
        while let Some((&len, after)) = rest.split_first() {
            let Some((key, after)) = after.split_at_checked(usize::from(len)) else {
                break;
            };
            let Ok((remaining, _)) = parse_value(after) else {
                break;
            };
            let (value, remaining) = after.split_at(after.len() - remaining.len());
            entries.push((key.to_vec(), value.to_vec()));
            rest = remaining;
        }
        Self { entries }
    }

    fn get(&self, key: &str) -> Option<AMQPValue> {
        let (_, value) = self.entries.iter().find(|(k, _)| k == key.as_bytes())?;
        parse_value(&value[..]).ok().map(|(_, v)| v)
    }

    /// Replaces every entry named `key` with one holding `value`.
    fn set(&mut self, key: &str, value: Vec<u8>) {
        self.entries.retain(|(k, _)| k != key.as_bytes());
        self.entries.push((key.as_bytes().to_vec(), value));
    }

    /// The `x-death` history, most recent first; entries that cannot be read are skipped.
    fn deaths(&self) -> Vec<DeathRecord> {
        match self.get("x-death") {
            Some(AMQPValue::FieldArray(entries)) => entries
                .as_slice()
                .iter()
                .filter_map(DeathRecord::from_value)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The string elements of an array header (`CC`, `BCC`).
    fn string_array(&self, key: &str) -> Vec<Vec<u8>> {
        match self.get(key) {
            Some(AMQPValue::FieldArray(items)) => {
                items.as_slice().iter().filter_map(value_bytes).collect()
            }
            _ => Vec::new(),
        }
    }

    /// The table as the `headers` property: length-prefixed, sorted by key, first of equal
    /// keys kept (RabbitMQ's `lists:usort` over the header list).
    fn encode(mut self) -> Vec<u8> {
        self.entries.sort_by(|(a, _), (b, _)| a.cmp(b));
        self.entries
            .dedup_by(|(later, _), (earlier, _)| later == earlier);
        let mut body = Vec::new();
        for (key, value) in &self.entries {
            push_short_string(&mut body, key);
            body.extend_from_slice(value);
        }
        length_prefixed(&body)
    }
}

/// How each property is laid out on the wire, in flag order.
#[derive(Clone, Copy)]
enum Width {
    ShortStr,
    Table,
    Octet,
    LongLong,
}

const LAYOUT: [(u16, Width); 14] = [
    (PropertyFlags::CONTENT_TYPE, Width::ShortStr),
    (PropertyFlags::CONTENT_ENCODING, Width::ShortStr),
    (PropertyFlags::HEADERS, Width::Table),
    (PropertyFlags::DELIVERY_MODE, Width::Octet),
    (PropertyFlags::PRIORITY, Width::Octet),
    (PropertyFlags::CORRELATION_ID, Width::ShortStr),
    (PropertyFlags::REPLY_TO, Width::ShortStr),
    (PropertyFlags::EXPIRATION, Width::ShortStr),
    (PropertyFlags::MESSAGE_ID, Width::ShortStr),
    (PropertyFlags::TIMESTAMP, Width::LongLong),
    (PropertyFlags::TYPE, Width::ShortStr),
    (PropertyFlags::USER_ID, Width::ShortStr),
    (PropertyFlags::APP_ID, Width::ShortStr),
    (PropertyFlags::CLUSTER_ID, Width::ShortStr),
];

/// Each present property's flag and wire bytes (length prefix included).
fn present_fields(raw: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let (flags, mut rest) = raw.split_first_chunk::<2>()?;
    let flags = u16::from_be_bytes(*flags);
    let mut fields = Vec::new();
    for (flag, width) in LAYOUT {
        if flags & flag == 0 {
            continue;
        }
        let len = match width {
            Width::Octet => 1,
            Width::LongLong => 8,
            Width::ShortStr => 1 + usize::from(*rest.first()?),
            Width::Table => 4 + u32::from_be_bytes(*rest.first_chunk::<4>()?) as usize,
        };
        let (field, after) = rest.split_at_checked(len)?;
        fields.push((flag, field));
        rest = after;
    }
    Some(fields)
}

/// The original properties with `headers` replaced (and `expiration` dropped when asked);
/// every other property keeps its bytes.
fn rebuild(original: &RawProperties, headers: &[u8], drop_expiration: bool) -> RawProperties {
    let Some(fields) = present_fields(original.as_bytes()) else {
        return original.clone();
    };
    let mut flags = 0u16;
    let mut out = vec![0, 0];
    for (flag, _) in LAYOUT {
        let bytes = if flag == PropertyFlags::HEADERS {
            Some(headers)
        } else if flag == PropertyFlags::EXPIRATION && drop_expiration {
            None
        } else {
            fields.iter().find(|(f, _)| *f == flag).map(|(_, b)| *b)
        };
        if let Some(bytes) = bytes {
            flags |= flag;
            out.extend_from_slice(bytes);
        }
    }
    out[..2].copy_from_slice(&flags.to_be_bytes());
    RawProperties::new(Bytes::from(out)).unwrap_or_else(|_| original.clone())
}

// Field values, encoded as RabbitMQ's rabbit_binary_generator writes them.

fn long_string(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![b'S'];
    out.extend_from_slice(&length_prefixed(bytes));
    out
}

fn long(value: i64) -> Vec<u8> {
    let mut out = vec![b'l'];
    out.extend_from_slice(&value.to_be_bytes());
    out
}

fn timestamp(secs: u64) -> Vec<u8> {
    let mut out = vec![b'T'];
    out.extend_from_slice(&secs.to_be_bytes());
    out
}

fn array(values: Vec<Vec<u8>>) -> Vec<u8> {
    let mut out = vec![b'A'];
    out.extend_from_slice(&length_prefixed(&values.concat()));
    out
}

fn table(fields: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (key, value) in fields {
        push_short_string(&mut body, key.as_bytes());
        body.extend_from_slice(value);
    }
    let mut out = vec![b'F'];
    out.extend_from_slice(&length_prefixed(&body));
    out
}

fn push_short_string(out: &mut Vec<u8>, s: &[u8]) {
    // Keys come from a parsed table or from this module: never over 255 bytes.
    out.push(s.len() as u8);
    out.extend_from_slice(s);
}

fn length_prefixed(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
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
        let once =
            dead_letter_properties(&props(None, None), &death("a", DeathReason::Expired, T0));
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
        let first =
            dead_letter_properties(&props(None, None), &death("a", DeathReason::Rejected, T0));
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
        let expired =
            dead_letter_properties(&props(None, None), &death("a", DeathReason::Expired, T0));
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
        let first =
            dead_letter_properties(&props(None, None), &death("a", DeathReason::Maxlen, T0));
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
        let out =
            dead_letter_properties_fresh(&republished, &death("b", DeathReason::Expired, T0 + 5));
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
}
