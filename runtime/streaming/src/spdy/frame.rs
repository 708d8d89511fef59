//! SPDY/3.1 frames and their wire form: pure encode and decode, as `tokio_util` codecs.
//!
//! The peer is hostile: every length is checked against a limit before anything is buffered or
//! inflated, and header blocks are inflated into a bounded buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::compress::{HeaderCompressor, HeaderDecompressor};
use crate::error::FrameError;

/// The SPDY version this crate speaks.
pub const VERSION: u16 = 3;
/// Bytes of a frame header (both kinds).
const HEADER_LEN: usize = 8;
/// Largest control frame payload accepted. kubelet's peers send a handful of short headers per stream.
pub const MAX_CONTROL_PAYLOAD: usize = 64 * 1024;
/// Largest DATA payload accepted. Go's peer writes what each `Write` gets (32 KiB from `io.Copy`).
pub const MAX_DATA_PAYLOAD: usize = 1024 * 1024;
/// Largest DATA payload this end writes.
pub const WRITE_CHUNK: usize = 32 * 1024;
/// Most name/value pairs accepted in one header block.
pub const MAX_HEADERS: usize = 128;

/// FIN on a DATA frame or a SYN_STREAM/SYN_REPLY/HEADERS frame: the sender's last frame on the stream.
pub const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL on a SYN_STREAM: the receiver may not send on the stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes (draft section 2.6.2) this crate sends.
pub mod rst {
    /// Generic error.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// The stream is not active.
    pub const INVALID_STREAM: u32 = 2;
    /// The stream is refused before any processing.
    pub const REFUSED_STREAM: u32 = 3;
    /// The stream is no longer needed.
    pub const CANCEL: u32 = 5;
    /// The endpoint cannot take the stream (too many open).
    pub const FLOW_CONTROL_ERROR: u32 = 7;
}

/// GOAWAY status codes.
pub mod goaway {
    /// Normal session teardown.
    pub const OK: u32 = 0;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u32 = 1;
}

/// A header block: lower-case names, each with its values (SPDY joins several values with NUL).
pub type Headers = Vec<(String, String)>;

/// Returns the first value of header `name` (names are lower case on the wire).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.split('\0').next().unwrap_or(v))
}

/// One SPDY/3 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// The new stream (odd when the client opens it).
        stream_id: u32,
        /// The stream it belongs to, or 0.
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        /// FIN and UNIDIRECTIONAL.
        flags: u8,
        /// The stream's headers.
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// The accepted stream.
        stream_id: u32,
        /// FIN.
        flags: u8,
        /// Reply headers.
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream {
        /// The stream.
        stream_id: u32,
        /// Why (see [`rst`]).
        status: u32,
    },
    /// Session settings: (flags, id, value) entries.
    Settings(Vec<(u8, u32, u32)>),
    /// Liveness probe; the receiver echoes a ping the peer started.
    Ping(u32),
    /// Ends the session.
    GoAway {
        /// Last stream the sender processed.
        last_good_stream_id: u32,
        /// Why (see [`goaway`]).
        status: u32,
    },
    /// More headers on an open stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// FIN.
        flags: u8,
        /// The headers.
        headers: Headers,
    },
    /// Grants the sender more flow-control window.
    WindowUpdate {
        /// The stream (0 for the session, SPDY/3.1).
        stream_id: u32,
        /// Bytes granted.
        delta: u32,
    },
    /// Stream payload.
    Data {
        /// The stream.
        stream_id: u32,
        /// FIN.
        flags: u8,
        /// The payload.
        data: Bytes,
    },
}

mod kind {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

const ID_MASK: u32 = 0x7fff_ffff;

/// Decodes frames from the peer. Holds the session's header decompressor, so one per connection.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    headers: HeaderDecompressor,
}

/// Encodes frames for the peer. Holds the session's header compressor, so one per connection.
#[derive(Debug, Default)]
pub struct FrameEncoder {
    headers: HeaderCompressor,
}

impl Decoder for FrameDecoder {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        // Frames of unknown types are skipped here: returning None for one would make the caller wait
        // for more input while a known frame may already be buffered.
        loop {
            match self.decode_one(src)? {
                Step::NeedMore => return Ok(None),
                Step::Frame(f) => return Ok(Some(f)),
                Step::Skipped => {}
            }
        }
    }
}

