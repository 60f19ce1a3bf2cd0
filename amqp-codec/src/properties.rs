//! Content-header properties kept as the bytes the publisher sent.
//!
//! Re-encoding a parsed property set would reorder header tables (amq-protocol keeps them in a
//! `BTreeMap`) and cost an allocation per field; keeping the raw bytes makes "properties come
//! back byte for byte" true by construction and makes the common case (nobody looks at them)
//! free. Single fields are read by walking the flag bits.

use amq_protocol::protocol::{BasicProperties, basic::gen_properties, basic::parse_properties};
use amq_protocol::types::{FieldTable, parsing::parse_field_table};
use bytes::Bytes;

use crate::error::CodecError;

/// Bits of the property-flags word, in wire order.
pub struct PropertyFlags;

impl PropertyFlags {
    pub const CONTENT_TYPE: u16 = 1 << 15;
    pub const CONTENT_ENCODING: u16 = 1 << 14;
    pub const HEADERS: u16 = 1 << 13;
    pub const DELIVERY_MODE: u16 = 1 << 12;
    pub const PRIORITY: u16 = 1 << 11;
    pub const CORRELATION_ID: u16 = 1 << 10;
    pub const REPLY_TO: u16 = 1 << 9;
    pub const EXPIRATION: u16 = 1 << 8;
    pub const MESSAGE_ID: u16 = 1 << 7;
    pub const TIMESTAMP: u16 = 1 << 6;
    pub const TYPE: u16 = 1 << 5;
    pub const USER_ID: u16 = 1 << 4;
    pub const APP_ID: u16 = 1 << 3;
    pub const CLUSTER_ID: u16 = 1 << 2;
}

/// How each property is laid out on the wire.
#[derive(Clone, Copy)]
enum Layout {
    ShortStr,
    Table,
    Octet,
    LongLong,
}

const LAYOUT: [(u16, Layout); 14] = [
    (PropertyFlags::CONTENT_TYPE, Layout::ShortStr),
    (PropertyFlags::CONTENT_ENCODING, Layout::ShortStr),
    (PropertyFlags::HEADERS, Layout::Table),
    (PropertyFlags::DELIVERY_MODE, Layout::Octet),
    (PropertyFlags::PRIORITY, Layout::Octet),
    (PropertyFlags::CORRELATION_ID, Layout::ShortStr),
    (PropertyFlags::REPLY_TO, Layout::ShortStr),
    (PropertyFlags::EXPIRATION, Layout::ShortStr),
    (PropertyFlags::MESSAGE_ID, Layout::ShortStr),
    (PropertyFlags::TIMESTAMP, Layout::LongLong),
    (PropertyFlags::TYPE, Layout::ShortStr),
    (PropertyFlags::USER_ID, Layout::ShortStr),
    (PropertyFlags::APP_ID, Layout::ShortStr),
    (PropertyFlags::CLUSTER_ID, Layout::ShortStr),
];

/// The property flags and values of a content header, exactly as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawProperties {
    bytes: Bytes,
}

impl Default for RawProperties {
    fn default() -> Self {
        Self {
            bytes: Bytes::from_static(&[0, 0]),
        }
    }
}

impl RawProperties {
    /// Wraps property bytes after checking that every present field fits.
    pub fn new(bytes: Bytes) -> Result<Self, CodecError> {
        let props = Self { bytes };
        props.walk(0).ok_or(CodecError::MalformedHeader)?;
        Ok(props)
    }

    /// Encodes a parsed property set (used when the broker rewrites headers).
    pub fn from_properties(properties: &BasicProperties) -> Self {
        let buf = Vec::with_capacity(64);
        let bytes = match gen_properties(properties)(buf.into()) {
            Ok(ctx) => ctx.into_inner().0,
            // Writing into a Vec cannot run out of room.
            Err(_) => vec![0, 0],
        };
        Self {
            bytes: Bytes::from(bytes),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The same bytes, shared (a reference count, not a copy).
    pub fn to_bytes(&self) -> Bytes {
        self.bytes.clone()
    }

    pub fn flags(&self) -> u16 {
        u16::from_be_bytes([self.bytes[0], self.bytes[1]])
    }

    /// Parses every property (allocates: not for the per-message path).
    pub fn parse(&self) -> Result<BasicProperties, CodecError> {
        match parse_properties(&self.bytes[..]) {
            Ok((_, props)) => Ok(props),
            Err(_) => Err(CodecError::MalformedHeader),
        }
    }

    pub fn delivery_mode(&self) -> Option<u8> {
        self.field(PropertyFlags::DELIVERY_MODE).map(|s| s[0])
    }

    pub fn priority(&self) -> Option<u8> {
        self.field(PropertyFlags::PRIORITY).map(|s| s[0])
    }

    /// The `expiration` property's text (milliseconds, as a decimal string).
    pub fn expiration(&self) -> Option<&[u8]> {
        self.field(PropertyFlags::EXPIRATION).map(|s| &s[1..])
    }

    /// The `user_id` property's text.
    pub fn user_id(&self) -> Option<&[u8]> {
        self.field(PropertyFlags::USER_ID).map(|s| &s[1..])
    }

    /// The `headers` table, parsed.
    pub fn headers(&self) -> Option<FieldTable> {
        let raw = self.field(PropertyFlags::HEADERS)?;
        parse_field_table(raw).ok().map(|(_, table)| table)
    }

    /// The bytes of one present field, including its length prefix for strings and tables.
    fn field(&self, flag: u16) -> Option<&[u8]> {
        if self.flags() & flag == 0 {
            return None;
        }
        let (start, end) = self.walk(flag)?;
        Some(&self.bytes[start..end])
    }

    /// Walks the present fields in order; returns the span of `target` (or of the end when
    /// `target` is 0), or `None` when a field runs past the end.
    fn walk(&self, target: u16) -> Option<(usize, usize)> {
        let b = &self.bytes[..];
        if b.len() < 2 {
            return None;
        }
        let flags = u16::from_be_bytes([b[0], b[1]]);
        if flags & 0b11 != 0 {
            // Bit 0 would announce a second flag word; basic has only 14 properties.
            return None;
        }
        let mut pos = 2usize;
        for (flag, layout) in LAYOUT {
            if flags & flag == 0 {
                continue;
            }
            let len = match layout {
                Layout::Octet => 1,
                Layout::LongLong => 8,
                Layout::ShortStr => 1 + usize::from(*b.get(pos)?),
                Layout::Table => {
                    let l = b.get(pos..pos + 4)?;
                    4 + u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize
                }
            };
            let end = pos.checked_add(len)?;
            if end > b.len() {
                return None;
            }
            if flag == target {
                return Some((pos, end));
            }
            pos = end;
        }
        (target == 0 && pos == b.len()).then_some((pos, pos))
    }
}
