//! The host↔zone wire protocol of Bulkhead: framing, codec and the two message enums.
//!
//! bulkheadd (dom0) and bulkhead-zone (PID 1 in each zone) talk over a Xen PV byte stream (a vchan ring:
//! byte-clean, full duplex, no message boundaries). This crate is the only implementation of the framing; both
//! ends use it. The zone is untrusted, so everything is bounded and checked on receipt.
//!
//! # Frame layout
//!
//! Every frame is a 16-byte header followed by the payload. Integers are little-endian.
//!
//! | Offset | Size | Field | Rule |
//! |-------:|-----:|-------|------|
//! | 0 | 4 | magic | `b"BHZW"` ([`MAGIC`]) |
//! | 4 | 1 | protocol version | must equal [`PROTOCOL_VERSION`] |
//! | 5 | 1 | direction | `0x01` host→zone ([`HostToZone`]), `0x02` zone→host ([`ZoneToHost`]); must match the reader |
//! | 6 | 2 | reserved | must be zero |
//! | 8 | 4 | payload length | `u32`, at most [`MAX_FRAME_PAYLOAD`] |
//! | 12 | 4 | CRC32 | IEEE CRC32 (crc32fast) over bytes 0..12 of the header followed by the payload |
//! | 16 | length | payload | one message, [postcard]-encoded, no trailing bytes |
//!
//! The CRC covers the header as well as the payload, so a corrupted length or direction is caught too (the length
//! is still range-checked before the payload arrives, since the CRC can only be checked after). A ring between two
//! VMs does not corrupt bytes; the CRC is there to turn a framing bug or memory corruption into a clean error
//! instead of a plausible wrong message.
//!
//! The header is checked field by field as soon as each field has arrived, so garbage and oversized frames are
//! refused without waiting for (or buffering) a payload.
//!
//! # Payload encoding
//!
//! postcard (with `alloc`): compact (varints, no field names), deterministic, well maintained, no_std-capable,
//! serde-based so the message types stay plain Rust. It checks every string and byte length against the input
//! left before copying, and gives serde no size hint when a list claims more entries than there are bytes left,
//! so a lying length prefix costs nothing. Lists are additionally cut off at their limit while being decoded
//! (see [`limits`]).
//!
//! # Limits
//!
//! See [`limits`]: a frame payload is at most [`MAX_FRAME_PAYLOAD`] (1 MiB), a stdin/output chunk at most
//! [`MAX_DATA_CHUNK`] (64 KiB); argv and env counts, string lengths, group counts, hostnames and messages are
//! bounded too. Limits are enforced on encode and on decode. Messages in flight and per-zone buffering are the
//! caller's to bound (one decoder buffers at most one frame).
//!
//! # Error policy
//!
//! Any decode error — bad magic, unknown version, wrong direction, reserved bits, oversized length, CRC mismatch,
//! undecodable payload, trailing bytes, a message that fails validation, end of stream inside a frame — is final:
//! the stream has no resynchronisation points and none is attempted. The caller closes the channel (bulkheadd
//! treats the zone as failed). End of stream is final too. Decoding never panics and never allocates more than
//! the (bounded) frame needs. An incomplete frame is not an error: the decoder returns `Ok(None)` until the rest
//! arrives. Encode errors (a message that breaks a limit) leave the output buffer unchanged.
//!
//! # Versioning
//!
//! The whole protocol has one version number, [`PROTOCOL_VERSION`], carried in every header and in
//! `ZoneToHost::Hello`. Both ends must speak the same version; a frame of any other version is refused with
//! [`WireError::UnsupportedVersion`], which names the peer's version for the log. Because postcard encodes
//! variants by index and fields by position, *any* change to a message type, to the header or to a limit is a new
//! version: append variants at the end, never reorder, bump the number, and update the `golden_*` tests that pin
//! the encoding. A zone image and the daemon that starts it are built from the same tree, so no negotiation is
//! attempted.
//!
//! # Use
//!
//! Without tokio (the static zone init; `default-features = false`): [`encode`]/[`encode_into`] and the
//! incremental [`decode`] over a `BytesMut` (or [`decode_slice`]). With the default `codec` feature:
//! [`HostCodec`]/[`ZoneCodec`] for `tokio_util::codec::Framed`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// The xenstore node, inside the channel's directory, where bulkheadd names the server it just set up (a value
/// unique to that daemon run). It is written last, once the vchan is ready: a zone whose value changes knows a
/// restarted daemon serves it and reconnects. (The vchan's own ring reference and event channel are no such
/// sign: a new daemon often gets the same numbers back.)
pub const CHANNEL_SERVER_ID_NODE: &str = "server-id";

#[cfg(feature = "codec")]
mod codec;
mod error;
mod frame;
pub mod limits;
mod messages;
mod types;
mod validate;

#[cfg(test)]
mod strategies;

#[cfg(feature = "codec")]
pub use codec::{HostCodec, WireCodec, ZoneCodec};
pub use error::{ValidationError, WireError};
pub use frame::{Direction, HEADER_LEN, MAGIC, Message, PROTOCOL_VERSION, decode, decode_slice, encode, encode_into};
pub use limits::{MAX_DATA_CHUNK, MAX_FRAME_PAYLOAD};
pub use messages::{HostToZone, ZoneToHost};
pub use types::{
    BpfInstruction, Capabilities, CpuLimit, EnvVar, ErrorCode, ExitStatus, InitStage, Mount, MountSource, OutputFd,
    ResourceLimits, ResourceUsage, SeccompProgram, Security, StreamId, User, VolumeEntry, VolumeEntryKind,
    WorkloadPhase, WorkloadSpec, validate_symlink_target, validate_volume_name, validate_volume_path,
};
