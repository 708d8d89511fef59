//! Hostile frames cannot make the decoder allocate much more than the frame itself.
//!
//! A counting global allocator records the peak heap use while each hostile frame is decoded. This file is its own
//! test binary with a single test, so nothing else allocates concurrently.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bulkhead_wire::limits::{MAX_ARGS, MAX_FRAME_PAYLOAD};
use bulkhead_wire::{HEADER_LEN, HostToZone, MAX_DATA_CHUNK, Message, OutputFd, StreamId, ZoneToHost, decode_slice};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System` upholds the
// `GlobalAlloc` contract; the counters are plain atomics and never touch the allocated memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is; the caller guarantees `layout` has non-zero size.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; the caller guarantees `ptr` came from this allocator with this `layout`.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is; the caller guarantees `ptr`/`layout` describe a live block and `new_size` is
        // valid for `layout.align()`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
            let now = CURRENT.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap growth, in bytes, while `f` runs.
fn peak_during(f: impl FnOnce()) -> usize {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    f();
    PEAK.load(Ordering::Relaxed).saturating_sub(base)
}

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

/// A host-to-zone frame around `payload` with a correct header and CRC.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = b"BHZW\x01\x01\x00\x00".to_vec();
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&f);
    h.update(payload);
    f.extend_from_slice(&h.finalize().to_le_bytes());
    f.extend_from_slice(payload);
    f
}

fn rejected(f: &[u8]) -> bool {
    decode_slice::<HostToZone>(f).is_err()
}

#[test]
fn hostile_frames_allocate_little() {
    // CreateWorkload { id 7, argv: <claims 10 million entries>, then a few bytes }.
    let mut lying = vec![0x01, 0x07];
    lying.extend_from_slice(&varint(10_000_000));
    lying.extend_from_slice(&[0x01, b'x', 0x00]);
    let lying = frame(&lying);

    // A legal-size frame (just under 1 MiB) really holding ~a million empty argv strings. Decoded naively this is
    // a Vec<String> of 24 MiB; the bounded deserialiser stops after MAX_ARGS entries.
    let n = MAX_FRAME_PAYLOAD - 16;
    let mut many = vec![0x01, 0x07];
    many.extend_from_slice(&varint(n as u64));
    many.resize(MAX_FRAME_PAYLOAD, 0);
    let many = frame(&many);

    // The same with env entries: Exec { 1, 2, ["x"], env: <~330k entries "A=" > }.
    let mut env = vec![0x05, 0x01, 0x02, 0x01, 0x01, b'x'];
    env.extend_from_slice(&varint(300_000));
    for _ in 0..300_000 {
        env.extend_from_slice(&[0x01, b'A', 0x00]);
    }
    let env = frame(&env);

    // A header claiming 4 GiB.
    let mut huge = frame(&[]);
    huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());

    let mut out = bulkhead_wire::encode(&ZoneToHost::Output {
        stream_id: StreamId(1),
        fd: OutputFd::Stdout,
        data: vec![1; MAX_DATA_CHUNK].into(),
    })
    .unwrap_or_default();
    assert!(out.len() > HEADER_LEN + MAX_DATA_CHUNK);

    let bound = MAX_ARGS * size_of::<String>() + 64 * 1024;
    let peak = peak_during(|| assert!(rejected(&lying)));
    assert!(peak < 64 * 1024, "lying length prefix: {peak} bytes");
    let peak = peak_during(|| assert!(rejected(&many)));
    assert!(peak < bound, "a million empty strings: {peak} bytes");
    let peak = peak_during(|| assert!(rejected(&env)));
    assert!(peak < bound, "300k env entries: {peak} bytes");
    let peak = peak_during(|| assert!(rejected(&huge[..HEADER_LEN])));
    assert_eq!(peak, 0, "oversized header");
    // Sanity: a real 64 KiB output frame costs about its data.
    let peak = peak_during(|| {
        let decoded = decode_slice::<ZoneToHost>(&out);
        assert!(matches!(decoded, Ok(Some((ref m, _))) if m.validate().is_ok()));
    });
    assert!(peak < 2 * MAX_DATA_CHUNK, "64 KiB output: {peak} bytes");
    out.clear();
}
