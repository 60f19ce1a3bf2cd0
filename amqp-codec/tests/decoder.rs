//! `FrameDecoder::decode` on a streaming buffer: incomplete input, several frames per read,
//! the protocol errors each malformed frame provokes, and zero-copy bodies.

use amqp_codec::protocol::{basic, queue};
use amqp_codec::{
    AMQPClass, CodecError, FRAME_END, Frame, FrameDecoder, Method, ProtocolHeaderCheck,
    RawProperties, check_protocol_header, encode,
};
use bytes::{BufMut, BytesMut};

/// A frame written by hand: type, channel, payload and the given end octet.
fn raw_frame(frame_type: u8, channel: u16, payload: &[u8], end: u8) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(frame_type);
    b.put_u16(channel);
    b.put_u32(payload.len() as u32);
    b.extend_from_slice(payload);
    b.put_u8(end);
    b
}

fn method_payload(class_id: u16, method_id: u16, args: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&class_id.to_be_bytes());
    p.extend_from_slice(&method_id.to_be_bytes());
    p.extend_from_slice(args);
    p
}

fn decode_one(bytes: &[u8]) -> Result<Option<Frame>, CodecError> {
    FrameDecoder::new(131_072).decode(&mut BytesMut::from(bytes))
}

fn decode_err(bytes: &[u8]) -> CodecError {
    match decode_one(bytes) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// One frame of each type, encoded.
fn sample_frames() -> Vec<BytesMut> {
    let mut publish = BytesMut::new();
    encode::publish(&mut publish, 1, b"amq.topic", b"a.b.c", true);
    let mut content = BytesMut::new();
    encode::content(&mut content, 1, &RawProperties::default(), b"hello", 4096);
    let header_len = content.len() - (7 + 5 + 1);
    let body = content.split_off(header_len);
    let mut heartbeat = BytesMut::new();
    encode::heartbeat(&mut heartbeat);
    let mut other = BytesMut::new();
    encode::method(
        &mut other,
        3,
        &AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 10,
            global: false,
        })),
    );
    vec![publish, content, body, heartbeat, other]
}

#[test]
fn each_frame_fed_one_byte_at_a_time_decodes_exactly_once_at_the_end() {
    let decoder = FrameDecoder::default();
    for frame in sample_frames() {
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for (i, byte) in frame.iter().enumerate() {
            buf.put_u8(*byte);
            let before = buf.len();
            match decoder.decode(&mut buf).unwrap() {
                Some(f) => decoded.push((i, f)),
                None => assert_eq!(buf.len(), before, "an incomplete frame is not consumed"),
            }
        }
        assert_eq!(decoded.len(), 1, "frame {frame:?}");
        assert_eq!(decoded[0].0, frame.len() - 1, "decoded only once complete");
        assert!(buf.is_empty());
        assert_eq!(decoder.decode(&mut buf), Ok(None));
    }
}

#[test]
fn several_frames_in_one_buffer_decode_in_order_and_leave_a_partial_one() {
    let frames = sample_frames();
    let mut buf = BytesMut::new();
    for f in &frames {
        buf.extend_from_slice(f);
    }
    let partial = &frames[0][..10];
    buf.extend_from_slice(partial);

    let decoder = FrameDecoder::default();
    let mut decoded = Vec::new();
    while let Some(frame) = decoder.decode(&mut buf).unwrap() {
        decoded.push(frame);
    }
    assert_eq!(decoded.len(), frames.len());
    assert!(matches!(
        &decoded[0],
        Frame::Method { channel: 1, method: Method::Publish(p) }
            if &p.exchange[..] == b"amq.topic" && &p.routing_key[..] == b"a.b.c" && p.mandatory
    ));
    assert!(matches!(
        &decoded[1],
        Frame::Header { channel: 1, header } if header.body_size == 5 && header.class_id == 60
    ));
    assert!(matches!(&decoded[2], Frame::Body { channel: 1, payload } if &payload[..] == b"hello"));
    assert_eq!(decoded[3], Frame::Heartbeat { channel: 0 });
    assert_eq!(decoded[4].channel(), 3);
    assert_eq!(&buf[..], partial, "the partial frame stays buffered");
}

#[test]
fn empty_buffer_and_partial_envelope_are_incomplete() {
    let decoder = FrameDecoder::default();
    assert_eq!(decoder.decode(&mut BytesMut::new()), Ok(None));
    let mut buf = BytesMut::from(&[1u8, 0, 1, 0, 0][..]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert_eq!(buf.len(), 5);
}

#[test]
fn bad_frame_end_octet_is_a_frame_error() {
    let mut good = BytesMut::new();
    encode::ack(&mut good, 1, 7, false);
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] = 0xAB;
    let err = decode_err(&bad);
    assert_eq!(err, CodecError::BadFrameEnd { found: 0xAB });
    assert_eq!(err.reply_code(), 501);
    assert_eq!(err.method_ids(), (0, 0));
    // A body frame with a bad end too: the end octet is checked for every type.
    let err = decode_err(&raw_frame(3, 1, b"data", 0x00));
    assert_eq!(err, CodecError::BadFrameEnd { found: 0 });
}

