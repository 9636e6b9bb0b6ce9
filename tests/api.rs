//! The calls of API.md on the default transport.

use std::collections::BTreeSet;

use procpool::{Error, Pool, pool_task};
use serde::{Deserialize, Serialize};

#[pool_task]
fn square(number: u64) -> u64 {
    number * number
}

#[pool_task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[pool_task]
fn slow_pid(_item: u32) -> u32 {
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::process::id()
}

/// Its worker and its item, after 10 ms.
#[pool_task]
fn slow_item(item: u32) -> (u32, u32) {
    std::thread::sleep(std::time::Duration::from_millis(10));
    (std::process::id(), item)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Point {
    x: i32,
    y: i32,
    label: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Shape {
    Dot(Point),
    Segment { from: Point, to: Point },
    Empty,
}

#[pool_task]
fn describe(shape: Shape, scale: Option<i32>) -> Result<(String, Vec<u8>), String> {
    let k = scale.ok_or_else(|| "no scale".to_owned())?;
    Ok(match shape {
        Shape::Dot(p) => (
            format!("dot {} at {},{}", p.label, p.x * k, p.y * k),
            vec![1],
        ),
        Shape::Segment { from, to } => (format!("{}->{}", from.label, to.label), vec![2, 2]),
        Shape::Empty => (String::new(), Vec::new()),
    })
}

#[test]
fn the_seed_example() {
    let pool = Pool::new(4).unwrap();
    let squared = pool
        .map(square, vec![1u64, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        .unwrap();
    assert_eq!(squared, [1, 4, 9, 16, 25, 36, 49, 64, 81, 100]);
    assert_eq!(square(3), 9, "the task is still an ordinary function");
}

#[test]
fn work_runs_in_every_worker_process() {
    let pool = Pool::new(4).unwrap();
    let workers: BTreeSet<u32> = pool.pids().into_iter().collect();
    assert_eq!(workers.len(), 4);
    assert!(!workers.contains(&std::process::id()));
    let seen: BTreeSet<u32> = pool
        .map_chunked(slow_pid, 0..16u32, 1)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        seen, workers,
        "each of the 4 workers ran items, and only they did"
    );
}

#[test]
fn the_last_chunk_of_a_map_of_slow_items_is_shared_by_both_workers() {
    let pool = Pool::new(2).unwrap();
    let workers: BTreeSet<u32> = pool.pids().into_iter().collect();
    // Warm up: one item a chunk, so that both drivers time the task.
    pool.map_chunked(slow_item, 0..8u32, 1).unwrap();
    // A single chunk of 16 items: taken whole, one worker would run all of it while
    // the other idles. Guided scheduling cuts it as the queue is short.
    let ran = pool.map_chunked(slow_item, 0..16u32, 16).unwrap();
    let items: Vec<u32> = ran.iter().map(|&(_, item)| item).collect();
    assert_eq!(
        items,
        (0..16).collect::<Vec<_>>(),
        "in input order, once each"
    );
    for pid in &workers {
        let mine = ran.iter().filter(|(p, _)| p == pid).count();
        assert!(mine >= 4, "worker {pid} ran {mine} of 16 items: {ran:?}");
    }
    let seen: BTreeSet<u32> = ran.iter().map(|&(pid, _)| pid).collect();
    assert_eq!(seen, workers);
}

#[test]
fn map_accepts_any_into_iterator() {
    let pool = Pool::new(2).unwrap();
    let expected: Vec<u64> = (0..50u64).map(|x| x * x).collect();
    let owned: Vec<u64> = (0..50).collect();
    assert_eq!(pool.map(square, 0..50u64).unwrap(), expected);
    assert_eq!(pool.map(square, owned.clone()).unwrap(), expected);
    assert_eq!(
        pool.map(square, &owned).unwrap(),
        expected,
        "borrowed items"
    );
    assert_eq!(pool.map(square, owned.iter()).unwrap(), expected);
    assert_eq!(
        pool.map(square, owned[..].iter().copied()).unwrap(),
        expected
    );
    let unknown_len = (0..100u64).filter(|x| x % 2 == 0);
    assert_eq!(
        pool.map(square, unknown_len).unwrap(),
        (0..100u64)
            .filter(|x| x % 2 == 0)
            .map(|x| x * x)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        pool.map(square, Vec::<u64>::new()).unwrap(),
        Vec::<u64>::new()
    );
}

#[test]
fn map_chunked_gives_the_same_results_for_every_chunksize() {
    let pool = Pool::new(3).unwrap();
    let expected: Vec<u64> = (0..1000u64).map(|x| x * x).collect();
    for chunk in [1, 2, 7, 999, 1000, 5000] {
        assert_eq!(
            pool.map_chunked(square, 0..1000u64, chunk).unwrap(),
            expected,
            "chunksize {chunk}"
        );
    }
    assert!(matches!(
        pool.map_chunked(square, 0..10u64, 0),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn starmap_and_apply_take_tuples() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(
        pool.starmap(add, vec![(1u64, 2u64), (3, 4)]).unwrap(),
        [3, 7]
    );
    let pairs: Vec<(u64, u64)> = (0..100).map(|i| (i, 2 * i)).collect();
    assert_eq!(
        pool.starmap(add, &pairs).unwrap(),
        (0..100).map(|i| 3 * i).collect::<Vec<u64>>()
    );
    assert_eq!(pool.starmap_chunked(add, &pairs, 9).unwrap().len(), 100);
    assert_eq!(pool.apply(add, (1u64, 2u64)).unwrap(), 3);
    assert_eq!(pool.apply(square, (7u64,)).unwrap(), 49);
}

#[test]
fn structs_enums_options_and_results_round_trip() {
    let pool = Pool::new(2).unwrap();
    let p = |x, y, l: &str| Point {
        x,
        y,
        label: l.into(),
    };
    let args = vec![
        (Shape::Dot(p(1, 2, "a")), Some(10)),
        (
            Shape::Segment {
                from: p(0, 0, "o"),
                to: p(1, 1, "z"),
            },
            Some(1),
        ),
        (Shape::Empty, Some(3)),
        (Shape::Empty, None),
    ];
    let serial: Vec<_> = args.iter().cloned().map(|(s, k)| describe(s, k)).collect();
    assert_eq!(pool.starmap(describe, &args).unwrap(), serial);
    assert_eq!(serial[0], Ok(("dot a at 10,20".to_owned(), vec![1])));
    assert_eq!(serial[3], Err("no scale".to_owned()));
}

#[test]
fn bad_arguments_are_refused() {
    assert!(matches!(Pool::new(0), Err(Error::InvalidArgument { .. })));
    assert!(matches!(
        Pool::builder().processes(0).build(),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        Pool::builder().max_frame_size(10).build(),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn default_process_count_is_available_parallelism() {
    let pool = Pool::builder().build().unwrap();
    let expected = std::thread::available_parallelism().unwrap().get();
    assert_eq!(pool.processes(), expected);
    assert_eq!(pool.pids().len(), expected);
}

#[test]
fn a_pool_is_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Pool>();
    let pool = std::sync::Arc::new(Pool::new(2).unwrap());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let pool = std::sync::Arc::clone(&pool);
            std::thread::spawn(move || {
                pool.map_chunked(square, t * 1000..(t + 1) * 1000, 10)
                    .unwrap()
            })
        })
        .collect();
    for (t, handle) in threads.into_iter().enumerate() {
        let t = t as u64;
        let expected: Vec<u64> = (t * 1000..(t + 1) * 1000).map(|x| x * x).collect();
        assert_eq!(handle.join().unwrap(), expected);
    }
}
