//! The rest of `multiprocessing`: `Process`, channels between processes, and
//! handles that travel to processes and pool tasks.

use std::collections::BTreeSet;
use std::time::Duration;

use procpool::{
    Barrier, Error, Event, Lock, Pool, Process, Receiver, Semaphore, Sender, SharedArray,
    SharedValue, WorkerExit, channel, pool_task,
};

#[pool_task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[pool_task]
fn explode(message: String) -> u64 {
    panic!("{message}")
}

#[pool_task]
fn exit_early(code: i32) -> u64 {
    std::process::exit(code)
}

#[pool_task]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Sends `count` numbers from `first` on `tx`; returns how many it sent.
#[pool_task]
fn produce(tx: Sender<u64>, first: u64, count: u64) -> u64 {
    for n in first..first + count {
        tx.send(n).expect("a receiver is alive");
    }
    count
}

/// Receives until disconnected; returns what it got.
#[pool_task]
fn consume(rx: Receiver<u64>) -> Vec<u64> {
    rx.iter().collect()
}

/// Sends its own pid, then sleeps forever (until killed).
#[pool_task]
fn send_pid_and_hang(tx: Sender<u32>) -> u64 {
    tx.send(std::process::id()).expect("parent listens");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// A process that starts a process of its own and a pool of its own.
#[pool_task]
fn nest(n: u64) -> (u64, Vec<u64>) {
    let inner = Process::spawn(add, (n, 1)).expect("a process may spawn processes");
    let pool = Pool::new(2).expect("a process may start a pool");
    let squares = pool
        .starmap(add, vec![(n, n), (n, 0)])
        .expect("nested pool works");
    (inner.join().expect("inner process returns"), squares)
}

/// A pool task that starts a process.
#[pool_task]
fn spawn_from_task(n: u64) -> u64 {
    Process::spawn(add, (n, n))
        .and_then(Process::join)
        .expect("a pool task may spawn a process")
}

/// Sends a fresh channel's sender to the parent and a number through it.
#[pool_task]
fn hand_back(back: Sender<Sender<u64>>, value: u64) -> u64 {
    let (tx, rx) = channel::<u64>().expect("channel");
    back.send(tx.clone()).expect("parent listens");
    tx.send(value).expect("own receiver alive");
    drop(tx);
    // Our receiver reads what the parent sends through the sender we gave it.
    rx.recv().expect("a value") + rx.recv().expect("parent's value")
}

#[test]
fn a_process_returns_its_tasks_value_and_exits_0() {
    let p = Process::spawn(add, (2, 3)).unwrap();
    assert!(p.pid() > 0 && p.pid() != std::process::id());
    let pid = p.pid();
    assert_eq!(p.join().unwrap(), 5);
    assert!(procpool_gone(pid), "joined child {pid} is reaped");
}

#[test]
fn exit_status_is_none_while_running_and_code_0_after() {
    let mut p = Process::spawn(sleep_ms, (300,)).unwrap();
    assert!(p.is_alive());
    assert_eq!(p.exit_status(), None);
    assert!(matches!(
        p.join_timeout(Duration::from_millis(10)),
        Err(Error::Timeout { pid: None, .. })
    ));
    assert_eq!(p.join_timeout(Duration::from_secs(30)).unwrap(), 300);
    assert!(!p.is_alive());
    assert_eq!(p.exit_status(), Some(WorkerExit::Code(0)));
    // Taken once: a second join is refused, not a hang.
    assert!(matches!(
        p.join_timeout(Duration::from_secs(1)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(p.join(), Err(Error::InvalidArgument(_))));
}

#[test]
fn a_panicking_process_is_task_panicked() {
    let p = Process::spawn(explode, ("boom".to_owned(),)).unwrap();
    let pid = p.pid();
    match p.join() {
        Err(Error::TaskPanicked {
            message, pid: got, ..
        }) => {
            assert_eq!(message, "boom");
            assert_eq!(got, pid);
        }
        other => panic!("expected TaskPanicked, got {other:?}"),
    }
}

#[test]
fn exit_before_returning_is_worker_died_with_its_code() {
    let p = Process::spawn(exit_early, (0,)).unwrap();
    assert!(matches!(
        p.join(),
        Err(Error::WorkerDied {
            exit: WorkerExit::Code(0),
            ..
        })
    ));
    let p = Process::spawn(exit_early, (7,)).unwrap();
    assert!(matches!(
        p.join(),
        Err(Error::WorkerDied {
            exit: WorkerExit::Code(7),
            ..
        })
    ));
}

#[test]
fn terminate_and_kill_give_their_signals() {
    let mut p = Process::spawn(sleep_ms, (60_000,)).unwrap();
    p.terminate().unwrap();
    let got = p.join_timeout(Duration::from_secs(30));
    assert!(
        matches!(
            got,
            Err(Error::WorkerDied {
                exit: WorkerExit::Signal(15),
                ..
            })
        ),
        "{got:?}"
    );
    assert_eq!(p.exit_status(), Some(WorkerExit::Signal(15)));
    // Signals to an ended process change nothing.
    p.kill().unwrap();
    p.terminate().unwrap();
    let p = Process::spawn(sleep_ms, (60_000,)).unwrap();
    p.kill().unwrap();
    assert!(matches!(
        p.join(),
        Err(Error::WorkerDied {
            exit: WorkerExit::Signal(9),
            ..
        })
    ));
}

#[test]
fn dropping_an_unjoined_process_kills_and_reaps_it() {
    let p = Process::spawn(sleep_ms, (60_000,)).unwrap();
    let pid = p.pid();
    drop(p);
    assert!(
        procpool_gone(pid),
        "child {pid} is neither running nor a zombie"
    );
}

#[test]
fn an_unregistered_function_is_refused_by_spawn() {
    fn plain(n: u64) -> u64 {
        n
    }
    assert!(matches!(
        Process::spawn(plain, (1,)),
        Err(Error::NotRegistered { .. })
    ));
}

#[test]
fn processes_nest_and_pool_tasks_spawn_processes() {
    let p = Process::spawn(nest, (5,)).unwrap();
    assert_eq!(p.join().unwrap(), (6, vec![10, 5]));
    let pool = Pool::new(2).unwrap();
    assert_eq!(
        pool.map(spawn_from_task, vec![1u64, 2, 3]).unwrap(),
        vec![2, 4, 6]
    );
}

#[test]
fn a_receiver_sees_disconnected_after_the_sending_process_is_killed() {
    let (tx, rx) = channel::<u32>().unwrap();
    let p = Process::spawn(send_pid_and_hang, (tx,)).unwrap();
    let pid = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(pid, p.pid());
    // The child holds the only sender (ours was moved and is kept only until the
    // task returns, which it never does): nothing more, not yet disconnected.
    assert!(matches!(rx.try_recv(), Ok(None)));
    p.kill().unwrap();
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(30)),
        Err(Error::Disconnected)
    ));
    assert!(matches!(p.join(), Err(Error::WorkerDied { .. })));
}

