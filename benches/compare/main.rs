//! The Rust side of the comparison with Python's `multiprocessing.Pool`: a bench
//! target with its own `main` (`harness = false`).
//!
//! `cargo bench --bench compare --features ipc -- [--transport pipe|ipc]
//! [--processes N] [--repeat R] [--no-reference] [SCENARIO...]`
//! (`cargo bench` adds `--bench` to the arguments; it is ignored).
//!
//! Runs the scenarios of the reference benchmark (`benches/python_reference.py`)
//! with the same names, sizes and metrics, and prints one JSON object per line on
//! stdout: `{"impl", "scenario", "metric", "value", "unit", "processes",
//! "start_method"}`, `impl` being `procpool-pipe` or `procpool-ipc` and
//! `start_method` `reexec` (workers are this binary, re-executed). Human-readable
//! lines go to stderr. Each scenario runs R times and the best run is reported; the
//! pool is started and warmed before the timer, except in `startup`.
//!
//! Reference rows measured in the same run (skip them with `--no-reference`):
//! `raw-pipe` for `apply_rtt` and `payload_1mib` (two plain pipes to a child that
//! echoes, no pool) and `rayon` for `cpu_bound` (threads in one process,
//! `start_method` `threads`). `busy` is calibrated at the start of `cpu_bound` to take
//! about 20 ms in this build: the optimiser folds runs of LCG steps together, so only
//! the time per call, not the loop count, matches the Python side.
//! `benches/compare.sh` runs this next to the Python reference and prints a table.

use std::error::Error as StdError;
use std::fs::File;
use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use procpool::{Pool, Transport, pool_task};
use rayon::prelude::*;

type Res<T> = Result<T, Box<dyn StdError>>;

/// The shared baseline's scenarios, then `payload_64mib` (procpool only: big
/// payloads, for choosing a transport).
const SCENARIOS: [&str; 8] = [
    "map_tiny",
    "map_tiny_chunk1",
    "apply_rtt",
    "startup",
    "payload_1mib",
    "cpu_bound",
    "imap_stream",
    "payload_64mib",
];
const MAP_TINY_N: u64 = 1_000_000;
const MAP_TINY_CHUNK1_N: u64 = 20_000;
const APPLY_RTT_CALLS: usize = 2_000;
const APPLY_RTT_WARMUP: usize = 20;
const PAYLOAD_BYTES: usize = 1 << 20;
const PAYLOAD_ITEMS: usize = 200;
const CPU_BOUND_ITEMS: u32 = 64;
const BUSY_TARGET: Duration = Duration::from_millis(20);
const IMAP_N: u64 = 1_000_000;
const IMAP_CHUNKSIZE: usize = 1_000;
/// Set in the environment of the raw-pipe reference child: it echoes stdin to stdout.
const ECHO_ENV: &str = "PROCPOOL_COMPARE_ECHO";

/// Loop count of `busy`, calibrated in the parent and handed to every worker by the
/// pool's initializer.
static BUSY_ITERS: AtomicU64 = AtomicU64::new(1_000_000);

#[pool_task]
fn square(x: u64) -> u64 {
    x * x
}

/// `procpool::Bytes` is the Rust counterpart of Python's `bytes`: it crosses the
/// process boundary as one block, where a `Vec<u8>` goes element by element.
#[pool_task]
fn identity(bytes: procpool::Bytes) -> procpool::Bytes {
    bytes
}

