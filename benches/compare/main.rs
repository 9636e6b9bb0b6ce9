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
//! A module per scenario family, each opening with what it measures and how:
//! `throughput.rs` (`map_tiny`, `map_tiny_chunk1`, `imap_stream`), `latency.rs`
//! (`apply_rtt`, `startup`), `payload.rs` (`payload_1mib`, `payload_64mib`),
//! `cpu_bound.rs`, `sharing.rs` (`channel_stream`, `channel_rtt`, `shared_slice_1gib`, procpool only), and `reference.rs`: the `raw-pipe` and `rayon` rows measured in the
//! same run (skip them with `--no-reference`).
//! `benches/compare.sh` runs this next to the Python reference and prints a table.

mod cpu_bound;
mod latency;
mod payload;
mod reference;
mod sharing;
mod throughput;

use std::error::Error as StdError;
use std::time::Instant;

use procpool::{Pool, Transport, pool_task};

type Res<T> = Result<T, Box<dyn StdError>>;

/// The shared baseline's scenarios, then `payload_64mib` (procpool only: big
/// payloads, for choosing a transport) and the channel scenarios (procpool only).
const SCENARIOS: [&str; 12] = [
    "map_tiny",
    "map_tiny_chunk1",
    "apply_rtt",
    "startup",
    "payload_1mib",
    "cpu_bound",
    "imap_stream",
    "payload_64mib",
    "channel_stream",
    "channel_rtt",
    "shared_slice_1gib",
    "idle_cpu",
];

/// The tiny task of `throughput` and `latency`, and of every pool's warm-up.
#[pool_task]
fn square(x: u64) -> u64 {
    x * x
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
    let outcome = if std::env::var_os(reference::ECHO_ENV).is_some() {
        reference::echo()
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
        "{}: {} CPUs, processes={}, start_method=reexec, repeat={}",
        bench.impl_name(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        bench.processes,
        bench.repeat
    ));
    let all = Instant::now();
    for scenario in scenarios {
        let started = Instant::now();
        match scenario.as_str() {
            "map_tiny" => throughput::map_tiny(&bench)?,
            "map_tiny_chunk1" => throughput::map_tiny_chunk1(&bench)?,
            "apply_rtt" => latency::apply_rtt(&bench)?,
            "startup" => latency::startup(&bench)?,
            "payload_1mib" => payload::payload_1mib(&bench)?,
            "cpu_bound" => cpu_bound::cpu_bound(&bench)?,
            "imap_stream" => throughput::imap_stream(&bench)?,
            "payload_64mib" => payload::payload_64mib(&bench)?,
            "channel_stream" => sharing::channel_stream(&bench)?,
            "channel_rtt" => sharing::channel_rtt(&bench)?,
            "shared_slice_1gib" => sharing::shared_slice_1gib(&bench)?,
            "idle_cpu" => latency::idle_cpu(&bench)?,
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
    const USAGE: &str = "usage: compare [--transport pipe|ipc|shm] [--processes N] [--repeat R] \
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
        "pipe" | "ipc" | "shm" => compiled(&transport).ok_or(format!(
            "transport `{transport}` is not compiled in: build with `--features {transport}`"
        ))?,
        other => Err(format!("unknown transport `{other}`: pipe, ipc or shm"))?,
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
    #[cfg(feature = "shm")]
    if name == "shm" {
        return Some((Transport::Shm, "shm"));
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
    /// `procpool-pipe`, `procpool-ipc`, or `procpool-mpi` when run as rank 0 of an
    /// MPI job (built with `--features mpi`, started by `mpirun`): the pools'
    /// workers are then the agents' local workers, the frames relayed over MPI.
    fn impl_name(&self) -> String {
        if procpool::cluster::agents() > 0 {
            return "procpool-mpi".to_owned();
        }
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
