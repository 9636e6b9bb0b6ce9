//! Crashes, kills, hostile settings: nothing lost, nothing hung, nothing leaked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use procpool::{Error, Pool, WorkerExit, pool_task};
use serde::{Deserialize, Deserializer, Serialize};

/// About 20 µs of arithmetic: small, but long enough for kills to land mid-map.
#[pool_task]
fn spin(n: u64) -> u64 {
    let mut x = n;
    for _ in 0..2_000 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    }
    std::hint::black_box(x);
    n * 3
}

#[pool_task]
fn square(n: u64) -> u64 {
    n * n
}

#[pool_task]
fn hog(bytes: usize) -> usize {
    let v = vec![1u8; bytes];
    std::hint::black_box(&v);
    v.len()
}

/// A value that refuses to be deserialized when it is 13.
#[derive(Debug, Serialize)]
struct Picky(u8);

impl<'de> Deserialize<'de> for Picky {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u8::deserialize(d)?;
        if v == 13 {
            return Err(serde::de::Error::custom("13 is not welcome"));
        }
        Ok(Picky(v))
    }
}

#[pool_task]
fn picky(p: Picky) -> u8 {
    p.0
}

/// Kills a random worker of `pool` every 20–60 ms, `kills` times, while `running`.
fn chaos_monkey(
    pool: Arc<Pool>,
    kills: usize,
    running: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u32>> {
    std::thread::spawn(move || {
        let mut seed = u64::from(std::process::id())
            ^ Instant::now().elapsed().as_nanos() as u64
            ^ 0x9e37_79b9;
        let mut killed = Vec::new();
        while killed.len() < kills && running.load(Ordering::SeqCst) {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            std::thread::sleep(Duration::from_millis(20 + (seed >> 58)));
            let pids = pool.pids();
            if pids.is_empty() {
                continue;
            }
            let victim = pids[(seed >> 33) as usize % pids.len()];
            if let Some(pid) = rustix::process::Pid::from_raw(victim as i32)
                && rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok()
            {
                killed.push(victim);
            }
        }
        killed
    })
}

#[test]
fn chaos_with_retries_loses_nothing() {
    let pool = Arc::new(
        Pool::builder()
            .processes(2)
            .retry_lost_tasks(3)
            .build()
            .unwrap(),
    );
    let running = Arc::new(AtomicBool::new(true));
    let monkey = chaos_monkey(Arc::clone(&pool), 10, Arc::clone(&running));
    let n = 100_000u64;
    let mut rounds = 0;
    // Keep mapping until all ten kills have landed during maps.
    while !monkey.is_finished() {
        let out = pool.map_chunked(spin, 0..n, 100).unwrap();
        assert_eq!(out.len(), n as usize);
        assert!(
            out.iter().enumerate().all(|(i, &v)| v == 3 * i as u64),
            "every result present and correct"
        );
        rounds += 1;
        assert!(rounds < 1_000, "the monkey never finished");
    }
    running.store(false, Ordering::SeqCst);
    let killed = monkey.join().unwrap();
    assert_eq!(killed.len(), 10);
    let out = pool.map_chunked(spin, 0..n, 100).unwrap();
    assert_eq!(out[99_999], 299_997);
    let workers = pool.pids();
    drop(pool);
    for pid in killed.iter().chain(&workers) {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} left behind"
        );
    }
}