/// About 20 ms of integer work: the 32-bit LCG of the Python reference.
#[pool_task]
fn busy(i: u32) -> u32 {
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

/// The command line and what it selects.
struct Bench {
    processes: usize,
    repeat: usize,
    transport: Transport,
    name: &'static str,
    reference: bool,
}

fn main() {
    procpool::init(); // first line of main: in a worker process it serves tasks and exits
    let outcome = if std::env::var_os(ECHO_ENV).is_some() {
        echo()
    } else {
        run()
    };
    if let Err(e) = outcome {
        eprintln!("compare: {e}");
        std::process::exit(2);
    }
}

fn run() -> Res<()> {
    let (bench, scenarios) = parse_args()?;
    log(&format!(
        "procpool-{}: {} CPUs, processes={}, start_method=reexec, repeat={}",
        bench.name,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        bench.processes,
        bench.repeat
    ));
    let all = Instant::now();
    for scenario in scenarios {
        let started = Instant::now();
        match scenario.as_str() {
            "map_tiny" => map_tiny(&bench)?,
            "map_tiny_chunk1" => map_tiny_chunk1(&bench)?,
            "apply_rtt" => apply_rtt(&bench)?,
            "startup" => startup(&bench)?,
            "payload_1mib" => payload_1mib(&bench)?,
            "cpu_bound" => cpu_bound(&bench)?,
            "imap_stream" => imap_stream(&bench)?,
            "payload_64mib" => payload_64mib(&bench)?,
            _ => unreachable!("scenario names are checked by parse_args"),
        }
        log(&format!(
            "  [{scenario} took {:.1} s]",
            started.elapsed().as_secs_f64()
        ));
    }
    log(&format!("total: {:.1} s", all.elapsed().as_secs_f64()));
    Ok(())
}

fn parse_args() -> Res<(Bench, Vec<String>)> {
    const USAGE: &str = "usage: compare [--transport pipe|ipc] [--processes N] [--repeat R] \
                         [--no-reference] [SCENARIO...]";
    let (mut processes, mut repeat, mut transport) = (2, 3, "pipe".to_owned());
    let (mut reference, mut scenarios) = (true, Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--processes" => processes = count(&value("--processes")?, "--processes")?,
            "--repeat" => repeat = count(&value("--repeat")?, "--repeat")?,
            "--transport" => transport = value("--transport")?,
            "--no-reference" => reference = false,
            // `cargo bench -- ARGS` runs this binary with `ARGS --bench`.
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}\nscenarios: {}", SCENARIOS.join(", "));
                std::process::exit(0);
            }
            s if SCENARIOS.contains(&s) => scenarios.push(arg),
            s => Err(format!(
                "unknown argument or scenario `{s}`\n{USAGE}\nscenarios: {}",
                SCENARIOS.join(", ")
            ))?,
        }
    }
    let (transport, name) = match transport.as_str() {
        "pipe" | "ipc" => compiled(&transport).ok_or(format!(
            "transport `{transport}` is not compiled in: build with `--features {transport}`"
        ))?,
        other => Err(format!("unknown transport `{other}`: pipe or ipc"))?,
    };
    if scenarios.is_empty() {
        scenarios = SCENARIOS.iter().map(|s| s.to_string()).collect();
    }
    let bench = Bench {
        processes,
        repeat,
        transport,
        name,
        reference,
    };
    Ok((bench, scenarios))
}

/// A positive count given to `flag`.
fn count(text: &str, flag: &str) -> Result<usize, String> {
    match text.parse() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{flag} needs a whole number >= 1, got `{text}`")),
    }
}

/// The transport called `name`, if this build has it.
fn compiled(name: &str) -> Option<(Transport, &'static str)> {
    #[cfg(feature = "pipe")]
    if name == "pipe" {
        return Some((Transport::Pipe, "pipe"));
    }
    #[cfg(feature = "ipc")]
    if name == "ipc" {
        return Some((Transport::Ipc, "ipc"));
    }
    let _ = name;
    None
}

fn log(message: &str) {
    eprintln!("{message}");
}

/// One JSON line on stdout, in the reference's schema. Workers of procpool and the
/// raw-pipe child are this binary re-executed; rayon runs threads.
fn emit(bench: &Bench, who: &str, scenario: &str, metric: &str, value: f64, unit: &str) {
    assert!(value.is_finite(), "{scenario}/{metric}: {value}");
    let start_method = if who == "rayon" { "threads" } else { "reexec" };
    println!(
        "{{\"impl\": \"{who}\", \"scenario\": \"{scenario}\", \"metric\": \"{metric}\", \
         \"value\": {value:.3}, \"unit\": \"{unit}\", \"processes\": {}, \
         \"start_method\": \"{start_method}\"}}",
        bench.processes
    );
}

impl Bench {
    fn impl_name(&self) -> String {
        format!("procpool-{}", self.name)
    }

    fn emit(&self, scenario: &str, metric: &str, value: f64, unit: &str) {
        emit(self, &self.impl_name(), scenario, metric, value, unit);
    }

