//! Streaming results in completion order from an endless input, with `imap_unordered`.
//!
//! `cargo run --release --example imap_unordered`
//!
//! The input is an infinite iterator of text records (`"27"`, `"28"`, ... and now and
//! then a malformed one). Two workers parse each record and compute its Collatz
//! chain length; the program takes the first 20 000 results as they complete and
//! stops. `imap_unordered` reads the input lazily, only a bounded distance ahead of
//! what has been consumed, so the endless input is never collected. Each result is
//! a `Result<Result<Chain, String>, procpool::Error>`: the outer one says whether the
//! task ran (a panic or a dead worker would show up there), the inner one is the
//! task's own verdict on the record.

use procpool::{Pool, pool_task};

/// A number and the length of its Collatz chain (steps to reach 1).
type Chain = (u64, u32);

#[pool_task]
fn collatz(record: String) -> Result<Chain, String> {
    let start: u64 = record
        .parse()
        .map_err(|e| format!("bad record {record:?}: {e}"))?;
    let (mut n, mut steps) = (start, 0);
    while n > 1 {
        n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
        steps += 1;
    }
    Ok((start, steps))
}

/// An endless stream of records; every 1000th is malformed.
fn records() -> impl Iterator<Item = String> + Send + 'static {
    (1u64..).map(|n| {
        if n % 1000 == 0 {
            format!("{n}?")
        } else {
            n.to_string()
        }
    })
}

fn main() -> Result<(), procpool::Error> {
    procpool::init(); // first line of main: in a worker process it serves tasks and exits
    let pool = Pool::new(2)?;
    const WANTED: usize = 20_000;

    // 100 records per message: Collatz chains are quick, the round trip is not.
    let mut results = pool.imap_unordered_chunked(collatz, records(), 100)?;
    let (mut parsed, mut bad) = (0, Vec::new());
    let (mut longest, mut previous, mut overtaken) = ((0, 0), 0, 0);
    for result in results.by_ref().take(WANTED) {
        match result? {
            Ok((n, steps)) => {
                parsed += 1;
                if n < previous {
                    overtaken += 1; // a later chunk finished before this one
                }
                previous = n;
                if steps > longest.1 {
                    longest = (n, steps);
                }
            }
            Err(message) => bad.push(message),
        }
    }

    println!("out-of-order arrivals (a later chunk finished first): {overtaken}");
    println!("{parsed} records parsed, {} malformed:", bad.len());
    for message in bad.iter().take(3) {
        println!("  {message}");
    }
    println!("longest chain seen: {} ({} steps)", longest.0, longest.1);
    println!(
        "records read from the endless input: {} (read-ahead is bounded)",
        results.items_read()
    );
    Ok(())
}
