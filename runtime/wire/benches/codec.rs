//! Encode and decode throughput of the wire codec: 64 KiB output frames (the bulk path) and small control frames.
//!
//! Run: `cargo bench -p bulkhead-wire`. CI only compiles this; compare numbers from A/B runs on one machine.

use std::hint::black_box;

use bulkhead_wire::{HostToZone, MAX_DATA_CHUNK, OutputFd, StreamId, ZoneToHost, decode, encode_into};
use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn output_frames(c: &mut Criterion) {
    let msg =
        ZoneToHost::Output { stream_id: StreamId(7), fd: OutputFd::Stdout, data: vec![0x5a; MAX_DATA_CHUNK].into() };
    let mut frame = BytesMut::new();
    if let Err(e) = encode_into(&msg, &mut frame) {
        panic!("encoding the bench message failed: {e}");
    }
    let mut g = c.benchmark_group("output_64k");
    g.throughput(Throughput::Bytes(MAX_DATA_CHUNK as u64));
    g.bench_function("encode", |b| {
        let mut buf = BytesMut::with_capacity(2 * frame.len());
        b.iter(|| {
            buf.clear();
            encode_into(black_box(&msg), &mut buf)
        })
    });
    // Includes copying the frame into the receive buffer, as reading it from the channel would.
    g.bench_function("decode", |b| {
        let mut buf = BytesMut::with_capacity(2 * frame.len());
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(black_box(&frame));
            decode::<ZoneToHost>(&mut buf)
        })
    });
    g.bench_function("encode_decode", |b| {
        let mut buf = BytesMut::with_capacity(2 * frame.len());
        b.iter(|| {
            if let Err(e) = encode_into(black_box(&msg), &mut buf) {
                panic!("{e}");
            }
            decode::<ZoneToHost>(&mut buf)
        })
    });
    g.finish();
}

fn control_frames(c: &mut Criterion) {
    let msgs = [
        HostToZone::Ping { nonce: 0x1234_5678 },
        HostToZone::Signal { id: StreamId(3), signal: 15 },
        HostToZone::Resize { stream_id: StreamId(3), rows: 50, cols: 200 },
        HostToZone::StartWorkload { id: StreamId(3) },
    ];
    let mut g = c.benchmark_group("control");
    g.throughput(Throughput::Elements(msgs.len() as u64));
    g.bench_function("encode_decode", |b| {
        let mut buf = BytesMut::with_capacity(256);
        b.iter(|| {
            for m in &msgs {
                if let Err(e) = encode_into(black_box(m), &mut buf) {
                    panic!("{e}");
                }
            }
            for _ in &msgs {
                black_box(decode::<HostToZone>(&mut buf).ok());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, output_frames, control_frames);
criterion_main!(benches);
