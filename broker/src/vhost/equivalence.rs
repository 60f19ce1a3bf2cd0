//! Re-declaration checks: a `declare` of an existing exchange or queue must ask for the same
//! thing, or it fails with 406 worded as RabbitMQ words it.

use amqp_codec::AMQPValue;

use crate::error::{ProtocolError, ProtocolResult};
use crate::exchange::{Exchange, ExchangeSettings};
use crate::queue::{Queue, QueueSettings};

pub(super) fn check_exchange_equivalence(
    existing: &Exchange,
    requested: &ExchangeSettings,
    vhost: &str,
) -> ProtocolResult {
    let current = &existing.settings;
    let mismatch = |field: &str, received: &dyn std::fmt::Display, now: &dyn std::fmt::Display| {
        ProtocolError::precondition_failed(format!(
            "inequivalent arg '{field}' for exchange '{}' in vhost '{vhost}': received '{received}' but current is '{now}'",
            existing.name
        ))
    };
    if current.kind != requested.kind {
        return Err(mismatch(
            "type",
            &requested.kind.as_str(),
            &current.kind.as_str(),
        ));
    }
    if current.durable != requested.durable {
        return Err(mismatch("durable", &requested.durable, &current.durable));
    }
    if current.auto_delete != requested.auto_delete {
        return Err(mismatch(
            "auto_delete",
            &requested.auto_delete,
            &current.auto_delete,
        ));
    }
    if current.internal != requested.internal {
        return Err(mismatch("internal", &requested.internal, &current.internal));
    }
    let key = "alternate-exchange";
    let a = current.arguments.inner().get(key).map(normalize);
    let b = requested.arguments.inner().get(key).map(normalize);
    if a != b {
        return Err(ProtocolError::precondition_failed(format!(
            "inequivalent arg '{key}' for exchange '{}' in vhost '{vhost}'",
            existing.name
        )));
    }
    Ok(())
}

pub(super) fn check_queue_equivalence(
    existing: &Queue,
    requested: &QueueSettings,
) -> ProtocolResult {
    let current = &existing.settings;
    let mismatch = |field: &str, received: bool, now: bool| {
        ProtocolError::precondition_failed(format!(
            "inequivalent arg '{field}' for queue '{}' in vhost '{}': received '{received}' but current is '{now}'",
            existing.name, existing.vhost
        ))
    };
    if current.durable != requested.durable {
        return Err(mismatch("durable", requested.durable, current.durable));
    }
    if current.auto_delete != requested.auto_delete {
        return Err(mismatch(
            "auto_delete",
            requested.auto_delete,
            current.auto_delete,
        ));
    }
    let (cur_excl, req_excl) = (
        current.exclusive_owner.is_some(),
        requested.exclusive_owner.is_some(),
    );
    if cur_excl != req_excl {
        return Err(mismatch("exclusive", req_excl, cur_excl));
    }
    let keys = current
        .arguments
        .inner()
        .keys()
        .chain(requested.arguments.inner().keys())
        .filter(|k| k.as_str().starts_with("x-"));
    for key in keys {
        let a = current.arguments.inner().get(key).map(normalize);
        let b = requested.arguments.inner().get(key).map(normalize);
        if a != b {
            return Err(ProtocolError::precondition_failed(format!(
                "inequivalent arg '{key}' for queue '{}' in vhost '{}': received {} but current is {}",
                existing.name,
                existing.vhost,
                describe(b.as_ref()),
                describe(a.as_ref()),
            )));
        }
    }
    Ok(())
}

/// Argument values compared the way RabbitMQ compares them: integers by value whatever their
/// width, strings by content whether short or long.
#[derive(Debug, PartialEq)]
enum ArgValue {
    Int(i64),
    Str(Vec<u8>),
    Bool(bool),
    Other(String),
}

fn normalize(value: &AMQPValue) -> ArgValue {
    match value {
        AMQPValue::ShortShortInt(v) => ArgValue::Int(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => ArgValue::Int(i64::from(*v)),
        AMQPValue::ShortInt(v) => ArgValue::Int(i64::from(*v)),
        AMQPValue::ShortUInt(v) => ArgValue::Int(i64::from(*v)),
        AMQPValue::LongInt(v) => ArgValue::Int(i64::from(*v)),
        AMQPValue::LongUInt(v) => ArgValue::Int(i64::from(*v)),
        AMQPValue::LongLongInt(v) => ArgValue::Int(*v),
        AMQPValue::Timestamp(v) => ArgValue::Int(*v as i64),
        AMQPValue::ShortString(s) => ArgValue::Str(s.as_str().as_bytes().to_vec()),
        AMQPValue::LongString(s) => ArgValue::Str(s.as_bytes().to_vec()),
        AMQPValue::Boolean(b) => ArgValue::Bool(*b),
        other => ArgValue::Other(format!("{other:?}")),
    }
}

fn describe(value: Option<&ArgValue>) -> String {
    match value {
        None => "none".into(),
        Some(ArgValue::Int(v)) => format!("the value '{v}'"),
        Some(ArgValue::Str(s)) => format!("the value '{}'", String::from_utf8_lossy(s)),
        Some(ArgValue::Bool(b)) => format!("the value '{b}'"),
        Some(ArgValue::Other(s)) => format!("the value '{s}'"),
    }
}
