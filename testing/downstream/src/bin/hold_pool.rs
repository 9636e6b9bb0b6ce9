//! Helper for tests: starts a pool on the transport named by
//! `PROCPOOL_TEST_TRANSPORT` (`pipe` or `ipc`; default: the default transport),
//! prints its worker pids, then keeps a long map running until it is killed.

use std::io::Write;
use std::time::Duration;

use procpool::pool_task;

#[pool_task]
fn sleepy(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[procpool::main]
fn main() -> Result<(), procpool::Error> {
    let pool =
        procpool_downstream::builder_for(std::env::var("PROCPOOL_TEST_TRANSPORT").ok().as_deref())?
            .processes(2)
            .build()?;
    let pids: Vec<String> = pool.pids().iter().map(u32::to_string).collect();
    println!("{}", pids.join(" "));
    std::io::stdout().flush()?;
    pool.map_chunked(sleepy, vec![1000u64; 600], 1)?;
    Ok(())
}
