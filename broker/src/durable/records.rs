//! Metadata records: how durable exchanges, queues and bindings are written to the store.
//!
//! Keys start with the vhost so one vhost's records can be told apart; every string is
//! length-prefixed (names may hold any bytes). Argument tables use the AMQP field-table
//! encoding, so what is stored is exactly what was declared.

use amqp_codec::FieldTable;
use amqp_codec::types::generation::gen_field_table;
use amqp_codec::types::parsing::parse_field_table;
use warren_storage::QueueId;

use crate::exchange::{ExchangeKind, ExchangeSettings};

/// A durable exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeRecord {
    pub vhost: String,
    pub name: String,
    pub settings: ExchangeSettings,
}

/// A durable queue and its id in the store's message index.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRecord {
    pub vhost: String,
    pub name: String,
    pub id: QueueId,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// What a durable binding leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingTarget {
    Queue(String),
    Exchange(String),
}

/// A binding between durable ends.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingRecord {
    pub vhost: String,
    pub source: String,
    pub target: BindingTarget,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// A record that does not decode: the store holds something this version did not write.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what} record")]
pub struct MalformedRecord {
    pub what: &'static str,
}

pub fn name_key(vhost: &str, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(vhost.len() + name.len() + 4);
    put_str(&mut key, vhost);
    put_str(&mut key, name);
    key
}

impl ExchangeRecord {
    pub fn key(&self) -> Vec<u8> {
        name_key(&self.vhost, &self.name)
    }

    pub fn value(&self) -> Vec<u8> {
        let s = &self.settings;
        let kind = match s.kind {
            ExchangeKind::Direct => 0,
            ExchangeKind::Fanout => 1,
            ExchangeKind::Topic => 2,
            ExchangeKind::Headers => 3,
        };
        let flags = u8::from(s.auto_delete) | (u8::from(s.internal) << 1);
        let mut value = vec![kind, flags];
        put_table(&mut value, &s.arguments);
        value
    }

    pub fn decode(key: &[u8], value: &[u8]) -> Result<Self, MalformedRecord> {
        let bad = || MalformedRecord { what: "exchange" };
        let mut k = Reader(key);
        let vhost = k.str().ok_or_else(bad)?;
        let name = k.str().ok_or_else(bad)?;
        let mut v = Reader(value);
        let kind = match v.u8().ok_or_else(bad)? {
            0 => ExchangeKind::Direct,
            1 => ExchangeKind::Fanout,
            2 => ExchangeKind::Topic,
            3 => ExchangeKind::Headers,
            _ => return Err(bad()),
        };
        let flags = v.u8().ok_or_else(bad)?;
        let arguments = v.table().ok_or_else(bad)?;
        Ok(Self {
            vhost,
            name,
            settings: ExchangeSettings {
                kind,
                durable: true,
                auto_delete: flags & 1 != 0,
                internal: flags & 2 != 0,
                arguments,
            },
        })
    }
}

impl QueueRecord {
    pub fn key(&self) -> Vec<u8> {
        name_key(&self.vhost, &self.name)
    }

    pub fn value(&self) -> Vec<u8> {
        let mut value = self.id.to_be_bytes().to_vec();
        value.push(u8::from(self.auto_delete));
        put_table(&mut value, &self.arguments);
        value
    }

    pub fn decode(key: &[u8], value: &[u8]) -> Result<Self, MalformedRecord> {
        let bad = || MalformedRecord { what: "queue" };
        let mut k = Reader(key);
        let vhost = k.str().ok_or_else(bad)?;
        let name = k.str().ok_or_else(bad)?;
        let mut v = Reader(value);
        let id = v.u64().ok_or_else(bad)?;
        let auto_delete = v.u8().ok_or_else(bad)? != 0;
        let arguments = v.table().ok_or_else(bad)?;
        Ok(Self {
            vhost,
            name,
            id,
            auto_delete,
            arguments,
        })
    }
}

