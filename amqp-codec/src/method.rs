//! Method frame payloads. The three methods that travel once per message are decoded by hand
//! into slices of the frame (no allocation); the rest go through amq-protocol.

use amq_protocol::protocol::{AMQPClass, parse_class};
use bytes::Bytes;

use crate::error::CodecError;

const BASIC: u16 = 60;
const BASIC_QOS: u16 = 10;
const BASIC_PUBLISH: u16 = 40;
const BASIC_DELIVER: u16 = 60;
const BASIC_ACK: u16 = 80;

/// A decoded method.
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    Publish(Publish),
    Deliver(Deliver),
    Ack(Ack),
    /// Decoded here because amq-protocol drops `prefetch_size`, which RabbitMQ refuses when
    /// it is not zero.
    Qos(Qos),
    Other(AMQPClass),
}

/// `basic.qos` with every field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qos {
    pub prefetch_size: u32,
    pub prefetch_count: u16,
    pub global: bool,
}

/// `basic.publish`, with names borrowed from the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub exchange: Bytes,
    pub routing_key: Bytes,
    pub mandatory: bool,
    pub immediate: bool,
}

/// `basic.deliver`, decoded on the client side (the load generator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deliver {
    pub consumer_tag: Bytes,
    pub delivery_tag: u64,
    pub redelivered: bool,
    pub exchange: Bytes,
    pub routing_key: Bytes,
}

/// `basic.ack`: from a consumer, or from the broker as a publisher confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub delivery_tag: u64,
    pub multiple: bool,
}

impl Method {
    /// Class and method ids, for error replies.
    pub fn ids(&self) -> (u16, u16) {
        match self {
            Method::Publish(_) => (BASIC, BASIC_PUBLISH),
            Method::Deliver(_) => (BASIC, BASIC_DELIVER),
            Method::Ack(_) => (BASIC, BASIC_ACK),
            Method::Qos(_) => (BASIC, BASIC_QOS),
            Method::Other(class) => (class.get_amqp_class_id(), class.get_amqp_method_id()),
        }
    }

    pub(crate) fn decode(payload: &Bytes) -> Result<Method, CodecError> {
        if payload.len() < 4 {
            return Err(CodecError::MalformedMethod {
                class_id: 0,
                method_id: 0,
            });
        }
        let class_id = u16::from_be_bytes([payload[0], payload[1]]);
        let method_id = u16::from_be_bytes([payload[2], payload[3]]);
        let malformed = CodecError::MalformedMethod {
            class_id,
            method_id,
        };
        let mut r = Reader {
            buf: payload,
            pos: 4,
        };
        match (class_id, method_id) {
            (BASIC, BASIC_PUBLISH) => {
                let fields = (|| {
                    r.u16()?;
                    let exchange = r.short_str()?;
                    let routing_key = r.short_str()?;
                    let bits = r.u8()?;
                    r.finish()?;
                    Some(Publish {
                        exchange,
                        routing_key,
                        mandatory: bits & 1 != 0,
                        immediate: bits & 2 != 0,
                    })
                })();
                fields.map(Method::Publish).ok_or(malformed)
            }
            (BASIC, BASIC_DELIVER) => {
                let fields = (|| {
                    let consumer_tag = r.short_str()?;
                    let delivery_tag = r.u64()?;
                    let redelivered = r.u8()? & 1 != 0;
                    let exchange = r.short_str()?;
                    let routing_key = r.short_str()?;
                    r.finish()?;
                    Some(Deliver {
                        consumer_tag,
                        delivery_tag,
                        redelivered,
                        exchange,
                        routing_key,
                    })
                })();
                fields.map(Method::Deliver).ok_or(malformed)
            }
            (BASIC, BASIC_ACK) => {
                let fields = (|| {
                    let delivery_tag = r.u64()?;
                    let multiple = r.u8()? & 1 != 0;
                    r.finish()?;
                    Some(Ack {
                        delivery_tag,
                        multiple,
                    })
                })();
                fields.map(Method::Ack).ok_or(malformed)
            }
            (BASIC, BASIC_QOS) => {
                let fields = (|| {
                    let prefetch_size = r.u32()?;
                    let prefetch_count = r.u16()?;
                    let global = r.u8()? & 1 != 0;
                    r.finish()?;
                    Some(Qos {
                        prefetch_size,
                        prefetch_count,
                        global,
                    })
                })();
                fields.map(Method::Qos).ok_or(malformed)
            }
            _ => match parse_class(&payload[..]) {
                Ok((&[], class)) => Ok(Method::Other(class)),
                _ if is_known(class_id, method_id) => Err(malformed),
                _ => Err(CodecError::UnknownMethod {
                    class_id,
                    method_id,
                }),
            },
        }
    }
}

/// Methods of AMQP 0-9-1 with RabbitMQ's extensions.
fn is_known(class_id: u16, method_id: u16) -> bool {
    let methods: &[u16] = match class_id {
        10 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61, 70, 71],
        20 => &[10, 11, 20, 21, 40, 41],
        30 => &[10, 11],
        40 => &[10, 11, 20, 21, 30, 31, 40, 51],
        50 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51],
        60 => &[
            10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120,
        ],
        85 => &[10, 11],
        90 => &[10, 11, 20, 21, 30, 31],
        _ => &[],
    };
    methods.contains(&method_id)
}

/// A bounds-checked cursor over a method payload.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let s = self.take(8)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(s);
        Some(u64::from_be_bytes(b))
    }
    fn short_str(&mut self) -> Option<Bytes> {
        let len = usize::from(self.u8()?);
        let start = self.pos;
        self.take(len)?;
        Some(self.buf.slice(start..start + len))
    }
    fn finish(&self) -> Option<()> {
        (self.pos == self.buf.len()).then_some(())
    }
}
