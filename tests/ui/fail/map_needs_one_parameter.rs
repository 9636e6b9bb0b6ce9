// `map` takes one-parameter tasks; a two-parameter task says to use `starmap`.
use procpool::{Pool, pool_task};

#[pool_task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn main() -> Result<(), procpool::Error> {
    procpool::init();
    let pool = Pool::new(2)?;
    let _ = pool.map(add, vec![(1u64, 2u64)])?;
    Ok(())
}
