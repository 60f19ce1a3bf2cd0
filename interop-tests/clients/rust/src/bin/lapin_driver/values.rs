//! lapin's values and JSON: header tables and queue arguments from scenarios.json, the
//! canonical message's properties, and what lapin decoded turned back into JSON for the
//! checks in `client_drivers::check`.
//!
//! Integers go out as `I` (32-bit) when they fit and `l` (64-bit) otherwise, as pika and
//! amqp091-go write them; strings as long strings.

use client_drivers::spec::Canonical;
use client_drivers::{Step, fail};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use serde_json::{Map, Value};

pub fn to_amqp(v: &Value) -> AMQPValue {
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => match i32::try_from(i) {
                Ok(small) => AMQPValue::LongInt(small),
                Err(_) => AMQPValue::LongLongInt(i),
            },
            (None, Some(f)) => AMQPValue::Double(f),
            (None, None) => AMQPValue::Void,
        },
        Value::String(s) => AMQPValue::LongString(s.as_str().into()),
        Value::Array(a) => {
            AMQPValue::FieldArray(FieldArray::from(a.iter().map(to_amqp).collect::<Vec<_>>()))
        }
        Value::Object(o) => AMQPValue::FieldTable(table(o)),
    }
}

pub fn table(o: &Map<String, Value>) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in o {
        t.insert(k.as_str().into(), to_amqp(v));
    }
    t
}

pub fn to_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(i) => (*i).into(),
        AMQPValue::ShortShortUInt(i) => (*i).into(),
        AMQPValue::ShortInt(i) => (*i).into(),
        AMQPValue::ShortUInt(i) => (*i).into(),
        AMQPValue::LongInt(i) => (*i).into(),
        AMQPValue::LongUInt(i) => (*i).into(),
        AMQPValue::LongLongInt(i) => (*i).into(),
        AMQPValue::Float(f) => (*f).into(),
        AMQPValue::Double(f) => (*f).into(),
        AMQPValue::DecimalValue(d) => (f64::from(d.value) / 10f64.powi(i32::from(d.scale))).into(),
        AMQPValue::ShortString(s) => s.as_str().into(),
        AMQPValue::LongString(s) => client_drivers::check::bytes_value(s.as_bytes()),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(to_json).collect()),
        AMQPValue::Timestamp(t) => (*t).into(),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::ByteArray(b) => {
            let hex: String = b.as_slice().iter().map(|x| format!("{x:02x}")).collect();
            serde_json::json!({ "$bytes": hex })
        }
        AMQPValue::Void => Value::Null,
    }
}

pub fn table_json(t: &FieldTable) -> Value {
    Value::Object(
        t.into_iter()
            .map(|(k, v)| (k.as_str().to_owned(), to_json(v)))
            .collect(),
    )
}

/// The canonical message's properties and headers, set from scenarios.json key by key.
pub fn canonical_properties(canon: &Canonical) -> Step<BasicProperties> {
    let mut p = BasicProperties::default().with_headers(table(&canon.headers));
    for (key, value) in &canon.properties {
        let text: Option<ShortString> = value.as_str().map(Into::into);
        let number = value.as_u64();
        let octet = number.and_then(|n| u8::try_from(n).ok());
        p = match (key.as_str(), text, number, octet) {
            ("content_type", Some(s), ..) => p.with_content_type(s),
            ("content_encoding", Some(s), ..) => p.with_content_encoding(s),
            ("delivery_mode", _, _, Some(n)) => p.with_delivery_mode(n),
            ("priority", _, _, Some(n)) => p.with_priority(n),
            ("correlation_id", Some(s), ..) => p.with_correlation_id(s),
            ("reply_to", Some(s), ..) => p.with_reply_to(s),
            ("expiration", Some(s), ..) => p.with_expiration(s),
            ("message_id", Some(s), ..) => p.with_message_id(s),
            ("timestamp", _, Some(n), _) => p.with_timestamp(n),
            ("type", Some(s), ..) => p.with_type(s),
            ("user_id", Some(s), ..) => p.with_user_id(s),
            ("app_id", Some(s), ..) => p.with_app_id(s),
            ("cluster_id", Some(s), ..) => p.with_cluster_id(s),
            _ => fail!("canonical property {key} = {value} is not one lapin can set"),
        };
    }
    Ok(p)
}

/// A delivery's properties (all but headers), keyed as in scenarios.json; absent ones are
/// `null`.
pub fn properties_json(p: &BasicProperties) -> Map<String, Value> {
    let s = |v: &Option<ShortString>| v.as_ref().map_or(Value::Null, |s| s.as_str().into());
    let mut m = Map::new();
    m.insert("content_type".into(), s(p.content_type()));
    m.insert("content_encoding".into(), s(p.content_encoding()));
    m.insert("delivery_mode".into(), (*p.delivery_mode()).into());
    m.insert("priority".into(), (*p.priority()).into());
    m.insert("correlation_id".into(), s(p.correlation_id()));
    m.insert("reply_to".into(), s(p.reply_to()));
    m.insert("expiration".into(), s(p.expiration()));
    m.insert("message_id".into(), s(p.message_id()));
    m.insert("timestamp".into(), (*p.timestamp()).into());
    m.insert("type".into(), s(p.kind()));
    m.insert("user_id".into(), s(p.user_id()));
    m.insert("app_id".into(), s(p.app_id()));
    m.insert("cluster_id".into(), s(p.cluster_id()));
    m
}

/// A delivery's header table as JSON (`{}` when it has none).
pub fn headers_json(p: &BasicProperties) -> Value {
    p.headers()
        .as_ref()
        .map_or_else(|| Value::Object(Map::new()), table_json)
}