#[test]
fn bad_frame_end_is_only_reported_once_the_whole_frame_is_there() {
    let frame = raw_frame(3, 1, b"data", 0x00);
    assert_eq!(decode_one(&frame[..frame.len() - 1]), Ok(None));
}

#[test]
fn frame_larger_than_frame_max_is_rejected_from_its_envelope_alone() {
    let decoder = FrameDecoder::new(4096);
    // Payload 4089 -> 4097 bytes in all: one byte over. Only the 7-byte envelope is buffered.
    let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 0, 0x0F, 0xF9][..]);
    let err = decoder.decode(&mut buf).unwrap_err();
    assert_eq!(
        err,
        CodecError::FrameTooLarge {
            size: 4097,
            frame_max: 4096
        }
    );
    assert_eq!(err.reply_code(), 501);
}

#[test]
fn frame_of_exactly_frame_max_is_accepted() {
    let decoder = FrameDecoder::new(4096);
    let payload = vec![7u8; 4096 - 8];
    let mut buf = raw_frame(3, 1, &payload, FRAME_END);
    assert_eq!(buf.len(), 4096);
    let frame = decoder.decode(&mut buf).unwrap().unwrap();
    assert!(matches!(frame, Frame::Body { payload: p, .. } if p.len() == 4088));
}

#[test]
fn frame_max_zero_means_no_limit() {
    let decoder = FrameDecoder::new(0);
    let payload = vec![1u8; 200_000];
    let mut buf = raw_frame(3, 1, &payload, FRAME_END);
    let frame = decoder.decode(&mut buf).unwrap().unwrap();
    assert!(matches!(frame, Frame::Body { payload: p, .. } if p.len() == 200_000));
}

#[test]
fn set_frame_max_applies_to_the_next_frame() {
    let mut decoder = FrameDecoder::new(0);
    let payload = vec![1u8; 5000];
    let frame = raw_frame(3, 1, &payload, FRAME_END);
    assert!(decoder.decode(&mut frame.clone()).unwrap().is_some());
    decoder.set_frame_max(4096);
    assert_eq!(decoder.frame_max(), 4096);
    assert!(matches!(
        decoder.decode(&mut frame.clone()),
        Err(CodecError::FrameTooLarge { .. })
    ));
}

#[test]
fn unknown_frame_type_is_a_frame_error() {
    for frame_type in [0u8, 4, 7, 9, 0x41, 0xFF] {
        let err = decode_err(&raw_frame(frame_type, 0, b"", FRAME_END));
        assert_eq!(err, CodecError::UnknownFrameType { frame_type });
        assert_eq!(err.reply_code(), 501);
    }
}

#[test]
fn unknown_frame_type_is_reported_before_the_frame_is_complete() {
    // "AMQP" arriving where a frame is expected (a client re-sending its header, say).
    // Its size field reads as 0x50000009, so frame_max rejects it first; either way it is a
    // frame error, decided from the envelope alone.
    let err = decode_err(b"AMQP\x00\x00\x09");
    assert_eq!(err.reply_code(), 501);
    let err = FrameDecoder::new(0).decode(&mut BytesMut::from(&b"AMQP\x00\x00\x09"[..]));
    assert_eq!(err, Err(CodecError::UnknownFrameType { frame_type: b'A' }));
}

#[test]
fn unknown_method_is_not_implemented() {
    for (class_id, method_id) in [(60, 999), (99, 10), (10, 12), (0, 0)] {
        let payload = method_payload(class_id, method_id, &[0, 0, 0, 0]);
        let err = decode_err(&raw_frame(1, 1, &payload, FRAME_END));
        assert_eq!(
            err,
            CodecError::UnknownMethod {
                class_id,
                method_id
            }
        );
        assert_eq!(err.reply_code(), 540);
        assert_eq!(err.method_ids(), (class_id, method_id));
    }
}

#[test]
fn truncated_publish_is_a_syntax_error() {
    let mut publish = BytesMut::new();
    encode::publish(&mut publish, 1, b"ex", b"rk", false);
    // Drop the flags octet: payload is everything between envelope and end octet.
    let payload = &publish[7..publish.len() - 2];
    let err = decode_err(&raw_frame(1, 1, payload, FRAME_END));
    assert_eq!(
        err,
        CodecError::MalformedMethod {
            class_id: 60,
            method_id: 40
        }
    );
    assert_eq!(err.reply_code(), 502);
    assert_eq!(err.method_ids(), (60, 40));
}

#[test]
fn short_string_running_past_the_payload_is_a_syntax_error() {
    // basic.deliver whose consumer tag claims 200 bytes.
    let payload = method_payload(60, 60, &[200, b'x']);
    let err = decode_err(&raw_frame(1, 1, &payload, FRAME_END));
    assert_eq!(err.reply_code(), 502);
    assert_eq!(err.method_ids(), (60, 60));
}