#[test]
fn three_producer_and_two_consumer_processes_deliver_every_item_once() {
    let (tx, rx) = channel::<u64>().unwrap();
    let consumers: Vec<_> = (0..2)
        .map(|_| Process::spawn(consume, (rx.clone(),)).unwrap())
        .collect();
    drop(rx);
    let producers: Vec<_> = (0..3u64)
        .map(|p| Process::spawn(produce, (tx.clone(), p * 10_000, 10_000)).unwrap())
        .collect();
    drop(tx);
    for p in producers {
        assert_eq!(p.join().unwrap(), 10_000);
    }
    let mut all: Vec<u64> = consumers
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert_eq!(all.len(), 30_000, "every item once");
    all.sort_unstable();
    assert_eq!(all, (0..30_000).collect::<Vec<_>>());
}

#[test]
fn channel_ends_are_arguments_of_pool_tasks() {
    let pool = Pool::new(2).unwrap();
    let (tx, rx) = channel::<u64>().unwrap();
    let sent = pool
        .starmap(produce, vec![(tx.clone(), 0, 50), (tx.clone(), 50, 50)])
        .unwrap();
    assert_eq!(sent, vec![50, 50]);
    drop(tx);
    let got: BTreeSet<u64> = rx.iter().collect();
    assert_eq!(got, (0..100).collect());
}

#[test]
fn a_channel_disconnects_once_the_tasks_holding_its_senders_are_done_before_get() {
    let pool = Pool::new(2).unwrap();
    let (tx, rx) = channel::<u64>().unwrap();
    let pending = pool
        .starmap_async(produce, vec![(tx.clone(), 0, 10), (tx, 10, 10)])
        .unwrap();
    // Ends without `get`: the pool keeps a sender only until its task has it.
    let got: BTreeSet<u64> = rx.iter().collect();
    assert_eq!(got, (0..20).collect());
    assert_eq!(pending.get().unwrap(), vec![10, 10]);
    // The same through apply_async and imap.
    let (tx, rx) = channel::<u64>().unwrap();
    let one = pool.apply_async(produce, (tx.clone(), 0, 5)).unwrap();
    let stream = pool.imap(consume_count, vec![tx.clone(), tx]).unwrap();
    assert_eq!(rx.iter().count(), 5 + 2 * 3);
    assert_eq!(one.get().unwrap(), 5);
    assert_eq!(stream.map(Result::unwrap).collect::<Vec<_>>(), vec![3, 3]);
}

/// Sends 3 numbers on `tx`.
#[pool_task]
fn consume_count(tx: Sender<u64>) -> u64 {
    (0..3).for_each(|n| tx.send(n).expect("receiver alive"));
    3
}

#[test]
fn a_handle_made_in_a_child_comes_back_through_a_channel() {
    let (back_tx, back_rx) = channel::<Sender<u64>>().unwrap();
    let p = Process::spawn(hand_back, (back_tx, 40)).unwrap();
    let tx = back_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    tx.send(2).unwrap();
    drop(tx);
    assert_eq!(p.join().unwrap(), 42);
}

