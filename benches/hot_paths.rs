//! Micro-benchmarks of procpool's hot paths (criterion).
//!
//! `cargo bench --bench hot_paths` (add `--features ipc` to run the pool benches over
//! ipc-channel too; `-- --quick` for a fast pass):
//!
//! - `frame`: `pipe::frame::write_frame` / `read_frame` over an in-memory buffer,
//!   16-byte and 1 MiB frames;
//! - `header`: `protocol::decode_header` of a batch and of a reply header;
//! - `pool/<transport>`: one `apply` round trip, and a `map` of 10 000 tiny items,
//!   through a real pool of 2 workers.
//!
//! Measurement times are kept short so the whole run takes a couple of minutes.

use std::hint::black_box;
use std::io::Cursor;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use procpool::pipe::frame::{read_frame, write_frame};
use procpool::{Pool, Transport, pool_task};
use procpool_core::__private::protocol::{DEFAULT_MAX_FRAME, FromWorker, ToWorker, decode_header};

// Workers re-executed from this bench binary serve tasks instead of running criterion.
procpool::test_support!();

#[pool_task]
fn square(x: u64) -> u64 {
    x * x
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    for (name, len) in [("16B", 16usize), ("1MiB", 1 << 20)] {
        let payload = vec![0x5Au8; len];
        group.throughput(Throughput::Bytes(len as u64));
        let mut wire = Vec::with_capacity(len + 4);
        group.bench_function(format!("write/{name}"), |b| {
            b.iter(|| {
                wire.clear();
                write_frame(&mut wire, &[black_box(&payload)], DEFAULT_MAX_FRAME).unwrap();
            })
        });
        let mut buf = Vec::with_capacity(len);
        group.bench_function(format!("read/{name}"), |b| {
            b.iter(|| {
                let mut reader = Cursor::new(black_box(wire.as_slice()));
                read_frame(&mut reader, &mut buf, DEFAULT_MAX_FRAME).unwrap();
                assert_eq!(buf.len(), len);
            })
        });
    }
    group.finish();
}

fn headers(c: &mut Criterion) {
    let mut group = c.benchmark_group("header");
    let mut batch = postcard::to_allocvec(&ToWorker::Run {
        id: 123_456,
        task: "procpool_downstream::tasks::square",
        first_index: 1_000_000,
        count: 1000,
        report_starts: false,
        direct: false,
    })
    .unwrap();
    batch.extend_from_slice(&[1, 7]); // one item follows the header
    group.bench_function("decode/batch", |b| {
        b.iter(|| {
            let (header, rest): (ToWorker<'_>, _) = decode_header(black_box(&batch)).unwrap();
            black_box((header, rest));
        })
    });
    let done = postcard::to_allocvec(&FromWorker::Done {
        id: 123_456,
        count: 1000,
    })
    .unwrap();
    group.bench_function("decode/done", |b| {
        b.iter(|| {
            let (header, rest): (FromWorker<'_>, _) = decode_header(black_box(&done)).unwrap();
            black_box((header, rest));
        })
    });
    group.finish();
}

/// The transports compiled into this bench, by name.
fn transports() -> Vec<(&'static str, Transport)> {
    vec![
        ("pipe", Transport::Pipe),
        #[cfg(feature = "ipc")]
        ("ipc", Transport::Ipc),
    ]
}

fn pools(c: &mut Criterion) {
    for (name, transport) in transports() {
        let pool = Pool::builder()
            .processes(2)
            .transport(transport)
            .build()
            .unwrap();
        pool.map_chunked(square, 0..8u64, 1).unwrap(); // every worker is up
        let mut group = c.benchmark_group(format!("pool/{name}"));
        group.bench_function("apply", |b| {
            b.iter(|| assert_eq!(pool.apply(square, (black_box(7u64),)).unwrap(), 49))
        });
        group.throughput(Throughput::Elements(10_000));
        group.bench_function("map_10k", |b| {
            b.iter(|| {
                let out = pool.map(square, black_box(0..10_000u64)).unwrap();
                assert_eq!(out[9_999], 9_999 * 9_999);
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(15)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = frames, headers, pools
}
criterion_main!(benches);