#[test]
fn trailing_bytes_after_a_method_are_a_syntax_error() {
    let mut ack = BytesMut::new();
    encode::ack(&mut ack, 1, 5, true);
    let mut payload = ack[7..ack.len() - 1].to_vec();
    payload.push(0);
    let err = decode_err(&raw_frame(1, 1, &payload, FRAME_END));
    assert_eq!(
        err,
        CodecError::MalformedMethod {
            class_id: 60,
            method_id: 80
        }
    );
}

#[test]
fn malformed_method_decoded_by_amq_protocol_is_a_syntax_error() {
    // queue.declare cut after the reserved short.
    let payload = method_payload(50, 10, &[0, 0]);
    let err = decode_err(&raw_frame(1, 1, &payload, FRAME_END));
    assert_eq!(
        err,
        CodecError::MalformedMethod {
            class_id: 50,
            method_id: 10
        }
    );
    assert_eq!(err.reply_code(), 502);
}

#[test]
fn method_payload_shorter_than_its_ids_is_a_syntax_error() {
    let err = decode_err(&raw_frame(1, 1, &[0, 60, 0], FRAME_END));
    assert_eq!(err.reply_code(), 502);
}

#[test]
fn content_header_too_short_or_with_overrunning_properties_is_a_frame_error() {
    let err = decode_err(&raw_frame(
        2,
        1,
        &[0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0],
        FRAME_END,
    ));
    assert_eq!(err, CodecError::MalformedHeader);
    assert_eq!(err.reply_code(), 501);
    // Flags announce content-type, but no bytes follow.
    let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
    payload.extend_from_slice(&0x8000u16.to_be_bytes());
    assert_eq!(
        decode_err(&raw_frame(2, 1, &payload, FRAME_END)),
        CodecError::MalformedHeader
    );
    // A continuation flag word (bit 0) is not valid for basic.
    let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
    payload.extend_from_slice(&0x0001u16.to_be_bytes());
    assert_eq!(
        decode_err(&raw_frame(2, 1, &payload, FRAME_END)),
        CodecError::MalformedHeader
    );
}

#[test]
fn body_payload_shares_memory_with_the_read_buffer() {
    let body: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let mut buf = BytesMut::with_capacity(8192);
    encode::content(&mut buf, 1, &RawProperties::default(), &body, 131_072);
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let decoder = FrameDecoder::new(131_072);
    let header = decoder.decode(&mut buf).unwrap().unwrap();
    let Frame::Header { header, .. } = header else {
        panic!("expected a header frame");
    };
    let props = header.properties.as_bytes().as_ptr() as usize;
    assert!(
        (start..end).contains(&props),
        "properties are a slice of the buffer"
    );
    let Some(Frame::Body { payload, .. }) = decoder.decode(&mut buf).unwrap() else {
        panic!("expected a body frame");
    };
    assert_eq!(&payload[..], &body[..]);
    let p_start = payload.as_ptr() as usize;
    let p_end = p_start + payload.len();
    assert!(
        start <= p_start && p_end <= end,
        "body is a slice of the read buffer, not a copy"
    );
}

#[test]
fn publish_names_are_slices_of_the_read_buffer() {
    let mut buf = BytesMut::new();
    encode::publish(&mut buf, 1, b"exchange-name", b"routing.key", false);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Some(Frame::Method {
        method: Method::Publish(p),
        ..
    }) = FrameDecoder::default().decode(&mut buf).unwrap()
    else {
        panic!("expected basic.publish");
    };
    assert!(range.contains(&(p.exchange.as_ptr() as usize)));
    assert!(range.contains(&(p.routing_key.as_ptr() as usize)));
}

#[test]
fn methods_other_than_the_per_message_ones_decode_through_amq_protocol() {
    let declare = AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
        queue: "orders".into(),
        durable: true,
        ..Default::default()
    }));
    let mut buf = BytesMut::new();
    encode::method(&mut buf, 9, &declare);
    let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
    assert_eq!(
        frame,
        Frame::Method {
            channel: 9,
            method: Method::Other(declare)
        }
    );
}

#[test]
fn protocol_header_is_accepted_incomplete_or_rejected() {
    let mut buf = BytesMut::from(&b"AMQP\x00\x00\x09\x01rest"[..]);
    assert_eq!(
        check_protocol_header(&mut buf),
        ProtocolHeaderCheck::Accepted
    );
    assert_eq!(&buf[..], b"rest");
    let mut buf = BytesMut::from(&b"AMQP\x00"[..]);
    assert_eq!(
        check_protocol_header(&mut buf),
        ProtocolHeaderCheck::Incomplete
    );
    assert_eq!(buf.len(), 5);
    let mut buf = BytesMut::from(&b"AMQP\x00\x00\x08\x00"[..]);
    assert_eq!(
        check_protocol_header(&mut buf),
        ProtocolHeaderCheck::Rejected
    );
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1"[..]);
    assert_eq!(
        check_protocol_header(&mut buf),
        ProtocolHeaderCheck::Rejected
    );
    let mut buf = BytesMut::from(&b"AMQX"[..]);
    assert_eq!(
        check_protocol_header(&mut buf),
        ProtocolHeaderCheck::Rejected
    );
}
