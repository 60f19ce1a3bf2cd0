//! Message properties: all 14 basic properties and a header table with every field type come
//! back as published, through lapin (consume and get) and byte for byte on the wire.

mod common;

use amqp_codec::protocol::{AMQPClass, basic, queue};
use amqp_codec::{Frame, Method};
use bytes::{BufMut, BytesMut};
use common::raw::RawClient;
use common::*;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable};
use lapin::{BasicProperties, Channel};

/// A header table with every field type lapin can write (it has no tag for short strings).
fn every_field_type() -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert("inner-int".into(), AMQPValue::LongInt(-7));
    nested.insert("inner-str".into(), AMQPValue::LongString("deep".into()));
    let mut deeper = FieldTable::default();
    deeper.insert("leaf".into(), AMQPValue::Boolean(false));
    nested.insert("deeper".into(), AMQPValue::FieldTable(deeper));

    let inner_array = FieldArray::from(vec![AMQPValue::LongInt(1), AMQPValue::LongInt(2)]);
    let array = FieldArray::from(vec![
        AMQPValue::LongString("a".into()),
        AMQPValue::LongInt(42),
        AMQPValue::FieldArray(inner_array),
        AMQPValue::FieldTable(nested.clone()),
        AMQPValue::Void,
    ]);

    let mut t = FieldTable::default();
    t.insert("bool".into(), AMQPValue::Boolean(true));
    t.insert("i8".into(), AMQPValue::ShortShortInt(-8));
    t.insert("u8".into(), AMQPValue::ShortShortUInt(200));
    t.insert("i16".into(), AMQPValue::ShortInt(-1600));
    t.insert("u16".into(), AMQPValue::ShortUInt(65000));
    t.insert("i32".into(), AMQPValue::LongInt(-320_000));
    t.insert("u32".into(), AMQPValue::LongUInt(4_000_000_000));
    t.insert("i64".into(), AMQPValue::LongLongInt(-6_400_000_000_000));
    t.insert("f32".into(), AMQPValue::Float(1.5));
    t.insert("f64".into(), AMQPValue::Double(-2.25e100));
    t.insert(
        "decimal".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 12345,
        }),
    );
    t.insert(
        "longstr".into(),
        AMQPValue::LongString("a long string ✓".into()),
    );
    t.insert("array".into(), AMQPValue::FieldArray(array));
    t.insert("timestamp".into(), AMQPValue::Timestamp(1_700_000_000));
    t.insert("table".into(), AMQPValue::FieldTable(nested));
    t.insert("void".into(), AMQPValue::Void);
    t.insert(
        "bytes".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![0u8, 1, 2, 255])),
    );
    t
}

fn all_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(every_field_type())
        .with_delivery_mode(2)
        .with_priority(5)
        .with_correlation_id("corr-1".into())
        .with_reply_to("reply-queue".into())
        .with_expiration("600000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_700_000_123)
        .with_type("order.created".into())
        .with_user_id("guest".into())
        .with_app_id("interop".into())
        .with_cluster_id("cluster-a".into())
}

async fn publish_props(ch: &Channel, queue: &str, props: BasicProperties) {
    within(
        "basic.publish",
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            b"with properties",
            props,
        ),
    )
    .await
    .expect("basic.publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_properties_and_every_header_type_round_trip_through_consume() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "props-consume").await;
    let props = all_properties();
    publish_props(&ch, "props-consume", props.clone()).await;
    let mut consumer = consume(&ch, "props-consume").await;
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"with properties");
    assert_eq!(d.properties, props);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_properties_and_every_header_type_round_trip_through_get() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "props-get").await;
    let props = all_properties();
    publish_props(&ch, "props-get", props.clone()).await;
    let m = within(
        "basic.get",
        ch.basic_get("props-get".into(), BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .expect("a message");
    assert_eq!(m.delivery.properties, props);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_properties_come_back_as_none() {
    let (_b, _c, ch) = setup_channel().await;
    declare_queue(&ch, "props-none").await;
    publish_props(&ch, "props-none", BasicProperties::default()).await;
    let mut consumer = consume(&ch, "props-none").await;
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.properties, BasicProperties::default());
}

/// RabbitMQ checks `user_id` against the authenticated user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_id_other_than_the_connections_user_closes_the_channel_with_406() {
    let (_b, conn, ch) = setup_channel().await;
    declare_queue(&ch, "props-uid").await;
    let mut events = conn.events_listener();
    publish_props(
        &ch,
        "props-uid",
        BasicProperties::default().with_user_id("mallory".into()),
    )
    .await;
    expect_channel_close(&mut events, code::PRECONDITION_FAILED).await;
    let ch2 = open_channel(&conn).await;
    assert_eq!(message_count(&ch2, "props-uid").await, 0);
}

