//! The reference rows, measured in the same run as procpool's (skip them with
//! `--no-reference`): the floor a transport pays, and threads instead of processes.
//!
//! - `raw-pipe` for `apply_rtt` and `payload_1mib`: the same exchange over two plain
//!   pipes with a child that echoes its stdin to its stdout (this binary re-executed
//!   with `ECHO_ENV` set), no pool. `apply_rtt` echoes an 8-byte message
//!   `APPLY_RTT_CALLS` times per round; `payload_1mib` writes the 200 × 1 MiB from a
//!   second thread while reading the echo back.
//! - `rayon` for `cpu_bound`: the same calibrated `busy` over `0..64` on a thread pool
//!   of `processes` threads (`start_method` `threads`), against the same serial time.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};

use rayon::prelude::*;

use crate::cpu_bound::{CPU_BOUND_ITEMS, busy};
use crate::latency::{join_f, rtt_rounds};
use crate::payload::{PAYLOAD_BYTES, PAYLOAD_ITEMS};
use crate::{Bench, Res, emit, fmt_times, log};

/// Set in the environment of the raw-pipe reference child: it echoes stdin to stdout.
pub(crate) const ECHO_ENV: &str = "PROCPOOL_COMPARE_ECHO";

/// `apply_rtt[raw-pipe]`: 8-byte echoes, timed as `apply_rtt` times its calls.
pub(crate) fn apply_rtt_raw_pipe(bench: &Bench) -> Res<()> {
    apply_rtt_raw_pipe_as(bench, "apply_rtt")
}

/// The 8-byte echo of `apply_rtt[raw-pipe]`, reported as `scenario`'s reference.
pub(crate) fn apply_rtt_raw_pipe_as(bench: &Bench, scenario: &str) -> Res<()> {
    let mut child = EchoChild::spawn()?;
    let (median, p99, medians) = rtt_rounds(bench, |i| {
        let msg = i.to_le_bytes();
        child.input.write_all(&msg)?;
        let mut back = [0u8; 8];
        child.output.read_exact(&mut back)?;
        assert_eq!(back, msg);
        Ok(())
    })?;
    child.finish()?;
    log(&format!(
        "{scenario}[raw-pipe]: median {median:.1} us, p99 {p99:.1} us  (8-byte echo; medians {} us)",
        join_f(&medians)
    ));
    emit(bench, "raw-pipe", scenario, "median", median, "us");
    emit(bench, "raw-pipe", scenario, "p99", p99, "us");
    Ok(())
}

/// `payload_1mib[raw-pipe]`: `blob` written `PAYLOAD_ITEMS` times and read back;
/// `mib` is the total one way.
pub(crate) fn payload_1mib_raw_pipe(bench: &Bench, blob: Vec<u8>, mib: f64) -> Res<()> {
    let blob = std::sync::Arc::new(blob);
    let mut child = EchoChild::spawn()?;
    let mut back = vec![0xAAu8; PAYLOAD_BYTES * PAYLOAD_ITEMS]; // touched before the timer
    let (best, times, ()) = bench.best_time(|| {
        let blob = std::sync::Arc::clone(&blob);
        let mut input = child.input.try_clone()?;
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            for _ in 0..PAYLOAD_ITEMS {
                input.write_all(&blob)?;
            }
            Ok(())
        });
        child.output.read_exact(&mut back)?;
        writer.join().expect("writer thread")?;
        Ok(())
    })?;
    assert!(back.chunks(PAYLOAD_BYTES).all(|c| c == blob.as_slice()));
    child.finish()?;
    let rate = mib / best;
    log(&format!(
        "payload_1mib[raw-pipe]: {rate:.1} MiB/s one way  (echo child; {})",
        fmt_times(&times)
    ));
    emit(
        bench,
        "raw-pipe",
        "payload_1mib",
        "throughput",
        rate,
        "MiB/s",
    );
    Ok(())
}

/// `cpu_bound[rayon]`: `serial_best` over the best rayon time; the results must be
/// `expected`, the serial ones.
pub(crate) fn cpu_bound_rayon(bench: &Bench, serial_best: f64, expected: &[u32]) -> Res<()> {
    let threads = rayon::ThreadPoolBuilder::new()
        .num_threads(bench.processes)
        .build()?;
    let par = || Ok(threads.install(|| (0..CPU_BOUND_ITEMS).into_par_iter().map(busy).collect()));
    let (rayon_best, _, out): (f64, _, Vec<u32>) = bench.best_time(par)?;
    assert_eq!(out, expected);
    let speedup = serial_best / rayon_best;
    log(&format!(
        "cpu_bound[rayon]: speedup {speedup:.2}x  ({} threads, {:.0} ms)",
        bench.processes,
        rayon_best * 1e3
    ));
    emit(bench, "rayon", "cpu_bound", "speedup", speedup, "x");
    Ok(())
}

/// This binary re-executed as a child that echoes its stdin to its stdout: the
/// raw-pipe reference, two plain pipes and no pool.
pub(crate) struct EchoChild {
    child: Child,
    pub(crate) input: File,
    pub(crate) output: File,
}

impl EchoChild {
    pub(crate) fn spawn() -> Res<EchoChild> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(ECHO_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let input = File::from(std::os::fd::OwnedFd::from(
            child.stdin.take().expect("piped"),
        ));
        let output = File::from(std::os::fd::OwnedFd::from(
            child.stdout.take().expect("piped"),
        ));
        Ok(EchoChild {
            child,
            input,
            output,
        })
    }

    pub(crate) fn finish(mut self) -> Res<()> {
        drop(self.input); // end of file: the child exits
        let status = self.child.wait()?;
        assert!(status.success(), "echo child: {status}");
        Ok(())
    }
}

/// The echo child's loop: unbuffered copies of whatever arrives, until end of file.
pub(crate) fn echo() -> Res<()> {
    let mut input = File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
    let mut output = File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        output.write_all(&buf[..n])?;
    }
}
