//! Frame layout, the [`Message`] trait and the pure encode/decode functions.

use bytes::{Buf, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ValidationError, WireError};
use crate::limits::MAX_FRAME_PAYLOAD;

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"BHZW";

/// The protocol version this crate speaks; frames of any other version are rejected.
pub const PROTOCOL_VERSION: u8 = 6;

/// Length of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 16;

/// Byte offsets inside the header.
const VERSION_AT: usize = 4;
const DIRECTION_AT: usize = 5;
const RESERVED_AT: usize = 6;
const LEN_AT: usize = 8;
const CRC_AT: usize = 12;

/// Which way a frame travels; byte 5 of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Direction {
    /// bulkheadd to zone: carries [`HostToZone`](crate::HostToZone).
    HostToZone = 0x01,
    /// Zone to bulkheadd: carries [`ZoneToHost`](crate::ZoneToHost).
    ZoneToHost = 0x02,
}

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// A message enum of one direction: [`HostToZone`](crate::HostToZone) or [`ZoneToHost`](crate::ZoneToHost).
/// Sealed: the protocol has exactly these two.
pub trait Message: Serialize + DeserializeOwned + std::fmt::Debug + sealed::Sealed {
    /// The direction byte frames of this type carry.
    const DIRECTION: Direction;

    /// Checks the protocol's rules and [`limits`](crate::limits). [`encode`] and [`decode`] call it; call it
    /// yourself to check a message before queueing it.
    fn validate(&self) -> Result<(), ValidationError>;
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// CRC32 (IEEE) over the first 12 header bytes (everything but the CRC itself) followed by the payload.
fn checksum(head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&head[..CRC_AT]);
    h.update(payload);
    h.finalize()
}

/// Checks as much of a frame header as `buf` holds, field by field, so garbage is refused as early as possible.
///
/// Returns the payload length once the whole header is present and valid, `Ok(None)` while it is incomplete.
/// The payload length is checked against [`MAX_FRAME_PAYLOAD`] here, before anyone buffers the payload.
pub(crate) fn check_header(buf: &[u8], direction: Direction) -> Result<Option<usize>, WireError> {
    if buf.len() >= MAGIC.len() && buf[..MAGIC.len()] != MAGIC {
        return Err(WireError::BadMagic { found: [buf[0], buf[1], buf[2], buf[3]] });
    }
    if let Some(&version) = buf.get(VERSION_AT)
        && version != PROTOCOL_VERSION
    {
        return Err(WireError::UnsupportedVersion { found: version });
    }
    if let Some(&dir) = buf.get(DIRECTION_AT)
        && dir != direction as u8
    {
        return Err(WireError::WrongDirection { expected: direction, found: dir });
    }
    if buf.len() >= RESERVED_AT + 2 {
        let reserved = le_u16(buf, RESERVED_AT);
        if reserved != 0 {
            return Err(WireError::ReservedBitsSet { found: reserved });
        }
    }
    if buf.len() < LEN_AT + 4 {
        return Ok(None);
    }
    // u32 always fits in usize on the 32- and 64-bit targets Bulkhead builds for.
    let len = le_u32(buf, LEN_AT) as usize;
    if len > MAX_FRAME_PAYLOAD {
        return Err(WireError::FrameTooLarge { len, max: MAX_FRAME_PAYLOAD });
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    Ok(Some(len))
}

/// Decodes the frame at the start of `buf` without consuming anything.
///
/// Returns the message and the number of bytes its frame occupies, or `Ok(None)` if `buf` holds only a prefix of
/// a valid frame (read more and call again). Never panics and never allocates more than the frame's payload needs
/// (which is at most [`MAX_FRAME_PAYLOAD`] plus the bounded list overhead).
///
/// # Errors
/// Any [`WireError`]; the stream is then unusable and the channel must be closed.
pub fn decode_slice<M: Message>(buf: &[u8]) -> Result<Option<(M, usize)>, WireError> {
    let Some(len) = check_header(buf, M::DIRECTION)? else {
        return Ok(None);
    };
    let total = HEADER_LEN + len;
    let Some(frame) = buf.get(..total) else {
        return Ok(None);
    };
    let (head, payload) = frame.split_at(HEADER_LEN);
    let expected = le_u32(head, CRC_AT);
    let computed = checksum(head, payload);
    if expected != computed {
        return Err(WireError::ChecksumMismatch { expected, computed });
    }
    let (msg, rest) = postcard::take_from_bytes::<M>(payload).map_err(WireError::Deserialize)?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes { count: rest.len() });
    }
    msg.validate()?;
    Ok(Some((msg, total)))
}