#[test]
fn chaos_without_retries_reports_the_dead_worker() {
    let pool = Arc::new(Pool::new(2).unwrap());
    let running = Arc::new(AtomicBool::new(true));
    // A kill that lands between two maps, on an idle worker, loses nothing and so
    // fails nothing: the monkey goes on until one lands during a map.
    let monkey = chaos_monkey(Arc::clone(&pool), 10_000, Arc::clone(&running));
    let mut rounds = 0;
    let err = loop {
        match pool.map_chunked(spin, 0..100_000u64, 100) {
            Ok(out) => assert_eq!(out[99_999], 299_997, "nothing lost"),
            Err(e) => break e,
        }
        rounds += 1;
        assert!(rounds < 1_000, "no kill ever landed during a map");
    };
    running.store(false, Ordering::SeqCst);
    let killed = monkey.join().unwrap();
    match err {
        Error::WorkerDied { pid, exit, .. } => {
            assert_eq!(exit, WorkerExit::Signal(9));
            assert!(killed.contains(&pid), "{pid} not in {killed:?}");
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert_eq!(
        pool.apply(square, (5u64,)).unwrap(),
        25,
        "the pool replaced the worker"
    );
}

#[test]
fn eight_threads_one_million_tasks() {
    let pool = Arc::new(Pool::new(2).unwrap());
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let pool = Arc::clone(&pool);
            std::thread::spawn(move || {
                let range = t * 125_000..(t + 1) * 125_000;
                let out = pool.map(square, range.clone()).unwrap();
                range.zip(out).all(|(x, y)| y == x * x)
            })
        })
        .collect();
    assert!(threads.into_iter().all(|t| t.join().unwrap()));
}

#[test]
fn a_memory_limit_stops_a_runaway_task() {
    let pool = Pool::builder()
        .processes(1)
        .memory_limit(1 << 30)
        .build()
        .unwrap();
    assert_eq!(
        pool.apply(hog, (16usize << 20,)).unwrap(),
        16 << 20,
        "a modest allocation is fine"
    );
    let err = pool.apply(hog, (4usize << 30,)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::WorkerDied {
                exit: WorkerExit::Signal(6),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        pool.apply(square, (3u64,)).unwrap(),
        9,
        "a fresh worker, with the same limit"
    );
}

#[test]
fn an_argument_that_fails_to_deserialize_fails_that_item_only() {
    let pool = Pool::new(2).unwrap();
    let results: Vec<Result<u8, Error>> = pool
        .imap(picky, [Picky(1), Picky(13), Picky(3)])
        .unwrap()
        .collect();
    assert!(matches!(results[0], Ok(1)));
    assert!(
        matches!(&results[1], Err(Error::Serialization { index: 1, what, .. }) if *what == "deserialized in the worker"),
        "{:?}",
        results[1]
    );
    assert!(matches!(results[2], Ok(3)));
}

#[pool_task]
fn odd_fails(n: u64) -> u64 {
    assert!(n.is_multiple_of(2), "odd {n}");
    n
}

#[test]
fn a_callback_may_terminate_the_pool() {
    let pool = Arc::new(Pool::new(2).unwrap());
    let inner = Arc::clone(&pool);
    let call = pool.map_async_with(
        odd_fails,
        0..200u64,
        Some(1),
        procpool::Callbacks::new().on_error(move |_| inner.terminate()),
    );
    // The callback may even terminate the pool while chunks are still being
    // submitted: then the call itself reports it.
    match call {
        Ok(h) => assert!(h.get().is_err()),
        Err(e) => assert!(matches!(e, Error::PoolClosed), "{e:?}"),
    }
    pool.join().unwrap();
    assert!(matches!(
        pool.apply(square, (1u64,)),
        Err(Error::PoolClosed)
    ));
}

/// A pool of one worker whose frames are at most 4 KiB.
fn one_worker_with_4k_frames() -> Pool {
    Pool::builder()
        .processes(1)
        .max_frame_size(4096)
        .build()
        .unwrap()
}

#[test]
fn an_abandoned_call_runs_no_callback() {
    let pool = one_worker_with_4k_frames();
    let fired = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&fired);
    // The last item does not fit a frame: chunks before it were already queued.
    let mut items = vec![vec![0u8; 8]; 40];
    items.push(vec![0u8; 10_000]);
    let err = pool
        .map_async_with(
            hog_len,
            items,
            Some(1),
            procpool::Callbacks::new().on_error(move |_| flag.store(true, Ordering::SeqCst)),
        )
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    pool.close();
    pool.join().unwrap();
    assert!(
        !fired.load(Ordering::SeqCst),
        "the caller got the error; no callback runs"
    );
}

#[pool_task]
fn hog_len(v: Vec<u8>) -> usize {
    v.len()
}