impl BindingRecord {
    /// Everything identifies a binding, so everything is in the key.
    pub fn key(&self) -> Vec<u8> {
        let mut key = Vec::with_capacity(64);
        put_str(&mut key, &self.vhost);
        put_str(&mut key, &self.source);
        match &self.target {
            BindingTarget::Queue(q) => {
                key.push(b'q');
                put_str(&mut key, q);
            }
            BindingTarget::Exchange(e) => {
                key.push(b'e');
                put_str(&mut key, e);
            }
        }
        put_str(&mut key, &self.routing_key);
        put_table(&mut key, &self.arguments);
        key
    }

    pub fn decode(key: &[u8]) -> Result<Self, MalformedRecord> {
        let bad = || MalformedRecord { what: "binding" };
        let mut k = Reader(key);
        let vhost = k.str().ok_or_else(bad)?;
        let source = k.str().ok_or_else(bad)?;
        let target = match k.u8().ok_or_else(bad)? {
            b'q' => BindingTarget::Queue(k.str().ok_or_else(bad)?),
            b'e' => BindingTarget::Exchange(k.str().ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        let routing_key = k.str().ok_or_else(bad)?;
        let arguments = k.table().ok_or_else(bad)?;
        Ok(Self {
            vhost,
            source,
            target,
            routing_key,
            arguments,
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

fn put_table(out: &mut Vec<u8>, table: &FieldTable) {
    let encoded = match gen_field_table(table)(Vec::new().into()) {
        Ok(ctx) => ctx.into_inner().0,
        // Writing into a Vec cannot run out of room; an empty table is the safe fallback.
        Err(_) => 0u32.to_be_bytes().to_vec(),
    };
    out.extend_from_slice(&encoded);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_be_bytes(a))
    }
    fn str(&mut self) -> Option<String> {
        let l = self.take(2)?;
        let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
    fn table(&mut self) -> Option<FieldTable> {
        let (rest, table) = parse_field_table(self.0).ok()?;
        self.0 = rest;
        Some(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amqp_codec::AMQPValue;

    fn args() -> FieldTable {
        let mut t = FieldTable::default();
        t.insert("x-message-ttl".into(), AMQPValue::LongInt(500));
        t.insert(
            "alternate-exchange".into(),
            AMQPValue::LongString("ae".into()),
        );
        t
    }

    #[test]
    fn exchange_record_round_trips() {
        let rec = ExchangeRecord {
            vhost: "/".into(),
            name: "logs".into(),
            settings: ExchangeSettings {
                kind: ExchangeKind::Topic,
                durable: true,
                auto_delete: true,
                internal: false,
                arguments: args(),
            },
        };
        assert_eq!(
            ExchangeRecord::decode(&rec.key(), &rec.value()).unwrap(),
            rec
        );
    }

    #[test]
    fn queue_record_round_trips() {
        let rec = QueueRecord {
            vhost: "/".into(),
            name: "jobs".into(),
            id: 42,
            auto_delete: false,
            arguments: args(),
        };
        assert_eq!(QueueRecord::decode(&rec.key(), &rec.value()).unwrap(), rec);
    }

    #[test]
    fn binding_record_round_trips_and_differs_by_arguments() {
        let rec = BindingRecord {
            vhost: "/".into(),
            source: "amq.topic".into(),
            target: BindingTarget::Queue("jobs".into()),
            routing_key: "a.*.c".into(),
            arguments: args(),
        };
        assert_eq!(BindingRecord::decode(&rec.key()).unwrap(), rec);
        let other = BindingRecord {
            arguments: FieldTable::default(),
            ..rec.clone()
        };
        assert_ne!(rec.key(), other.key());
    }

    #[test]
    fn truncated_records_are_errors() {
        let rec = QueueRecord {
            vhost: "/".into(),
            name: "jobs".into(),
            id: 1,
            auto_delete: false,
            arguments: FieldTable::default(),
        };
        let value = rec.value();
        assert!(QueueRecord::decode(&rec.key(), &value[..5]).is_err());
        assert!(BindingRecord::decode(b"\x00").is_err());
    }
}
