//! Property tests: what `encode` writes, `FrameDecoder` reads back unchanged, however the byte
//! stream is split; `RawProperties` agrees with amq-protocol's parsed properties.

use amqp_codec::protocol::{basic, channel, queue};
use amqp_codec::types::{ByteArray, DecimalValue, FieldArray};
use amqp_codec::{
    AMQPClass, AMQPValue, BasicProperties, FieldTable, Frame, FrameDecoder, LongString, Method,
    RawProperties, ShortString, encode,
};
use bytes::BytesMut;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;

fn decode_all(decoder: &FrameDecoder, buf: &mut BytesMut) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode(buf).expect("valid frames") {
        frames.push(frame);
    }
    frames
}

fn decode_single(bytes: BytesMut) -> Frame {
    let mut buf = bytes;
    let frames = decode_all(&FrameDecoder::new(0), &mut buf);
    assert!(buf.is_empty(), "all bytes consumed");
    assert_eq!(frames.len(), 1);
    frames.into_iter().next().unwrap()
}

/// Any byte string a short string can hold.
fn short_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=255)
}

/// Text that fits a short string (at most 4 bytes per char).
fn short_text() -> impl Strategy<Value = String> {
    ".{0,40}"
}

fn short_string() -> impl Strategy<Value = ShortString> {
    short_text().prop_map(ShortString::from)
}

fn float32() -> impl Strategy<Value = f32> {
    use proptest::num::f32;
    f32::NORMAL | f32::SUBNORMAL | f32::ZERO | f32::INFINITE | f32::POSITIVE | f32::NEGATIVE
}

fn float64() -> impl Strategy<Value = f64> {
    use proptest::num::f64;
    f64::NORMAL | f64::SUBNORMAL | f64::ZERO | f64::INFINITE | f64::POSITIVE | f64::NEGATIVE
}

/// Every field value type that survives the wire (a short-string *value* has no type tag in
/// RabbitMQ's dialect, so amq-protocol never produces one when parsing).
fn field_value() -> impl Strategy<Value = AMQPValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        float32().prop_map(AMQPValue::Float),
        float64().prop_map(AMQPValue::Double),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| AMQPValue::DecimalValue(DecimalValue { scale, value })),
        vec(any::<u8>(), 0..64).prop_map(|b| AMQPValue::LongString(LongString::from(b))),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        vec(any::<u8>(), 0..32).prop_map(|b| AMQPValue::ByteArray(ByteArray::from(b))),
        Just(AMQPValue::Void),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
            btree_map(short_string(), inner, 0..4)
                .prop_map(|m| AMQPValue::FieldTable(FieldTable::from(m))),
        ]
    })
}

fn field_table() -> impl Strategy<Value = FieldTable> {
    btree_map(short_string(), field_value(), 0..6).prop_map(FieldTable::from)
}

fn properties() -> impl Strategy<Value = BasicProperties> {
    let strings = (
        proptest::option::of(short_string()),
        proptest::option::of(short_string()),
        proptest::option::of(short_string()),
        proptest::option::of(short_string()),
        proptest::option::of(short_string()),
        proptest::option::of(short_string()),
        proptest::option::of(short_string()),
        proptest::option::of(short_string()),
        proptest::option::of(short_string()),
        proptest::option::of(short_string()),
    );
    let others = (
        proptest::option::of(field_table()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u8>()),
        proptest::option::of(any::<u64>()),
    );
    (strings, others).prop_map(|(s, o)| {
        let mut p = BasicProperties::default();
        if let Some(v) = s.0 {
            p = p.with_content_type(v);
        }
        if let Some(v) = s.1 {
            p = p.with_content_encoding(v);
        }
        if let Some(v) = o.0 {
            p = p.with_headers(v);
        }
        if let Some(v) = o.1 {
            p = p.with_delivery_mode(v);
        }
        if let Some(v) = o.2 {
            p = p.with_priority(v);
        }
        if let Some(v) = s.2 {
            p = p.with_correlation_id(v);
        }
        if let Some(v) = s.3 {
            p = p.with_reply_to(v);
        }
        if let Some(v) = s.4 {
            p = p.with_expiration(v);
        }
        if let Some(v) = s.5 {
            p = p.with_message_id(v);
        }
        if let Some(v) = o.3 {
            p = p.with_timestamp(v);
        }
        if let Some(v) = s.6 {
            p = p.with_type(v);
        }
        if let Some(v) = s.7 {
            p = p.with_user_id(v);
        }
        if let Some(v) = s.8 {
            p = p.with_app_id(v);
        }
        if let Some(v) = s.9 {
            p = p.with_cluster_id(v);
        }
        p
    })
}

