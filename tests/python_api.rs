//! The rest of Python's Pool: async results and callbacks, lazy imap, worker
//! recycling, initializers, time limits, progress hooks.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use procpool::{Callbacks, Error, Pool, Progress, pool_task};

#[pool_task]
fn square(n: u64) -> u64 {
    n * n
}

#[pool_task]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[pool_task]
fn pid_of(_item: u32) -> u32 {
    std::process::id()
}

#[pool_task]
fn odd_panics(n: u64) -> u64 {
    assert!(n.is_multiple_of(2), "odd {n}");
    n
}

/// Per-process state, set by the initializer in each worker.
static GREETING: AtomicU64 = AtomicU64::new(0);

#[pool_task]
fn set_greeting(value: u64) {
    GREETING.store(value, Ordering::SeqCst);
}

#[pool_task]
fn read_greeting(_item: u32) -> u64 {
    GREETING.load(Ordering::SeqCst)
}

#[pool_task]
fn failing_init() {
    panic!("cannot open the database");
}

fn not_registered() {}

#[test]
fn apply_async_get_wait_ready_successful() {
    let pool = Pool::new(2).unwrap();
    let h = pool.apply_async(square, (7u64,)).unwrap();
    h.wait();
    assert!(h.ready());
    assert_eq!(h.successful(), Some(true));
    assert_eq!(h.get().unwrap(), 49);

    let gate = crate::support::marker("apply-async-gate");
    let path = gate.to_string_lossy().into_owned();
    let slow = pool
        .apply_async(crate::support::gated, (path, 400u64))
        .unwrap();
    assert!(!slow.ready(), "a task waiting on its gate is not done");
    assert_eq!(slow.successful(), None);
    assert!(!slow.wait_timeout(Duration::from_millis(1)));
    crate::support::open_gate(&gate);
    assert!(slow.wait_timeout(Duration::from_secs(30)));
    assert_eq!(slow.get().unwrap(), 400);
    let _ = std::fs::remove_file(&gate);

    let bad = pool.apply_async(odd_panics, (3u64,)).unwrap();
    bad.wait();
    assert_eq!(bad.successful(), Some(false));
    assert!(matches!(bad.get(), Err(Error::TaskPanicked { .. })));
}

#[test]
fn get_timeout_times_out_then_the_handle_still_works() {
    let pool = Pool::new(1).unwrap();
    let gate = crate::support::marker("get-timeout-gate");
    let path = gate.to_string_lossy().into_owned();
    let mut h = pool
        .apply_async(crate::support::gated, (path, 500u64))
        .unwrap();
    let early = h.get_timeout(Duration::from_millis(1));
    assert!(matches!(early, Err(Error::Timeout { .. })), "{early:?}");
    assert!(!h.wait_timeout(Duration::ZERO), "still waiting on its gate");
    assert!(!h.ready());
    crate::support::open_gate(&gate);
    assert_eq!(h.get_timeout(Duration::from_secs(30)).unwrap(), 500);
    let _ = std::fs::remove_file(&gate);
    assert!(
        matches!(
            h.get_timeout(Duration::from_secs(1)),
            Err(Error::InvalidArgument(_))
        ),
        "spent"
    );
}

#[test]
fn map_async_and_starmap_async() {
    let pool = Pool::new(2).unwrap();
    let v = pool.map_async(square, 0..100u64).unwrap();
    let w = pool.starmap_async(nap, vec![(1u64,), (2,)]).unwrap();
    assert_eq!(
        v.get().unwrap(),
        (0..100u64).map(|x| x * x).collect::<Vec<_>>()
    );
    assert_eq!(w.get().unwrap(), [1, 2]);
    let empty = pool.map_async(square, Vec::<u64>::new()).unwrap();
    assert!(empty.ready());
    assert_eq!(empty.get().unwrap(), Vec::<u64>::new());
}

