//! Fuzzes the wire decoders with untrusted bytes: the request and response decoders, the
//! request-id reader, and the length-delimited codec that splits a stream into frames.
//! Whatever decodes must re-encode to bytes that decode to the same value.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sealgate_hsm_proto::{
    decode_request, decode_request_id, decode_response, encode, length_codec,
};
use tokio_util::codec::Decoder;

/// Largest frame the fuzzed codec accepts (the protocol's default).
const MAX_FRAME_LEN: usize = 1 << 20;

/// Runs every body decoder on `body` and checks the round trip of whatever decodes.
fn check_body(body: &[u8]) {
    let id = decode_request_id(body);
    if let Ok(frame) = decode_request(body) {
        assert_eq!(id, Some(frame.id), "the id reader agrees with the decoder");
        let bytes = encode(&frame);
        let again = decode_request(&bytes).expect("a re-encoded request decodes");
        assert_eq!(again, frame);
        assert_eq!(encode(&again), bytes, "encoding is stable");
    }
    if let Ok(frame) = decode_response(body) {
        let bytes = encode(&frame);
        let again = decode_response(&bytes).expect("a re-encoded response decodes");
        assert_eq!(again, frame);
        assert_eq!(encode(&again), bytes, "encoding is stable");
    }
}

fuzz_target!(|data: &[u8]| {
    // The input as one frame body.
    check_body(data);
    // The input as a byte stream: split into frames, each decoded.
    let mut codec = length_codec(MAX_FRAME_LEN);
    let mut buf = BytesMut::from(data);
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => check_body(&frame),
            Ok(None) => {
                // End of stream: what is left is an incomplete frame, or an error.
                if let Ok(Some(frame)) = codec.decode_eof(&mut buf) {
                    check_body(&frame);
                }
                break;
            }
            // An oversized frame: the connection would be closed.
            Err(_) => break,
        }
    }
});
