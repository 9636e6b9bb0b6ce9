//! The transport conformance suite: the same cases, run against every transport
//! compiled in (`conformance::pipe::*`, `conformance::ipc::*`).
//!
//! Each case takes a [`Setup`] naming the transport; add a transport by adding a
//! line to the `conformance_suite!` invocation at the bottom.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use procpool::{Error, Pool, PoolBuilder, WorkerExit, pool_task};

/// Which transport a case runs on.
#[derive(Clone, Copy)]
struct Setup {
    transport: &'static str,
}

impl Setup {
    fn builder(self) -> PoolBuilder {
        procpool_downstream::builder_for(Some(self.transport)).expect("transport compiled in")
    }

    fn pool(self, processes: usize) -> Pool {
        self.builder()
            .processes(processes)
            .build()
            .expect("pool starts")
    }
}

#[pool_task]
fn square(n: u64) -> u64 {
    n * n
}

#[pool_task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[pool_task]
fn identity(blob: Vec<u8>) -> Vec<u8> {
    blob
}

#[pool_task]
fn zeros(len: usize) -> Vec<u8> {
    vec![0; len]
}

#[pool_task]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Sleeps `ms` milliseconds, first creating the file `started` if one is named.
#[pool_task]
fn nap_marked(ms: u64, started: Option<String>) -> u64 {
    if let Some(path) = started {
        let _ = std::fs::File::create(path);
    }
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[pool_task]
fn panic_on(n: u64) -> u64 {
    assert_ne!(n, 13, "unlucky {n}");
    n
}

#[pool_task]
fn exit_with(code: i32) -> i32 {
    std::process::exit(code)
}

#[pool_task]
fn my_pid() -> u32 {
    std::process::id()
}

/// Ends its worker with `exit(9)` `ms` after returning: a worker that dies while idle.
#[pool_task]
fn exit_later(ms: u64) -> u32 {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(ms));
        std::process::exit(9);
    });
    std::process::id()
}

/// Ends its worker with `exit(0)` at item `at`.
#[pool_task]
fn exit_at(n: u64, at: u64) -> u64 {
    if n == at {
        std::process::exit(0);
    }
    n
}

/// Ends its worker at items 100 and 101, once each: a marker file in `dir` says an
/// item has crashed already.
#[pool_task]
fn crash_once(dir: String, n: u64) -> u64 {
    if n == 100 || n == 101 {
        let marker = std::path::Path::new(&dir).join(n.to_string());
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .is_ok()
        {
            std::process::exit(1);
        }
    }
    n * 2
}

/// Leaks `mib` MiB of touched memory in its worker; returns the worker's pid.
#[pool_task]
fn leak(mib: usize) -> u32 {
    std::hint::black_box(Vec::leak(vec![1u8; mib << 20]));
    std::process::id()
}

/// Calls `procpool::init()` again, inside a task.
#[pool_task]
fn init_again(n: u64) -> u64 {
    procpool::init();
    n + 1
}

fn plain(n: u64) -> u64 {
    n
}

fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn every_api_call(s: Setup) {
    let pool = s.pool(2);
    let expected: Vec<u64> = (1..=10u64).map(|x| x * x).collect();
    assert_eq!(pool.map(square, 1..=10u64).unwrap(), expected);
    assert_eq!(pool.map_chunked(square, 1..=10u64, 3).unwrap(), expected);
    assert_eq!(
        pool.starmap(add, vec![(1u64, 2u64), (3, 4)]).unwrap(),
        [3, 7]
    );
    assert_eq!(pool.apply(add, (1u64, 2u64)).unwrap(), 3);
    assert_eq!(pool.apply(square, (7u64,)).unwrap(), 49);
    let h = pool.apply_async(square, (7u64,)).unwrap();
    h.wait();
    assert!(h.ready() && h.wait_timeout(Duration::ZERO));
    assert_eq!(h.get().unwrap(), 49);
    let mut slow = pool.apply_async(nap, (300u64,)).unwrap();
    assert!(matches!(
        slow.get_timeout(Duration::from_millis(1)),
        Err(Error::Timeout { .. })
    ));
    assert_eq!(slow.get_timeout(Duration::from_secs(60)).unwrap(), 300);
    assert_eq!(
        pool.map_async(square, 0..100u64)
            .unwrap()
            .get()
            .unwrap()
            .len(),
        100
    );
    let ordered: Vec<u64> = pool
        .imap(square, 0..1000u64)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ordered, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    let mut unordered: Vec<u64> = pool
        .imap_unordered(square, 0..1000u64)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    unordered.sort_unstable();
    assert_eq!(unordered, ordered);
    let pids = pool.pids();
    pool.close();
    assert!(matches!(
        pool.apply(square, (1u64,)),
        Err(Error::PoolClosed)
    ));
    pool.join().unwrap();
    assert!(pids.iter().all(|&p| !exists(p)));
    let pool = s.pool(2);
    pool.terminate();
    pool.join().unwrap();
    let pool = s.pool(2);
    let pids = pool.pids();
    drop(pool);
    assert!(pids.iter().all(|&p| !exists(p)), "drop reaps every worker");
}

