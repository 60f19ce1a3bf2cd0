//! Keys and values as bytes on disk.
//!
//! Integers in keys are big-endian so that a queue's entries scan in sequence order. Values use a
//! small length-prefixed layout with a leading format byte; decoding checks every length, so a
//! damaged record is a `StorageError::Corrupt`, never a panic.
//!
//! | keyspace      | key                                   | value                                  |
//! |---------------|---------------------------------------|----------------------------------------|
//! | `meta`        | kind (u8) ++ opaque key               | opaque value                           |
//! | `messages`    | message id (u64 BE)                   | 1 ++ (u32 BE len ++ bytes) x 3 ++ body |
//! | `queue_index` | queue id (u64 BE) ++ seq (u64 BE)     | header: message id u64, delivery count u32, flags u8, size u32, expires-at u64 (BE); then, for an inline message, its `messages` value |
//!
//! An index value longer than its header holds its message ([`crate::Placement::Inline`]); a
//! bare header refers to a `messages` record by id. Format 2 stores held every message in
//! `messages`; `recovery` moves them into their entries when it opens one.
//!
//! The clean-shutdown record (`meta`, internal kind, `c`): format u8, next message id u64,
//! queue count u32, then per queue id, first, count, bytes, next (u64 each), then multi-
//! reference count u32 and per message id u64 ++ references u32 (all BE).

use std::collections::HashMap;

use bytes::Bytes;

use crate::recovery::Contents;
use crate::{
    IndexEntry, MessageId, MetaKind, QueueId, QueueStats, Seq, StorageError, StoredMessage,
};

const MESSAGE_FORMAT: u8 = 1;
const FLAG_DELIVERED: u8 = 1;
/// The entry exists only to keep a transient message's body out of memory; dropped at open.
const FLAG_TRANSIENT: u8 = 0b10;
pub(crate) const INDEX_KEY_LEN: usize = 16;
pub(crate) const INDEX_VALUE_LEN: usize = 25;

/// Meta kind byte for the store's own records (format version, message id ceiling).
const INTERNAL_KIND: u8 = 0xFF;
pub(crate) const FORMAT_KEY: &[u8] = &[INTERNAL_KIND, b'f'];
pub(crate) const ID_CEILING_KEY: &[u8] = &[INTERNAL_KIND, b'i'];
/// Written by `Store::close`, deleted by the next open; see `recovery`.
pub(crate) const CLEAN_SHUTDOWN_KEY: &[u8] = &[INTERNAL_KIND, b'c'];
const CLEAN_SHUTDOWN_FORMAT: u8 = 1;
pub(crate) const STORE_FORMAT: u8 = 3;
/// The format before inline messages, which `recovery` converts.
pub(crate) const STORE_FORMAT_SEPARATE_ONLY: u8 = 2;

pub(crate) fn meta_kind_byte(kind: MetaKind) -> u8 {
    match kind {
        MetaKind::Vhost => 1,
        MetaKind::User => 2,
        MetaKind::Exchange => 3,
        MetaKind::Queue => 4,
        MetaKind::Binding => 5,
    }
}

pub(crate) fn meta_key(kind: MetaKind, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key.len());
    out.push(meta_kind_byte(kind));
    out.extend_from_slice(key);
    out
}

pub(crate) fn message_key(id: MessageId) -> [u8; 8] {
    id.to_be_bytes()
}

