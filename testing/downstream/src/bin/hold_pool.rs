//! Helper for tests: starts a pool, prints its worker pids, then keeps a long map
//! running until it is killed.

use std::io::Write;
use std::time::Duration;

use procpool::{Pool, pool_task};

#[pool_task]
fn sleepy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[procpool::main]
fn main() -> Result<(), procpool::Error> {
    let pool = Pool::new(2)?;
    let pids: Vec<String> = pool.pids().iter().map(u32::to_string).collect();
    println!("{}", pids.join(" "));
    std::io::stdout().flush()?;
    pool.map_chunked(sleepy, vec![1000u64; 600], 1)?;
    Ok(())
}
