//! What a demanding user ran into (issue 12): each case failed before its fix.
//! The cases that depend on the transport are in the downstream conformance suite.

use std::time::Duration;

use procpool::{Error, Pool, pool_task};

#[pool_task]
fn square(n: u64) -> u64 {
    n * n
}

#[pool_task]
fn cube(n: u64) -> u64 {
    n * n * n
}

#[pool_task]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[pool_task]
fn boom(n: u64) -> u64 {
    panic!("boom {n}")
}

#[test]
fn successful_stays_known_after_get_timeout_returned() {
    let pool = Pool::new(1).unwrap();
    let mut ok = pool.apply_async(nap, (1u64,)).unwrap();
    assert_eq!(ok.get_timeout(Duration::from_secs(60)).unwrap(), 1);
    assert_eq!(ok.successful(), Some(true));
    assert!(ok.ready());
    let mut failed = pool.apply_async(boom, (1u64,)).unwrap();
    assert!(matches!(
        failed.get_timeout(Duration::from_secs(60)),
        Err(Error::TaskPanicked { .. })
    ));
    assert_eq!(failed.successful(), Some(false));
}

#[test]
fn a_chunksize_larger_than_any_input_is_one_chunk() {
    let pool = Pool::new(2).unwrap();
    let expected: Vec<u64> = (0..100u64).map(|x| x * x).collect();
    assert_eq!(
        pool.map_chunked(square, 0..100u64, usize::MAX).unwrap(),
        expected
    );
    assert_eq!(
        pool.starmap_chunked(square, (0..100u64).map(|x| (x,)), usize::MAX)
            .unwrap(),
        expected
    );
    let streamed: Vec<u64> = pool
        .imap_chunked(square, 0..100u64, usize::MAX)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(streamed, expected);
    let unordered = pool
        .imap_unordered_chunked(square, 0..100u64, usize::MAX)
        .unwrap()
        .count();
    assert_eq!(unordered, 100);
}

#[test]
fn a_function_pointer_is_refused_with_a_message_that_says_what_to_do() {
    let pool = Pool::new(1).unwrap();
    let pointers: [fn(u64) -> u64; 2] = [square, cube];
    let err = pool.map(pointers[1], [2u64]).unwrap_err();
    assert!(matches!(err, Error::NotRegistered { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("function pointer") && text.contains("pass the #[pool_task] function"),
        "{text}"
    );
    // The function items themselves work, and an unmarked function still gets the
    // usual advice.
    assert_eq!(pool.map(cube, [2u64]).unwrap(), [8]);
    fn unmarked(n: u64) -> u64 {
        n
    }
    let err = pool.apply(unmarked, (1u64,)).unwrap_err();
    assert!(err.to_string().contains("mark it #[pool_task]"), "{err}");
}

/// Two `#[pool_task] fn helper` in two function bodies of one module share a path.
fn helper_one(pool: &Pool) -> Result<Vec<u64>, Error> {
    #[pool_task]
    fn helper(n: u64) -> u64 {
        n + 1
    }
    pool.map(helper, [1u64, 2])
}

fn helper_two(pool: &Pool) -> Result<Vec<u64>, Error> {
    #[pool_task]
    fn helper(n: u64) -> u64 {
        n * 100
    }
    pool.map(helper, [1u64, 2])
}

#[test]
fn tasks_sharing_a_path_are_told_apart() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(helper_one(&pool).unwrap(), [2, 3]);
    assert_eq!(helper_two(&pool).unwrap(), [100, 200]);
    let helpers: Vec<&str> = procpool::task_names()
        .into_iter()
        .filter(|n| n.starts_with("tests::robustness::helper"))
        .collect();
    assert_eq!(
        helpers,
        ["tests::robustness::helper", "tests::robustness::helper#2"]
    );
}

#[test]
fn a_callback_blocking_on_its_own_pool_gets_an_error_not_a_deadlock() {
    use procpool::Callbacks;
    use std::sync::Arc;
    use std::sync::mpsc;
    let pool = Arc::new(Pool::new(1).unwrap());
    let other = Arc::new(Pool::new(1).unwrap());
    let (tx, rx) = mpsc::channel();
    let (inner, other_in) = (Arc::clone(&pool), Arc::clone(&other));
    let callbacks = Callbacks::new().on_success(move |_: &u64| {
        let apply = inner.apply(square, (3u64,));
        let map = inner.map(square, [1u64, 2]);
        let queued = inner.apply_async(nap, (50u64,)).map(|h| h.get());
        let streamed = inner.imap(square, 0..3u64).map(|_| ());
        let elsewhere = other_in.map(square, [4u64]);
        let _ = tx.send((apply, map, queued, streamed, elsewhere));
    });
    let first = pool.apply_async_with(square, (2u64,), callbacks).unwrap();
    // A liveness bound: before the fix, the callback never returned.
    let (apply, map, queued, streamed, elsewhere) =
        rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(
        matches!(apply, Err(Error::InvalidArgument(ref m)) if m.contains("callback")),
        "{apply:?}"
    );
    assert!(matches!(map, Err(Error::InvalidArgument(_))), "{map:?}");
    assert!(
        matches!(queued, Ok(Err(Error::InvalidArgument(_)))),
        "{queued:?}"
    );
    assert!(
        matches!(streamed, Err(Error::InvalidArgument(_))),
        "{streamed:?}"
    );
    assert_eq!(elsewhere.unwrap(), [16], "another pool serves a callback");
    assert_eq!(first.get().unwrap(), 4);
    assert_eq!(pool.apply(square, (5u64,)).unwrap(), 25, "the pool goes on");
}

#[test]
fn a_map_under_a_small_frame_cap_cuts_its_chunks_to_fit() {
    // 200 000 items in default chunks of 25 000 (about 125 KiB each): over a cap of
    // 64 KiB, where pieces of the usual 128 KiB would be refused.
    let pool = Pool::builder()
        .processes(2)
        .max_frame_size(64 * 1024)
        .build()
        .unwrap();
    let out = pool.map(square, 0..200_000u64).unwrap();
    assert_eq!(out.len(), 200_000);
    assert_eq!(out[199_999], 199_999 * 199_999);
}

/// An initializer that ends its worker.
#[pool_task]
fn exit_in_init(code: i32) {
    std::process::exit(code);
}

#[test]
fn a_worker_that_dies_in_its_initializer_is_an_initializer_failure() {
    let err = Pool::builder()
        .processes(1)
        .initializer(exit_in_init, (3i32,))
        .build()
        .unwrap_err();
    match &err {
        Error::InitializerFailed { source, .. } => assert!(
            matches!(
                **source,
                Error::WorkerDied {
                    exit: procpool::WorkerExit::Code(3),
                    ..
                }
            ),
            "{err:?}"
        ),
        other => panic!("expected InitializerFailed, got {other:?}"),
    }
    assert!(!err.to_string().contains("before the handshake"), "{err}");
}