/// Fails once `flag` exists: replacement workers cannot start.
#[pool_task]
fn refuse_after(flag: String) {
    assert!(
        !std::path::Path::new(&flag).exists(),
        "replacements refused"
    );
}

/// Creates `flag`, then dies.
#[pool_task]
fn die_leaving(flag: String) -> u8 {
    std::fs::write(&flag, b"x").unwrap();
    std::process::abort()
}

#[test]
fn a_retried_chunk_with_no_worker_left_fails_instead_of_waiting() {
    let flag = std::env::temp_dir().join(format!("procpool-retry-{}", std::process::id()));
    let flag = flag.to_string_lossy().into_owned();
    let _ = std::fs::remove_file(&flag);
    let pool = Pool::builder()
        .processes(2)
        .retry_lost_tasks(1)
        .initializer(refuse_after, (flag.clone(),))
        .build()
        .unwrap();
    let h = pool
        .map_async_with(
            die_leaving,
            [flag.clone()],
            Some(1),
            procpool::Callbacks::new(),
        )
        .unwrap();
    pool.close();
    pool.join().unwrap();
    let err = h.get().unwrap_err();
    let _ = std::fs::remove_file(&flag);
    assert!(
        matches!(
            err,
            Error::InitializerFailed { .. } | Error::WorkerDied { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn small_quick_chunks_sent_together_keep_their_own_results_and_errors() {
    // Chunks of one quick item travel to a worker many in one frame: each item
    // still gets its own value or error, at its own index, in order.
    let pool = Pool::new(2).unwrap();
    let n = 3_000u64;
    let results: Vec<Result<u64, Error>> = pool.imap(odd_fails, 0..n).unwrap().collect();
    assert_eq!(results.len(), n as usize);
    for (i, r) in results.iter().enumerate() {
        match r {
            Ok(v) => assert!(i % 2 == 0 && *v == i as u64, "item {i}: {r:?}"),
            Err(Error::TaskPanicked { index, message, .. }) => {
                assert!(i % 2 == 1 && *index == i, "item {i}: {r:?}");
                assert_eq!(*message, format!("odd {i}"));
            }
            Err(e) => panic!("item {i}: {e:?}"),
        }
    }
    let evens: Vec<u64> = (0..n).step_by(2).collect();
    assert_eq!(pool.map_chunked(odd_fails, &evens, 1).unwrap(), evens);
}

#[pool_task]
fn blow_up(n: u32) -> procpool::Bytes {
    procpool::Bytes::from(vec![n as u8; 256 << 10])
}

#[test]
fn quick_tasks_with_big_results_do_not_jam_the_link() {
    // Tiny arguments of a quick task are sent ahead and grouped; their results are
    // far bigger than the link's buffer. The pool must keep reading while it writes.
    let pool = Pool::new(2).unwrap();
    let out = pool.map_chunked(blow_up, 0..64u32, 1).unwrap();
    assert_eq!(out.len(), 64);
    for (n, bytes) in out.iter().enumerate() {
        assert_eq!(bytes.len(), 256 << 10);
        assert!(bytes.iter().all(|&b| b == n as u8), "item {n}");
    }
}

#[pool_task]
fn text_len(s: String) -> usize {
    s.len()
}

#[pool_task]
fn kilobyte(n: u32) -> Vec<u8> {
    vec![n as u8; 1000]
}

#[test]
fn groups_of_small_batches_stay_within_a_small_frame_cap() {
    // Each chunk fits a 4 KiB frame alone; a group of them must too, both ways.
    let pool = one_worker_with_4k_frames();
    let pids = pool.pids();
    let items: Vec<String> = (0..5_000).map(|i| format!("{i:0>200}")).collect();
    let lens = pool.map_chunked(text_len, &items, 1).unwrap();
    assert!(lens.iter().all(|&l| l == 200));
    // Results of ~1 KB each: a group's reply would pass the cap; the batches are
    // then sent again one by one, and nothing fails.
    let out = pool.map_chunked(kilobyte, 0..5_000u32, 1).unwrap();
    assert!(
        out.iter()
            .enumerate()
            .all(|(i, v)| v.len() == 1000 && v[0] == i as u8)
    );
    let streamed = pool
        .imap(kilobyte, 0..3_000u32)
        .unwrap()
        .map(Result::unwrap)
        .count();
    assert_eq!(streamed, 3_000);
    assert_eq!(pool.pids(), pids, "no worker was killed");
}

#[test]
fn an_imap_chunk_over_the_frame_cap_fails_alone() {
    let pool = one_worker_with_4k_frames();
    let pids = pool.pids();
    let items = vec!["a".repeat(10), "b".repeat(10_000), "c".repeat(20)];
    let results: Vec<Result<usize, Error>> = pool.imap(text_len, items).unwrap().collect();
    assert!(matches!(results[0], Ok(10)), "{:?}", results[0]);
    assert!(
        matches!(&results[1], Err(Error::InvalidArgument(m)) if m.contains("frame limit")),
        "{:?}",
        results[1]
    );
    assert!(matches!(results[2], Ok(20)), "{:?}", results[2]);
    assert_eq!(pool.pids(), pids, "the worker was not killed for it");
}

#[test]
fn endless_timeouts_mean_no_deadline() {
    let pool = Pool::new(1).unwrap();
    let mut stream = pool.imap(square, [3u64]).unwrap();
    assert!(matches!(stream.next_timeout(Duration::MAX), Some(Ok(9))));
    let mut handle = pool.apply_async(square, (4u64,)).unwrap();
    assert!(handle.wait_timeout(Duration::MAX));
    assert_eq!(handle.get_timeout(Duration::MAX).unwrap(), 16);
}

/// A value whose `Serialize` panics when it is 13 and whose `Deserialize` panics
/// when it reads 14 (serde impls are user code: they may panic like a task).
#[derive(Debug)]
struct Touchy(u8);

impl Serialize for Touchy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        assert!(self.0 != 13, "cannot write 13");
        s.serialize_u8(self.0)
    }
}

impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u8::deserialize(d)?;
        assert!(v != 14, "cannot read 14");
        Ok(Touchy(v))
    }
}

