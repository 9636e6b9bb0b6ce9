//! Helper for tests: runs every kind of shared object across processes and pool
//! tasks on the transport named by `PROCPOOL_TEST_TRANSPORT` — channels (one of
//! them with a killed producer), a `SharedValue` incremented by processes, a `Lock`
//! whose holder is killed, a `SharedSlice` summed by pool tasks, a `Barrier`, an
//! `Event`, a `Semaphore`, handles inside channel messages — drops it all, and prints
//! what this process holds before and after: `fds A B memfd_maps C D shm E F
//! zombies Z` (`shm`: entries of `/dev/shm`).

use std::time::Duration;

use procpool::{
    Barrier, Event, Lock, Process, Receiver, Semaphore, Sender, SharedSlice, SharedValue, channel,
    pool_task,
};
use procpool_downstream::{count_entries, memfd_mappings, zombies};

#[pool_task]
fn produce(tx: Sender<u64>, count: u64) -> u64 {
    (0..count).for_each(|n| tx.send(n).expect("receiver alive"));
    count
}

#[pool_task]
fn consume(rx: Receiver<u64>) -> u64 {
    rx.iter().count() as u64
}

#[pool_task]
fn send_then_hang(tx: Sender<u64>) -> u64 {
    tx.send(1).expect("receiver alive");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[pool_task]
fn increment(counter: SharedValue<u64>, times: u64) -> u64 {
    (0..times).for_each(|_| *counter.lock() += 1);
    times
}

#[pool_task]
fn hold(lock: Lock, ready: Event) -> u64 {
    let _held = lock.lock();
    ready.set();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[pool_task]
fn sum(data: SharedSlice<f64>) -> f64 {
    data.iter().sum()
}

#[pool_task]
fn sync_up(barrier: Barrier, permits: Semaphore, go: Event) -> u64 {
    barrier.wait();
    let _permit = permits.acquire();
    u64::from(go.wait_timeout(Duration::from_secs(30)))
}

/// Sends a new channel's receiver and a shared value inside one message.
#[pool_task]
fn hand_over(back: Sender<(Receiver<u64>, SharedValue<u64>)>) -> u64 {
    let (tx, rx) = channel::<u64>().expect("channel");
    let value = SharedValue::new(41).expect("value");
    back.send((rx, value)).expect("parent listens");
    tx.send(7).expect("receiver in flight");
    7
}

fn exercise(transport: Option<&str>) {
    let pool = procpool_downstream::builder_for(transport)
        .and_then(|b| b.processes(2).build())
        .expect("pool");
    // Channels between pool tasks and processes.
    let (tx, rx) = channel::<u64>().expect("channel");
    let consumer = Process::spawn(consume, (rx,)).expect("spawn");
    assert_eq!(
        pool.starmap(produce, vec![(tx.clone(), 100), (tx.clone(), 100)])
            .expect("producers"),
        vec![100, 100]
    );
    drop(tx);
    assert_eq!(consumer.join().expect("consumer"), 200);
    // A killed producer: disconnected.
    let (tx, rx) = channel::<u64>().expect("channel");
    let p = Process::spawn(send_then_hang, (tx,)).expect("spawn");
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)).expect("one"), 1);
    p.kill().expect("kill");
    assert!(matches!(rx.recv(), Err(procpool::Error::Disconnected)));
    drop(p);
    // Counter, lock, slice.
    let counter = SharedValue::new(0u64).expect("value");
    let ps: Vec<_> = (0..4)
        .map(|_| Process::spawn(increment, (counter.clone(), 10_000)).expect("spawn"))
        .collect();
    ps.into_iter()
        .for_each(|p| assert_eq!(p.join().expect("join"), 10_000));
    assert_eq!(counter.get(), 40_000);
    let (lock, ready) = (Lock::new().expect("lock"), Event::new().expect("event"));
    let p = Process::spawn(hold, (lock.clone(), ready.clone())).expect("spawn");
    assert!(ready.wait_timeout(Duration::from_secs(30)));
    p.kill().expect("kill");
    assert!(lock.lock().owner_died());
    drop(p);
    let data: Vec<f64> = (0..1 << 20).map(f64::from).collect();
    let slice = SharedSlice::from_slice(&data).expect("slice");
    let expected: f64 = data.iter().sum();
    assert!(
        pool.map(sum, vec![slice.clone(); 8])
            .expect("sums")
            .iter()
            .all(|s| *s == expected)
    );
    // Barrier, semaphore, event in pool tasks.
    let (barrier, permits, go) = (
        Barrier::new(2).expect("barrier"),
        Semaphore::new(1).expect("semaphore"),
        Event::new().expect("event"),
    );
    go.set();
    let args = (barrier, permits, go);
    assert_eq!(
        pool.starmap(sync_up, vec![args.clone(), args])
            .expect("sync"),
        vec![1, 1]
    );
    // Handles inside a message, from a process that has exited by the time they
    // are used.
    let (back, from) = channel().expect("channel");
    let p = Process::spawn(hand_over, (back,)).expect("spawn");
    assert_eq!(p.join().expect("hand_over"), 7);
    let (rx, value): (Receiver<u64>, SharedValue<u64>) = from.recv().expect("handles");
    assert_eq!(rx.recv().expect("sent before it exited"), 7);
    assert!(matches!(rx.recv(), Err(procpool::Error::Disconnected)));
    assert_eq!(value.get(), 41);
}

#[procpool::main]
fn main() {
    let transport = std::env::var("PROCPOOL_TEST_TRANSPORT").ok();
    exercise(transport.as_deref()); // let lazy one-time state settle first
    let shm = || count_entries("/dev/shm");
    let (fds, maps, shm_before) = (count_entries("/proc/self/fd"), memfd_mappings(), shm());
    for _ in 0..3 {
        exercise(transport.as_deref());
    }
    println!(
        "fds {fds} {} memfd_maps {maps} {} shm {shm_before} {} zombies {}",
        count_entries("/proc/self/fd"),
        memfd_mappings(),
        shm(),
        zombies()
    );
}
