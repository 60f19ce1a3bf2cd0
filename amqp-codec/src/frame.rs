//! Frame splitting: the 7-byte envelope, payload, and the frame-end octet.
//!
//! "Incomplete" is the normal state of a streaming buffer, not an error: [`FrameDecoder::decode`]
//! returns `Ok(None)` until a whole frame is buffered, and never consumes a partial one.

use bytes::{Buf, Bytes, BytesMut};
use nom::number::streaming::{be_u8, be_u16, be_u32};

use crate::error::CodecError;
use crate::method::Method;
use crate::properties::RawProperties;

/// Type, channel and payload size.
pub const FRAME_HEADER_SIZE: usize = 7;
/// The octet every frame ends with.
pub const FRAME_END: u8 = 0xCE;
/// The smallest `frame_max` a peer may negotiate, and the limit before tuning.
pub const FRAME_MIN_SIZE: u32 = 4096;
/// `AMQP 0 0 9 1`.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

/// Largest buffer growth made for an announced frame before its bytes arrive.
const MAX_RESERVE_STEP: usize = 1 << 20;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Method { channel: u16, method: Method },
    Header { channel: u16, header: ContentHeader },
    Body { channel: u16, payload: Bytes },
    Heartbeat { channel: u16 },
}

impl Frame {
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method { channel, .. }
            | Frame::Header { channel, .. }
            | Frame::Body { channel, .. }
            | Frame::Heartbeat { channel } => *channel,
        }
    }
}

/// A content header frame: the body size that follows, and the properties as raw bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    pub class_id: u16,
    pub body_size: u64,
    pub properties: RawProperties,
}

/// Outcome of reading the 8 bytes a client opens with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolHeaderCheck {
    /// Fewer than 8 bytes buffered.
    Incomplete,
    /// `AMQP 0 0 9 1`: consumed from the buffer.
    Accepted,
    /// Anything else: the server answers with its own header and closes.
    Rejected,
}

/// Checks (and on success consumes) the protocol header at the start of `buf`.
pub fn check_protocol_header(buf: &mut BytesMut) -> ProtocolHeaderCheck {
    let n = buf.len().min(PROTOCOL_HEADER.len());
    if buf[..n] != PROTOCOL_HEADER[..n] {
        return ProtocolHeaderCheck::Rejected;
    }
    if n < PROTOCOL_HEADER.len() {
        return ProtocolHeaderCheck::Incomplete;
    }
    buf.advance(PROTOCOL_HEADER.len());
    ProtocolHeaderCheck::Accepted
}

/// Splits frames off a read buffer and enforces the negotiated `frame_max`.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    frame_max: u32,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(FRAME_MIN_SIZE)
    }
}

impl FrameDecoder {
    /// `frame_max` counts the whole frame, envelope and end octet included; 0 means no limit
    /// beyond the 32-bit size field.
    pub fn new(frame_max: u32) -> Self {
        Self { frame_max }
    }

    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    pub fn set_frame_max(&mut self, frame_max: u32) {
        self.frame_max = frame_max;
    }

    /// Decodes the next whole frame from `buf`, or returns `Ok(None)` if it is not all there.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let (frame_type, channel, size) = match parse_envelope(buf) {
            Ok((_, envelope)) => envelope,
            Err(nom::Err::Incomplete(_)) => return Ok(None),
            Err(_) => return Ok(None),
        };
        let total = FRAME_HEADER_SIZE as u64 + u64::from(size) + 1;
        if self.frame_max != 0 && total > u64::from(self.frame_max) {
            return Err(CodecError::FrameTooLarge {
                size: total,
                frame_max: self.frame_max,
            });
        }
        if !matches!(
            frame_type,
            FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
        ) {
            return Err(CodecError::UnknownFrameType { frame_type });
        }
        let total = total as usize;
        if buf.len() < total {
            // Reserve for the announced frame, but never more than a bounded step on the
            // peer's word alone: a huge announced size grows the buffer only as data arrives.
            let want = total.min(buf.len() + MAX_RESERVE_STEP);
            buf.reserve(want - buf.len());
            return Ok(None);
        }
        let found = buf[total - 1];
        if found != FRAME_END {
            return Err(CodecError::BadFrameEnd { found });
        }
        let mut frame = buf.split_to(total);
        frame.advance(FRAME_HEADER_SIZE);
        frame.truncate(size as usize);
        let payload = frame.freeze();
        let frame = match frame_type {
            FRAME_METHOD => Frame::Method {
                channel,
                method: Method::decode(&payload)?,
            },
            FRAME_HEADER => Frame::Header {
                channel,
                header: decode_content_header(payload)?,
            },
            FRAME_BODY => Frame::Body { channel, payload },
            _ => Frame::Heartbeat { channel },
        };
        Ok(Some(frame))
    }
}

fn parse_envelope(i: &[u8]) -> nom::IResult<&[u8], (u8, u16, u32)> {
    let (i, frame_type) = be_u8(i)?;
    let (i, channel) = be_u16(i)?;
    let (i, size) = be_u32(i)?;
    Ok((i, (frame_type, channel, size)))
}

/// class-id, weight, body-size, then the property flags and values.
fn decode_content_header(payload: Bytes) -> Result<ContentHeader, CodecError> {
    if payload.len() < 14 {
        return Err(CodecError::MalformedHeader);
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let mut size = [0u8; 8];
    size.copy_from_slice(&payload[4..12]);
    let properties = RawProperties::new(payload.slice(12..))?;
    Ok(ContentHeader {
        class_id,
        body_size: u64::from_be_bytes(size),
        properties,
    })
}
