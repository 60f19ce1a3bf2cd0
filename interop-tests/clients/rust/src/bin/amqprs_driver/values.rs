//! amqprs's values and JSON: header tables and queue arguments from scenarios.json, the
//! canonical message's properties, and what amqprs decoded turned back into JSON for the
//! checks in `client_drivers::check`.
//!
//! Integers go out as `I` (32-bit) when they fit and `l` (64-bit) otherwise, as pika and
//! amqp091-go write them; strings as long strings.

use amqprs::{BasicProperties, FieldArray, FieldTable, FieldValue, LongStr, ShortStr};
use client_drivers::spec::Canonical;
use client_drivers::{Outcome, Step, fail};
use serde_json::{Map, Value};

fn long_str(s: &str) -> Step<LongStr> {
    LongStr::try_from(s).map_err(|_| Outcome::Fail(format!("{s:?} is too long for AMQP")))
}

fn short_str(s: &str) -> Step<ShortStr> {
    ShortStr::try_from(s).map_err(|_| Outcome::Fail(format!("{s:?} is longer than 255 bytes")))
}

pub fn to_amqp(v: &Value) -> Step<FieldValue> {
    Ok(match v {
        Value::Null => FieldValue::V,
        Value::Bool(b) => FieldValue::t(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => match i32::try_from(i) {
                Ok(small) => FieldValue::I(small),
                Err(_) => FieldValue::l(i),
            },
            (None, Some(f)) => FieldValue::d(f),
            (None, None) => fail!("{n} fits no AMQP number"),
        },
        Value::String(s) => FieldValue::S(long_str(s)?),
        Value::Array(a) => {
            let items = a.iter().map(to_amqp).collect::<Step<Vec<_>>>()?;
            match FieldArray::try_from(items) {
                Ok(array) => FieldValue::A(array),
                Err(_) => fail!("array too long for AMQP"),
            }
        }
        Value::Object(o) => FieldValue::F(table(o)?),
    })
}

pub fn table(o: &Map<String, Value>) -> Step<FieldTable> {
    let mut t = FieldTable::new();
    for (k, v) in o {
        t.insert(short_str(k)?, to_amqp(v)?);
    }
    Ok(t)
}

pub fn to_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::t(b) => Value::Bool(*b),
        FieldValue::b(i) => (*i).into(),
        FieldValue::B(i) => (*i).into(),
        FieldValue::s(i) => (*i).into(),
        FieldValue::u(i) => (*i).into(),
        FieldValue::I(i) => (*i).into(),
        FieldValue::i(i) => (*i).into(),
        FieldValue::l(i) => (*i).into(),
        FieldValue::f(f) => (*f).into(),
        FieldValue::d(f) => (*f).into(),
        // amqprs keeps a decimal's scale and digits private; its text is all there is.
        FieldValue::D(d) => d.to_string().into(),
        FieldValue::S(s) => AsRef::<String>::as_ref(s).as_str().into(),
        FieldValue::A(a) => Value::Array(
            Vec::<FieldValue>::from(a.clone())
                .iter()
                .map(to_json)
                .collect(),
        ),
        FieldValue::T(t) => (*t).into(),
        FieldValue::F(t) => table_json(t),
        FieldValue::V => Value::Null,
        FieldValue::x(b) => client_drivers::check::bytes_value(&Vec::<u8>::from(b.clone())),
    }
}

pub fn table_json(t: &FieldTable) -> Value {
    Value::Object(
        t.as_ref()
            .iter()
            .map(|(k, v)| (AsRef::<String>::as_ref(k).clone(), to_json(v)))
            .collect(),
    )
}

/// The canonical message's properties and headers, set from scenarios.json key by key.
pub fn canonical_properties(canon: &Canonical) -> Step<BasicProperties> {
    let mut p = BasicProperties::default();
    p.with_headers(table(&canon.headers)?);
    for (key, value) in &canon.properties {
        let number = value.as_u64();
        let octet = number.and_then(|n| u8::try_from(n).ok());
        // amqprs panics on a short string over 255 bytes: check first.
        let text = match value.as_str() {
            Some(s) => Some(short_str(s).map(|_| s)?),
            None => None,
        };
        match (key.as_str(), text, number, octet) {
            ("content_type", Some(s), ..) => p.with_content_type(s),
            ("content_encoding", Some(s), ..) => p.with_content_encoding(s),
            ("delivery_mode", _, _, Some(n)) => p.with_delivery_mode(n),
            ("priority", _, _, Some(n)) => p.with_priority(n),
            ("correlation_id", Some(s), ..) => p.with_correlation_id(s),
            ("reply_to", Some(s), ..) => p.with_reply_to(s),
            ("expiration", Some(s), ..) => p.with_expiration(s),
            ("message_id", Some(s), ..) => p.with_message_id(s),
            ("timestamp", _, Some(n), _) => p.with_timestamp(n),
            ("type", Some(s), ..) => p.with_message_type(s),
            ("user_id", Some(s), ..) => p.with_user_id(s),
            ("app_id", Some(s), ..) => p.with_app_id(s),
            ("cluster_id", Some(s), ..) => p.with_cluster_id(s),
            _ => fail!("canonical property {key} = {value} is not one amqprs can set"),
        };
    }
    Ok(p.finish())
}

/// A delivery's properties (all but headers), keyed as in scenarios.json; absent ones are
/// `null`.
pub fn properties_json(p: &BasicProperties) -> Map<String, Value> {
    let s = |v: Option<&String>| v.map_or(Value::Null, |s| s.as_str().into());
    let mut m = Map::new();
    m.insert("content_type".into(), s(p.content_type()));
    m.insert("content_encoding".into(), s(p.content_encoding()));
    m.insert("delivery_mode".into(), p.delivery_mode().into());
    m.insert("priority".into(), p.priority().into());
    m.insert("correlation_id".into(), s(p.correlation_id()));
    m.insert("reply_to".into(), s(p.reply_to()));
    m.insert("expiration".into(), s(p.expiration()));
    m.insert("message_id".into(), s(p.message_id()));
    m.insert("timestamp".into(), p.timestamp().into());
    m.insert("type".into(), s(p.message_type()));
    m.insert("user_id".into(), s(p.user_id()));
    m.insert("app_id".into(), s(p.app_id()));
    m.insert("cluster_id".into(), s(p.cluster_id()));
    m
}

/// A delivery's header table as JSON (`{}` when it has none).
pub fn headers_json(p: &BasicProperties) -> Value {
    p.headers()
        .map_or_else(|| Value::Object(Map::new()), table_json)
}