fn panics_and_unregistered_tasks(s: Setup) {
    let pool = s.pool(2);
    let err = pool.map_chunked(panic_on, 0..20u64, 4).unwrap_err();
    assert!(
        matches!(&err, Error::TaskPanicked { index: 13, message, .. } if message == "assertion `left != right` failed: unlucky 13\n  left: 13\n right: 13"),
        "{err:?}"
    );
    assert!(matches!(
        pool.map(plain, [1u64]),
        Err(Error::NotRegistered { .. })
    ));
    assert!(matches!(
        pool.apply(|n: u64| n, (1u64,)),
        Err(Error::NotRegistered { .. })
    ));
    assert_eq!(
        pool.map(panic_on, 0..13u64).unwrap().len(),
        13,
        "the pool lives on"
    );
}

fn one_mib_payloads(s: Setup) {
    let pool = s.pool(2);
    let blob: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let items = vec![blob.clone(); 16];
    let back = pool.map_chunked(identity, &items, 1).unwrap();
    assert_eq!(back.len(), 16);
    assert!(back.iter().all(|b| *b == blob));
    let sizes = [0usize, 1, 65_535, 65_536, 65_537, 3 << 20];
    let out = pool.map_chunked(zeros, sizes, 1).unwrap();
    assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), sizes);
}

fn large_batches(s: Setup) {
    let pool = s.pool(2);
    let n = 200_000u64;
    let out = pool.map(square, 0..n).unwrap();
    assert_eq!(out.len(), n as usize);
    assert!(
        out.iter()
            .enumerate()
            .all(|(i, &v)| v == (i as u64) * (i as u64))
    );
    let sum: u64 = pool
        .imap_chunked(square, 0..n, 5_000)
        .unwrap()
        .map(Result::unwrap)
        .sum();
    assert_eq!(sum, (0..n).map(|x| x * x).sum());
}

