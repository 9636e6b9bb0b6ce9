//! Shared memory under a process-shared lock: four processes each add 1 to one
//! `SharedValue<u64>` 100 000 times, and the parent prints the total, `400000`.
//!
//! `cargo run --release --example shared_counter`
//!
//! Python's `Value('i', 0)` with `with v.get_lock(): v.value += 1`. The counter is a
//! `memfd` mapped in every process (nothing in `/dev/shm`), and its lock is a
//! robust mutex: had a process died holding it, the next `lock()` would get it.

use procpool::{Error, Process, SharedValue, pool_task};

/// Adds 1 to `counter` `times` times, each under its lock.
#[pool_task]
fn count(counter: SharedValue<u64>, times: u64) -> u64 {
    for _ in 0..times {
        *counter.lock() += 1;
    }
    times
}

fn main() -> Result<(), Error> {
    procpool::init();
    let counter = SharedValue::new(0u64)?;
    let workers = (0..4)
        .map(|_| Process::spawn(count, (counter.clone(), 100_000)))
        .collect::<Result<Vec<_>, _>>()?;
    let added: u64 = workers
        .into_iter()
        .map(Process::join)
        .sum::<Result<u64, Error>>()?;
    assert_eq!(added, 400_000);
    println!("{}", counter.get());
    Ok(())
}
