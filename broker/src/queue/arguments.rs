//! Queue arguments (`x-…`), checked and resolved in one place.
//!
//! Declaring a queue with an argument of the wrong type or range fails with 406, worded as
//! RabbitMQ words it. The resolved [`QueueArguments`] is what queue behaviour reads; operator
//! policies will supply the same settings through this type later, so queue code never looks
//! at raw argument tables.

use amqp_codec::{AMQPValue, FieldTable};

use crate::error::{ProtocolError, ProtocolResult};

/// `x-overflow`: what a full queue does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    #[default]
    DropHead,
    RejectPublish,
    RejectPublishDlx,
}

/// `x-queue-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
}

/// The effective settings a queue's arguments ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueArguments {
    pub message_ttl: Option<u64>,
    pub expires: Option<u64>,
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    pub dead_letter_exchange: Option<String>,
    pub dead_letter_routing_key: Option<String>,
    pub max_priority: Option<u8>,
    pub delivery_limit: Option<i64>,
    pub single_active_consumer: bool,
    pub queue_type: QueueType,
    /// `x-consumer-timeout`, milliseconds.
    pub consumer_timeout: Option<u64>,
}

impl QueueArguments {
    /// Checks and resolves `arguments`; unknown arguments are ignored, as in RabbitMQ.
    pub fn parse(arguments: &FieldTable, queue: &str, vhost: &str) -> ProtocolResult<Self> {
        let mut resolved = QueueArguments::default();
        for (key, value) in arguments.inner() {
            let invalid = |reason: String| {
                ProtocolError::precondition_failed(format!(
                    "invalid arg '{key}' for queue '{queue}' in vhost '{vhost}': {reason}"
                ))
            };
            match key.as_str() {
                "x-message-ttl" => {
                    resolved.message_ttl = Some(non_negative(value).map_err(invalid)?)
                }
                "x-expires" => resolved.expires = Some(positive(value).map_err(invalid)?),
                "x-max-length" => resolved.max_length = Some(non_negative(value).map_err(invalid)?),
                "x-max-length-bytes" => {
                    resolved.max_length_bytes = Some(non_negative(value).map_err(invalid)?)
                }
                "x-max-priority" => {
                    let p = non_negative(value).map_err(invalid)?;
                    if p > 255 {
                        return Err(invalid(format!("{{value_too_large,{p},255}}")));
                    }
                    resolved.max_priority = Some(p as u8);
                }
                "x-delivery-limit" => {
                    resolved.delivery_limit = Some(integer(value).map_err(invalid)?)
                }
                "x-dead-letter-exchange" => {
                    resolved.dead_letter_exchange = Some(string(value).map_err(invalid)?)
                }
                "x-dead-letter-routing-key" => {
                    resolved.dead_letter_routing_key = Some(string(value).map_err(invalid)?)
                }
                "x-overflow" => {
                    resolved.overflow = match string(value).map_err(invalid)?.as_str() {
                        "drop-head" => Overflow::DropHead,
                        "reject-publish" => Overflow::RejectPublish,
                        "reject-publish-dlx" => Overflow::RejectPublishDlx,
                        other => return Err(invalid(format!("{{invalid_value,<<\"{other}\">>}}"))),
                    }
                }
                "x-consumer-timeout" => {
                    resolved.consumer_timeout = Some(positive(value).map_err(invalid)?)
                }
                "x-single-active-consumer" => match value {
                    AMQPValue::Boolean(b) => resolved.single_active_consumer = *b,
                    other => return Err(invalid(unacceptable(other))),
                },
                "x-queue-type" => {
                    resolved.queue_type = match string(value).map_err(invalid)?.as_str() {
                        "classic" => QueueType::Classic,
                        "quorum" => QueueType::Quorum,
                        "stream" => {
                            return Err(ProtocolError::precondition_failed(format!(
                                "queue type 'stream' is not supported by Warren yet (queue '{queue}' in vhost '{vhost}')"
                            )));
                        }
                        other => return Err(invalid(format!("unknown queue type '{other}'"))),
                    }
                }
                _ => {}
            }
        }
        Ok(resolved)
    }
}

/// Broker-wide defaults that queue arguments override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDefaults {
    /// Delivery limit of quorum queues declared without `x-delivery-limit` (RabbitMQ 4: 20).
    pub quorum_delivery_limit: u32,
    /// How long a delivery may stay unacked before its channel is closed (RabbitMQ's
    /// `consumer_timeout`, 30 minutes by default), in milliseconds.
    pub consumer_timeout_ms: u64,
}

impl Default for QueueDefaults {
    fn default() -> Self {
        Self {
            quorum_delivery_limit: 20,
            consumer_timeout_ms: 30 * 60 * 1000,
        }
    }
}

