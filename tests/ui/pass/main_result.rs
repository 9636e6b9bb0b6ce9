// #[procpool::main] on a `main` that returns a Result and starts with an inner
// attribute. Outside a pool, `init()` returns at once and `main` runs.
use procpool::pool_task;

#[pool_task]
fn square(number: u64) -> u64 {
    number * number
}

#[procpool::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    #![allow(unused_mut)]
    let mut squared = square(3);
    assert_eq!(squared, 9);
    assert!(!procpool::is_worker());
    let parsed: u64 = "81".parse()?;
    assert_eq!(square(squared), parsed);
    Ok(())
}
