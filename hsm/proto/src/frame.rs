//! Framing: the length-prefixed envelope, version negotiation, limits, and the decoders that
//! every byte from the network goes through.

use crate::error::Error;
use crate::message::{Reply, Request};
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

/// The newest protocol version this build speaks.
pub const VERSION: u16 = 1;
/// The oldest protocol version this build speaks.
pub const MIN_VERSION: u16 = 1;
/// Default largest request frame (the encoded envelope, without its 4-byte length): 256 KiB,
/// room for the largest input the engine takes (64 KiB) several times over.
pub const MAX_FRAME_LEN: usize = 256 << 10;
/// Largest response frame: 16 MiB (a key list of thousands of keys). A node answers an error
/// instead of a larger response.
pub const MAX_RESPONSE_LEN: usize = 16 << 20;
/// Default most requests in flight on one connection.
pub const MAX_IN_FLIGHT: usize = 1024;

/// Hard limits of one connection, announced by the node in its [`Welcome`](crate::Welcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, in bytes.
    pub max_frame_len: usize,
    /// Most requests in flight on one connection.
    pub max_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_len: MAX_FRAME_LEN,
            max_in_flight: MAX_IN_FLIGHT,
        }
    }
}

/// A request with the id its answer will carry. Ids are chosen by the client and should be
/// unique among its requests in flight on the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Request id.
    pub id: u64,
    /// Read-your-writes: the node first waits (bounded) until it has applied the cluster's log
    /// up to this index, the highest [`ResponseFrame::index`] the client has seen (0: no wait).
    pub min_index: u64,
    /// The request.
    pub request: Request,
}

impl RequestFrame {
    /// A request that needs no earlier write applied.
    pub fn new(id: u64, request: Request) -> Self {
        Self {
            id,
            min_index: 0,
            request,
        }
    }
}

/// The answer to the request with the same id. Id 0 answers a frame whose id could not be
/// read; the node closes the connection after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The request's id.
    pub id: u64,
    /// How far the answering node had applied the cluster's log (after a write: at least the
    /// write's own index). A client sends the highest it has seen as
    /// [`RequestFrame::min_index`], so any node it asks next answers from a state that includes
    /// its writes.
    pub index: u64,
    /// The reply or why the request failed.
    pub result: Result<Reply, Error>,
}

impl ResponseFrame {
    /// An answer that promises no log position.
    pub fn new(id: u64, result: Result<Reply, Error>) -> Self {
        Self {
            id,
            index: 0,
            result,
        }
    }
}

/// Why bytes from the network did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not a valid message of this protocol version.
    #[error("malformed frame: {0}")]
    Malformed(postcard::Error),
    /// A valid message followed by extra bytes.
    #[error("malformed frame: {0} bytes after the message")]
    TrailingBytes(usize),
}

/// The codec that splits a byte stream into frames: a 4-byte big-endian length, then the
/// frame. Frames over `max_frame_len` are an error (the connection must be closed).
pub fn length_codec(max_frame_len: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .max_frame_length(max_frame_len)
        .new_codec()
}

/// Encodes a frame's body (the codec adds the length).
pub fn encode<T: Serialize>(frame: &T) -> Vec<u8> {
    // postcard fails only on types it cannot represent (none of ours) or a full buffer (a Vec
    // grows), so an error here is a bug; an empty frame then fails to decode on the other side.
    postcard::to_stdvec(frame).unwrap_or_default()
}

fn decode_exact<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(DecodeError::Malformed)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(DecodeError::TrailingBytes(rest.len()))
    }
}

/// Decodes a request frame from untrusted bytes.
pub fn decode_request(bytes: &[u8]) -> Result<RequestFrame, DecodeError> {
    decode_exact(bytes)
}

/// Reads only the id at the start of a request frame, to answer a request whose body did not
/// decode (an unknown message from a newer client, say).
pub fn decode_request_id(bytes: &[u8]) -> Option<u64> {
    postcard::take_from_bytes::<u64>(bytes)
        .ok()
        .map(|(id, _)| id)
}

/// Decodes a response frame from untrusted bytes.
pub fn decode_response(bytes: &[u8]) -> Result<ResponseFrame, DecodeError> {
    decode_exact(bytes)
}

/// Picks the protocol version for a client that speaks `min..=max`: the newest both sides
/// speak, or `None` if the ranges do not meet.
pub fn negotiate(min: u16, max: u16) -> Option<u16> {
    let version = max.min(VERSION);
    (version >= min.max(MIN_VERSION)).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::message::Hello;
    use crate::types::{HashAlg, Secret, SignMechanism};
    use bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};

    #[test]
    fn request_round_trip_through_the_codec() {
        let frame = RequestFrame {
            id: 7,
            min_index: 42,
            request: Request::Sign {
                handle: 3,
                mechanism: SignMechanism::Ecdsa(HashAlg::Sha256),
                data: b"hello".to_vec(),
            },
        };
        let mut codec = length_codec(MAX_FRAME_LEN);
        let mut buf = BytesMut::new();
        codec
            .encode(bytes::Bytes::from(encode(&frame)), &mut buf)
            .expect("encode");
        assert_eq!(&buf[..4], &(buf.len() as u32 - 4).to_be_bytes());
        let body = codec.decode(&mut buf).expect("decode").expect("one frame");
        assert_eq!(decode_request(&body).expect("valid"), frame);
        assert_eq!(decode_request_id(&body), Some(7));
    }

    #[test]
    fn oversized_frames_are_an_error_not_an_allocation() {
        let mut codec = length_codec(1024);
        let mut buf = BytesMut::from(&(u32::MAX).to_be_bytes()[..]);
        assert!(codec.decode(&mut buf).is_err());
    }

    #[test]
    fn trailing_bytes_and_garbage_are_refused() {
        let mut bytes = encode(&RequestFrame::new(1, Request::Health));
        bytes.push(0);
        assert_eq!(decode_request(&bytes), Err(DecodeError::TrailingBytes(1)));
        assert!(matches!(
            decode_request(&[0x01, 0xff, 0xff, 0xff]),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn no_byte_string_makes_the_decoders_panic() {
        // A deterministic sweep (xorshift) of short strings and mutations of valid frames; the
        // cargo-fuzz target in fuzz/ explores further.
        let valid = encode(&RequestFrame::new(
            9,
            Request::Login {
                user: "alice".into(),
                password: Secret::new("correct horse".into()),
            },
        ));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let random: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = decode_request(&random);
            let _ = decode_response(&random);
            let mut mutated = valid.clone();
            let at = (next() as usize) % mutated.len();
            mutated[at] = next() as u8;
            let _ = decode_request(&mutated);
        }
    }

    #[test]
    fn version_negotiation() {
        assert_eq!(negotiate(1, 1), Some(1));
        assert_eq!(negotiate(1, 9), Some(VERSION));
        assert_eq!(negotiate(2, 9), None);
        let hello = Hello::current("test");
        assert_eq!(
            negotiate(hello.min_version, hello.max_version),
            Some(VERSION)
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let request = Request::Login {
            user: "alice".into(),
            password: Secret::new("hunter2hunter2".into()),
        };
        assert!(!format!("{request:?}").contains("hunter2"));
    }

    #[test]
    fn error_frames_round_trip() {
        let frame = ResponseFrame::new(3, Err(Error::new(ErrorKind::Busy, "node is busy")));
        assert_eq!(decode_response(&encode(&frame)), Ok(frame));
    }
}
