//! AMQP 0-9-1 wire format for Warren, shared by the broker and the load generator.
//!
//! - [`FrameDecoder`] splits a streaming `BytesMut` into frames (nom for the envelope), checks
//!   the frame-end octet and `frame_max`, and hands content bodies on as `Bytes` slices of the
//!   read buffer: no copy of the payload.
//! - [`Method`] decodes the methods that travel once per message (`basic.publish`,
//!   `basic.deliver`, `basic.ack`) by hand into borrowed slices, and everything else through
//!   amq-protocol.
//! - [`RawProperties`] keeps a content header's property bytes exactly as they arrived, so they
//!   go back out byte for byte, and reads single fields without building a property struct.
//! - [`encode`] writes frames into one buffer, so a burst of deliveries costs one socket write.

pub mod encode;
mod error;
mod frame;
mod method;
mod properties;

pub use amq_protocol::protocol::{self, AMQPClass, BasicProperties};
pub use amq_protocol::types::{self, AMQPValue, FieldArray, FieldTable, LongString, ShortString};
pub use error::CodecError;
pub use frame::{
    ContentHeader, FRAME_END, FRAME_HEADER_SIZE, FRAME_MIN_SIZE, Frame, FrameDecoder,
    PROTOCOL_HEADER, ProtocolHeaderCheck, check_protocol_header,
};
pub use method::{Ack, Deliver, Method, Publish, Qos};
pub use properties::{PropertyFlags, RawProperties};