enum Step {
    NeedMore,
    Frame(Frame),
    Skipped,
}

impl FrameDecoder {
    fn decode_one(&mut self, src: &mut BytesMut) -> Result<Step, FrameError> {
        if src.len() < HEADER_LEN {
            return Ok(Step::NeedMore);
        }
        let first = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        let flags = src[4];
        let len = usize::from(src[5]) << 16 | usize::from(src[6]) << 8 | usize::from(src[7]);
        let control = first & 0x8000_0000 != 0;
        let limit = if control { MAX_CONTROL_PAYLOAD } else { MAX_DATA_PAYLOAD };
        if len > limit {
            return Err(FrameError::TooLarge { len, limit });
        }
        if src.len() < HEADER_LEN + len {
            src.reserve(HEADER_LEN + len - src.len());
            return Ok(Step::NeedMore);
        }
        src.advance(HEADER_LEN);
        let mut payload = src.split_to(len).freeze();
        if !control {
            return Ok(Step::Frame(Frame::Data { stream_id: first & ID_MASK, flags, data: payload }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(FrameError::Version(version));
        }
        // The low 16 bits are the type.
        let ty = (first & 0xffff) as u16;
        self.control(ty, flags, &mut payload)
    }

    fn control(&mut self, ty: u16, flags: u8, p: &mut Bytes) -> Result<Step, FrameError> {
        let frame = match ty {
            kind::SYN_STREAM => {
                need(p, 10, "SYN_STREAM")?;
                let stream_id = p.get_u32() & ID_MASK;
                let associated_to = p.get_u32() & ID_MASK;
                let priority = p.get_u8() >> 5;
                let _slot = p.get_u8();
                let headers = self.headers.decompress(p)?;
                Frame::SynStream { stream_id, associated_to, priority, flags, headers }
            }
            kind::SYN_REPLY | kind::HEADERS => {
                need(p, 4, "SYN_REPLY/HEADERS")?;
                let stream_id = p.get_u32() & ID_MASK;
                let headers = self.headers.decompress(p)?;
                if ty == kind::SYN_REPLY {
                    Frame::SynReply { stream_id, flags, headers }
                } else {
                    Frame::Headers { stream_id, flags, headers }
                }
            }
            kind::RST_STREAM => {
                exact(p, 8, "RST_STREAM")?;
                Frame::RstStream { stream_id: p.get_u32() & ID_MASK, status: p.get_u32() }
            }
            kind::SETTINGS => {
                need(p, 4, "SETTINGS")?;
                let n = p.get_u32() as usize;
                // Each entry is 8 bytes and the payload length is bounded: count against what is there.
                exact(p, n.saturating_mul(8), "SETTINGS")?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let word = p.get_u32();
                    entries.push(((word >> 24) as u8, word & 0x00ff_ffff, p.get_u32()));
                }
                Frame::Settings(entries)
            }
            kind::PING => {
                exact(p, 4, "PING")?;
                Frame::Ping(p.get_u32())
            }
            kind::GOAWAY => {
                exact(p, 8, "GOAWAY")?;
                Frame::GoAway { last_good_stream_id: p.get_u32() & ID_MASK, status: p.get_u32() }
            }
            kind::WINDOW_UPDATE => {
                exact(p, 8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate { stream_id: p.get_u32() & ID_MASK, delta: p.get_u32() & ID_MASK }
            }
            // The draft says to ignore control frames of unknown types (CREDENTIAL, type 10, among them).
            _ => return Ok(Step::Skipped),
        };
        Ok(Step::Frame(frame))
    }
}

fn need(p: &Bytes, n: usize, what: &'static str) -> Result<(), FrameError> {
    if p.len() < n { Err(FrameError::Truncated(what)) } else { Ok(()) }
}

fn exact(p: &Bytes, n: usize, what: &'static str) -> Result<(), FrameError> {
    if p.len() != n { Err(FrameError::Truncated(what)) } else { Ok(()) }
}

impl Encoder<Frame> for FrameEncoder {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let mut body = BytesMut::new();
        let (ty, flags) = match frame {
            Frame::Data { stream_id, flags, data } => {
                if data.len() > MAX_DATA_PAYLOAD {
                    return Err(FrameError::TooLarge { len: data.len(), limit: MAX_DATA_PAYLOAD });
                }
                dst.reserve(HEADER_LEN + data.len());
                dst.put_u32(stream_id & ID_MASK);
                put_flags_len(dst, flags, data.len());
                dst.put_slice(&data);
                return Ok(());
            }
            Frame::SynStream { stream_id, associated_to, priority, flags, headers } => {
                body.put_u32(stream_id & ID_MASK);
                body.put_u32(associated_to & ID_MASK);
                body.put_u8((priority & 0x7) << 5);
                body.put_u8(0);
                self.headers.compress(&headers, &mut body)?;
                (kind::SYN_STREAM, flags)
            }
            Frame::SynReply { stream_id, flags, headers } => {
                body.put_u32(stream_id & ID_MASK);
                self.headers.compress(&headers, &mut body)?;
                (kind::SYN_REPLY, flags)
            }
            Frame::Headers { stream_id, flags, headers } => {
                body.put_u32(stream_id & ID_MASK);
                self.headers.compress(&headers, &mut body)?;
                (kind::HEADERS, flags)
            }
            Frame::RstStream { stream_id, status } => {
                body.put_u32(stream_id & ID_MASK);
                body.put_u32(status);
                (kind::RST_STREAM, 0)
            }
            Frame::Settings(entries) => {
                body.put_u32(entries.len() as u32);
                for (flags, id, value) in entries {
                    body.put_u32(u32::from(flags) << 24 | (id & 0x00ff_ffff));
                    body.put_u32(value);
                }
                (kind::SETTINGS, 0)
            }
            Frame::Ping(id) => {
                body.put_u32(id);
                (kind::PING, 0)
            }
            Frame::GoAway { last_good_stream_id, status } => {
                body.put_u32(last_good_stream_id & ID_MASK);
                body.put_u32(status);
                (kind::GOAWAY, 0)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                body.put_u32(stream_id & ID_MASK);
                body.put_u32(delta & ID_MASK);
                (kind::WINDOW_UPDATE, 0)
            }
        };
        if body.len() > MAX_CONTROL_PAYLOAD {
            return Err(FrameError::TooLarge { len: body.len(), limit: MAX_CONTROL_PAYLOAD });
        }
        dst.reserve(HEADER_LEN + body.len());
        dst.put_u32(0x8000_0000 | u32::from(VERSION) << 16 | u32::from(ty));
        put_flags_len(dst, flags, body.len());
        dst.put_slice(&body);
        Ok(())
    }
}

fn put_flags_len(dst: &mut BytesMut, flags: u8, len: usize) {
    // Callers bound len to at most MAX_DATA_PAYLOAD, well inside 24 bits.
    dst.put_u32(u32::from(flags) << 24 | (len as u32 & 0x00ff_ffff));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn hdrs(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    fn samples() -> Vec<Frame> {
        vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: hdrs(&[("streamtype", "error")]),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 1,
                priority: 7,
                flags: FLAG_FIN | FLAG_UNIDIRECTIONAL,
                headers: hdrs(&[("streamtype", "stdin"), ("port", "80\u{0}81")]),
            },
            Frame::SynReply { stream_id: 1, flags: 0, headers: Headers::new() },
            Frame::Headers { stream_id: 5, flags: FLAG_FIN, headers: hdrs(&[("a", "b")]) },
            Frame::RstStream { stream_id: 7, status: rst::CANCEL },
            Frame::Settings(vec![(0, 7, 65536), (1, 4, 100)]),
            Frame::Ping(0x8000_0001),
            Frame::GoAway { last_good_stream_id: 9, status: goaway::OK },
            Frame::WindowUpdate { stream_id: 3, delta: 4096 },
            Frame::Data { stream_id: 3, flags: FLAG_FIN, data: Bytes::from_static(b"hello") },
            Frame::Data { stream_id: 1, flags: 0, data: Bytes::new() },
            Frame::SynReply { stream_id: 3, flags: FLAG_FIN, headers: hdrs(&[("streamtype", "stdin")]) },
        ]
    }

