//! A pipeline of processes joined by channels: one producer process → a channel →
//! three consumer processes → a channel of results → the parent.
//!
//! `cargo run --release --example pipeline`
//!
//! Python's version needs a `Queue` per stage and a sentinel per consumer to tell
//! them to stop; here a consumer's loop ends by itself when the producer is done
//! (every sender gone: `Error::Disconnected`), and the parent's loop ends when the
//! consumers are. Prints the sum of the squares of 1..=10 000 and the share each
//! consumer took.

use std::collections::BTreeMap;

use procpool::{Error, Process, Receiver, Sender, channel, pool_task};

/// Sends 1..=`count` into `work`; returns how many it sent.
#[pool_task]
fn produce(work: Sender<u64>, count: u64) -> u64 {
    for n in 1..=count {
        if work.send(n).is_err() {
            return n - 1; // nobody is listening any more
        }
    }
    count
}

/// Squares what arrives on `work` until the producer is done, sending each square
/// with this process's pid to `results`; returns how many it took.
#[pool_task]
fn square_all(work: Receiver<u64>, results: Sender<(u32, u64)>) -> u64 {
    let pid = std::process::id();
    let mut taken = 0;
    for n in work.iter() {
        if results.send((pid, n * n)).is_err() {
            break;
        }
        taken += 1;
    }
    taken
}

fn main() -> Result<(), Error> {
    procpool::init();
    let (work_tx, work_rx) = channel::<u64>()?;
    let (results_tx, results_rx) = channel::<(u32, u64)>()?;

    let consumers = (0..3)
        .map(|_| Process::spawn(square_all, (work_rx.clone(), results_tx.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let producer = Process::spawn(produce, (work_tx, 10_000))?;
    // The parent keeps no end it does not read from: the loops below end when the
    // processes holding the other ends are done.
    drop((work_rx, results_tx));

    let mut sum = 0u64;
    let mut per_consumer = BTreeMap::new();
    for (pid, square) in results_rx.iter() {
        sum += square;
        *per_consumer.entry(pid).or_insert(0u64) += 1;
    }
    let sent = producer.join()?;
    let taken: u64 = consumers
        .into_iter()
        .map(Process::join)
        .sum::<Result<u64, Error>>()?;
    assert_eq!((sent, taken), (10_000, 10_000));
    println!("sum of squares of 1..=10000: {sum}");
    for (pid, n) in &per_consumer {
        println!("consumer {pid} squared {n} numbers");
    }
    Ok(())
}