/// The settings a queue actually runs with: its arguments, and broker defaults where the
/// arguments are silent. Operator policies will feed in here too; queue code reads only this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePolicy {
    pub arguments: QueueArguments,
    /// Returns (requeues) a message may have before it is dead-lettered; `None` = unlimited.
    pub delivery_limit: Option<u32>,
    /// Redeliveries carry `x-delivery-count`, as quorum queues' do.
    pub delivery_count_header: bool,
    pub consumer_timeout_ms: u64,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        Self::resolve(QueueArguments::default(), &QueueDefaults::default())
    }
}

impl QueuePolicy {
    pub fn resolve(arguments: QueueArguments, defaults: &QueueDefaults) -> Self {
        let quorum = arguments.queue_type == QueueType::Quorum;
        let delivery_limit = match arguments.delivery_limit {
            // Negative means unlimited, as in RabbitMQ 4.
            Some(limit) => u32::try_from(limit).ok(),
            None if quorum => Some(defaults.quorum_delivery_limit),
            None => None,
        };
        Self {
            delivery_count_header: quorum || delivery_limit.is_some(),
            delivery_limit,
            consumer_timeout_ms: arguments
                .consumer_timeout
                .unwrap_or(defaults.consumer_timeout_ms),
            arguments,
        }
    }

    /// RabbitMQ refuses quorum queues that could not be replicated logs.
    pub fn check_declare(
        &self,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        queue: &str,
        vhost: &str,
    ) -> ProtocolResult {
        if self.arguments.queue_type != QueueType::Quorum {
            return Ok(());
        }
        let property = if !durable {
            "non-durable"
        } else if exclusive {
            "exclusive-owner"
        } else if auto_delete {
            "auto-delete"
        } else {
            return Ok(());
        };
        Err(ProtocolError::precondition_failed(format!(
            "invalid property '{property}' for queue '{queue}' in vhost '{vhost}'"
        )))
    }
}

fn integer(value: &AMQPValue) -> Result<i64, String> {
    Ok(match value {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        other => return Err(unacceptable(other)),
    })
}

fn non_negative(value: &AMQPValue) -> Result<u64, String> {
    let v = integer(value)?;
    u64::try_from(v).map_err(|_| format!("{{value_negative,{v}}}"))
}

fn positive(value: &AMQPValue) -> Result<u64, String> {
    match non_negative(value)? {
        0 => Err("{value_zero,0}".to_string()),
        v => Ok(v),
    }
}

fn string(value: &AMQPValue) -> Result<String, String> {
    match value {
        AMQPValue::LongString(s) => Ok(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Ok(s.as_str().to_string()),
        other => Err(unacceptable(other)),
    }
}

/// RabbitMQ's `{unacceptable_type,longstr}` wording, with its type names.
fn unacceptable(value: &AMQPValue) -> String {
    let name = match value {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) | AMQPValue::ShortShortUInt(_) => "byte",
        AMQPValue::ShortInt(_) | AMQPValue::ShortUInt(_) => "short",
        AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) => "signedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) => "shortstr",
        AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "bytes",
        AMQPValue::Void => "void",
    };
    format!("{{unacceptable_type,{name}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn integer_arguments_of_any_width_resolve() {
        let args = table(&[
            ("x-message-ttl", AMQPValue::ShortInt(500)),
            ("x-max-length", AMQPValue::LongLongInt(10)),
            ("x-max-priority", AMQPValue::ShortShortUInt(9)),
            ("x-delivery-limit", AMQPValue::LongInt(3)),
        ]);
        let a = QueueArguments::parse(&args, "q", "/").unwrap();
        assert_eq!(a.message_ttl, Some(500));
        assert_eq!(a.max_length, Some(10));
        assert_eq!(a.max_priority, Some(9));
        assert_eq!(a.delivery_limit, Some(3));
    }

    #[test]
    fn a_string_where_a_number_belongs_is_406_with_rabbitmq_wording() {
        let args = table(&[("x-max-length", AMQPValue::LongString("lots".into()))]);
        let err = QueueArguments::parse(&args, "q", "/").unwrap_err();
        assert_eq!(err.code, crate::error::ReplyCode::PreconditionFailed);
        assert!(
            err.text
                .contains("invalid arg 'x-max-length' for queue 'q' in vhost '/'")
        );
        assert!(err.text.contains("{unacceptable_type,longstr}"));
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for (key, value) in [
            ("x-message-ttl", AMQPValue::LongInt(-1)),
            ("x-expires", AMQPValue::LongInt(0)),
            ("x-max-priority", AMQPValue::LongInt(256)),
            ("x-overflow", AMQPValue::LongString("sometimes".into())),
            ("x-queue-type", AMQPValue::LongString("stream".into())),
            ("x-single-active-consumer", AMQPValue::LongInt(1)),
        ] {
            assert!(
                QueueArguments::parse(&table(&[(key, value)]), "q", "/").is_err(),
                "{key}"
            );
        }
    }

    #[test]
    fn unknown_arguments_are_ignored() {
        let args = table(&[("x-something-else", AMQPValue::LongString("x".into()))]);
        assert_eq!(
            QueueArguments::parse(&args, "q", "/").unwrap(),
            QueueArguments::default()
        );
    }
}