    fn encode_all(frames: &[Frame]) -> Result<BytesMut, FrameError> {
        let mut enc = FrameEncoder::default();
        let mut buf = BytesMut::new();
        for f in frames {
            enc.encode(f.clone(), &mut buf)?;
        }
        Ok(buf)
    }

    fn decode_all(dec: &mut FrameDecoder, buf: &mut BytesMut) -> Result<Vec<Frame>, FrameError> {
        let mut out = Vec::new();
        while let Some(f) = dec.decode(buf)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn round_trips_every_frame_type_on_one_session() -> TestResult {
        let frames = samples();
        let mut buf = encode_all(&frames)?;
        let got = decode_all(&mut FrameDecoder::default(), &mut buf)?;
        assert_eq!(got, frames);
        assert!(buf.is_empty());
        Ok(())
    }

    #[test]
    fn split_at_every_offset_gives_the_same_frames() -> TestResult {
        let frames = samples();
        let wire = encode_all(&frames)?.freeze();
        for cut in 0..=wire.len() {
            let mut dec = FrameDecoder::default();
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = decode_all(&mut dec, &mut buf)?;
            buf.extend_from_slice(&wire[cut..]);
            got.extend(decode_all(&mut dec, &mut buf)?);
            assert_eq!(got, frames, "cut at {cut}");
        }
        Ok(())
    }

    #[test]
    fn data_frame_wire_form_matches_the_draft() -> TestResult {
        let buf = encode_all(&[Frame::Data { stream_id: 5, flags: FLAG_FIN, data: Bytes::from_static(b"ab") }])?;
        assert_eq!(&buf[..], &[0, 0, 0, 5, 1, 0, 0, 2, b'a', b'b']);
        let buf = encode_all(&[Frame::Ping(7)])?;
        assert_eq!(&buf[..], &[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7]);
        Ok(())
    }

    #[test]
    fn oversized_lengths_are_refused_before_buffering() {
        let mut dec = FrameDecoder::default();
        // A DATA frame announcing 16 MiB - 1: refused from its 8-byte header alone.
        let mut buf = BytesMut::from(&[0u8, 0, 0, 1, 0, 0xff, 0xff, 0xff][..]);
        assert!(matches!(dec.decode(&mut buf), Err(FrameError::TooLarge { .. })));
        let mut buf = BytesMut::from(&[0x80u8, 3, 0, 1, 0, 0x01, 0, 1][..]);
        assert!(matches!(dec.decode(&mut buf), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn wrong_version_and_short_control_frames_are_errors() {
        let mut buf = BytesMut::from(&[0x80u8, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(matches!(FrameDecoder::default().decode(&mut buf), Err(FrameError::Version(2))));
        let mut buf = BytesMut::from(&[0x80u8, 3, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(matches!(FrameDecoder::default().decode(&mut buf), Err(FrameError::Truncated(_))));
        // SETTINGS claiming more entries than it carries.
        let mut buf = BytesMut::from(&[0x80u8, 3, 0, 4, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(FrameDecoder::default().decode(&mut buf), Err(FrameError::Truncated(_))));
    }

    #[test]
    fn unknown_control_types_are_skipped() -> TestResult {
        let mut buf = BytesMut::from(&[0x80u8, 3, 0, 10, 0, 0, 0, 2, 9, 9][..]);
        buf.extend_from_slice(&encode_all(&[Frame::Ping(1)])?);
        assert_eq!(decode_all(&mut FrameDecoder::default(), &mut buf)?, vec![Frame::Ping(1)]);
        Ok(())
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut dec = FrameDecoder::default();
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..64 {
                match dec.decode(&mut buf) {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn header_blocks_round_trip(pairs in proptest::collection::vec(("[a-z-]{1,12}", "[ -~]{0,40}"), 0..20)) {
            let headers: Headers = pairs;
            let frame = Frame::Headers { stream_id: 1, flags: 0, headers };
            let mut buf = encode_all(std::slice::from_ref(&frame)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got = FrameDecoder::default().decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got, Some(frame));
        }
    }
}