// ---- byte for byte, over a raw socket ----

fn short_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u8(s.len() as u8);
    out.extend_from_slice(s);
}

fn long_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.extend_from_slice(b);
}

/// Field values in RabbitMQ's tags ('s' is a signed 16-bit int there, as in amq-protocol).
fn raw_values(out: &mut BytesMut, nested_table: &[u8]) {
    out.put_u8(b't');
    out.put_u8(1);
    out.put_u8(b'b');
    out.put_i8(-5);
    out.put_u8(b'B');
    out.put_u8(250);
    out.put_u8(b's');
    out.put_i16(-300);
    out.put_u8(b'u');
    out.put_u16(60000);
    out.put_u8(b'I');
    out.put_i32(-70000);
    out.put_u8(b'i');
    out.put_u32(3_000_000_000);
    out.put_u8(b'l');
    out.put_i64(-9_000_000_000);
    out.put_u8(b'f');
    out.put_f32(3.25);
    out.put_u8(b'd');
    out.put_f64(-0.125);
    out.put_u8(b'D');
    out.put_u8(3);
    out.put_u32(98765);
    out.put_u8(b'S');
    long_bytes(out, "läng".as_bytes());
    out.put_u8(b'T');
    out.put_u64(1_234_567_890);
    out.put_u8(b'V');
    out.put_u8(b'x');
    long_bytes(out, &[9, 8, 7]);
    out.put_u8(b'F');
    out.extend_from_slice(nested_table);
}

/// A header table with every type tag, keys deliberately out of sorted order, nested arrays
/// and tables.
fn raw_header_table() -> Vec<u8> {
    let mut inner = BytesMut::new();
    short_str(&mut inner, b"z");
    inner.put_u8(b'I');
    inner.put_i32(1);
    short_str(&mut inner, b"a");
    inner.put_u8(b'S');
    long_bytes(&mut inner, b"x");
    let mut inner_table = BytesMut::new();
    long_bytes(&mut inner_table, &inner);

    let mut array_items = BytesMut::new();
    raw_values(&mut array_items, &inner_table);
    // A nested array inside the array.
    let mut nested_items = BytesMut::new();
    nested_items.put_u8(b'b');
    nested_items.put_i8(1);
    array_items.put_u8(b'A');
    long_bytes(&mut array_items, &nested_items);

    let mut entries = BytesMut::new();
    for (key, tag) in [
        ("zeta-bool", b't'),
        ("alpha-i8", b'b'),
        ("m-u8", b'B'),
        ("b-i16", b's'),
        ("y-u16", b'u'),
        ("c-i32", b'I'),
        ("x-u32", b'i'),
        ("d-i64", b'l'),
        ("w-f32", b'f'),
        ("e-f64", b'd'),
        ("v-decimal", b'D'),
        ("f-longstr", b'S'),
        ("u-timestamp", b'T'),
        ("g-void", b'V'),
        ("t-bytes", b'x'),
        ("h-table", b'F'),
    ] {
        short_str(&mut entries, key.as_bytes());
        let mut all = BytesMut::new();
        raw_values(&mut all, &inner_table);
        // Pick this tag's encoded value out of the full sequence.
        let v = value_for(&all, tag);
        entries.extend_from_slice(&v);
    }
    short_str(&mut entries, b"s-array");
    entries.put_u8(b'A');
    long_bytes(&mut entries, &array_items);

    let mut table = BytesMut::new();
    long_bytes(&mut table, &entries);
    table.to_vec()
}

