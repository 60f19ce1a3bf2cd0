//! Frame encoding into one `BytesMut`, so a burst of frames costs one socket write.
//!
//! Per-message frames (`basic.publish`, `basic.deliver`, `basic.ack`, content header and body)
//! are written by hand; the rest go through amq-protocol's generator.

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::{AMQPClass, gen_class};
use bytes::{BufMut, BytesMut};

use crate::frame::{FRAME_END, FRAME_HEADER_SIZE, PROTOCOL_HEADER};
use crate::properties::RawProperties;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;

/// `AMQP 0 0 9 1`, sent back to a client whose header we refuse.
pub fn protocol_header(out: &mut BytesMut) {
    out.extend_from_slice(&PROTOCOL_HEADER);
}

pub fn heartbeat(out: &mut BytesMut) {
    out.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Any method, through amq-protocol.
pub fn method(out: &mut BytesMut, channel: u16, class: &AMQPClass) {
    let start = begin_frame(out, FRAME_METHOD, channel);
    let buf = Vec::with_capacity(64);
    match gen_class(class)(WriteContext::from(buf)) {
        Ok(ctx) => out.extend_from_slice(&ctx.into_inner().0),
        // Writing into a Vec cannot run out of room; drop the half-written frame regardless.
        Err(_) => {
            out.truncate(start);
            return;
        }
    }
    end_frame(out, start);
}

/// `basic.publish` (client side: the load generator).
pub fn publish(
    out: &mut BytesMut,
    channel: u16,
    exchange: &[u8],
    routing_key: &[u8],
    mandatory: bool,
) {
    let start = begin_frame(out, FRAME_METHOD, channel);
    out.put_u16(60);
    out.put_u16(40);
    out.put_u16(0);
    short_str(out, exchange);
    short_str(out, routing_key);
    out.put_u8(u8::from(mandatory));
    end_frame(out, start);
}

/// `basic.deliver`.
pub fn deliver(
    out: &mut BytesMut,
    channel: u16,
    consumer_tag: &[u8],
    delivery_tag: u64,
    redelivered: bool,
    exchange: &[u8],
    routing_key: &[u8],
) {
    let start = begin_frame(out, FRAME_METHOD, channel);
    out.put_u16(60);
    out.put_u16(60);
    short_str(out, consumer_tag);
    out.put_u64(delivery_tag);
    out.put_u8(u8::from(redelivered));
    short_str(out, exchange);
    short_str(out, routing_key);
    end_frame(out, start);
}

/// `basic.get-ok`.
pub fn get_ok(
    out: &mut BytesMut,
    channel: u16,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &[u8],
    routing_key: &[u8],
    message_count: u32,
) {
    let start = begin_frame(out, FRAME_METHOD, channel);
    out.put_u16(60);
    out.put_u16(71);
    out.put_u64(delivery_tag);
    out.put_u8(u8::from(redelivered));
    short_str(out, exchange);
    short_str(out, routing_key);
    out.put_u32(message_count);
    end_frame(out, start);
}

/// `basic.ack`: a consumer's ack, or a publisher confirm.
pub fn ack(out: &mut BytesMut, channel: u16, delivery_tag: u64, multiple: bool) {
    ack_or_nack(out, channel, 80, delivery_tag, u8::from(multiple));
}

/// `basic.nack`: a publisher confirm that failed, or a consumer's nack.
pub fn nack(out: &mut BytesMut, channel: u16, delivery_tag: u64, multiple: bool, requeue: bool) {
    let bits = u8::from(multiple) | (u8::from(requeue) << 1);
    ack_or_nack(out, channel, 120, delivery_tag, bits);
}

fn ack_or_nack(out: &mut BytesMut, channel: u16, method_id: u16, tag: u64, bits: u8) {
    out.reserve(FRAME_HEADER_SIZE + 13 + 1);
    out.put_u8(FRAME_METHOD);
    out.put_u16(channel);
    out.put_u32(13);
    out.put_u16(60);
    out.put_u16(method_id);
    out.put_u64(tag);
    out.put_u8(bits);
    out.put_u8(FRAME_END);
}

/// A content header followed by the body, split into frames of at most `frame_max` bytes.
pub fn content(
    out: &mut BytesMut,
    channel: u16,
    properties: &RawProperties,
    body: &[u8],
    frame_max: u32,
) {
    let props = properties.as_bytes();
    out.reserve(FRAME_HEADER_SIZE + 12 + props.len() + 1 + body.len() + 16);
    out.put_u8(FRAME_HEADER);
    out.put_u16(channel);
    out.put_u32((12 + props.len()) as u32);
    out.put_u16(60);
    out.put_u16(0);
    out.put_u64(body.len() as u64);
    out.extend_from_slice(props);
    out.put_u8(FRAME_END);
    let chunk = body_chunk_size(frame_max);
    for part in body.chunks(chunk) {
        out.reserve(FRAME_HEADER_SIZE + part.len() + 1);
        out.put_u8(FRAME_BODY);
        out.put_u16(channel);
        out.put_u32(part.len() as u32);
        out.extend_from_slice(part);
        out.put_u8(FRAME_END);
    }
}

/// Largest body payload per frame under `frame_max` (0 = unlimited).
pub fn body_chunk_size(frame_max: u32) -> usize {
    if frame_max == 0 {
        u32::MAX as usize
    } else {
        (frame_max as usize)
            .saturating_sub(FRAME_HEADER_SIZE + 1)
            .max(1)
    }
}

fn short_str(out: &mut BytesMut, s: &[u8]) {
    // Names are validated to 255 bytes where they enter; truncation here is a last resort.
    let s = &s[..s.len().min(255)];
    out.put_u8(s.len() as u8);
    out.extend_from_slice(s);
}

fn begin_frame(out: &mut BytesMut, frame_type: u8, channel: u16) -> usize {
    let start = out.len();
    out.reserve(64);
    out.put_u8(frame_type);
    out.put_u16(channel);
    out.put_u32(0);
    start
}

fn end_frame(out: &mut BytesMut, start: usize) {
    let size = (out.len() - start - FRAME_HEADER_SIZE) as u32;
    out[start + 3..start + 7].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}