pub(crate) fn decode_message_key(key: &[u8]) -> Result<MessageId, StorageError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StorageError::corrupt(format!("message key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

pub(crate) fn index_key(queue: QueueId, seq: Seq) -> [u8; INDEX_KEY_LEN] {
    let mut out = [0; INDEX_KEY_LEN];
    out[..8].copy_from_slice(&queue.to_be_bytes());
    out[8..].copy_from_slice(&seq.to_be_bytes());
    out
}

pub(crate) fn queue_prefix(queue: QueueId) -> [u8; 8] {
    queue.to_be_bytes()
}

pub(crate) fn decode_index_key(key: &[u8]) -> Result<(QueueId, Seq), StorageError> {
    if key.len() != INDEX_KEY_LEN {
        return Err(StorageError::corrupt(format!(
            "queue index key of {} bytes",
            key.len()
        )));
    }
    Ok((be_u64(&key[..8])?, be_u64(&key[8..])?))
}

pub(crate) fn encode_index_value(entry: &IndexEntry) -> [u8; INDEX_VALUE_LEN] {
    let mut out = [0; INDEX_VALUE_LEN];
    out[..8].copy_from_slice(&entry.message_id.to_be_bytes());
    out[8..12].copy_from_slice(&entry.delivery_count.to_be_bytes());
    out[12] =
        (u8::from(entry.delivered) * FLAG_DELIVERED) | (u8::from(entry.transient) * FLAG_TRANSIENT);
    out[13..17].copy_from_slice(&entry.size.to_be_bytes());
    out[17..].copy_from_slice(&entry.expires_at.to_be_bytes());
    out
}

/// An index value with `message` stored inside it.
pub(crate) fn encode_inline_entry(
    header: &[u8; INDEX_VALUE_LEN],
    message: &StoredMessage,
) -> fjall::Slice {
    message_value(header, message)
}

/// An index value whose inline message is already encoded (`tail`, as read back); `header`
/// is an encoded index value without a message.
pub(crate) fn encode_entry_with_tail(header: &[u8], tail: &[u8]) -> fjall::Slice {
    slice_of(&[header, tail])
}

/// The encoded inline message of an index value, if it has one.
pub(crate) fn index_value_tail(value: &[u8]) -> Option<&[u8]> {
    value.get(INDEX_VALUE_LEN..).filter(|tail| !tail.is_empty())
}

/// The inline message of an index value (`None`: the entry refers to a separate message).
pub(crate) fn decode_inline_message(
    id: MessageId,
    value: &[u8],
) -> Result<Option<StoredMessage>, StorageError> {
    index_value_tail(value)
        .map(|tail| decode_message(id, tail))
        .transpose()
}

pub(crate) fn decode_index_value(seq: Seq, value: &[u8]) -> Result<IndexEntry, StorageError> {
    if value.len() < INDEX_VALUE_LEN {
        return Err(StorageError::corrupt(format!(
            "queue index value of {} bytes (expected at least {INDEX_VALUE_LEN})",
            value.len()
        )));
    }
    let value = &value[..INDEX_VALUE_LEN];
    Ok(IndexEntry {
        seq,
        message_id: be_u64(&value[..8])?,
        delivery_count: be_u32(&value[8..12])?,
        delivered: value[12] & FLAG_DELIVERED != 0,
        transient: value[12] & FLAG_TRANSIENT != 0,
        size: be_u32(&value[13..17])?,
        expires_at: be_u64(&value[17..])?,
    })
}

/// Whether an index value is a transient entry (written only to page a body out of memory).
pub(crate) fn index_value_is_transient(value: &[u8]) -> bool {
    value
        .get(12)
        .is_some_and(|flags| flags & FLAG_TRANSIENT != 0)
}

/// Just the message id of an index value (recovery and GC never need the rest).
pub(crate) fn index_value_message_id(value: &[u8]) -> Result<MessageId, StorageError> {
    match value.get(..8) {
        Some(id) if value.len() >= INDEX_VALUE_LEN => be_u64(id),
        _ => Err(StorageError::corrupt(format!(
            "queue index value of {} bytes (expected at least {INDEX_VALUE_LEN})",
            value.len()
        ))),
    }
}

/// Just the body size of an index value.
pub(crate) fn index_value_size(value: &[u8]) -> Result<u32, StorageError> {
    match value.get(13..17) {
        Some(size) if value.len() >= INDEX_VALUE_LEN => be_u32(size),
        _ => Err(StorageError::corrupt(format!(
            "queue index value of {} bytes (expected at least {INDEX_VALUE_LEN})",
            value.len()
        ))),
    }
}

pub(crate) fn encode_clean_shutdown(contents: &Contents) -> Vec<u8> {
    let mut queues: Vec<_> = contents.queues.iter().collect();
    queues.sort_unstable_by_key(|(id, _)| **id);
    let mut multi: Vec<_> = contents.multi_refs.iter().collect();
    multi.sort_unstable_by_key(|(id, _)| **id);
    let mut out = Vec::with_capacity(17 + queues.len() * 40 + multi.len() * 12);
    out.push(CLEAN_SHUTDOWN_FORMAT);
    out.extend_from_slice(&contents.next_id.to_be_bytes());
    // Queue ids and multi-reference counts are far below 4 G entries.
    out.extend_from_slice(&(queues.len() as u32).to_be_bytes());
    for (id, stats) in queues {
        for field in [*id, stats.first, stats.count, stats.bytes, stats.next] {
            out.extend_from_slice(&field.to_be_bytes());
        }
    }
    out.extend_from_slice(&(multi.len() as u32).to_be_bytes());
    for (id, count) in multi {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&count.to_be_bytes());
    }
    out
}

pub(crate) fn decode_clean_shutdown(value: &[u8]) -> Result<Contents, StorageError> {
    let corrupt = |why: &str| StorageError::corrupt(format!("clean-shutdown record: {why}"));
    let mut rest = value;
    let mut take = |n: usize| -> Result<&[u8], StorageError> {
        let (head, tail) = rest
            .split_at_checked(n)
            .ok_or_else(|| corrupt("truncated"))?;
        rest = tail;
        Ok(head)
    };
    if take(1)? != [CLEAN_SHUTDOWN_FORMAT] {
        return Err(corrupt("unknown format"));
    }
    let next_id = be_u64(take(8)?)?;
    let queue_count = be_u32(take(4)?)?;
    let mut queues = HashMap::new();
    for _ in 0..queue_count {
        let id = be_u64(take(8)?)?;
        let stats = QueueStats {
            first: be_u64(take(8)?)?,
            count: be_u64(take(8)?)?,
            bytes: be_u64(take(8)?)?,
            next: be_u64(take(8)?)?,
        };
        queues.insert(id, stats);
    }
    let multi_count = be_u32(take(4)?)?;
    let mut multi_refs = HashMap::new();
    for _ in 0..multi_count {
        let id = be_u64(take(8)?)?;
        multi_refs.insert(id, be_u32(take(4)?)?);
    }
    if !rest.is_empty() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(Contents {
        queues,
        multi_refs,
        next_id,
    })
}

pub(crate) fn encode_message(message: &StoredMessage) -> fjall::Slice {
    message_value(&[], message)
}

/// `prefix` followed by the encoded message, in the one allocation the engine keeps (an
/// encoded `Vec` would be copied again into the engine's own buffer).
fn message_value(prefix: &[u8], message: &StoredMessage) -> fjall::Slice {
    // AMQP bounds these far below 4 GiB (shortstr names, a frame's property list).
    let len = |field: &Bytes| (field.len() as u32).to_be_bytes();
    let lengths = [
        len(&message.exchange),
        len(&message.routing_key),
        len(&message.properties),
    ];
    slice_of(&[
        prefix,
        &[MESSAGE_FORMAT],
        &lengths[0],
        &message.exchange,
        &lengths[1],
        &message.routing_key,
        &lengths[2],
        &message.properties,
        &message.body,
    ])
}

/// The concatenation of `parts` as one engine value.
fn slice_of(parts: &[&[u8]]) -> fjall::Slice {
    let len = parts.iter().map(|part| part.len()).sum();
    let mut reader = Parts { parts, at: 0 };
    match fjall::Slice::from_reader(&mut reader, len) {
        Ok(slice) => slice,
        // Unreachable: `Parts` yields exactly `len` bytes and reading memory cannot fail.
        Err(_) => fjall::Slice::from(parts.concat()),
    }
}

/// Reads a list of byte slices one after another.
struct Parts<'a> {
    parts: &'a [&'a [u8]],
    at: usize,
}