/// The tag byte plus value bytes of `tag` inside a `raw_values` sequence.
fn value_for(seq: &[u8], tag: u8) -> Vec<u8> {
    let mut i = 0;
    while i < seq.len() {
        let t = seq[i];
        let len = match t {
            b't' | b'b' | b'B' => 1,
            b's' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'l' | b'd' | b'T' => 8,
            b'D' => 5,
            b'V' => 0,
            b'S' | b'x' | b'F' | b'A' => {
                4 + u32::from_be_bytes([seq[i + 1], seq[i + 2], seq[i + 3], seq[i + 4]]) as usize
            }
            other => panic!("unknown tag {other}"),
        };
        if t == tag {
            return seq[i..i + 1 + len].to_vec();
        }
        i += 1 + len;
    }
    panic!("tag {} not in sequence", tag as char);
}

/// All 14 properties present, in wire order.
fn raw_all_properties() -> Vec<u8> {
    let mut p = BytesMut::new();
    p.put_u16(0xFFFC);
    short_str(&mut p, b"text/plain");
    short_str(&mut p, b"identity");
    p.extend_from_slice(&raw_header_table());
    p.put_u8(1); // delivery-mode
    p.put_u8(9); // priority
    short_str(&mut p, b"corr");
    short_str(&mut p, b"reply");
    short_str(&mut p, b"100000");
    short_str(&mut p, b"id-7");
    p.put_u64(1_600_000_000);
    short_str(&mut p, b"kind");
    short_str(&mut p, b"guest");
    short_str(&mut p, b"app");
    short_str(&mut p, b"cluster");
    p.to_vec()
}

async fn raw_declare(c: &mut RawClient, ch: u16, name: &str) {
    c.send_method(
        ch,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name.into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: Default::default(),
        })),
    )
    .await;
    match c.read_method().await {
        (n, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))) if n == ch => {}
        other => panic!("expected queue.declare-ok, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_header_properties_are_delivered_byte_for_byte() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    raw_declare(&mut c, 1, "raw-props").await;
    c.consume_no_ack(1, "raw-props").await;

    let cases: Vec<Vec<u8>> = vec![
        raw_all_properties(),
        // No properties at all.
        vec![0, 0],
        // Only headers and priority.
        {
            let mut p = BytesMut::new();
            p.put_u16(0x2000 | 0x0800);
            p.extend_from_slice(&raw_header_table());
            p.put_u8(0);
            p.to_vec()
        },
    ];
    for (i, props) in cases.iter().enumerate() {
        let body = format!("case {i}");
        c.publish_raw(1, "", "raw-props", props, body.as_bytes())
            .await;
        let (got_props, got_body) = c.read_delivery().await;
        assert_eq!(got_body, body.as_bytes());
        assert!(
            got_props == *props,
            "case {i}: properties changed in transit\n sent {props:02x?}\n got  {got_props:02x?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_header_properties_come_back_byte_for_byte_through_get() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    raw_declare(&mut c, 1, "raw-get").await;
    let props = raw_all_properties();
    c.publish_raw(1, "", "raw-get", &props, b"got").await;
    c.send_method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "raw-get".into(),
            no_ack: true,
        })),
    )
    .await;
    match c.read_frame().await {
        Some(Frame::Method {
            method: Method::Other(AMQPClass::Basic(basic::AMQPMethod::GetOk(ok))),
            ..
        }) => assert_eq!(ok.message_count, 0),
        other => panic!("expected basic.get-ok, got {other:?}"),
    }
    let header = match c.read_frame().await {
        Some(Frame::Header { header, .. }) => header,
        other => panic!("expected a content header, got {other:?}"),
    };
    assert_eq!(header.body_size, 3);
    assert!(
        header.properties.as_bytes() == props.as_slice(),
        "properties changed in transit"
    );
}

/// RabbitMQ refuses an `expiration` that is not a non-negative integer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_expiration_closes_the_channel_with_406() {
    let (_b, conn, ch) = setup_channel().await;
    declare_queue(&ch, "props-exp").await;
    let mut events = conn.events_listener();
    publish_props(
        &ch,
        "props-exp",
        BasicProperties::default().with_expiration("soon".into()),
    )
    .await;
    expect_channel_close(&mut events, code::PRECONDITION_FAILED).await;
    let ch2 = open_channel(&conn).await;
    assert_eq!(message_count(&ch2, "props-exp").await, 0);
}
