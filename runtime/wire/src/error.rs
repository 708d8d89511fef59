//! Error types. Any [`WireError`] from a decoder means the channel can no longer be trusted: close it.

use crate::frame::Direction;

/// A frame could not be encoded or decoded.
///
/// There is no recovery: the stream has no resynchronisation points, so after any decode error the caller closes
/// the channel (and, on the host, treats the zone as failed). Encode errors leave the output buffer as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The first four bytes of a frame are not [`MAGIC`](crate::MAGIC).
    #[error("bad frame magic {found:02x?}")]
    BadMagic {
        /// The four bytes found where the magic should be.
        found: [u8; 4],
    },
    /// The frame's protocol version is not [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
    #[error("unsupported protocol version {found} (this end speaks {})", crate::PROTOCOL_VERSION)]
    UnsupportedVersion {
        /// The version byte found in the header.
        found: u8,
    },
    /// The frame's direction byte is not the direction this decoder reads.
    #[error("frame direction byte {found:#04x}, expected {expected:?}")]
    WrongDirection {
        /// The direction this decoder accepts.
        expected: Direction,
        /// The direction byte found in the header (may be no direction at all).
        found: u8,
    },
    /// The reserved header bytes are not zero.
    #[error("reserved header bits set: {found:#06x}")]
    ReservedBitsSet {
        /// The reserved field as found.
        found: u16,
    },
    /// The payload is longer than [`MAX_FRAME_PAYLOAD`](crate::MAX_FRAME_PAYLOAD); on decode this is detected from
    /// the header alone, before the payload is buffered.
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The declared (decode) or produced (encode) payload length; on encode, the length reached when
        /// serialisation stopped.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The CRC32 in the header does not match the header and payload.
    #[error("frame checksum mismatch: header says {expected:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// The checksum carried in the header.
        expected: u32,
        /// The checksum computed over the received bytes.
        computed: u32,
    },
    /// The payload is not a valid encoding of a message of this direction (unknown variant, bad varint,
    /// truncated field, list longer than its limit, ...).
    #[error("undecodable frame payload")]
    Deserialize(#[source] postcard::Error),
    /// The payload decoded to a message but left bytes unused.
    #[error("{count} trailing bytes after the message in the frame payload")]
    TrailingBytes {
        /// How many payload bytes were left over.
        count: usize,
    },
    /// A message could not be serialised.
    #[error("message serialisation failed")]
    Serialize(#[source] postcard::Error),
    /// A message (decoded, or about to be encoded) breaks a protocol rule or limit.
    #[error("invalid message")]
    Invalid(#[source] ValidationError),
    /// The stream ended in the middle of a frame.
    #[error("channel closed in the middle of a frame ({buffered} bytes buffered)")]
    TruncatedAtEof {
        /// Bytes of the incomplete frame that had been received.
        buffered: usize,
    },
    /// Data arrived after the stream had ended: end of stream is final.
    #[error("data received after end of stream")]
    DataAfterEof,
    /// The codec already returned an error; it decodes nothing more.
    #[error("codec used after an earlier decode error")]
    Poisoned,
    /// Reading or writing the underlying channel failed (only from the `tokio_util` codec's users).
    #[error("channel I/O failed")]
    Io(#[from] std::io::Error),
}

/// A message breaks one of the protocol's rules or limits (see [`limits`](crate::limits)).
///
/// `field` names the offending field the way the Rust types do, e.g. `"spec.argv"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// A string or byte field is longer than its limit.
    #[error("{field} is {len} bytes long, the limit is {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// A list has more entries than its limit.
    #[error("{field} has {count} entries, the limit is {max}")]
    TooMany {
        /// The field.
        field: &'static str,
        /// Its number of entries.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A field that must not be empty is empty.
    #[error("{field} must not be empty")]
    Empty {
        /// The field.
        field: &'static str,
    },
    /// A string contains a NUL byte (it would be cut short when passed to the kernel).
    #[error("{field} contains a NUL byte")]
    ContainsNul {
        /// The field.
        field: &'static str,
    },
    /// A path that must be absolute is not.
    #[error("{field} is not an absolute path")]
    NotAbsolute {
        /// The field.
        field: &'static str,
    },
    /// An environment variable name contains `=`.
    #[error("environment variable name contains '='")]
    EnvNameContainsEquals,
    /// A zone id is not printable ASCII without spaces.
    #[error("zone id must be printable ASCII without spaces")]
    InvalidZoneId,
    /// A hostname is not a valid RFC 1123 host name.
    #[error("{field} is not a valid hostname")]
    InvalidHostname {
        /// The field.
        field: &'static str,
    },
    /// A device name has characters other than ASCII lowercase letters and digits.
    #[error("{field} is not a valid device name (lowercase letters and digits only, like xvdb)")]
    InvalidDeviceName {
        /// The field.
        field: &'static str,
    },
    /// A signal number is outside `1..=MAX_SIGNAL`.
    #[error("signal number {signal} is out of range")]
    InvalidSignal {
        /// The signal number.
        signal: i32,
    },
    /// A resource limit is zero or outside what the kernel accepts.
    #[error("resource limit {field} is out of range")]
    LimitOutOfRange {
        /// The field.
        field: &'static str,
    },
    /// `Hello.protocol_version` disagrees with the frame header.
    #[error("hello announces protocol version {found}, the frame is version {}", crate::PROTOCOL_VERSION)]
    HelloVersionMismatch {
        /// The version in the message.
        found: u8,
    },
    /// Capability sets that break the kernel's rules or name unknown capabilities.
    #[error("invalid capability sets: {reason}")]
    InvalidCapabilities {
        /// Which rule.
        reason: &'static str,
    },
    /// A port-forward to port 0.
    #[error("port-forward to port 0: give a port from 1 to 65535")]
    PortZero,
    /// A volume path or symlink target that could leave its volume, or is malformed.
    #[error("{field}: {reason}")]
    InvalidVolumePath {
        /// The field.
        field: &'static str,
        /// Which rule.
        reason: &'static str,
    },
    /// A volume name other than 1 to `MAX_VOLUME_NAME_LEN` ASCII lowercase letters, digits and `-`.
    #[error("{field} is not a valid volume name (lowercase letters, digits and '-')")]
    InvalidVolumeName {
        /// The field.
        field: &'static str,
    },
    /// A file mode with bits beyond the permission bits (`0o777`).
    #[error("volume entry mode {mode:o} has bits beyond 0o777")]
    InvalidMode {
        /// The mode.
        mode: u32,
    },
}

impl From<ValidationError> for WireError {
    fn from(e: ValidationError) -> Self {
        WireError::Invalid(e)
    }
}