#[pool_task]
fn touchy(n: u8) -> Touchy {
    Touchy(n)
}

#[pool_task]
fn touchy_arg(t: Touchy) -> u8 {
    t.0
}

#[test]
fn a_panic_in_serde_code_in_the_worker_fails_that_item_only() {
    let pool = Pool::new(1).unwrap();
    // One chunk: the result of 13 panics while it is written in the worker.
    let got = pool.map_chunked(touchy, [12u8, 13, 15], 3);
    let err = got.unwrap_err();
    assert!(
        matches!(&err, Error::TaskPanicked { index: 1, message, .. } if message.contains("cannot write 13")),
        "{err:?}"
    );
    let each: Vec<Result<u8, Error>> = pool
        .imap_chunked(touchy, [12u8, 13, 15], 3)
        .unwrap()
        .map(|r| r.map(|t| t.0))
        .collect();
    assert!(matches!(each[0], Ok(12)), "{:?}", each[0]);
    assert!(
        matches!(each[1], Err(Error::TaskPanicked { index: 1, .. })),
        "{:?}",
        each[1]
    );
    assert!(matches!(each[2], Ok(15)), "{:?}", each[2]);
    // The argument 14 panics while it is read in the worker.
    let each: Vec<Result<u8, Error>> = pool
        .imap_chunked(touchy_arg, [Touchy(1), Touchy(14), Touchy(3)], 3)
        .unwrap()
        .collect();
    assert!(matches!(each[0], Ok(1)), "{:?}", each[0]);
    assert!(
        matches!(&each[1], Err(Error::TaskPanicked { index: 1, message, .. }) if message.contains("cannot read 14")),
        "{:?}",
        each[1]
    );
    assert!(matches!(each[2], Ok(3)), "{:?}", each[2]);
    // The same worker goes on.
    assert_eq!(pool.pids().len(), 1);
    assert_eq!(pool.apply(touchy_arg, (Touchy(5),)).unwrap(), 5);
}