    fn builder(&self) -> procpool::PoolBuilder {
        Pool::builder()
            .processes(self.processes)
            .transport(self.transport)
    }

    /// Starts the pool and makes sure every worker has answered, outside any timer.
    fn warm(&self, pool: Pool) -> Res<Pool> {
        let n = self.processes as u64 * 4;
        pool.map_chunked(square, 0..n, 1)?;
        Ok(pool)
    }

    fn pool(&self) -> Res<Pool> {
        self.warm(self.builder().build()?)
    }

    /// Runs `f` `repeat` times: the best wall time, all of them, and the last output.
    fn best_time<T>(&self, mut f: impl FnMut() -> Res<T>) -> Res<(f64, Vec<f64>, T)> {
        let mut times = Vec::with_capacity(self.repeat);
        let mut last = None;
        for _ in 0..self.repeat {
            let t0 = Instant::now();
            let out = f()?;
            times.push(t0.elapsed().as_secs_f64());
            last = Some(out);
        }
        let best = times.iter().copied().fold(f64::INFINITY, f64::min);
        Ok((best, times, last.expect("repeat >= 1")))
    }
}

fn shutdown(pool: Pool) -> Res<()> {
    pool.close();
    pool.join()?;
    Ok(())
}

fn fmt_times(times: &[f64]) -> String {
    let ms: Vec<String> = times.iter().map(|t| format!("{:.1}", t * 1e3)).collect();
    format!("{} ms", ms.join(", "))
}

fn map_tiny(bench: &Bench) -> Res<()> {
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

fn map_tiny_chunk1(bench: &Bench) -> Res<()> {
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
fn rtt_rounds(bench: &Bench, mut call: impl FnMut(u64) -> Res<()>) -> Res<(f64, f64, Vec<f64>)> {
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

fn apply_rtt(bench: &Bench) -> Res<()> {
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
            "apply_rtt[raw-pipe]: median {median:.1} us, p99 {p99:.1} us  (8-byte echo; medians {} us)",
            join_f(&medians)
        ));
        emit(bench, "raw-pipe", "apply_rtt", "median", median, "us");
        emit(bench, "raw-pipe", "apply_rtt", "p99", p99, "us");
    }
    Ok(())
}

fn join_f(values: &[f64]) -> String {
    let v: Vec<String> = values.iter().map(|m| format!("{m:.1}")).collect();
    v.join(", ")
}

fn startup(bench: &Bench) -> Res<()> {
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

fn payload_1mib(bench: &Bench) -> Res<()> {
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
    }
    Ok(())
}

/// `map_chunked(identity, [64 MiB] x 8, 1)`, MiB/s one way.
fn payload_64mib(bench: &Bench) -> Res<()> {
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

fn cpu_bound(bench: &Bench) -> Res<()> {
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
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(bench.processes)
            .build()?;
        let par =
            || Ok(threads.install(|| (0..CPU_BOUND_ITEMS).into_par_iter().map(busy).collect()));
        let (rayon_best, _, out): (f64, _, Vec<u32>) = bench.best_time(par)?;
        assert_eq!(out, expected);
        let speedup = serial_best / rayon_best;
        log(&format!(
            "cpu_bound[rayon]: speedup {speedup:.2}x  ({} threads, {:.0} ms)",
            bench.processes,
            rayon_best * 1e3
        ));
        emit(bench, "rayon", "cpu_bound", "speedup", speedup, "x");
    }
    Ok(())
}

fn imap_stream(bench: &Bench) -> Res<()> {
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

/// This binary re-executed as a child that echoes its stdin to its stdout: the
/// raw-pipe reference, two plain pipes and no pool.
struct EchoChild {
    child: Child,
    input: File,
    output: File,
}

impl EchoChild {
    fn spawn() -> Res<EchoChild> {
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

    fn finish(mut self) -> Res<()> {
        drop(self.input); // end of file: the child exits
        let status = self.child.wait()?;
        assert!(status.success(), "echo child: {status}");
        Ok(())
    }
}

/// The echo child's loop: unbuffered copies of whatever arrives, until end of file.
fn echo() -> Res<()> {
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
