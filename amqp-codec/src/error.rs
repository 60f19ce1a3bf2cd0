//! Decoding errors. Each one is a connection-level protocol violation and knows the AMQP reply
//! code RabbitMQ closes the connection with.

use thiserror::Error;

/// AMQP reply code 501 FRAME_ERROR.
pub const FRAME_ERROR: u16 = 501;
/// AMQP reply code 502 SYNTAX_ERROR.
pub const SYNTAX_ERROR: u16 = 502;
/// AMQP reply code 540 NOT_IMPLEMENTED.
pub const NOT_IMPLEMENTED: u16 = 540;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    #[error("frame of {size} bytes is larger than frame_max {frame_max}")]
    FrameTooLarge { size: u64, frame_max: u32 },
    #[error("frame end octet was {found:#04x}, expected 0xce")]
    BadFrameEnd { found: u8 },
    #[error("unknown frame type {frame_type}")]
    UnknownFrameType { frame_type: u8 },
    #[error("malformed method frame for class {class_id} method {method_id}")]
    MalformedMethod { class_id: u16, method_id: u16 },
    #[error("unknown method: class {class_id} method {method_id}")]
    UnknownMethod { class_id: u16, method_id: u16 },
    #[error("malformed content header")]
    MalformedHeader,
}

impl CodecError {
    /// The reply code of the `connection.close` this error provokes.
    pub fn reply_code(&self) -> u16 {
        match self {
            CodecError::FrameTooLarge { .. }
            | CodecError::BadFrameEnd { .. }
            | CodecError::UnknownFrameType { .. }
            | CodecError::MalformedHeader => FRAME_ERROR,
            CodecError::MalformedMethod { .. } => SYNTAX_ERROR,
            CodecError::UnknownMethod { .. } => NOT_IMPLEMENTED,
        }
    }

    /// Class and method ids of the offending method, for the close frame.
    pub fn method_ids(&self) -> (u16, u16) {
        match self {
            CodecError::MalformedMethod {
                class_id,
                method_id,
            }
            | CodecError::UnknownMethod {
                class_id,
                method_id,
            } => (*class_id, *method_id),
            _ => (0, 0),
        }
    }
}
