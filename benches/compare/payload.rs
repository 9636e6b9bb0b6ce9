//! Big payloads: `payload_1mib` (the shared baseline) and `payload_64mib` (procpool
//! only, for choosing a transport).
//!
//! Both send the same block of pseudo-random bytes, as `procpool::Bytes`, through
//! `map_chunked(identity, .., 1)` on a warmed pool and check that every block comes
//! back intact: 200 × 1 MiB and 8 × 64 MiB. The figure is the bytes sent one way
//! divided by the best of `--repeat` wall times (`throughput`, `MiB/s`).

use procpool::pool_task;

use crate::{Bench, Res, fmt_times, log, reference, shutdown};

pub(crate) const PAYLOAD_BYTES: usize = 1 << 20;
pub(crate) const PAYLOAD_ITEMS: usize = 200;

/// `procpool::Bytes` is the Rust counterpart of Python's `bytes`: it crosses the
/// process boundary as one block, where a `Vec<u8>` goes element by element.
#[pool_task]
fn identity(bytes: procpool::Bytes) -> procpool::Bytes {
    bytes
}

/// Deterministic pseudo-random bytes (xorshift64), standing in for `os.urandom`.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

pub(crate) fn payload_1mib(bench: &Bench) -> Res<()> {
    let blob = procpool::Bytes::from(random_bytes(PAYLOAD_BYTES));
    let mib = (PAYLOAD_BYTES * PAYLOAD_ITEMS) as f64 / (1 << 20) as f64;
    let pool = bench.pool()?;
    let items = || std::iter::repeat_n(&blob, PAYLOAD_ITEMS);
    let (best, times, out) = bench.best_time(|| Ok(pool.map_chunked(identity, items(), 1)?))?;
    assert!(out.len() == PAYLOAD_ITEMS && out.iter().all(|r| *r == blob));
    let blob = blob.into_vec();
    drop(out);
    shutdown(pool)?;
    let rate = mib / best;
    log(&format!(
        "payload_1mib: {rate:.1} MiB/s one way  ({PAYLOAD_ITEMS} x 1 MiB; {})",
        fmt_times(&times)
    ));
    bench.emit("payload_1mib", "throughput", rate, "MiB/s");
    if bench.reference {
        reference::payload_1mib_raw_pipe(bench, blob, mib)?;
    }
    Ok(())
}

/// `map_chunked(identity, [64 MiB] x 8, 1)`, MiB/s one way.
pub(crate) fn payload_64mib(bench: &Bench) -> Res<()> {
    const BYTES: usize = 64 << 20;
    const ITEMS: usize = 8;
    let blob = procpool::Bytes::from(random_bytes(BYTES));
    let pool = bench.pool()?;
    let (best, times, out) = bench
        .best_time(|| Ok(pool.map_chunked(identity, std::iter::repeat_n(&blob, ITEMS), 1)?))?;
    assert!(out.len() == ITEMS && out.iter().all(|r| *r == blob));
    drop(out);
    shutdown(pool)?;
    let rate = (BYTES * ITEMS) as f64 / (1 << 20) as f64 / best;
    log(&format!(
        "payload_64mib: {rate:.1} MiB/s one way  ({ITEMS} x 64 MiB; {})",
        fmt_times(&times)
    ));
    bench.emit("payload_64mib", "throughput", rate, "MiB/s");
    Ok(())
}