#[test]
fn callbacks_run_on_a_pool_thread_before_the_result_is_ready() {
    let pool = Pool::new(2).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s1, s2) = (Arc::clone(&seen), Arc::clone(&seen));
    let ok = pool
        .map_async_with(
            square,
            0..10u64,
            Some(3),
            Callbacks::new().on_success(move |v: &Vec<u64>| {
                let thread = std::thread::current().name().unwrap_or_default().to_owned();
                s1.lock()
                    .unwrap()
                    .push(format!("ok {} on {thread}", v.iter().sum::<u64>()));
            }),
        )
        .unwrap();
    assert_eq!(ok.get().unwrap().len(), 10);
    let failed = pool
        .apply_async_with(
            odd_panics,
            (5u64,),
            Callbacks::new()
                .on_success(|_: &u64| panic!("not called"))
                .on_error(move |e: &Error| {
                    s2.lock()
                        .unwrap()
                        .push(format!("error {}", matches!(e, Error::TaskPanicked { .. })))
                }),
        )
        .unwrap();
    assert!(failed.get().is_err());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[0].starts_with("ok 285 on procpool-driver-"),
        "{seen:?}"
    );
    assert_eq!(seen[1], "error true");
}

#[test]
fn a_panicking_callback_does_not_break_the_pool() {
    let pool = Pool::new(1).unwrap();
    let h = pool
        .apply_async_with(
            square,
            (3u64,),
            Callbacks::new().on_success(|_: &u64| panic!("callback bug")),
        )
        .unwrap();
    assert_eq!(h.get().unwrap(), 9);
    assert_eq!(pool.apply(square, (4u64,)).unwrap(), 16);
}

#[test]
fn imap_yields_in_input_order_and_imap_unordered_in_completion_order() {
    let pool = Pool::new(2).unwrap();
    let ordered: Vec<u64> = pool
        .imap(square, 0..200u64)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(ordered, (0..200u64).map(|x| x * x).collect::<Vec<_>>());
    let chunked: Vec<u64> = pool
        .imap_chunked(square, 0..1000u64, 7)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(chunked, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());

    // One long item first: the other worker's short items come back before it.
    let unordered: Vec<u64> = pool
        .imap_unordered(nap, vec![600u64, 1, 1, 1])
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        unordered.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([600, 1])
    );
    assert_eq!(unordered.len(), 4);
    assert_eq!(unordered[0], 1, "completion order: {unordered:?}");
    assert_eq!(
        *unordered.last().unwrap(),
        600,
        "completion order: {unordered:?}"
    );
    let ordered: Vec<u64> = pool
        .imap(nap, vec![300u64, 1])
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        ordered,
        [300, 1],
        "input order even when the second finishes first"
    );
}

#[test]
fn imap_reads_its_input_lazily_in_bounded_memory() {
    let pool = Pool::new(2).unwrap();
    let created = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&created);
    let input = (0..50_000_000u64).inspect(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let chunk = 100;
    let bound = 8 * pool.processes() * chunk; // the documented read-ahead
    let mut stream = pool.imap_chunked(square, input, chunk).unwrap();
    let mut consumed = 0usize;
    let mut worst = 0usize;
    while consumed < 100_000 {
        let x = stream.next().unwrap().unwrap();
        assert_eq!(x, (consumed as u64) * (consumed as u64));
        consumed += 1;
        let ahead = created.load(Ordering::Relaxed) - consumed;
        worst = worst.max(ahead);
    }
    assert!(
        worst <= bound,
        "read {worst} items ahead of the consumer, bound {bound}"
    );
    // The feeder thread reads on meanwhile: `items_read` is a moment's count, from
    // what was consumed to what the input handed out.
    let read = stream.items_read();
    assert!(
        consumed <= read && read <= created.load(Ordering::Relaxed),
        "{consumed} consumed, {read} read"
    );
    drop(stream);
    assert!(
        created.load(Ordering::Relaxed) < 200_000,
        "50 million items were not read"
    );
    // Once the stream has ended, the count is the input's length.
    let mut stream = pool.imap_chunked(square, 0..1_234u64, 100).unwrap();
    assert_eq!(stream.by_ref().count(), 1_234);
    assert_eq!(stream.items_read(), 1_234);
}

#[test]
fn a_panic_in_the_input_of_imap_ends_the_stream_with_an_error() {
    let pool = Pool::new(2).unwrap();
    for chunk in [1, 4] {
        let input = (0..100u64).inspect(|x| assert!(*x != 6, "no input at {x}"));
        // On the consumer's thread the panic would end the test: it is an error.
        let got: Vec<Result<u64, Error>> =
            pool.imap_chunked(square, input, chunk).unwrap().collect();
        assert_eq!(got.len(), 7, "chunksize {chunk}: {got:?}");
        for (i, r) in got.iter().take(6).enumerate() {
            assert_eq!(*r.as_ref().unwrap(), (i * i) as u64, "chunksize {chunk}");
        }
        assert!(
            matches!(&got[6], Err(Error::InvalidArgument(m))
                if m == "the input iterator of imap panicked: no input at 6"),
            "chunksize {chunk}: {:?}",
            got[6]
        );
    }
    assert_eq!(pool.map(square, [3u64]).unwrap(), [9], "the pool goes on");
}

