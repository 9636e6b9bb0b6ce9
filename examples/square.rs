//! The seed's example: `Pool(processes=4).map(square, [1..10])`, in Rust.
//!
//! `cargo run --release --example square` prints
//! `[1, 4, 9, 16, 25, 36, 49, 64, 81, 100]`, computed in 4 worker processes.

use procpool::{Pool, pool_task};

#[pool_task]
fn square(number: u64) -> u64 {
    number * number
}

fn main() -> Result<(), procpool::Error> {
    procpool::init(); // first line of main: in a worker process it serves tasks and exits
    let pool = Pool::new(4)?;
    let squared = pool.map(square, vec![1u64, 2, 3, 4, 5, 6, 7, 8, 9, 10])?;
    println!("{squared:?}"); // [1, 4, 9, 16, 25, 36, 49, 64, 81, 100]
    Ok(())
}