/// Decodes one frame from the front of `buf` and consumes it.
///
/// `Ok(None)` means `buf` holds an incomplete (so far valid) frame: append more bytes and call again. On error the
/// buffer is left as it was, but nothing after an error may be decoded: close the channel.
///
/// # Errors
/// Any [`WireError`] from [`decode_slice`].
pub fn decode<M: Message>(buf: &mut BytesMut) -> Result<Option<M>, WireError> {
    match decode_slice::<M>(buf)? {
        Some((msg, used)) => {
            buf.advance(used);
            Ok(Some(msg))
        }
        None => Ok(None),
    }
}

/// A postcard output flavor appending to a `BytesMut` and stopping at [`MAX_FRAME_PAYLOAD`] payload bytes, so an
/// oversized message fails early instead of being serialised in full first.
struct CappedBytesMut<'a> {
    buf: &'a mut BytesMut,
    payload_start: usize,
    /// Set to the payload length that would have been reached when the cap stops serialisation.
    overflow: &'a mut Option<usize>,
}

impl postcard::ser_flavors::Flavor for CappedBytesMut<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let len = self.buf.len() - self.payload_start + data.len();
        if len > MAX_FRAME_PAYLOAD {
            *self.overflow = Some(len);
            return Err(postcard::Error::SerializeBufferFull);
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Validates `msg` and appends its frame to `dst`.
///
/// # Errors
/// [`WireError::Invalid`] if the message breaks a rule or limit, [`WireError::FrameTooLarge`] if its payload
/// exceeds [`MAX_FRAME_PAYLOAD`], [`WireError::Serialize`] if serialisation fails. On error `dst` is unchanged.
pub fn encode_into<M: Message>(msg: &M, dst: &mut BytesMut) -> Result<(), WireError> {
    msg.validate()?;
    let start = dst.len();
    let payload_start = start + HEADER_LEN;
    dst.reserve(HEADER_LEN + 64);
    dst.extend_from_slice(&MAGIC);
    dst.extend_from_slice(&[PROTOCOL_VERSION, M::DIRECTION as u8, 0, 0]);
    dst.extend_from_slice(&[0; 8]); // length and CRC, filled in below
    let mut overflow = None;
    let flavor = CappedBytesMut { buf: dst, payload_start, overflow: &mut overflow };
    if let Err(e) = postcard::serialize_with_flavor::<M, _, ()>(msg, flavor) {
        dst.truncate(start);
        return Err(match overflow {
            Some(len) => WireError::FrameTooLarge { len, max: MAX_FRAME_PAYLOAD },
            None => WireError::Serialize(e),
        });
    }
    let len = dst.len() - payload_start;
    let Ok(len32) = u32::try_from(len) else {
        // Unreachable: the flavor stops at MAX_FRAME_PAYLOAD, which fits in u32.
        dst.truncate(start);
        return Err(WireError::FrameTooLarge { len, max: MAX_FRAME_PAYLOAD });
    };
    let frame = &mut dst[start..];
    frame[LEN_AT..LEN_AT + 4].copy_from_slice(&len32.to_le_bytes());
    let (head, payload) = frame.split_at_mut(HEADER_LEN);
    let crc = checksum(head, payload);
    head[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Validates `msg` and returns its frame.
///
/// # Errors
/// As [`encode_into`].
pub fn encode<M: Message>(msg: &M) -> Result<Vec<u8>, WireError> {
    let mut buf = BytesMut::new();
    encode_into(msg, &mut buf)?;
    Ok(buf.into())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::limits::{self, MAX_ARGS, MAX_DATA_CHUNK, MAX_ENV};
    use crate::{
        BpfInstruction, Capabilities, EnvVar, ExitStatus, HostToZone, Mount, MountSource, OutputFd, ResourceLimits,
        SeccompProgram, Security, StreamId, User, VolumeEntry, VolumeEntryKind, WorkloadPhase, WorkloadSpec,
        ZoneToHost,
    };

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A frame with the given header fields, a correct length and a correct CRC.
    fn raw_frame(version: u8, direction: u8, reserved: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(HEADER_LEN + payload.len());
        f.extend_from_slice(&MAGIC);
        f.push(version);
        f.push(direction);
        f.extend_from_slice(&reserved.to_le_bytes());
        f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        f.extend_from_slice(&[0; 4]);
        let crc = checksum(&f, payload);
        f[CRC_AT..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn host_frame(payload: &[u8]) -> Vec<u8> {
        raw_frame(PROTOCOL_VERSION, Direction::HostToZone as u8, 0, payload)
    }

    /// postcard varint of `v`.
    fn varint(mut v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            argv: vec!["sh".into()],
            env: vec![EnvVar { name: "A".into(), value: "b".into() }],
            cwd: "/".into(),
            user: User::root(),
            tty: false,
            limits: ResourceLimits { memory_bytes: Some(1), cpu: None, pids_max: None },
            readonly_rootfs: true,
            hostname: None,
            root_device: "xvdb".into(),
            security: Some(Box::new(Security {
                capabilities: Capabilities {
                    bounding: 0x400,
                    effective: 0x400,
                    permitted: 0x400,
                    inheritable: 0,
                    ambient: 0,
                },
                no_new_privs: true,
                masked_paths: vec!["/k".into()],
                readonly_paths: Vec::new(),
                seccomp: vec![SeccompProgram(vec![BpfInstruction { code: 6, jt: 1, jf: 2, k: 0x7fff_0000 }])],
                privileged: false,
            })),
            mounts: vec![Mount {
                source: MountSource::Snapshot { volume: "v".into() },
                destination: "/e".into(),
                readonly: true,
            }],
        }
    }

    /// Feeds `chunks` one after another, decoding after each; returns the messages and what is left buffered.
    fn decode_chunks<'a, M: Message>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<(Vec<M>, usize), WireError> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for c in chunks {
            buf.extend_from_slice(c);
            while let Some(m) = decode::<M>(&mut buf)? {
                out.push(m);
            }
        }
        Ok((out, buf.len()))
    }

    fn encode_all<M: Message>(msgs: &[M]) -> Result<Vec<u8>, WireError> {
        let mut buf = BytesMut::new();
        for m in msgs {
            encode_into(m, &mut buf)?;
        }
        Ok(buf.into())
    }

    fn small<M: Message>(msgs: &[M]) -> bool {
        msgs.iter().all(|m| encode(m).is_ok_and(|f| f.len() <= 2048))
    }

    /// Decodes garbage in both directions; the only acceptable outcomes are messages, need-more or an error.
    fn decode_garbage(bytes: &[u8]) {
        let _ = decode_chunks::<HostToZone>([bytes]);
        let _ = decode_chunks::<ZoneToHost>([bytes]);
    }

    proptest! {
        #[test]
        fn round_trip_host_to_zone(m in any::<HostToZone>()) {
            let f = encode(&m)?;
            let decoded = decode_slice::<HostToZone>(&f)?;
            prop_assert_eq!(decoded, Some((m, f.len())));
        }

        #[test]
        fn round_trip_zone_to_host(m in any::<ZoneToHost>()) {
            let f = encode(&m)?;
            let decoded = decode_slice::<ZoneToHost>(&f)?;
            prop_assert_eq!(decoded, Some((m, f.len())));
        }

        #[test]
        fn stream_split_at_every_offset(msgs in proptest::collection::vec(any::<ZoneToHost>(), 1..4)
            .prop_filter("small frames", |m| small(m)))
        {
            let stream = encode_all(&msgs)?;
            for k in 0..=stream.len() {
                let (got, left) = decode_chunks::<ZoneToHost>([&stream[..k], &stream[k..]])?;
                prop_assert_eq!(left, 0);
                prop_assert_eq!(&got, &msgs, "split at {}", k);
            }
        }

        #[test]
        fn stream_in_random_chunks(
            msgs in proptest::collection::vec(any::<HostToZone>(), 1..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..24),
        ) {
            let stream = encode_all(&msgs)?;
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            at.push(0);
            at.push(stream.len());
            at.sort_unstable();
            let chunks = at.windows(2).map(|w| &stream[w[0]..w[1]]);
            let (got, left) = decode_chunks::<HostToZone>(chunks)?;
            prop_assert_eq!(left, 0);
            prop_assert_eq!(got, msgs);
        }

        #[test]
        fn stream_byte_by_byte(msgs in proptest::collection::vec(any::<HostToZone>(), 1..4)
            .prop_filter("small frames", |m| small(m)))
        {
            let stream = encode_all(&msgs)?;
            let (got, left) = decode_chunks::<HostToZone>(stream.chunks(1))?;
            prop_assert_eq!(left, 0);
            prop_assert_eq!(got, msgs);
        }

        #[test]
        fn every_truncation_needs_more(m in any::<ZoneToHost>()) {
            let f = encode(&m)?;
            for k in 0..f.len() {
                prop_assert!(matches!(decode_slice::<ZoneToHost>(&f[..k]), Ok(None)), "prefix of {} bytes", k);
            }
            for k in [0, 1, HEADER_LEN - 1, HEADER_LEN, f.len() - 1] {
                let mut buf = BytesMut::from(&f[..k]);
                prop_assert!(matches!(decode::<ZoneToHost>(&mut buf), Ok(None)), "prefix of {} bytes", k);
                prop_assert_eq!(buf.len(), k, "a need-more result consumed input");
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            decode_garbage(&bytes);
        }

        #[test]
        fn garbage_after_valid_header_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            dir in prop_oneof![Just(Direction::HostToZone), Just(Direction::ZoneToHost)],
        ) {
            let f = raw_frame(PROTOCOL_VERSION, dir as u8, 0, &bytes);
            // A complete frame with a good CRC decodes or fails; it never asks for more.
            match dir {
                Direction::HostToZone => prop_assert!(!matches!(decode_slice::<HostToZone>(&f), Ok(None))),
                Direction::ZoneToHost => prop_assert!(!matches!(decode_slice::<ZoneToHost>(&f), Ok(None))),
            }
            decode_garbage(&f);
        }

        #[test]
        fn any_corrupted_byte_is_detected(m in any::<HostToZone>(), at in any::<prop::sample::Index>(), x in 1..=255u8) {
            let mut f = encode(&m)?;
            let i = at.index(f.len());
            f[i] ^= x;
            // CRC32 catches every single-byte error; a corrupted length may also just look incomplete.
            prop_assert!(!matches!(decode_slice::<HostToZone>(&f), Ok(Some(_))), "corruption at {} accepted", i);
        }
    }

    /// Writes one seed per message kind (plus a multi-frame stream) for the `wire_decode` fuzz target. Each seed
    /// starts with the chunk-size byte the target reads first.
    #[test]
    #[ignore = "writes fuzz/seeds/wire_decode; run with --ignored when the messages change"]
    fn write_fuzz_seeds() -> TestResult {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;

        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/wire_decode");
        std::fs::create_dir_all(&dir)?;
        let mut runner = TestRunner::deterministic();
        let mut stream = vec![7u8];
        for i in 0..48 {
            let (frame, name) = if i % 2 == 0 {
                (encode(&any::<HostToZone>().new_tree(&mut runner).map_err(|e| e.to_string())?.current())?, "host")
            } else {
                (encode(&any::<ZoneToHost>().new_tree(&mut runner).map_err(|e| e.to_string())?.current())?, "zone")
            };
            if frame.len() > 4096 {
                continue;
            }
            if stream.len() < 4096 {
                stream.extend_from_slice(&frame);
            }
            let mut seed = vec![u8::try_from(i % 5 * 3 + 1)?];
            seed.extend_from_slice(&frame);
            std::fs::write(dir.join(format!("{name}-{i:02}")), seed)?;
        }
        std::fs::write(dir.join("stream"), stream)?;
        Ok(())
    }

    #[test]
    fn golden_ping() -> TestResult {
        let f = encode(&HostToZone::Ping { nonce: 1 })?;
        let want = [
            0x42, 0x48, 0x5a, 0x57, 0x06, 0x01, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0xc5, 0x5e, 0x75, 0xd2, 0x0b, 0x01,
        ];
        assert_eq!(f, want);
        Ok(())
    }

    #[test]
    fn golden_pong() -> TestResult {
        let f = encode(&ZoneToHost::Pong { nonce: 0x102 })?;
        let want = [
            0x42, 0x48, 0x5a, 0x57, 0x06, 0x02, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x91, 0x62, 0xba, 0x89, 0x09, 0x82,
            0x02,
        ];
        assert_eq!(f, want);
        Ok(())
    }

    #[test]
    fn golden_exited_signaled() -> TestResult {
        let m = ZoneToHost::Exited {
            stream_id: StreamId(5),
            status: ExitStatus::Signaled { signal: 9, core_dumped: true },
        };
        // variant 6, id 5, Signaled = 1, zigzag(9) = 18, true
        assert_eq!(encode(&m)?[HEADER_LEN..], [0x06, 0x05, 0x01, 0x12, 0x01]);
        Ok(())
    }

    #[test]
    fn golden_query_workload_and_its_answer() -> TestResult {
        // HostToZone variant 12, id 7.
        assert_eq!(encode(&HostToZone::QueryWorkload { id: StreamId(7) })?[HEADER_LEN..], [0x0c, 0x07]);
        let m = ZoneToHost::WorkloadStatus {
            id: StreamId(7),
            phase: WorkloadPhase::Exited { status: ExitStatus::Code(3) },
        };
        // ZoneToHost variant 11, id 7, Exited = 2, Code = 0, 3
        assert_eq!(encode(&m)?[HEADER_LEN..], [0x0b, 0x07, 0x02, 0x00, 0x03]);
        let running = ZoneToHost::WorkloadStatus { id: StreamId(7), phase: WorkloadPhase::Running { pid: 300 } };
        assert_eq!(encode(&running)?[HEADER_LEN..], [0x0b, 0x07, 0x01, 0xac, 0x02]);
        Ok(())
    }

    #[test]
    fn golden_port_forward_and_its_answer() -> TestResult {
        // HostToZone variant 13, id 9, port 8080 as a varint.
        assert_eq!(
            encode(&HostToZone::PortForward { stream_id: StreamId(9), port: 8080 })?[HEADER_LEN..],
            [0x0d, 0x09, 0x90, 0x3f]
        );
        // ZoneToHost variant 12, id 9.
        assert_eq!(encode(&ZoneToHost::PortForwardConnected { stream_id: StreamId(9) })?[HEADER_LEN..], [0x0c, 0x09]);
        assert!(HostToZone::PortForward { stream_id: StreamId(9), port: 0 }.validate().is_err());
        Ok(())
    }

    #[test]
    fn golden_update_limits_and_its_answer() -> TestResult {
        // HostToZone variant 14, id 9, then the limits: memory Some(4096), cpu None, pids Some(7).
        let limits = ResourceLimits { memory_bytes: Some(4096), cpu: None, pids_max: Some(7) };
        assert_eq!(
            encode(&HostToZone::UpdateLimits { id: StreamId(9), limits })?[HEADER_LEN..],
            [0x0e, 0x09, 0x01, 0x80, 0x20, 0x00, 0x01, 0x07]
        );
        // ZoneToHost variant 13, id 9.
        assert_eq!(encode(&ZoneToHost::LimitsUpdated { id: StreamId(9) })?[HEADER_LEN..], [0x0d, 0x09]);
        let zero = ResourceLimits { memory_bytes: Some(0), cpu: None, pids_max: None };
        assert!(HostToZone::UpdateLimits { id: StreamId(9), limits: zero }.validate().is_err());
        Ok(())
    }

    #[test]
    fn golden_create_workload() -> TestResult {
        let m = HostToZone::CreateWorkload { id: StreamId(1), spec: spec() };
        let want: &[u8] = &[
            0x01, 0x01, // CreateWorkload, id 1
            0x01, 0x02, b's', b'h', // argv ["sh"]
            0x01, 0x01, b'A', 0x01, b'b', // env [A=b]
            0x01, b'/', // cwd
            0x00, 0x00, 0x00, // uid, gid, no additional gids
            0x00, // tty
            0x01, 0x01, 0x00, 0x00, // memory Some(1), cpu None, pids None
            0x01, // readonly_rootfs
            0x00, // hostname None
            0x04, b'x', b'v', b'd', b'b', // root_device
            0x01, // security Some
            0x80, 0x08, 0x80, 0x08, 0x80, 0x08, 0x00, 0x00, // capabilities: bounding, effective, permitted 0x400
            0x01, // no_new_privs
            0x01, 0x02, b'/', b'k', // masked_paths ["/k"]
            0x00, // readonly_paths []
            0x01, 0x01, 0x06, 0x01, 0x02, 0x80, 0x80, 0xfc, 0xff, 0x07, // one program: RET 0x7fff0000
            0x00, // privileged
            0x01, 0x00, 0x01, b'v', 0x02, b'/', b'e', 0x01, // mounts [Snapshot "v" at "/e", read-only]
        ];
        assert_eq!(&encode(&m)?[HEADER_LEN..], want);
        Ok(())
    }

    #[test]
    fn golden_volume_data() -> TestResult {
        let m = HostToZone::VolumeData {
            volume: "s-1".into(),
            entries: vec![
                VolumeEntry { path: String::new(), kind: VolumeEntryKind::Dir { mode: 0o755 } },
                VolumeEntry {
                    path: "..d/t".into(),
                    kind: VolumeEntryKind::File { mode: 0o644, offset: 0, data: Bytes::from_static(b"x") },
                },
                VolumeEntry { path: "t".into(), kind: VolumeEntryKind::Symlink { target: "..d/t".into() } },
            ],
        };
        let want: &[u8] = &[
            0x0f, // VolumeData (variant 15)
            0x03, b's', b'-', b'1', // volume
            0x03, // three entries
            0x00, 0x00, 0xed, 0x03, // "" Dir 0o755
            0x05, b'.', b'.', b'd', b'/', b't', 0x01, 0xa4, 0x03, 0x00, 0x01, b'x', // File 0o644 @0 "x"
            0x01, b't', 0x02, 0x05, b'.', b'.', b'd', b'/', b't', // Symlink -> ..d/t
        ];
        assert_eq!(&encode(&m)?[HEADER_LEN..], want);
        assert_eq!(decode_slice::<HostToZone>(&encode(&m)?)?.map(|(d, _)| d), Some(m));
        Ok(())
    }

    #[test]
    fn hostile_volume_data_is_refused_on_decode() -> TestResult {
        let entry = |path: &str, kind: VolumeEntryKind| VolumeEntry { path: path.into(), kind };
        let file = || VolumeEntryKind::File { mode: 0o644, offset: 0, data: Bytes::new() };
        let bad = [
            vec![entry("../x", file())],
            vec![entry("/etc/shadow", file())],
            vec![entry("a//b", file())],
            vec![entry("a/./b", file())],
            vec![entry("x", VolumeEntryKind::Symlink { target: "/etc/shadow".into() })],
            vec![entry("x", VolumeEntryKind::Symlink { target: "a/../../x".into() })],
            vec![entry("", VolumeEntryKind::Symlink { target: "a".into() })],
            vec![entry("x", VolumeEntryKind::Dir { mode: 0o4755 })],
            vec![entry(&vec!["d"; limits::MAX_VOLUME_DEPTH + 1].join("/"), file())],
            vec![entry(&"n".repeat(limits::MAX_NAME_LEN + 1), file())],
            vec![],
        ];
        for entries in bad {
            let m = HostToZone::VolumeData { volume: "v".into(), entries: entries.clone() };
            assert!(encode(&m).is_err(), "encoded {entries:?}");
            // The same bytes forged past the encoder's checks are refused by the decoder.
            let payload = postcard::to_allocvec(&m)?;
            let f = raw_frame(PROTOCOL_VERSION, Direction::HostToZone as u8, 0, &payload);
            assert!(matches!(decode_slice::<HostToZone>(&f), Err(WireError::Invalid(_))), "decoded {entries:?}");
        }
        for volume in ["", "-x", "A", "a/b", ".."] {
            let m = HostToZone::VolumeData { volume: volume.into(), entries: vec![entry("", file())] };
            assert!(encode(&m).is_err(), "volume name {volume:?}");
        }
        let too_big =
            VolumeEntryKind::File { mode: 0o644, offset: 0, data: Bytes::from(vec![0; limits::MAX_VOLUME_CHUNK + 1]) };
        assert!(encode(&HostToZone::VolumeData { volume: "v".into(), entries: vec![entry("f", too_big)] }).is_err());
        // A list longer than its limit is cut off while decoding, before it is built.
        let many = vec![entry("f", VolumeEntryKind::Dir { mode: 0 }); limits::MAX_VOLUME_ENTRIES + 1];
        let payload = postcard::to_allocvec(&HostToZone::VolumeData { volume: "v".into(), entries: many })?;
        let f = raw_frame(PROTOCOL_VERSION, Direction::HostToZone as u8, 0, &payload);
        assert!(decode_slice::<HostToZone>(&f).is_err());
        Ok(())
    }

    #[test]
    fn bad_magic() {
        let mut f = host_frame(&[0x0b, 0x01]);
        f[0] = b'X';
        assert!(matches!(decode_slice::<HostToZone>(&f), Err(WireError::BadMagic { found }) if found == *b"XHZW"));
        // Refused as soon as the four magic bytes are in, without waiting for the rest of the header.
        assert!(matches!(decode_slice::<HostToZone>(&f[..4]), Err(WireError::BadMagic { .. })));
        assert!(matches!(decode_slice::<HostToZone>(&f[..3]), Ok(None)));
    }

    #[test]
    fn bad_version() {
        for v in [0, 1, 2, 3, 4, 5, 7, 0xff] {
            let f = raw_frame(v, Direction::HostToZone as u8, 0, &[0x0b, 0x01]);
            assert!(
                matches!(decode_slice::<HostToZone>(&f), Err(WireError::UnsupportedVersion { found }) if found == v)
            );
            assert!(matches!(decode_slice::<HostToZone>(&f[..5]), Err(WireError::UnsupportedVersion { .. })));
        }
    }

    #[test]
    fn wrong_direction() -> TestResult {
        let f = encode(&ZoneToHost::Pong { nonce: 1 })?;
        let r = decode_slice::<HostToZone>(&f);
        assert!(matches!(r, Err(WireError::WrongDirection { expected: Direction::HostToZone, found: 2 })));
        let f = raw_frame(PROTOCOL_VERSION, 0, 0, &[0x0b, 0x01]);
        assert!(matches!(decode_slice::<ZoneToHost>(&f), Err(WireError::WrongDirection { found: 0, .. })));
        Ok(())
    }

    #[test]
    fn reserved_bits() {
        let f = raw_frame(PROTOCOL_VERSION, Direction::HostToZone as u8, 0x100, &[0x0b, 0x01]);
        assert!(matches!(decode_slice::<HostToZone>(&f), Err(WireError::ReservedBitsSet { found: 0x100 })));
    }

    #[test]
    fn bad_crc() {
        let mut f = host_frame(&[0x0b, 0x01]);
        f[HEADER_LEN + 1] = 0x02;
        assert!(matches!(decode_slice::<HostToZone>(&f), Err(WireError::ChecksumMismatch { .. })));
        let mut f = host_frame(&[0x0b, 0x01]);
        f[CRC_AT] ^= 1;
        assert!(matches!(decode_slice::<HostToZone>(&f), Err(WireError::ChecksumMismatch { .. })));
    }

    #[test]
    fn oversized_length_refused_from_the_header_alone() {
        for len in [MAX_FRAME_PAYLOAD as u32 + 1, u32::MAX] {
            let mut head = host_frame(&[]);
            head[LEN_AT..LEN_AT + 4].copy_from_slice(&len.to_le_bytes());
            // Only 12 bytes: the length is refused before the CRC even arrives, let alone the payload.
            let mut buf = BytesMut::from(&head[..LEN_AT + 4]);
            assert!(matches!(
                decode::<HostToZone>(&mut buf),
                Err(WireError::FrameTooLarge { len: l, max: MAX_FRAME_PAYLOAD }) if l == len as usize
            ));
        }
        // The limit itself is fine: the decoder waits for the payload.
        let mut head = host_frame(&[]);
        head[LEN_AT..LEN_AT + 4].copy_from_slice(&(MAX_FRAME_PAYLOAD as u32).to_le_bytes());
        assert!(matches!(decode_slice::<HostToZone>(&head), Ok(None)));
    }

    #[test]
    fn trailing_bytes() {
        let f = host_frame(&[0x0b, 0x01, 0x00]);
        assert!(matches!(decode_slice::<HostToZone>(&f), Err(WireError::TrailingBytes { count: 1 })));
    }

    #[test]
    fn undecodable_payloads() {
        for payload in [
            &[][..],
            &[0x7f],
            &[0x0b],
            &[0x0b, 0xff],
            &[0x0b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ] {
            let f = host_frame(payload);
            assert!(matches!(decode_slice::<HostToZone>(&f), Err(WireError::Deserialize(_))), "{payload:02x?}");
        }
        // A bool that is neither 0 nor 1: Exited { 1, Signaled { 9, 2 } }.
        let f = raw_frame(PROTOCOL_VERSION, 2, 0, &[0x06, 0x01, 0x01, 0x12, 0x02]);
        assert!(matches!(decode_slice::<ZoneToHost>(&f), Err(WireError::Deserialize(_))));
    }

    #[test]
    fn lying_length_prefixes() {
        let ten_million = varint(10_000_000);
        // postcard itself: a list, a string and a byte string claiming 10M entries/bytes in a few bytes of input.
        let mut input = ten_million.clone();
        input.extend_from_slice(&[0, 0, 0]);
        assert!(matches!(postcard::from_bytes::<Vec<String>>(&input), Err(postcard::Error::DeserializeUnexpectedEnd)));
        assert!(matches!(postcard::from_bytes::<String>(&input), Err(postcard::Error::DeserializeUnexpectedEnd)));
        assert!(matches!(postcard::from_bytes::<Bytes>(&input), Err(postcard::Error::DeserializeUnexpectedEnd)));
        // In a frame: CreateWorkload { id 7, argv: <10M entries> ... }, and Stdin { data: <10M bytes> }.
        let mut payload = vec![0x01, 0x07];
        payload.extend_from_slice(&ten_million);
        payload.extend_from_slice(&[0x01, b'x']);
        assert!(matches!(decode_slice::<HostToZone>(&host_frame(&payload)), Err(WireError::Deserialize(_))));
        let mut payload = vec![0x06, 0x07];
        payload.extend_from_slice(&ten_million);
        payload.extend_from_slice(b"abc");
        assert!(matches!(decode_slice::<HostToZone>(&host_frame(&payload)), Err(WireError::Deserialize(_))));
    }

    #[test]
    fn too_many_entries_stop_while_decoding() {
        // A legal-size frame really holding MAX_ARGS + 1 empty argv entries: refused by the bounded deserialiser.
        let mut payload = vec![0x01, 0x07];
        payload.extend_from_slice(&varint(MAX_ARGS as u64 + 1));
        payload.extend(std::iter::repeat_n(0u8, MAX_ARGS + 1));
        payload.extend_from_slice(&[0x00, 0x01, b'/', 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(decode_slice::<HostToZone>(&host_frame(&payload)), Err(WireError::Deserialize(_))));
        // Exactly MAX_ARGS is fine.
        let mut payload = vec![0x01, 0x07];
        payload.extend_from_slice(&varint(MAX_ARGS as u64));
        for _ in 0..MAX_ARGS {
            payload.extend_from_slice(&[0x01, b'x']);
        }
        payload.extend_from_slice(&[0x00, 0x01, b'/', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, b'x', 0x00, 0x00]);
        assert!(matches!(decode_slice::<HostToZone>(&host_frame(&payload)), Ok(Some(_))));
        // Env: Exec { 1, 2, ["x"], <MAX_ENV + 1 entries> }.
        let mut payload = vec![0x05, 0x01, 0x02, 0x01, 0x01, b'x'];
        payload.extend_from_slice(&varint(MAX_ENV as u64 + 1));
        for _ in 0..=MAX_ENV {
            payload.extend_from_slice(&[0x01, b'A', 0x00]);
        }
        payload.extend_from_slice(&[0x00, 0x00, 0x00]);
        assert!(matches!(decode_slice::<HostToZone>(&host_frame(&payload)), Err(WireError::Deserialize(_))));
    }

    #[test]
    fn invalid_messages_are_refused_both_ways() -> TestResult {
        let mut empty_argv = spec();
        empty_argv.argv.clear();
        let m = HostToZone::CreateWorkload { id: StreamId(1), spec: empty_argv };
        assert!(matches!(encode(&m), Err(WireError::Invalid(ValidationError::Empty { field: "argv" }))));
        // The same bytes produced by hand are refused on decode.
        let mut payload = postcard::to_allocvec(&m)?;
        assert!(matches!(decode_slice::<HostToZone>(&host_frame(&payload)), Err(WireError::Invalid(_))));
        payload.clear();

        let big = ZoneToHost::Output {
            stream_id: StreamId(1),
            fd: OutputFd::Stdout,
            data: vec![0; MAX_DATA_CHUNK + 1].into(),
        };
        assert!(matches!(encode(&big), Err(WireError::Invalid(ValidationError::TooLong { field: "output.data", .. }))));
        let f = raw_frame(PROTOCOL_VERSION, 2, 0, &postcard::to_allocvec(&big)?);
        assert!(matches!(decode_slice::<ZoneToHost>(&f), Err(WireError::Invalid(ValidationError::TooLong { .. }))));

        let hello = ZoneToHost::Hello {
            protocol_version: 9,
            init_version: "1".into(),
            kernel_release: "6.1".into(),
            boot_time_ms: 1,
        };
        assert!(matches!(encode(&hello), Err(WireError::Invalid(ValidationError::HelloVersionMismatch { found: 9 }))));
        Ok(())
    }

    #[test]
    fn encode_errors_leave_the_buffer_unchanged() -> TestResult {
        let mut buf = BytesMut::new();
        encode_into(&HostToZone::Ping { nonce: 3 }, &mut buf)?;
        let before = buf.clone();
        let bad = HostToZone::Signal { id: StreamId(1), signal: 0 };
        assert!(matches!(
            encode_into(&bad, &mut buf),
            Err(WireError::Invalid(ValidationError::InvalidSignal { signal: 0 }))
        ));
        assert_eq!(buf, before);
        // Every entry within its limit, the whole over the frame limit: stopped during serialisation.
        let mut s = spec();
        s.argv = vec!["x".repeat(100 * 1024); 12];
        let m = HostToZone::CreateWorkload { id: StreamId(1), spec: s };
        assert!(matches!(
            encode_into(&m, &mut buf),
            Err(WireError::FrameTooLarge { len, max: MAX_FRAME_PAYLOAD }) if len > MAX_FRAME_PAYLOAD
        ));
        assert_eq!(buf, before);
        Ok(())
    }

    #[test]
    fn largest_chunk_fits_in_a_frame() -> TestResult {
        let m = ZoneToHost::Output {
            stream_id: StreamId(u64::MAX),
            fd: OutputFd::Stderr,
            data: vec![7; MAX_DATA_CHUNK].into(),
        };
        let f = encode(&m)?;
        assert!(f.len() < HEADER_LEN + MAX_FRAME_PAYLOAD);
        assert_eq!(decode_slice::<ZoneToHost>(&f)?, Some((m, f.len())));
        Ok(())
    }
}