impl std::io::Read for Parts<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let mut written = 0;
        while written < out.len() {
            let Some((first, rest)) = self.parts.split_first() else {
                break;
            };
            let part = &first[self.at..];
            let n = part.len().min(out.len() - written);
            out[written..written + n].copy_from_slice(&part[..n]);
            written += n;
            self.at += n;
            if self.at == first.len() {
                self.parts = rest;
                self.at = 0;
            }
        }
        Ok(written)
    }
}

pub(crate) fn decode_message(id: MessageId, value: &[u8]) -> Result<StoredMessage, StorageError> {
    let corrupt = |why: &str| StorageError::corrupt(format!("message {id}: {why}"));
    let Some((&format, mut rest)) = value.split_first() else {
        return Err(corrupt("empty record"));
    };
    if format != MESSAGE_FORMAT {
        return Err(corrupt(&format!("unknown record format {format}")));
    }
    // One copy out of the engine's buffer; the four fields are slices of it.
    let all = Bytes::copy_from_slice(value);
    let mut fields = [Bytes::new(), Bytes::new(), Bytes::new()];
    for field in &mut fields {
        let (len, tail) = rest
            .split_at_checked(4)
            .ok_or_else(|| corrupt("truncated length"))?;
        let len = be_u32(len)? as usize;
        if tail.len() < len {
            return Err(corrupt("field longer than the record"));
        }
        let start = value.len() - tail.len();
        *field = all.slice(start..start + len);
        rest = &tail[len..];
    }
    let [exchange, routing_key, properties] = fields;
    Ok(StoredMessage {
        exchange,
        routing_key,
        properties,
        body: all.slice(value.len() - rest.len()..),
    })
}