fn frame_size_limits(s: Setup) {
    let pool = s
        .builder()
        .processes(1)
        .max_frame_size(64 * 1024)
        .build()
        .unwrap();
    let pid = pool.pids()[0];
    assert!(matches!(
        pool.apply(identity, (vec![1u8; 100_000],)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        pool.apply(zeros, (100_000usize,)),
        Err(Error::Protocol(_))
    ));
    assert_eq!(pool.apply(zeros, (1000usize,)).unwrap().len(), 1000);
    assert_eq!(pool.pids(), [pid], "the same worker served all three");
}

fn worker_death(s: Setup) {
    let pool = std::sync::Arc::new(s.pool(1));
    let first = pool.apply(my_pid, ()).unwrap();
    let err = pool.apply(exit_with, (7i32,)).unwrap_err();
    assert!(
        matches!(err, Error::WorkerDied { exit: WorkerExit::Code(7), pid, index: 0, .. } if pid == first),
        "{err:?}"
    );
    let second = pool.apply(my_pid, ()).unwrap();
    assert_ne!(first, second);
    let started = std::env::temp_dir().join(format!(
        "procpool-worker-death-{}-{}",
        std::process::id(),
        s.transport
    ));
    let caller = {
        let pool = std::sync::Arc::clone(&pool);
        let mark = started.to_string_lossy().into_owned();
        std::thread::spawn(move || {
            pool.starmap_chunked(nap_marked, [(1u64, None), (60_000, Some(mark))], 1)
        })
    };
    procpool_downstream::wait_for_file(&started); // item 1 is running
    procpool_downstream::kill9(second);
    let err = caller.join().unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            Error::WorkerDied {
                exit: WorkerExit::Signal(9),
                index: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(pool.apply(square, (3u64,)).unwrap(), 9, "replaced");
}

/// Starts `hold_pool` (in a process group of its own if `own_group`, like a shell
/// job) and returns it with its workers' pids.
fn hold_pool(s: Setup, own_group: bool) -> (std::process::Child, Vec<u32>) {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(env!("CARGO_BIN_EXE_hold_pool"));
    command
        .env("PROCPOOL_TEST_TRANSPORT", s.transport)
        .stdout(Stdio::piped());
    if own_group {
        command.process_group(0);
    }
    let mut parent = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(parent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{line}");
    assert!(pids.iter().all(|&p| exists(p)));
    (parent, pids)
}

/// True once none of `pids` exists; a liveness bound of 10 s, not a timing claim.
fn all_gone(pids: &[u32]) -> bool {
    (0..500).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        pids.iter().all(|&p| !exists(p))
    })
}

fn parent_death(s: Setup) {
    let (mut parent, pids) = hold_pool(s, false);
    parent.kill().unwrap(); // SIGKILL: no destructor runs in the parent
    parent.wait().unwrap();
    assert!(
        all_gone(&pids),
        "workers outlived their killed parent: {pids:?}"
    );
}

/// Runs helper program `bin` with `args` on the transport of `s`; the numbers of
/// its one-line report, and the line.
fn report(bin: &str, args: &[&str], s: Setup) -> (Vec<usize>, String) {
    let out = Command::new(bin)
        .args(args)
        .env("PROCPOOL_TEST_TRANSPORT", s.transport)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let numbers = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers, text)
}

fn no_leaks_after_a_thousand_pools(s: Setup) {
    let (n, text) = report(env!("CARGO_BIN_EXE_leak_cycles"), &["1000"], s);
    let [
        fds_before,
        fds_after,
        threads_before,
        threads_after,
        zombies,
    ] = n[..]
    else {
        panic!("unexpected report: {text}");
    };
    assert_eq!(fds_after, fds_before, "descriptors leaked: {text}");
    assert_eq!(threads_after, threads_before, "threads leaked: {text}");
    assert_eq!(zombies, 0, "{text}");
}

fn ctrl_c_ends_the_program_and_its_workers(s: Setup) {
    let (mut parent, pids) = hold_pool(s, true);
    let group = rustix::process::Pid::from_raw(parent.id() as i32).unwrap();
    rustix::process::kill_process_group(group, rustix::process::Signal::INT).unwrap();
    assert!(!parent.wait().unwrap().success());
    assert!(all_gone(&pids), "workers outlived Ctrl-C: {pids:?}");
}

fn many_threads_one_pool(s: Setup) {
    let pool = std::sync::Arc::new(s.pool(2));
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            let pool = std::sync::Arc::clone(&pool);
            std::thread::spawn(move || {
                let range = t * 10_000..(t + 1) * 10_000;
                let got = pool.map(square, range.clone()).unwrap();
                got == range.map(|x| x * x).collect::<Vec<_>>()
            })
        })
        .collect();
    assert!(handles.into_iter().all(|h| h.join().unwrap()));
    let distinct: BTreeSet<u32> = pool.pids().into_iter().collect();
    assert_eq!(distinct.len(), 2);
}

fn init_inside_a_task_is_a_no_op(s: Setup) {
    let pool = s.pool(1);
    let pid = pool.apply(my_pid, ()).unwrap();
    assert_eq!(pool.apply(init_again, (1u64,)).unwrap(), 2);
    assert_eq!(pool.map(init_again, 0..100u64).unwrap()[99], 100);
    assert_eq!(
        pool.apply(my_pid, ()).unwrap(),
        pid,
        "the same worker serves on"
    );
}

fn default_sigpipe_never_kills_the_program(s: Setup) {
    let out = Command::new(env!("CARGO_BIN_EXE_sigpipe_default"))
        .env("PROCPOOL_TEST_TRANSPORT", s.transport)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("maps whose worker died: 30"), "{stdout}");
    assert!(stdout.ends_with("alive\n"), "{stdout}");
}

