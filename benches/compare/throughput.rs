//! Throughput of tiny tasks: `map_tiny`, `map_tiny_chunk1` and `imap_stream`.
//!
//! Each maps `square` over a range of `u64` on a warmed pool and reports items per
//! second of the best of `--repeat` runs (`throughput`, `tasks/s`). The work per item
//! is nothing, so the figure is the pool's cost per task: batching, framing and
//! scheduling. `map_tiny` uses the default chunksize (`ceil(n / (4 × processes))`),
//! `map_tiny_chunk1` sends every item on its own, and `imap_stream` sums a lazy
//! `imap_chunked` stream as the results arrive.

use crate::{Bench, Res, fmt_times, log, shutdown, square};

const MAP_TINY_N: u64 = 1_000_000;
const MAP_TINY_CHUNK1_N: u64 = 20_000;
const IMAP_N: u64 = 1_000_000;
const IMAP_CHUNKSIZE: usize = 1_000;

pub(crate) fn map_tiny(bench: &Bench) -> Res<()> {
    let pool = bench.pool()?;
    let (best, times, out) = bench.best_time(|| Ok(pool.map(square, 0..MAP_TINY_N)?))?;
    assert!(out.len() == MAP_TINY_N as usize && out[12345] == 12345 * 12345);
    shutdown(pool)?;
    let rate = MAP_TINY_N as f64 / best;
    let chunk = MAP_TINY_N.div_ceil(bench.processes as u64 * 4);
    log(&format!(
        "map_tiny: {rate:.0} tasks/s  (n={MAP_TINY_N}, default chunksize={chunk}; {})",
        fmt_times(&times)
    ));
    bench.emit("map_tiny", "throughput", rate, "tasks/s");
    Ok(())
}

pub(crate) fn map_tiny_chunk1(bench: &Bench) -> Res<()> {
    let n = MAP_TINY_CHUNK1_N;
    let pool = bench.pool()?;
    let (best, times, out) = bench.best_time(|| Ok(pool.map_chunked(square, 0..n, 1)?))?;
    assert!(out.len() == n as usize && out[n as usize - 1] == (n - 1) * (n - 1));
    shutdown(pool)?;
    let rate = n as f64 / best;
    log(&format!(
        "map_tiny_chunk1: {rate:.0} tasks/s  (n={n}; {})",
        fmt_times(&times)
    ));
    bench.emit("map_tiny_chunk1", "throughput", rate, "tasks/s");
    Ok(())
}

pub(crate) fn imap_stream(bench: &Bench) -> Res<()> {
    let n = IMAP_N;
    let pool = bench.pool()?;
    let (best, times, sum) = bench.best_time(|| {
        let mut sum = 0u64;
        for r in pool.imap_chunked(square, 0..n, IMAP_CHUNKSIZE)? {
            sum += r?;
        }
        Ok(sum)
    })?;
    assert_eq!(sum, (n - 1) * n * (2 * n - 1) / 6);
    shutdown(pool)?;
    let rate = n as f64 / best;
    log(&format!(
        "imap_stream: {rate:.0} tasks/s  (n={n}, chunksize={IMAP_CHUNKSIZE}; {})",
        fmt_times(&times)
    ));
    bench.emit("imap_stream", "throughput", rate, "tasks/s");
    Ok(())
}
