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
mod tests;