/// One frame to put on the wire, as the arguments its encoder takes.
#[derive(Debug, Clone)]
enum Out {
    Publish(u16, Vec<u8>, Vec<u8>, bool),
    Deliver(u16, Vec<u8>, u64, bool, Vec<u8>, Vec<u8>),
    Ack(u16, u64, bool),
    Nack(u16, u64, bool, bool),
    Content(u16, Vec<u8>, u32),
    Heartbeat,
}

fn out_frame() -> impl Strategy<Value = Out> {
    prop_oneof![
        (any::<u16>(), short_bytes(), short_bytes(), any::<bool>())
            .prop_map(|(c, e, r, m)| Out::Publish(c, e, r, m)),
        (
            any::<u16>(),
            short_bytes(),
            any::<u64>(),
            any::<bool>(),
            short_bytes(),
            short_bytes()
        )
            .prop_map(|(c, t, d, r, e, k)| Out::Deliver(c, t, d, r, e, k)),
        (any::<u16>(), any::<u64>(), any::<bool>()).prop_map(|(c, d, m)| Out::Ack(c, d, m)),
        (any::<u16>(), any::<u64>(), any::<bool>(), any::<bool>())
            .prop_map(|(c, d, m, r)| Out::Nack(c, d, m, r)),
        (any::<u16>(), vec(any::<u8>(), 0..3000), 4096u32..=8192)
            .prop_map(|(c, b, f)| Out::Content(c, b, f)),
        Just(Out::Heartbeat),
    ]
}

fn write(out: &Out, buf: &mut BytesMut) {
    match out {
        Out::Publish(c, e, r, m) => encode::publish(buf, *c, e, r, *m),
        Out::Deliver(c, t, d, r, e, k) => encode::deliver(buf, *c, t, *d, *r, e, k),
        Out::Ack(c, d, m) => encode::ack(buf, *c, *d, *m),
        Out::Nack(c, d, m, r) => encode::nack(buf, *c, *d, *m, *r),
        Out::Content(c, b, f) => encode::content(buf, *c, &RawProperties::default(), b, *f),
        Out::Heartbeat => encode::heartbeat(buf),
    }
}