/// An input that counts the items it hands out and says when it is dropped.
struct Watched {
    items: Option<std::sync::mpsc::IntoIter<u64>>,
    taken: Arc<AtomicUsize>,
    dropped: std::sync::mpsc::Sender<()>,
}

impl Iterator for Watched {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        let item = self.items.as_mut()?.next()?;
        self.taken.fetch_add(1, Ordering::SeqCst);
        Some(item)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.items = None; // the receiver first, then the word
        let _ = self.dropped.send(());
    }
}

#[test]
fn dropping_an_imap_stops_its_feeder_even_while_the_input_waits() {
    let pool = Pool::new(1).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let (dropped_tx, dropped) = std::sync::mpsc::channel();
    let taken = Arc::new(AtomicUsize::new(0));
    let input = Watched {
        items: Some(rx.into_iter()),
        taken: Arc::clone(&taken),
        dropped: dropped_tx,
    };
    tx.send(3).unwrap();
    let mut stream = pool.imap(square, input).unwrap();
    assert_eq!(stream.next().unwrap().unwrap(), 9);
    // The feeder waits in the input's `next()`: the drop does not wait for it.
    drop(stream);
    assert_eq!(taken.load(Ordering::SeqCst), 1);
    // The next item wakes it: it sees the stream gone, reads no further and drops
    // its input (a liveness bound of 60 s, not a timing claim).
    tx.send(4).unwrap();
    dropped
        .recv_timeout(Duration::from_secs(60))
        .expect("the input was dropped");
    assert_eq!(taken.load(Ordering::SeqCst), 2);
    assert!(tx.send(5).is_err(), "the input's receiver is gone");

    // An endless input that never waits: the drop joins the feeder, or leaves it
    // at most one item to end by itself; either way the input is dropped.
    let (dropped_tx, dropped) = std::sync::mpsc::channel();
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    for k in 0..10_000 {
        tx.send(k).unwrap();
    }
    let input = Watched {
        items: Some(rx.into_iter()),
        taken: Arc::new(AtomicUsize::new(0)),
        dropped: dropped_tx,
    };
    let mut stream = pool.imap_chunked(square, input, 10).unwrap();
    assert_eq!(stream.next().unwrap().unwrap(), 0);
    drop(stream);
    dropped
        .recv_timeout(Duration::from_secs(60))
        .expect("the input was dropped");
    assert!(tx.send(0).is_err(), "the input's receiver is gone");
}

#[test]
fn imap_yields_item_errors_and_goes_on() {
    let pool = Pool::new(2).unwrap();
    let results: Vec<Result<u64, Error>> = pool.imap(odd_panics, 0..6u64).unwrap().collect();
    assert_eq!(results.len(), 6);
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v, i as u64),
            Err(Error::TaskPanicked { index, .. }) => assert_eq!(*index, i),
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 3);
}

#[test]
fn handles_and_streams_outlive_the_pool_with_an_error() {
    let pool = Pool::new(1).unwrap();
    let mut stream = pool.imap(nap, vec![1u64; 100]).unwrap();
    assert_eq!(stream.next().unwrap().unwrap(), 1);
    let h = pool.apply_async(nap, (2_000u64,)).unwrap();
    drop(pool);
    assert!(matches!(h.get(), Err(Error::PoolClosed)));
    let rest: Vec<_> = stream.collect();
    assert!(!rest.is_empty());
    assert!(
        rest.iter()
            .all(|r| matches!(r, Err(Error::PoolClosed)) || r.is_ok()),
        "{rest:?}"
    );
    assert!(matches!(rest.last(), Some(Err(Error::PoolClosed))));
}

