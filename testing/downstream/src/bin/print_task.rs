//! Helper for tests: a task that prints to stdout from the worker.

use procpool::{Pool, pool_task};

#[pool_task]
fn greet(n: u32) -> u32 {
    println!("hello from worker {} for item {n}", std::process::id());
    n * 10
}

#[procpool::main]
fn main() {
    let pool = Pool::new(2).expect("pool");
    let out = pool.map_chunked(greet, 0..4u32, 1).expect("map");
    println!("results {out:?}");
}
