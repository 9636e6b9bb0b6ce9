//! Parallel speedup on CPU-bound work: `cpu_bound`.
//!
//! `busy` is the 32-bit LCG of the Python reference, calibrated here at the start of
//! the scenario to take about 20 ms per call in this build (the optimiser folds runs
//! of LCG steps together, so only the time per call, not the loop count, matches the
//! Python side); the pool's initializer hands the loop count to every worker. The
//! figure is the best serial time of `busy` over `0..64` divided by the best time of
//! `map(busy, 0..64)` on a warmed pool (`speedup`, `x`).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use procpool::pool_task;

use crate::{Bench, Res, log, reference, shutdown};

pub(crate) const CPU_BOUND_ITEMS: u32 = 64;
const BUSY_TARGET: Duration = Duration::from_millis(20);

/// Loop count of `busy`, calibrated in the parent and handed to every worker by the
/// pool's initializer.
static BUSY_ITERS: AtomicU64 = AtomicU64::new(1_000_000);

/// About 20 ms of integer work: the 32-bit LCG of the Python reference.
#[pool_task]
pub(crate) fn busy(i: u32) -> u32 {
    let mut x = i;
    for _ in 0..BUSY_ITERS.load(Ordering::Relaxed) {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
    }
    x
}

#[pool_task]
fn set_busy_iters(iters: u64) {
    BUSY_ITERS.store(iters, Ordering::Relaxed);
}

/// Sets `BUSY_ITERS` so that one `busy` call takes about `BUSY_TARGET` here.
fn calibrate_busy() -> u64 {
    let probe = 2_000_000u64;
    BUSY_ITERS.store(probe, Ordering::Relaxed);
    let fastest = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            black_box(busy(black_box(1)));
            t0.elapsed()
        })
        .min()
        .expect("five probes");
    let iters = (probe as f64 * BUSY_TARGET.as_secs_f64() / fastest.as_secs_f64()) as u64;
    BUSY_ITERS.store(iters.max(1), Ordering::Relaxed);
    iters
}

pub(crate) fn cpu_bound(bench: &Bench) -> Res<()> {
    let iters = calibrate_busy();
    let serial = || Ok((0..CPU_BOUND_ITEMS).map(|i| busy(black_box(i))).collect());
    let (serial_best, _, expected): (f64, _, Vec<u32>) = bench.best_time(serial)?;
    let pool = bench.warm(
        bench
            .builder()
            .initializer(set_busy_iters, (iters,))
            .build()?,
    )?;
    let (pool_best, _, out) = bench.best_time(|| Ok(pool.map(busy, 0..CPU_BOUND_ITEMS)?))?;
    assert_eq!(out, expected);
    shutdown(pool)?;
    let speedup = serial_best / pool_best;
    log(&format!(
        "cpu_bound: speedup {speedup:.2}x  (serial {:.0} ms, pool {:.0} ms, busy() ~{:.1} ms/call \
         = {iters} LCG steps, {} CPUs)",
        serial_best * 1e3,
        pool_best * 1e3,
        serial_best / f64::from(CPU_BOUND_ITEMS) * 1e3,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));
    bench.emit("cpu_bound", "speedup", speedup, "x");
    if bench.reference {
        reference::cpu_bound_rayon(bench, serial_best, &expected)?;
    }
    Ok(())
}
