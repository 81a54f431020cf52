//! sealgate's HSM wire protocol: the frames and messages between clients and HSM nodes.
//!
//! A connection is mutually authenticated TLS 1.3 (the node and the client both present a
//! certificate of the cluster CA). On it, each frame is a 4-byte big-endian length followed by
//! a postcard-encoded envelope: [`RequestFrame`] (request id + [`Request`]) from the client,
//! [`ResponseFrame`] (the same id + a [`Reply`] or an [`Error`]) from the node. Many requests
//! may be in flight on one connection; answers come back in any order, matched by id.
//!
//! The first request on a connection is [`Request::Hello`], which negotiates the protocol
//! version ([`negotiate`]) and tells the client the node's limits. The engine session belongs
//! to the connection: [`Request::Login`] logs that connection in.
//!
//! Limits are hard: a frame longer than [`Limits::max_frame_len`] closes the connection (the
//! stream cannot be resynchronised safely); a request beyond [`Limits::max_in_flight`] is
//! answered [`ErrorKind::TooManyInFlight`] and the connection stays open; a node that cannot
//! take more work answers [`ErrorKind::Busy`] rather than queueing without bound.
//!
//! What this crate does **not** do: no I/O, no crypto, and it does not depend on the engine
//! (`sealgate-hsm-core`) or the crypto crate, so clients (the proxy) never link them. Passwords
//! travel as [`Secret`] (zeroized, never printed); private and secret key bytes never appear in
//! any message except wrapped.
#![forbid(unsafe_code)]

mod error;
mod frame;
mod message;
mod types;

pub use error::{Error, ErrorKind};
pub use frame::{
    DecodeError, Limits, MAX_FRAME_LEN, MAX_IN_FLIGHT, MAX_RESPONSE_LEN, MIN_VERSION, RequestFrame,
    ResponseFrame, VERSION, decode_request, decode_request_id, decode_response, encode,
    length_codec, negotiate,
};
pub use message::{
    Approval, ApprovalSignature, AttributeValue, ClusterInfo, Health, Hello, KeyInfo, Member,
    QuorumService, QuorumToken, QuorumValue, RaftRpc, Reply, Request, UserInfo, Welcome,
};
pub use types::{
    Curve, EncryptMechanism, HashAlg, KdfMechanism, KeySpec, KeyType, OaepHash, ParseError, Role,
    Secret, SignMechanism, WrapMechanism,
};

/// The port a node listens on unless configured otherwise (CloudHSM's client port).
pub const DEFAULT_PORT: u16 = 2225;
