//! Asynchronous results and callbacks: `apply_async`, `map_async` and Python's
//! `callback` / `error_callback`.
//!
//! `cargo run --release --example apply_async`
//!
//! Starts work, keeps the main thread free while it runs, polls and waits with
//! time limits, and shows a task that panics: its `Error::TaskPanicked` reaches the
//! `on_error` callback (Python's `error_callback`) and `get`, and the pool goes on.

use std::sync::mpsc;
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

/// The n-th Fibonacci number, fast; panics where it no longer fits in a `u64`.
#[pool_task]
fn exact_fib(n: u32) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a.checked_add(b).expect("fib overflows u64"));
    }
    a
}

fn main() -> Result<(), Error> {
    procpool::init(); // first line of main: in a worker process it serves tasks and exits
    let pool = Pool::new(2)?;
    let started = Instant::now();

    // apply_async returns at once; poll, wait with a limit, then take the value.
    let mut big = pool.apply_async(fib, (32u32,))?;
    println!("fib(32) submitted; ready: {}", big.ready());
    println!(
        "done within 1 ms? {}",
        big.wait_timeout(Duration::from_millis(1))
    );
    match big.get_timeout(Duration::from_millis(1)) {
        Err(Error::Timeout { .. }) => {
            println!("get_timeout(1 ms): not yet, the handle stays usable")
        }
        other => println!("get_timeout(1 ms): {other:?}"),
    }

    // Meanwhile: a whole map in the background, and a blocking apply in the foreground.
    let table = pool.map_async(exact_fib, 0..=20u32)?;
    println!(
        "fib(90) = {} (apply, blocking)",
        pool.apply(exact_fib, (90u32,))?
    );

    // Callbacks run on a pool thread when the call finishes; here they report to main.
    let (tx, rx) = mpsc::channel();
    let (ok_tx, err_tx) = (tx.clone(), tx);
    let fine = pool.apply_async_with(
        exact_fib,
        (93u32,),
        Callbacks::new()
            .on_success(move |v| ok_tx.send(format!("on_success: fib(93) = {v}")).unwrap()),
    )?;
    let overflow = pool.apply_async_with(
        exact_fib,
        (94u32,),
        Callbacks::new()
            .on_success(|v| println!("unexpected: {v}"))
            .on_error(move |e| {
                let panicked = matches!(e, Error::TaskPanicked { .. });
                err_tx
                    .send(format!("on_error (TaskPanicked: {panicked}): {e}"))
                    .unwrap();
            }),
    )?;
    for message in rx.iter().take(2) {
        println!("{message}");
    }
    fine.wait();
    overflow.wait();
    println!(
        "successful: fib(93) {:?}, fib(94) {:?}",
        fine.successful(),
        overflow.successful()
    );
    if let Err(e) = overflow.get() {
        println!("get() gives the same error: {e}");
    }

    println!("fib(0..=20) = {:?}", table.get()?);
    let value = big.get_timeout(Duration::from_secs(60))?;
    println!(
        "fib(32) = {value}, {:.2?} after it was submitted",
        started.elapsed()
    );
    Ok(())
}