#[test]
fn terminate_with_ten_thousand_queued_tasks_wakes_every_handle() {
    let pool = Pool::new(2).unwrap();
    let big = pool
        .map_async_with(nap, vec![50u64; 10_000], Some(1), Callbacks::new())
        .unwrap();
    let singles: Vec<_> = (0..20)
        .map(|_| pool.apply_async(nap, (50u64,)).unwrap())
        .collect();
    pool.terminate();
    assert!(matches!(big.get(), Err(Error::PoolClosed)));
    for h in singles {
        assert!(matches!(h.get(), Err(Error::PoolClosed)));
    }
    pool.join().unwrap();
    assert!(matches!(
        pool.apply_async(square, (1u64,)),
        Err(Error::PoolClosed)
    ));
    assert!(matches!(pool.imap(square, 0..3u64), Err(Error::PoolClosed)));
}

#[test]
fn a_big_chunk_travels_in_pieces_and_comes_back_whole() {
    // One chunk of 300 000 items is ~1 MiB of arguments: it goes out in 128 KiB
    // pieces, which two workers share; the results come back complete, in order.
    let pool = Pool::new(2).unwrap();
    let n = 300_000u64;
    let out = pool.map_chunked(square, 0..n, n as usize).unwrap();
    assert_eq!(out.len(), n as usize);
    assert!(
        out.iter()
            .enumerate()
            .all(|(i, &v)| v == (i as u64) * (i as u64))
    );
    let pids: BTreeSet<u32> = pool
        .map_chunked(pid_of, 0..200_000u32, 200_000)
        .unwrap()
        .into_iter()
        .collect();
    assert!(!pids.is_empty() && pids.len() <= 2, "{pids:?}");
    // With recycling, the pieces are where a worker may be replaced.
    let pool = Pool::builder()
        .processes(1)
        .max_tasks_per_child(100_000)
        .build()
        .unwrap();
    let pids: BTreeSet<u32> = pool
        .map_chunked(pid_of, 0..300_000u32, 300_000)
        .unwrap()
        .into_iter()
        .collect();
    assert!(
        pids.len() >= 2,
        "a 300 000-item chunk ran in one worker: {pids:?}"
    );
}

