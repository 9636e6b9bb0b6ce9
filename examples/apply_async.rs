//! Asynchronous results and callbacks: `apply_async`, `map_async` and Python's
//! `callback` / `error_callback`.
//!
//! `cargo run --release --example apply_async`
//!
//! Starts work, keeps the main thread free while it runs, polls and waits with
//! time limits, and shows a task that panics: its `Error::TaskPanicked` reaches the
//! `on_error` callback (Python's `error_callback`) and `get`, and the pool goes on.

use std::time::{Duration, Instant};

use procpool::{Callbacks, Error, Pool, pool_task};

/// The n-th Fibonacci number, the slow way (a stand-in for real CPU work).
#[pool_task]
fn fib(n: u32) -> u64 {
    if n < 2 {
        n as u64
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

/// The n-th Fibonacci number, fast; panics if it does not fit in a `u64` (n > 93).
#[pool_task]
fn exact_fib(n: u32) -> u64 {
    let (mut a, mut b) = (0u128, 1u128);
    for _ in 0..n {
        (a, b) = (b, a + b);
    }
    assert!(a <= u64::MAX as u128, "fib({n}) overflows u64");
    a as u64
}

fn main() -> Result<(), Error> {
    procpool::init(); // first line of main: in a worker process it serves tasks and exits
    let pool = Pool::new(2)?;
    let started = Instant::now();

    // apply_async returns at once; poll, wait with a limit, then take the value.
    let mut big = pool.apply_async(fib, (35u32,))?;
    println!("fib(35) submitted; ready: {}", big.ready());
    let in_time = big.wait_timeout(Duration::from_millis(1));
    println!("done within 1 ms? {in_time}");
    match big.get_timeout(Duration::from_millis(1)) {
        Err(Error::Timeout { .. }) => println!("get_timeout(1 ms): not yet, handle still usable"),
        other => println!("get_timeout(1 ms): {other:?}"),
    }

    // Meanwhile: a whole map in the background, and a blocking apply in the foreground.
    let table = pool.map_async(exact_fib, 0..=20u32)?;
    println!("apply: fib(90) = {}", pool.apply(exact_fib, (90u32,))?);

    // Python's callback / error_callback: run on a pool thread as the call finishes.
    let fits = Callbacks::new().on_success(|v: &u64| println!("on_success: fib(93) = {v}"));
    let fine = pool.apply_async_with(exact_fib, (93u32,), fits)?;
    let overflows = Callbacks::new()
        .on_success(|v: &u64| println!("unexpected: {v}"))
        .on_error(|e| {
            let panicked = matches!(e, Error::TaskPanicked { .. });
            println!("on_error (TaskPanicked: {panicked}): {e}");
        });
    let overflow = pool.apply_async_with(exact_fib, (94u32,), overflows)?;
    fine.wait();
    overflow.wait(); // callbacks run before a result is ready: both have printed by now
    let (ok, failed) = (fine.successful(), overflow.successful());
    println!("successful(): fib(93) {ok:?}, fib(94) {failed:?}");
    if let Err(e) = overflow.get() {
        println!("get() on fib(94) returns the error too: {e}");
    }
    println!("the pool goes on: fib(93) = {}", fine.get()?);

    println!("map_async: fib(0..=20) = {:?}", table.get()?);
    let value = big.get_timeout(Duration::from_secs(60))?;
    println!(
        "fib(35) = {value}, {:.2?} after submission",
        started.elapsed()
    );
    Ok(())
}
