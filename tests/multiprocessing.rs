//! The rest of `multiprocessing`: `Process`, channels between processes, and
//! handles that travel to processes and pool tasks.

use std::collections::BTreeSet;
use std::time::Duration;

use procpool::{Error, Pool, Process, Receiver, Sender, WorkerExit, channel, pool_task};

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