/// Adds 1 to `counter` `times` times under its lock.
#[pool_task]
fn increment(counter: SharedValue<u64>, times: u64) -> u64 {
    for _ in 0..times {
        *counter.lock() += 1;
    }
    times
}

/// Takes `lock`, says so on `ready`, and sleeps holding it until killed.
#[pool_task]
fn hold_lock(lock: Lock, ready: Event) -> u64 {
    let _held = lock.lock();
    ready.set();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Locks `value`, says so on `ready`, and sleeps holding the guard until killed.
#[pool_task]
fn hold_value(value: SharedValue<u64>, ready: Event) -> u64 {
    let mut guard = value.lock();
    *guard = 99;
    ready.set();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// `passes` passes of `barrier`: in each, one increment of `count`, then the
/// barrier, then a check that all parties incremented. How many checks held.
#[pool_task]
fn meet(barrier: Barrier, count: SharedValue<u64>, parties: u64, passes: u64) -> u64 {
    let mut held = 0;
    for pass in 1..=passes {
        *count.lock() += 1;
        barrier.wait();
        if count.get() >= pass * parties {
            held += 1;
        }
        barrier.wait(); // nobody starts the next pass before all have checked
    }
    held
}

/// Waits for `event` up to 30 s; whether it came.
#[pool_task]
fn await_event(event: Event) -> bool {
    event.wait_timeout(Duration::from_secs(30))
}

/// Holds a permit of `permits` for 20 ms, counting itself in `inside` (slot 0) and
/// the most ever inside (slot 1).
#[pool_task]
fn bounded(permits: Semaphore, inside: SharedArray<u64>) -> u64 {
    let _permit = permits.acquire();
    {
        let mut counts = inside.lock();
        counts[0] += 1;
        counts[1] = counts[1].max(counts[0]);
    }
    std::thread::sleep(Duration::from_millis(20));
    inside.lock()[0] -= 1;
    1
}

#[test]
fn four_processes_of_100_000_increments_give_400_000() {
    let counter = SharedValue::new(0u64).unwrap();
    let ps: Vec<_> = (0..4)
        .map(|_| Process::spawn(increment, (counter.clone(), 100_000)).unwrap())
        .collect();
    for p in ps {
        assert_eq!(p.join().unwrap(), 100_000);
    }
    assert_eq!(counter.get(), 400_000);
}

#[test]
fn a_process_killed_holding_a_lock_does_not_block_the_next_lock() {
    let lock = Lock::new().unwrap();
    let ready = Event::new().unwrap();
    let p = Process::spawn(hold_lock, (lock.clone(), ready.clone())).unwrap();
    assert!(
        ready.wait_timeout(Duration::from_secs(30)),
        "child took the lock"
    );
    assert!(lock.try_lock().is_none(), "held by the child");
    p.kill().unwrap();
    assert!(matches!(p.join(), Err(Error::WorkerDied { .. })));
    let guard = lock
        .lock_timeout(Duration::from_secs(30))
        .expect("the dead holder's lock is free");
    assert!(guard.owner_died());
    drop(guard);
    assert!(!lock.lock().owner_died(), "recovered once");

    // A guard of a shared value, the same.
    let value = SharedValue::new(0u64).unwrap();
    let ready = Event::new().unwrap();
    let p = Process::spawn(hold_value, (value.clone(), ready.clone())).unwrap();
    assert!(ready.wait_timeout(Duration::from_secs(30)));
    p.kill().unwrap();
    let _ = p.join();
    let guard = value.lock();
    assert!(guard.owner_died());
    assert_eq!(*guard, 99, "what the dead holder wrote stays");
}

#[test]
fn barrier_event_and_semaphore_work_across_processes() {
    let barrier = Barrier::new(3).unwrap();
    let count = SharedValue::new(0u64).unwrap();
    let ps: Vec<_> = (0..3)
        .map(|_| Process::spawn(meet, (barrier.clone(), count.clone(), 3, 50)).unwrap())
        .collect();
    for p in ps {
        assert_eq!(p.join().unwrap(), 50, "every pass saw all three");
    }
    assert_eq!(count.get(), 150);

    let event = Event::new().unwrap();
    let waiter = Process::spawn(await_event, (event.clone(),)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(waiter.is_alive(), "waits for the event");
    event.set();
    assert!(waiter.join().unwrap());

    let permits = Semaphore::new(2).unwrap();
    let inside = SharedArray::<u64>::zeroed(2).unwrap();
    let ps: Vec<_> = (0..5)
        .map(|_| Process::spawn(bounded, (permits.clone(), inside.clone())).unwrap())
        .collect();
    for p in ps {
        assert_eq!(p.join().unwrap(), 1);
    }
    let counts = inside.to_vec();
    assert_eq!(counts[0], 0);
    assert!((1..=2).contains(&counts[1]), "at most 2 inside: {counts:?}");
}

/// Whether process `pid` is gone: neither running nor a zombie.
fn procpool_gone(pid: u32) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat) if std::time::Instant::now() > deadline => {
                eprintln!("still there: {stat}");
                return false;
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}