fn a_worker_that_died_idle_is_replaced_and_nothing_fails(s: Setup) {
    for processes in [1, 2] {
        let pool = s.pool(processes);
        for round in 0..3 {
            let pid = pool.apply(my_pid, ()).unwrap();
            procpool_downstream::kill9(pid);
            procpool_downstream::wait_until_dead(pid, Duration::from_secs(10));
            // The direct path of `apply`, then the queue of `map`.
            assert_eq!(pool.apply(square, (3u64,)).unwrap(), 9, "round {round}");
            let pid = pool.apply(my_pid, ()).unwrap();
            procpool_downstream::kill9(pid);
            procpool_downstream::wait_until_dead(pid, Duration::from_secs(10));
            let out = pool.map_chunked(square, 0..1000u64, 10).unwrap();
            assert_eq!(out[999], 999 * 999, "round {round}");
        }
        // A worker that exits by itself, between two calls.
        let pid = pool.apply(exit_later, (10u64,)).unwrap();
        procpool_downstream::wait_until_dead(pid, Duration::from_secs(10));
        assert_eq!(pool.map(square, 0..100u64).unwrap()[99], 99 * 99);
        let pid = pool.apply(exit_later, (10u64,)).unwrap();
        procpool_downstream::wait_until_dead(pid, Duration::from_secs(10));
        assert_eq!(pool.apply(square, (4u64,)).unwrap(), 16);
    }
}

fn a_dead_workers_error_names_the_item_it_was_running(s: Setup) {
    let pool = s.pool(1);
    // Chunks of one quick item go to the worker grouped and sent ahead.
    for (chunksize, at) in [(1usize, 1500u64), (1, 7), (100, 1650), (5000, 2999)] {
        let args: Vec<(u64, u64)> = (0..3000u64).map(|n| (n, at)).collect();
        let err = pool.starmap_chunked(exit_at, &args, chunksize).unwrap_err();
        assert!(
            matches!(err, Error::WorkerDied { index, exit: WorkerExit::Code(0), .. } if index == at as usize),
            "chunksize {chunksize}, exit at {at}: {err:?}"
        );
    }
    // Default chunks (750 items here).
    let args: Vec<(u64, u64)> = (0..3000u64).map(|n| (n, 2000)).collect();
    let err = pool.starmap(exit_at, &args).unwrap_err();
    assert!(
        matches!(err, Error::WorkerDied { index: 2000, .. }),
        "{err:?}"
    );
    // Item by item through imap: the items after the dead one were never started and
    // run on the next worker; only the chunk that was running fails.
    let results: Vec<Result<u64, Error>> = pool.imap(square, 0..10u64).unwrap().collect();
    assert!(results.iter().all(Result::is_ok));
}