fn body_frames(frames: &[Frame]) -> Vec<u8> {
    let mut body = Vec::new();
    for f in frames {
        if let Frame::Body { payload, .. } = f {
            body.extend_from_slice(payload);
        }
    }
    body
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn publish_round_trips(
        ch in any::<u16>(), exchange in short_bytes(), key in short_bytes(), mandatory in any::<bool>()
    ) {
        let mut buf = BytesMut::new();
        encode::publish(&mut buf, ch, &exchange, &key, mandatory);
        let Frame::Method { channel, method: Method::Publish(p) } = decode_single(buf) else {
            panic!("expected basic.publish");
        };
        prop_assert_eq!(channel, ch);
        prop_assert_eq!(&p.exchange[..], &exchange[..]);
        prop_assert_eq!(&p.routing_key[..], &key[..]);
        prop_assert_eq!(p.mandatory, mandatory);
        prop_assert!(!p.immediate);
    }

    #[test]
    fn publish_encoded_by_amq_protocol_decodes_with_both_flags(
        exchange in short_text(), key in short_text(), mandatory in any::<bool>(), immediate in any::<bool>()
    ) {
        let class = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: exchange.clone().into(),
            routing_key: key.clone().into(),
            mandatory,
            immediate,
        }));
        let mut generic = BytesMut::new();
        encode::method(&mut generic, 1, &class);
        if !immediate {
            let mut by_hand = BytesMut::new();
            encode::publish(&mut by_hand, 1, exchange.as_bytes(), key.as_bytes(), mandatory);
            prop_assert_eq!(&by_hand[..], &generic[..], "hand encoder writes what amq-protocol writes");
        }
        let Frame::Method { method: Method::Publish(p), .. } = decode_single(generic) else {
            panic!("expected basic.publish");
        };
        prop_assert_eq!(&p.exchange[..], exchange.as_bytes());
        prop_assert_eq!(&p.routing_key[..], key.as_bytes());
        prop_assert_eq!((p.mandatory, p.immediate), (mandatory, immediate));
    }

    #[test]
    fn deliver_round_trips(
        ch in any::<u16>(), tag in short_bytes(), delivery_tag in any::<u64>(), redelivered in any::<bool>(),
        exchange in short_bytes(), key in short_bytes()
    ) {
        let mut buf = BytesMut::new();
        encode::deliver(&mut buf, ch, &tag, delivery_tag, redelivered, &exchange, &key);
        let Frame::Method { channel, method: Method::Deliver(d) } = decode_single(buf) else {
            panic!("expected basic.deliver");
        };
        prop_assert_eq!(channel, ch);
        prop_assert_eq!(&d.consumer_tag[..], &tag[..]);
        prop_assert_eq!(d.delivery_tag, delivery_tag);
        prop_assert_eq!(d.redelivered, redelivered);
        prop_assert_eq!(&d.exchange[..], &exchange[..]);
        prop_assert_eq!(&d.routing_key[..], &key[..]);
    }

    #[test]
    fn deliver_by_hand_matches_amq_protocol_bytes(
        tag in short_text(), delivery_tag in any::<u64>(), redelivered in any::<bool>(),
        exchange in short_text(), key in short_text()
    ) {
        let mut by_hand = BytesMut::new();
        encode::deliver(&mut by_hand, 5, tag.as_bytes(), delivery_tag, redelivered, exchange.as_bytes(), key.as_bytes());
        let mut generic = BytesMut::new();
        encode::method(&mut generic, 5, &AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: tag.into(),
            delivery_tag,
            redelivered,
            exchange: exchange.into(),
            routing_key: key.into(),
        })));
        prop_assert_eq!(&by_hand[..], &generic[..]);
    }

    #[test]
    fn ack_round_trips(ch in any::<u16>(), delivery_tag in any::<u64>(), multiple in any::<bool>()) {
        let mut buf = BytesMut::new();
        encode::ack(&mut buf, ch, delivery_tag, multiple);
        let mut generic = BytesMut::new();
        encode::method(&mut generic, ch, &AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack { delivery_tag, multiple })));
        prop_assert_eq!(&buf[..], &generic[..]);
        let Frame::Method { channel, method: Method::Ack(a) } = decode_single(buf) else {
            panic!("expected basic.ack");
        };
        prop_assert_eq!(channel, ch);
        prop_assert_eq!((a.delivery_tag, a.multiple), (delivery_tag, multiple));
    }

    #[test]
    fn nack_round_trips(
        ch in any::<u16>(), delivery_tag in any::<u64>(), multiple in any::<bool>(), requeue in any::<bool>()
    ) {
        let mut buf = BytesMut::new();
        encode::nack(&mut buf, ch, delivery_tag, multiple, requeue);
        let expected = AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack { delivery_tag, multiple, requeue }));
        prop_assert_eq!(decode_single(buf), Frame::Method { channel: ch, method: Method::Other(expected) });
    }

    #[test]
    fn get_ok_round_trips(
        ch in any::<u16>(), delivery_tag in any::<u64>(), redelivered in any::<bool>(),
        exchange in short_text(), key in short_text(), message_count in any::<u32>()
    ) {
        let mut buf = BytesMut::new();
        encode::get_ok(&mut buf, ch, delivery_tag, redelivered, exchange.as_bytes(), key.as_bytes(), message_count);
        let expected = AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
            delivery_tag,
            redelivered,
            exchange: exchange.into(),
            routing_key: key.into(),
            message_count,
        }));
        prop_assert_eq!(decode_single(buf), Frame::Method { channel: ch, method: Method::Other(expected) });
    }

    #[test]
    fn generic_methods_round_trip(
        ch in any::<u16>(), name in short_string(), flags in any::<[bool; 5]>(), arguments in field_table(),
        prefetch in any::<u16>(), reply_code in any::<u16>(), reply_text in short_string()
    ) {
        let classes = [
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: name.clone(),
                passive: flags[0],
                durable: flags[1],
                exclusive: flags[2],
                auto_delete: flags[3],
                nowait: flags[4],
                arguments: arguments.clone(),
            })),
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: name.clone(),
                consumer_tag: reply_text.clone(),
                no_local: flags[0],
                no_ack: flags[1],
                exclusive: flags[2],
                nowait: flags[3],
                arguments,
            })),
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code,
                reply_text,
                class_id: 60,
                method_id: 40,
            })),
        ];
        for class in classes {
            let mut buf = BytesMut::new();
            encode::method(&mut buf, ch, &class);
            prop_assert_eq!(decode_single(buf), Frame::Method { channel: ch, method: Method::Other(class) });
        }
        // basic.qos is decoded by hand (amq-protocol drops prefetch_size).
        let qos = AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos { prefetch_count: prefetch, global: flags[4] }));
        let mut buf = BytesMut::new();
        encode::method(&mut buf, ch, &qos);
        let expected = Method::Qos(amqp_codec::Qos { prefetch_size: 0, prefetch_count: prefetch, global: flags[4] });
        prop_assert_eq!(decode_single(buf), Frame::Method { channel: ch, method: expected });
    }

    #[test]
    fn any_split_of_the_stream_decodes_the_same_frames(
        outs in vec(out_frame(), 1..12),
        cuts in vec(any::<prop::sample::Index>(), 0..20)
    ) {
        let mut stream = BytesMut::new();
        for o in &outs {
            write(o, &mut stream);
        }
        let decoder = FrameDecoder::new(8192);
        let whole = decode_all(&decoder, &mut stream.clone());

        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let mut buf = BytesMut::new();
        let mut pieces = Vec::new();
        for w in points.windows(2) {
            buf.extend_from_slice(&stream[w[0]..w[1]]);
            pieces.extend(decode_all(&decoder, &mut buf));
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(&pieces, &whole);

        // And the frames are the ones written: one method per method, header plus bodies per content.
        let mut expected_len = 0;
        for o in &outs {
            expected_len += match o {
                Out::Content(_, body, frame_max) => {
                    1 + body.len().div_ceil(encode::body_chunk_size(*frame_max))
                }
                _ => 1,
            };
        }
        prop_assert_eq!(whole.len(), expected_len);
    }

    #[test]
    fn content_splits_the_body_at_frame_max(
        ch in any::<u16>(), body in vec(any::<u8>(), 0..20_000), frame_max in 22u32..=5000
    ) {
        let mut buf = BytesMut::new();
        encode::content(&mut buf, ch, &RawProperties::default(), &body, frame_max);
        let frames = decode_all(&FrameDecoder::new(frame_max), &mut buf);
        prop_assert!(buf.is_empty());
        let Frame::Header { channel, header } = &frames[0] else {
            panic!("content starts with its header");
        };
        prop_assert_eq!(*channel, ch);
        prop_assert_eq!(header.class_id, 60);
        prop_assert_eq!(header.body_size, body.len() as u64);
        let chunk = frame_max as usize - 8;
        let bodies = &frames[1..];
        prop_assert_eq!(bodies.len(), body.len().div_ceil(chunk));
        for (i, f) in bodies.iter().enumerate() {
            let Frame::Body { channel, payload } = f else {
                panic!("body frames follow the header");
            };
            prop_assert_eq!(*channel, ch);
            prop_assert!(!payload.is_empty());
            if i + 1 < bodies.len() {
                prop_assert_eq!(payload.len(), chunk, "every body frame but the last is full");
            }
        }
        prop_assert_eq!(body_frames(bodies), body);
    }

    #[test]
    fn properties_round_trip_through_raw_bytes(props in properties()) {
        let raw = RawProperties::from_properties(&props);
        prop_assert_eq!(raw.parse().unwrap(), props.clone());
        // The bytes survive validation as a received header would...
        let again = RawProperties::new(bytes::Bytes::copy_from_slice(raw.as_bytes())).unwrap();
        prop_assert_eq!(&again, &raw);
        // ...and through a whole content header frame.
        let mut buf = BytesMut::new();
        encode::content(&mut buf, 1, &raw, b"x", 0);
        let frames = decode_all(&FrameDecoder::new(0), &mut buf);
        let Frame::Header { header, .. } = &frames[0] else {
            panic!("expected a header frame");
        };
        prop_assert_eq!(header.properties.as_bytes(), raw.as_bytes());
        prop_assert_eq!(header.properties.parse().unwrap(), props);
    }

    #[test]
    fn raw_property_accessors_agree_with_the_parsed_struct(props in properties()) {
        let raw = RawProperties::from_properties(&props);
        prop_assert_eq!(raw.delivery_mode(), *props.delivery_mode());
        prop_assert_eq!(raw.priority(), *props.priority());
        prop_assert_eq!(
            raw.expiration().map(<[u8]>::to_vec),
            props.expiration().as_ref().map(|e| e.as_str().as_bytes().to_vec())
        );
        prop_assert_eq!(raw.headers(), props.headers().clone());
    }
}

#[test]
fn empty_body_has_a_header_and_no_body_frame() {
    let mut buf = BytesMut::new();
    encode::content(&mut buf, 1, &RawProperties::default(), b"", 4096);
    let frames = decode_all(&FrameDecoder::default(), &mut buf);
    assert_eq!(frames.len(), 1);
    assert!(matches!(&frames[0], Frame::Header { header, .. } if header.body_size == 0));
}

#[test]
fn default_raw_properties_have_no_fields() {
    let raw = RawProperties::default();
    assert_eq!(raw.flags(), 0);
    assert_eq!(raw.parse().unwrap(), BasicProperties::default());
    assert_eq!(raw.delivery_mode(), None);
    assert_eq!(raw.headers(), None);
    assert_eq!(raw.expiration(), None);
}
