//! SPDY/3 header blocks: a count and length-prefixed names and values, deflated with one zlib stream per
//! direction and session, preset with the SPDY dictionary and sync-flushed after every block.

use bytes::{Buf, BufMut, Bytes};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dictionary::DICTIONARY;
use super::frame::{Headers, MAX_HEADERS};
use crate::error::FrameError;

/// Largest inflated header block accepted: a compressed block of a few bytes can inflate to megabytes.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// Inflates the peer's header blocks (one per session: the zlib stream spans all of them).
#[derive(Debug)]
pub struct HeaderDecompressor {
    z: Decompress,
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        Self { z: Decompress::new(true) }
    }
}

impl HeaderDecompressor {
    /// Inflates and parses the header block that is the rest of `p`.
    pub fn decompress(&mut self, p: &mut Bytes) -> Result<Headers, FrameError> {
        let input = p.split_off(0);
        let mut out = vec![0u8; MAX_HEADER_BLOCK + 1];
        let mut read = 0usize;
        let mut written = 0usize;
        loop {
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let res = self.z.decompress(&input[read..], &mut out[written..], FlushDecompress::Sync);
            // Progress is bounded by the slices given, so these differences fit in usize.
            read += (self.z.total_in() - in0) as usize;
            written += (self.z.total_out() - out0) as usize;
            match res {
                Ok(Status::StreamEnd) => return Err(FrameError::HeaderStreamEnded),
                Ok(_) => {}
                // The stream's header names the SPDY dictionary; anything else fails set_dictionary's check.
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z.set_dictionary(DICTIONARY).map_err(FrameError::Inflate)?;
                    continue;
                }
                Err(e) => return Err(FrameError::Inflate(e)),
            }
            if written > MAX_HEADER_BLOCK {
                return Err(FrameError::HeaderBlockTooLarge { limit: MAX_HEADER_BLOCK });
            }
            if read == input.len() && written < out.len() {
                break;
            }
            if self.z.total_in() == in0 && self.z.total_out() == out0 {
                // Input left but zlib takes none of it: a truncated or corrupt block.
                return Err(FrameError::BadHeaderBlock("inflate made no progress"));
            }
        }
        out.truncate(written);
        parse_block(Bytes::from(out))
    }
}

fn parse_block(mut b: Bytes) -> Result<Headers, FrameError> {
    let n = take_u32(&mut b)? as usize;
    if n > MAX_HEADERS {
        return Err(FrameError::TooManyHeaders { count: n, limit: MAX_HEADERS });
    }
    let mut headers = Vec::with_capacity(n);
    for _ in 0..n {
        let name = take_str(&mut b)?;
        let value = take_str(&mut b)?;
        if name.is_empty() {
            return Err(FrameError::BadHeaderBlock("empty header name"));
        }
        headers.push((name.to_ascii_lowercase(), value));
    }
    if b.has_remaining() {
        return Err(FrameError::BadHeaderBlock("bytes after the last header"));
    }
    Ok(headers)
}

fn take_u32(b: &mut Bytes) -> Result<u32, FrameError> {
    if b.remaining() < 4 {
        return Err(FrameError::BadHeaderBlock("truncated length"));
    }
    Ok(b.get_u32())
}

fn take_str(b: &mut Bytes) -> Result<String, FrameError> {
    let len = take_u32(b)? as usize;
    if b.remaining() < len {
        return Err(FrameError::BadHeaderBlock("length beyond the block"));
    }
    String::from_utf8(b.split_to(len).to_vec()).map_err(|_| FrameError::BadHeaderBlock("header not UTF-8"))
}

/// Deflates this end's header blocks (one per session).
#[derive(Debug)]
pub struct HeaderCompressor {
    z: Compress,
    primed: bool,
}

impl Default for HeaderCompressor {
    fn default() -> Self {
        Self { z: Compress::new(Compression::default(), true), primed: false }
    }
}

