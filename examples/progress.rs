//! A progress bar for a long `map`.
//!
//! `cargo run --release --example progress --features progress` draws an indicatif
//! progress bar on stderr with `pool.map_progress(task, items)` (hidden when stderr
//! is not a terminal).
//!
//! `cargo run --release --example progress` (without the feature) draws a plain
//! text bar on stderr from the `Progress` reports of `pool.map_with_progress`.
//!
//! The bar moves once per finished chunk: `map` cuts its input into about
//! `4 × processes` chunks, as Python does.

use std::time::{Duration, Instant};

use procpool::{Pool, pool_task};

/// Work items: 240 × ~10 ms of CPU, about 1.2 s on 2 workers in any build profile.
const ITEMS: u64 = 240;

/// Burns about 10 ms of CPU on a xorshift generator; returns the rounds it ran.
#[pool_task]
fn crunch(seed: u64) -> u64 {
    let (start, mut x, mut rounds) = (Instant::now(), seed | 1, 0);
    while start.elapsed() < Duration::from_millis(10) {
        for _ in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        rounds += 1;
    }
    std::hint::black_box(x);
    rounds
}

/// With the `progress` feature: indicatif draws the bar.
#[cfg(feature = "progress")]
fn run(pool: &Pool) -> Result<Vec<u64>, procpool::Error> {
    pool.map_progress(crunch, 0..ITEMS)
}

/// Without it: a text bar drawn from each `Progress` report.
#[cfg(not(feature = "progress"))]
fn run(pool: &Pool) -> Result<Vec<u64>, procpool::Error> {
    use procpool::Progress;
    use std::io::Write;

    let results = pool.map_with_progress(crunch, 0..ITEMS, |p: Progress| {
        let total = p.total.unwrap_or(p.done).max(1);
        let filled = 30 * p.done / total;
        let bar = format!("{}{}", "#".repeat(filled), "-".repeat(30 - filled));
        eprint!("\r[{bar}] {}/{total} in {:.1?}", p.done, p.elapsed);
        let _ = std::io::stderr().flush();
    });
    eprintln!();
    results
}

fn main() -> Result<(), procpool::Error> {
    procpool::init(); // first line of main: in a worker process it serves tasks and exits
    let pool = Pool::new(2)?;
    let started = Instant::now();
    let rounds = run(&pool)?;
    println!(
        "{} items, {} million xorshift steps, in {:.2?}",
        rounds.len(),
        rounds.iter().sum::<u64>() / 1000,
        started.elapsed()
    );
    Ok(())
}
