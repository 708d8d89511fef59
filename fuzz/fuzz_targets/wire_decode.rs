//! Feeds arbitrary bytes to the wire decoder, in both directions, whole and in chunks.
//!
//! Checks: no panic; a byte stream decodes to the same messages (and fails at the same frame) however it is
//! chunked; every decoded message
//! re-encodes and decodes to itself.

#![no_main]

use bulkhead_wire::{HostToZone, Message, WireError, ZoneToHost, decode, encode};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// Decodes `data` fed in the given chunk sizes; returns the messages and whether it ended in an error.
fn decode_stream<M: Message + PartialEq>(data: &[u8], chunk: usize) -> (Vec<M>, Option<WireError>) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match decode::<M>(&mut buf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fn check<M: Message + PartialEq>(data: &[u8], chunk: usize) {
    let (whole, whole_err) = decode_stream::<M>(data, data.len());
    let (chunked, chunked_err) = decode_stream::<M>(data, chunk);
    // Chunking changes nothing: header fields are checked as they arrive, so the same frame fails either way.
    assert!(whole == chunked, "chunking changed the decoded messages");
    assert_eq!(whole_err.is_some(), chunked_err.is_some(), "{whole_err:?} vs {chunked_err:?}");
    for m in &whole {
        let Ok(frame) = encode(m) else { panic!("a decoded message failed to re-encode: {m:?}") };
        let mut buf = BytesMut::from(&frame[..]);
        match decode::<M>(&mut buf) {
            Ok(Some(again)) => assert!(&again == m),
            other => panic!("re-encoded message did not decode: {other:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else { return };
    check::<HostToZone>(rest, usize::from(chunk));
    check::<ZoneToHost>(rest, usize::from(chunk));
});