#[test]
fn max_tasks_per_child_recycles_workers() {
    let pool = Pool::builder()
        .processes(1)
        .max_tasks_per_child(2)
        .build()
        .unwrap();
    let pids: Vec<u32> = pool.map_chunked(pid_of, 0..10u32, 1).unwrap();
    let distinct: BTreeSet<u32> = pids.iter().copied().collect();
    assert_eq!(distinct.len(), 5, "2 items per worker, 10 items: {pids:?}");
    assert!(matches!(
        Pool::builder().max_tasks_per_child(0).build(),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn an_initializer_runs_once_in_every_new_worker() {
    let pool = Pool::builder()
        .processes(2)
        .max_tasks_per_child(3)
        .initializer(set_greeting, (1234u64,))
        .build()
        .unwrap();
    let seen = pool.map_chunked(read_greeting, 0..20u32, 1).unwrap();
    assert!(seen.iter().all(|&g| g == 1234), "{seen:?}");
    assert_eq!(
        GREETING.load(Ordering::SeqCst),
        0,
        "the parent's static is untouched"
    );
}

#[test]
fn a_failing_initializer_is_an_error_not_a_respawn_loop() {
    match Pool::builder()
        .processes(2)
        .initializer(failing_init, ())
        .build()
    {
        Err(Error::InitializerFailed { task, source, .. }) => {
            assert!(task.ends_with("failing_init"));
            assert!(
                matches!(*source, Error::TaskPanicked { ref message, .. } if message == "cannot open the database")
            );
        }
        other => panic!("expected InitializerFailed, got {other:?}"),
    }
    let unregistered = Pool::builder().initializer(not_registered, ()).build();
    assert!(
        matches!(unregistered, Err(Error::NotRegistered { .. })),
        "{unregistered:?}"
    );
}

#[test]
fn a_task_over_the_time_limit_is_killed_and_the_pool_goes_on() {
    let pool = Pool::builder()
        .processes(1)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let before = pool.apply(pid_of, (0u32,)).unwrap();
    match pool.map_chunked(nap, [5u64, 5, 60_000, 5], 4).unwrap_err() {
        Error::Timeout {
            index,
            pid,
            task,
            after,
        } => {
            assert_eq!(index, Some(2), "the item that hung, inside its chunk");
            assert_eq!(pid, Some(before));
            assert!(task.unwrap().ends_with("nap"));
            assert_eq!(after, Duration::from_millis(300));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    let after = pool.apply(pid_of, (0u32,)).unwrap();
    assert_ne!(after, before, "a fresh worker took over");
    assert_eq!(
        pool.map(nap, [5u64, 5]).unwrap(),
        [5, 5],
        "short tasks under the limit run"
    );
    assert!(matches!(
        Pool::builder().task_timeout(Duration::ZERO).build(),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn progress_hooks_count_up_to_the_total() {
    let pool = Pool::new(2).unwrap();
    let updates = Arc::new(Mutex::new(Vec::<Progress>::new()));
    let sink = Arc::clone(&updates);
    let out = pool
        .map_with_progress(square, 0..1000u64, move |p| sink.lock().unwrap().push(p))
        .unwrap();
    assert_eq!(out.len(), 1000);
    let updates = updates.lock().unwrap();
    // At most one update per chunk (4 × 2 processes); chunks finishing together
    // may share one. Counts only grow, and the last is the total.
    assert!((1..=8).contains(&updates.len()), "{updates:?}");
    assert!(updates.iter().all(|p| p.done % 125 == 0), "{updates:?}");
    assert!(updates.windows(2).all(|w| w[0].done < w[1].done));
    assert_eq!(
        updates.last().map(|p| (p.done, p.total)),
        Some((1000, Some(1000)))
    );

    let seen = Arc::new(AtomicUsize::new(0));
    let s = Arc::clone(&seen);
    let n = pool
        .imap_chunked(square, 0..100u64, 10)
        .unwrap()
        .with_progress(move |p| {
            s.store(p.done, Ordering::SeqCst);
        })
        .count();
    assert_eq!(n, 100);
    assert_eq!(seen.load(Ordering::SeqCst), 100);
}

#[cfg(feature = "progress")]
#[test]
fn progress_bars_do_not_change_results() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(
        pool.map_progress(square, 0..100u64).unwrap(),
        (0..100u64).map(|x| x * x).collect::<Vec<_>>()
    );
    let v: Vec<u64> = pool
        .imap(square, 0..50u64)
        .unwrap()
        .progress_bar()
        .map(Result::unwrap)
        .collect();
    assert_eq!(v.len(), 50);
}

#[test]
fn concurrent_joins_both_wait_for_the_workers() {
    let pool = Arc::new(Pool::new(2).unwrap());
    let pending = pool.map_async(nap, [150u64, 150, 150]).unwrap();
    pool.close();
    let other = {
        let pool = Arc::clone(&pool);
        std::thread::spawn(move || {
            pool.join().unwrap();
            pool.pids()
        })
    };
    pool.join().unwrap();
    assert!(pool.pids().is_empty(), "workers left after join");
    assert!(pending.ready(), "queued work finished before join returned");
    let seen_by_other = other.join().unwrap();
    assert!(
        seen_by_other.is_empty(),
        "the second join returned early: {seen_by_other:?}"
    );
    assert_eq!(pending.get().unwrap(), [150, 150, 150]);
}

#[test]
fn a_callback_may_drop_the_last_handle_to_its_pool() {
    let pool = Arc::new(Pool::new(1).unwrap());
    let inner = Arc::clone(&pool);
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let handle = pool
        .apply_async_with(
            square,
            (3u64,),
            Callbacks::new().on_success(move |v: &u64| {
                go_rx.recv().unwrap();
                // The last handle: dropping it terminates the pool from its own thread.
                drop(inner);
                done_tx.send(*v).unwrap();
            }),
        )
        .unwrap();
    drop(pool);
    go_tx.send(()).unwrap();
    assert_eq!(
        done_rx.recv_timeout(Duration::from_secs(20)).unwrap(),
        9,
        "the callback ran to its end"
    );
    assert_eq!(handle.get().unwrap(), 9);
}

#[test]
fn imap_next_timeout_times_out_and_the_stream_goes_on() {
    let pool = Pool::new(1).unwrap();
    let mut stream = pool.imap(nap, [300u64, 1, 2]).unwrap();
    match stream.next_timeout(Duration::from_millis(20)) {
        Some(Err(Error::Timeout {
            index: Some(0),
            pid: None,
            after,
            ..
        })) => assert_eq!(after, Duration::from_millis(20)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(matches!(
        stream.next_timeout(Duration::from_secs(20)),
        Some(Ok(300))
    ));
    let rest: Vec<u64> = stream.map(Result::unwrap).collect();
    assert_eq!(rest, [1, 2], "no item lost to the timeout");
}