fn only_the_running_batch_uses_a_retry(s: Setup) {
    let dir = std::env::temp_dir().join(format!(
        "procpool-crash-once-{}-{}",
        std::process::id(),
        s.transport
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let pool = s
        .builder()
        .processes(1)
        .retry_lost_tasks(1)
        .build()
        .unwrap();
    let path = dir.to_string_lossy().into_owned();
    let args: Vec<(String, u64)> = (0..200u64).map(|n| (path.clone(), n)).collect();
    let out = pool.starmap_chunked(crash_once, &args, 1);
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.unwrap();
    assert_eq!(out, (0..200u64).map(|n| n * 2).collect::<Vec<_>>());
}

fn workers_inherit_no_descriptor_of_the_parent(s: Setup) {
    let out = Command::new(env!("CARGO_BIN_EXE_inherit_fds"))
        .env("PROCPOOL_TEST_TRANSPORT", s.transport)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "eof\n", "{out:?}");
}

fn a_worker_past_its_soft_memory_limit_is_replaced(s: Setup) {
    let pool = s
        .builder()
        .processes(1)
        .max_memory_per_child(128 << 20)
        .build()
        .unwrap();
    let first = pool.apply(leak, (40usize,)).unwrap();
    // Under the limit after 40 MiB (and the program's own few): the same worker
    // takes the next calls.
    assert_eq!(pool.apply(leak, (1usize,)).unwrap(), first);
    assert_eq!(pool.apply(leak, (160usize,)).unwrap(), first);
    // Past it after 200 MiB: replaced, and no call failed.
    let second = pool.apply(my_pid, ()).unwrap();
    assert_ne!(second, first);
    assert!(!exists(first) || procpool_downstream::wait_until_gone(first));
    assert_eq!(pool.map(square, 0..1000u64).unwrap()[999], 999 * 999);
    assert_eq!(
        pool.apply(my_pid, ()).unwrap(),
        second,
        "small tasks keep it"
    );
    assert!(matches!(
        s.builder().max_memory_per_child(0).build(),
        Err(Error::InvalidArgument(_))
    ));
}

/// Results in a crawler's order: `imap`, `imap_unordered` or `imap_chunked(.., 3)`.
#[derive(Clone, Copy, Debug)]
enum Stream {
    Ordered,
    Unordered,
    Chunked3,
}

/// `imap` whose input waits on its output, like a crawler whose next URL comes from
/// a result: the input is a channel, and each result sends the next item into it.
/// After `N` results the consumer drops the sender, and the stream must end. The
/// consumer runs on a thread of its own and hands its results over a channel, so a
/// stream that waits on its input instead of yielding the results it has fails the
/// case (a liveness bound of 60 s, not a timing claim) instead of hanging it.
fn imap_input_fed_by_its_output(s: Setup) {
    const N: u64 = 51; // a whole number of chunks of 3
    let pool = std::sync::Arc::new(s.pool(2));
    for mode in [Stream::Ordered, Stream::Unordered, Stream::Chunked3] {
        let chunk = if let Stream::Chunked3 = mode { 3 } else { 1 };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let pool = std::sync::Arc::clone(&pool);
        std::thread::spawn(move || {
            let (tx, rx) = std::sync::mpsc::channel::<u64>();
            // A chunk goes out once full (or at the end of the input): the input
            // starts with one whole chunk, then each result brings one item.
            for k in 1..=chunk {
                tx.send(k).unwrap();
            }
            let mut sent = chunk;
            let mut tx = Some(tx);
            let stream = match mode {
                Stream::Ordered => pool.imap(square, rx),
                Stream::Unordered => pool.imap_unordered(square, rx),
                Stream::Chunked3 => pool.imap_chunked(square, rx, 3),
            }
            .unwrap();
            let mut got = Vec::new();
            for r in stream {
                got.push(r.unwrap());
                if sent < N {
                    sent += 1;
                    tx.as_ref().unwrap().send(sent).unwrap();
                }
                if got.len() as u64 == N {
                    tx = None; // the end of the input, while the stream waits on it
                }
            }
            assert!(tx.is_none(), "the stream ended before its input: {got:?}");
            done_tx.send(got).unwrap();
        });
        let mut got = done_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{mode:?}: no end of the stream ({e})"));
        let expected: Vec<u64> = (1..=N).map(|k| k * k).collect();
        if let Stream::Unordered = mode {
            got.sort_unstable();
        }
        assert_eq!(got, expected, "{mode:?}");
    }
}

/// Sends `first..first + count` on `tx`; how many it sent.
#[pool_task]
fn produce_into(tx: procpool::Sender<u64>, first: u64, count: u64) -> u64 {
    (first..first + count).for_each(|n| tx.send(n).expect("a receiver is alive"));
    count
}

/// Receives until every sender is gone.
#[pool_task]
fn drain(rx: procpool::Receiver<u64>) -> Vec<u64> {
    rx.iter().collect()
}

/// Channel ends are ordinary arguments of pool tasks: producers and consumers are
/// tasks of two pools, every item arrives once, and the consumers' streams end when
/// the producing tasks are done (their senders gone), before anyone calls `get`.
fn channel_ends_travel_to_pool_tasks(setup: Setup) {
    let producers = setup.pool(2);
    let consumers = setup.pool(2);
    let (tx, rx) = procpool::channel::<u64>().unwrap();
    let drained = consumers.map_async(drain, vec![rx.clone(), rx]).unwrap();
    let sent = producers
        .starmap(
            produce_into,
            (0..4u64).map(|k| (tx.clone(), k * 1000, 1000)),
        )
        .unwrap();
    assert_eq!(sent, vec![1000; 4]);
    drop(tx);
    let mut all: Vec<u64> = drained.get().unwrap().into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(all, (0..4000).collect::<Vec<_>>());
    // A send with no receiver left anywhere fails instead of blocking.
    let (tx, rx) = procpool::channel::<u64>().unwrap();
    drop(rx);
    assert!(matches!(
        producers.apply(produce_into, (tx, 0, 1)),
        Err(Error::TaskPanicked { .. })
    ));
}

/// The sum of `data[from..to]`.
#[pool_task]
fn sum_range(data: procpool::SharedSlice<f64>, from: usize, to: usize) -> f64 {
    data[from..to].iter().sum()
}

/// Adds 1 to `counter` and sets `marks[i]` to `i`.
#[pool_task]
fn mark(counter: procpool::SharedValue<u64>, marks: procpool::SharedArray<u32>, i: u32) -> u32 {
    *counter.lock() += 1;
    marks.lock()[i as usize] = i;
    i
}

/// Shared memory reaches pool tasks without a copy per task: 8 M `f64` in a
/// `SharedSlice` summed in 16 ranges by the workers; a `SharedValue` and a
/// `SharedArray` written by 500 tasks.
fn shared_memory_in_pool_tasks(setup: Setup) {
    const N: usize = 8 << 20;
    let pool = setup.pool(2);
    let data: Vec<f64> = (0..N).map(|i| i as f64).collect();
    let shared = procpool::SharedSlice::from_slice(&data).unwrap();
    drop(data);
    let step = N / 16;
    let sums = pool
        .starmap(
            sum_range,
            (0..16).map(|k| (shared.clone(), k * step, (k + 1) * step)),
        )
        .unwrap();
    let total: f64 = sums.iter().sum();
    assert_eq!(total, (N as f64) * (N as f64 - 1.0) / 2.0);
    assert_eq!(shared.len(), N);

    let counter = procpool::SharedValue::new(0u64).unwrap();
    let marks = procpool::SharedArray::<u32>::zeroed(500).unwrap();
    let done = pool
        .starmap(
            mark,
            (0..500u32).map(|i| (counter.clone(), marks.clone(), i)),
        )
        .unwrap();
    assert_eq!(done, (0..500).collect::<Vec<_>>());
    assert_eq!(counter.get(), 500);
    assert_eq!(marks.to_vec(), (0..500).collect::<Vec<u32>>());
}

/// Channels, shared memory and sync objects leave nothing behind: after three
/// rounds of all of them (processes killed mid-use included), the parent holds
/// the descriptors and memfd mappings it held before, `/dev/shm` is as it was, and
/// no child is a zombie.
fn shared_objects_leave_nothing_behind(s: Setup) {
    let (n, text) = report(env!("CARGO_BIN_EXE_share_leaks"), &[], s);
    let [fds, fds_after, maps, maps_after, shm, shm_after, zombies] = n[..] else {
        panic!("unexpected report: {text}");
    };
    assert_eq!(fds_after, fds, "descriptors leaked: {text}");
    assert_eq!(maps_after, maps, "memfd mappings leaked: {text}");
    assert_eq!(shm_after, shm, "files left in /dev/shm: {text}");
    assert_eq!(zombies, 0, "{text}");
}

/// Returns `n`, unless it is 13: then the worker segfaults (SIGSEGV).
#[pool_task]
fn segfault_at_13(n: u64) -> u64 {
    if n == 13 {
        let me = rustix::process::getpid();
        let _ = rustix::process::kill_process(me, rustix::process::Signal::SEGV);
    }
    n
}

/// A task that segfaults and one that runs past its time limit end only their
/// own worker: the errors say so, and the pool (on MPI: the job) goes on.
fn crashes_and_time_limits_kill_only_their_worker(setup: Setup) {
    let pool = setup.pool(2);
    let err = pool.map_chunked(segfault_at_13, 0..20u64, 1).unwrap_err();
    assert!(
        matches!(
            err,
            Error::WorkerDied {
                exit: WorkerExit::Signal(11),
                index: 13,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(pool.map(square, vec![4u64]).unwrap(), vec![16]);
    let timed = setup
        .builder()
        .processes(2)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = timed.apply(nap, (20_000u64,)).unwrap_err();
    assert!(matches!(err, Error::Timeout { pid: Some(_), .. }), "{err}");
    assert_eq!(timed.apply(nap, (1u64,)).unwrap(), 1);
    // With retries, the lost item runs again on a fresh worker.
    let retried = setup
        .builder()
        .processes(2)
        .retry_lost_tasks(1)
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("procpool-once-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir_name = dir.to_string_lossy().into_owned();
    assert_eq!(retried.apply(crash_once, (dir_name, 100u64)).unwrap(), 200);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under `mpirun` (with `PROCPOOL_EXPECT_AGENTS` set to the number of agents) the
/// pools' workers are the agents' children, not this process's; without it there
/// is no cluster and they are ours.
fn workers_are_where_the_job_puts_them(setup: Setup) {
    let expected: usize = std::env::var("PROCPOOL_EXPECT_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(procpool::cluster::agents(), expected);
    let pool = setup.pool(2);
    assert_eq!(pool.map(square, vec![3u64]).unwrap(), vec![9]);
    for pid in pool.pids() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let ppid: u32 = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap();
        assert_eq!(
            ppid == std::process::id(),
            expected == 0,
            "worker {pid}'s parent {ppid}"
        );
    }
}

macro_rules! conformance_suite {
    ($($(#[$cfg:meta])* $name:ident;)*) => {$(
        $(#[$cfg])*
        mod $name {
            const S: super::Setup = super::Setup { transport: stringify!($name) };
            #[test] fn every_api_call() { super::every_api_call(S) }
            #[test] fn panics_and_unregistered_tasks() { super::panics_and_unregistered_tasks(S) }
            #[test] fn one_mib_payloads() { super::one_mib_payloads(S) }
            #[test] fn large_batches() { super::large_batches(S) }
            #[test] fn frame_size_limits() { super::frame_size_limits(S) }
            #[test] fn worker_death() { super::worker_death(S) }
            #[test] fn parent_death() { super::parent_death(S) }
            #[test] fn many_threads_one_pool() { super::many_threads_one_pool(S) }
            #[test] fn init_inside_a_task_is_a_no_op() { super::init_inside_a_task_is_a_no_op(S) }
            #[test] fn a_worker_that_died_idle_is_replaced_and_nothing_fails() { super::a_worker_that_died_idle_is_replaced_and_nothing_fails(S) }
            #[test] fn a_dead_workers_error_names_the_item_it_was_running() { super::a_dead_workers_error_names_the_item_it_was_running(S) }
            #[test] fn only_the_running_batch_uses_a_retry() { super::only_the_running_batch_uses_a_retry(S) }
            #[test] fn workers_inherit_no_descriptor_of_the_parent() { super::workers_inherit_no_descriptor_of_the_parent(S) }
            #[test] fn a_worker_past_its_soft_memory_limit_is_replaced() { super::a_worker_past_its_soft_memory_limit_is_replaced(S) }
            #[test] fn default_sigpipe_never_kills_the_program() { super::default_sigpipe_never_kills_the_program(S) }
            #[test] fn imap_input_fed_by_its_output() { super::imap_input_fed_by_its_output(S) }
            #[test] fn no_leaks_after_a_thousand_pools() { super::no_leaks_after_a_thousand_pools(S) }
            #[test] fn ctrl_c_ends_the_program_and_its_workers() { super::ctrl_c_ends_the_program_and_its_workers(S) }
            #[test] fn channel_ends_travel_to_pool_tasks() { super::channel_ends_travel_to_pool_tasks(S) }
            #[test] fn shared_memory_in_pool_tasks() { super::shared_memory_in_pool_tasks(S) }
            #[test] fn shared_objects_leave_nothing_behind() { super::shared_objects_leave_nothing_behind(S) }
            #[test] fn workers_are_where_the_job_puts_them() { super::workers_are_where_the_job_puts_them(S) }
            #[test] fn crashes_and_time_limits_kill_only_their_worker() { super::crashes_and_time_limits_kill_only_their_worker(S) }
        }
    )*};
}

conformance_suite! {
    #[cfg(feature = "pipe")]
    pipe;
    #[cfg(feature = "ipc")]
    ipc;
    #[cfg(feature = "shm")]
    shm;
}