pub(crate) fn be_u64(bytes: &[u8]) -> Result<u64, StorageError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StorageError::corrupt(format!("u64 of {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(arr))
}

fn be_u32(bytes: &[u8]) -> Result<u32, StorageError> {
    let arr: [u8; 4] = bytes
        .try_into()
        .map_err(|_| StorageError::corrupt(format!("u32 of {} bytes", bytes.len())))?;
    Ok(u32::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trips_and_truncation_is_corrupt() {
        let message = StoredMessage {
            exchange: Bytes::from_static(b"amq.direct"),
            routing_key: Bytes::from_static(b"rk"),
            properties: Bytes::from_static(&[0x80, 0, 1]),
            body: Bytes::from_static(b"hello body"),
        };
        let encoded = encode_message(&message);
        assert_eq!(decode_message(7, &encoded).unwrap(), message);
        for cut in 0..encoded.len() - message.body.len() {
            assert!(decode_message(7, &encoded[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn index_entry_round_trips() {
        let entry = IndexEntry {
            seq: 9,
            message_id: u64::MAX - 3,
            delivery_count: 4,
            delivered: true,
            transient: true,
            size: 1234,
            expires_at: 1_700_000_000_123,
        };
        assert_eq!(
            decode_index_value(9, &encode_index_value(&entry)).unwrap(),
            entry
        );
        assert_eq!(decode_index_key(&index_key(3, 9)).unwrap(), (3, 9));
        assert!(decode_index_value(9, &[0; 5]).is_err());
        let header = encode_index_value(&entry);
        assert_eq!(decode_inline_message(9, &header).unwrap(), None);
        let message = StoredMessage {
            exchange: Bytes::from_static(b"x"),
            routing_key: Bytes::from_static(b"k"),
            properties: Bytes::new(),
            body: Bytes::from_static(b"inline"),
        };
        let inline = encode_inline_entry(&header, &message);
        assert_eq!(decode_index_value(9, &inline).unwrap(), entry);
        assert_eq!(index_value_message_id(&inline).unwrap(), entry.message_id);
        assert_eq!(index_value_size(&inline).unwrap(), entry.size);
        assert_eq!(
            decode_inline_message(9, &inline).unwrap(),
            Some(message.clone())
        );
        let tail = index_value_tail(&inline).unwrap();
        assert_eq!(encode_entry_with_tail(&header, tail), inline);
        assert_eq!(&*encode_message(&message), &inline[INDEX_VALUE_LEN..]);
        assert!(decode_inline_message(9, &inline[..INDEX_VALUE_LEN + 3]).is_err());
        assert!(decode_index_key(&[0; 15]).is_err());
    }

    #[test]
    fn clean_shutdown_record_round_trips_and_truncation_is_corrupt() {
        let mut contents = Contents {
            next_id: 77,
            ..Contents::default()
        };
        contents.queues.insert(
            3,
            QueueStats {
                first: 5,
                count: 2,
                bytes: 200,
                next: 9,
            },
        );
        contents.multi_refs.insert(12, 3);
        let encoded = encode_clean_shutdown(&contents);
        assert_eq!(decode_clean_shutdown(&encoded).unwrap(), contents);
        for cut in 0..encoded.len() {
            assert!(
                decode_clean_shutdown(&encoded[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = encoded.clone();
        longer.push(0);
        assert!(decode_clean_shutdown(&longer).is_err());
    }

    #[test]
    fn index_keys_sort_by_queue_then_seq() {
        assert!(index_key(1, u64::MAX) < index_key(2, 0));
        assert!(index_key(1, 255) < index_key(1, 256));
    }
}
