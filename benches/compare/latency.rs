//! Latency: `apply_rtt` (one task's round trip) and `startup` (a new pool's first
//! result).
//!
//! `apply_rtt` times `APPLY_RTT_CALLS` sequential `apply(square, (i,))` calls on a
//! warmed pool, after `APPLY_RTT_WARMUP` untimed ones, and reports the smallest
//! median and the smallest p99 over `--repeat` rounds, in µs. `startup` times
//! building a pool until its first `apply` result, workers re-executed from this
//! binary, and reports the best of `--repeat`, in ms.

use std::time::Instant;

use crate::{Bench, Res, fmt_times, log, reference, shutdown, square};

const APPLY_RTT_CALLS: usize = 2_000;
const APPLY_RTT_WARMUP: usize = 20;

/// Median (mean of the two middle samples for an even count, as Python's
/// `statistics.median`) and p99 of `samples` in nanoseconds, both in µs.
fn median_p99(mut samples: Vec<u64>) -> (f64, f64) {
    samples.sort_unstable();
    let n = samples.len();
    let median = if n % 2 == 1 {
        samples[n / 2] as f64
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) as f64 / 2.0
    };
    let p99 = samples[(n - 1).min(n * 99 / 100)] as f64;
    (median / 1e3, p99 / 1e3)
}

/// `repeat` rounds of `APPLY_RTT_CALLS` timed calls of `call(i)` after a warm-up:
/// the smallest median and the smallest p99, in µs, and all medians.
pub(crate) fn rtt_rounds(
    bench: &Bench,
    mut call: impl FnMut(u64) -> Res<()>,
) -> Res<(f64, f64, Vec<f64>)> {
    for i in 0..APPLY_RTT_WARMUP as u64 {
        call(i)?;
    }
    let (mut medians, mut p99s) = (Vec::new(), Vec::new());
    for _ in 0..bench.repeat {
        let mut samples = Vec::with_capacity(APPLY_RTT_CALLS);
        for i in 0..APPLY_RTT_CALLS as u64 {
            let t0 = Instant::now();
            call(i)?;
            samples.push(t0.elapsed().as_nanos() as u64);
        }
        let (median, p99) = median_p99(samples);
        medians.push(median);
        p99s.push(p99);
    }
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    Ok((min(&medians), min(&p99s), medians))
}

pub(crate) fn apply_rtt(bench: &Bench) -> Res<()> {
    let pool = bench.pool()?;
    let (median, p99, medians) = rtt_rounds(bench, |i| {
        let r = pool.apply(square, (i,))?;
        assert_eq!(r, i * i);
        Ok(())
    })?;
    shutdown(pool)?;
    log(&format!(
        "apply_rtt: median {median:.1} us, p99 {p99:.1} us  (n={APPLY_RTT_CALLS}; medians {} us)",
        join_f(&medians)
    ));
    bench.emit("apply_rtt", "median", median, "us");
    bench.emit("apply_rtt", "p99", p99, "us");
    if bench.reference {
        reference::apply_rtt_raw_pipe(bench)?;
    }
    Ok(())
}

pub(crate) fn join_f(values: &[f64]) -> String {
    let v: Vec<String> = values.iter().map(|m| format!("{m:.1}")).collect();
    v.join(", ")
}

pub(crate) fn startup(bench: &Bench) -> Res<()> {
    let mut times = Vec::new();
    for _ in 0..bench.repeat {
        let t0 = Instant::now();
        let pool = bench.builder().build()?;
        let r = pool.apply(square, (7u64,))?;
        times.push(t0.elapsed().as_secs_f64());
        assert_eq!(r, 49);
        shutdown(pool)?;
    }
    let best = times.iter().copied().fold(f64::INFINITY, f64::min) * 1e3;
    log(&format!(
        "startup[reexec]: {best:.1} ms  ({})",
        fmt_times(&times)
    ));
    bench.emit("startup", "first_result", best, "ms");
    Ok(())
}

/// Seconds an idle pool is watched in `idle_cpu`.
const IDLE_SECONDS: u64 = 2;

/// CPU time (user + system, in clock ticks) of process `pid`, from `/proc/<pid>/stat`.
fn cpu_ticks(pid: &str) -> Res<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3 of stat(5), utime 14 and stime 15.
    let tick = |i: usize| -> Res<u64> { Ok(fields.get(i - 3).ok_or("short stat")?.parse()?) };
    Ok(tick(14)? + tick(15)?)
}

/// `idle_cpu` (procpool only): a warmed pool left idle for 2 s; the CPU its
/// process (callers and drivers) and its workers used meanwhile, in % of one core
/// (from `/proc/*/stat`, 10 ms ticks: 1 tick over 2 s is 0.5 %).
pub(crate) fn idle_cpu(bench: &Bench) -> Res<()> {
    let pool = bench.pool()?;
    let pids: Vec<String> = std::iter::once("self".to_owned())
        .chain(pool.pids().iter().map(u32::to_string))
        .collect();
    let total = |pids: &[String]| -> Res<u64> { pids.iter().map(|p| cpu_ticks(p)).sum() };
    let before = total(&pids)?;
    std::thread::sleep(std::time::Duration::from_secs(IDLE_SECONDS));
    let used = total(&pids)? - before;
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let percent = used as f64 / ticks_per_s / IDLE_SECONDS as f64 * 100.0;
    log(&format!(
        "idle_cpu: {percent:.1} % of a core  ({used} ticks over {IDLE_SECONDS} s, the pool's process and its {} workers)",
        pids.len() - 1
    ));
    bench.emit("idle_cpu", "cpu", percent, "%");
    shutdown(pool)
}