impl HeaderCompressor {
    /// Appends the deflated block of `headers` to `dst`.
    pub fn compress(&mut self, headers: &Headers, dst: &mut impl BufMut) -> Result<(), FrameError> {
        if !self.primed {
            self.z.set_dictionary(DICTIONARY).map_err(FrameError::Deflate)?;
            self.primed = true;
        }
        let mut raw = Vec::new();
        raw.put_u32(len32(headers.len())?);
        for (name, value) in headers {
            raw.put_u32(len32(name.len())?);
            raw.put_slice(name.to_ascii_lowercase().as_bytes());
            raw.put_u32(len32(value.len())?);
            raw.put_slice(value.as_bytes());
        }
        let mut out = vec![0u8; raw.len() + 64];
        let mut read = 0usize;
        let mut written = 0usize;
        loop {
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            self.z.compress(&raw[read..], &mut out[written..], FlushCompress::Sync).map_err(FrameError::Deflate)?;
            read += (self.z.total_in() - in0) as usize;
            written += (self.z.total_out() - out0) as usize;
            // A sync flush is complete when it returns with room left in the output.
            if read == raw.len() && written < out.len() {
                break;
            }
            out.resize(out.len() * 2, 0);
        }
        dst.put_slice(&out[..written]);
        Ok(())
    }
}

fn len32(n: usize) -> Result<u32, FrameError> {
    u32::try_from(n).map_err(|_| FrameError::HeaderBlockTooLarge { limit: MAX_HEADER_BLOCK })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spdy::dictionary::DICTIONARY_LEN;
    use bytes::BytesMut;
    use std::io::Write;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn dictionary_has_the_drafts_length() {
        assert_eq!(DICTIONARY.len(), DICTIONARY_LEN);
        assert!(DICTIONARY.starts_with(b"\x00\x00\x00\x07options"));
        assert!(DICTIONARY.ends_with(b"charset=iso-8859-1,utf-,*,enq=0."));
    }

    #[test]
    fn blocks_share_one_stream_and_the_second_is_smaller() -> TestResult {
        let headers: Headers = vec![("streamtype".into(), "stdout".into()), ("port".into(), "8080".into())];
        let mut c = HeaderCompressor::default();
        let mut d = HeaderDecompressor::default();
        let mut first = BytesMut::new();
        c.compress(&headers, &mut first)?;
        let mut second = BytesMut::new();
        c.compress(&headers, &mut second)?;
        // The second block refers back to the first: decoding it alone would fail.
        assert!(second.len() < first.len(), "{} !< {}", second.len(), first.len());
        assert_eq!(d.decompress(&mut first.freeze())?, headers);
        assert_eq!(d.decompress(&mut second.freeze())?, headers);
        Ok(())
    }

    #[test]
    fn a_zlib_bomb_is_refused() -> TestResult {
        // One header whose value is 1 MiB of zeros: a few KiB compressed, far beyond the inflate limit.
        let mut raw = Vec::new();
        raw.put_u32(1);
        raw.put_u32(1);
        raw.put_u8(b'a');
        raw.put_u32(1 << 20);
        raw.resize(raw.len() + (1 << 20), 0);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), Compression::best());
        z.write_all(&raw)?;
        let compressed = z.finish()?;
        assert!(compressed.len() < 8 * 1024);
        let err = HeaderDecompressor::default().decompress(&mut Bytes::from(compressed));
        assert!(matches!(err, Err(FrameError::HeaderBlockTooLarge { .. })), "{err:?}");
        Ok(())
    }

    #[test]
    fn bad_blocks_are_errors() {
        for raw in [&b"\x00\x00\x00\x01\x00\x00\x00\x09ab"[..], b"\x00\x00\x00\x01", b"\x00\x00\x10\x00", b"\x00\x00"] {
            assert!(parse_block(Bytes::copy_from_slice(raw)).is_err(), "{raw:?}");
        }
        assert!(HeaderDecompressor::default().decompress(&mut Bytes::from_static(b"garbage!")).is_err());
    }
}
