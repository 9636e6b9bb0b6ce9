//! Failing tasks, unregistered functions and values that do not serialize.

use procpool::{Error, Pool, pool_task};
use serde::Deserialize;
use serde::ser::{Error as _, Serialize, Serializer};

#[pool_task]
fn explode_on_seven(n: u32) -> u32 {
    if n == 7 {
        panic!("seven is right out");
    }
    n
}

#[pool_task]
fn noisy(n: u32) -> u32 {
    println!("task says {n}");
    n + 1
}

#[pool_task]
fn blob(len: usize) -> Vec<u8> {
    vec![7; len]
}

fn not_a_task(n: u32) -> u32 {
    n
}

/// A value whose serialization fails when it is empty.
#[derive(Debug, PartialEq, Deserialize)]
struct Fussy(Vec<u8>);

impl Serialize for Fussy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_empty() {
            return Err(S::Error::custom("an empty Fussy refuses to be serialized"));
        }
        self.0.serialize(s)
    }
}

#[pool_task]
fn fussy_len(f: Fussy) -> usize {
    f.0.len()
}

#[pool_task]
fn make_fussy(len: usize) -> Fussy {
    Fussy(vec![1; len])
}

#[pool_task]
fn takes_vec(v: Vec<u8>) -> usize {
    v.len()
}

#[test]
fn a_panicking_task_reports_message_and_index_and_the_pool_lives_on() {
    let pool = Pool::new(2).unwrap();
    let err = pool.map_chunked(explode_on_seven, 0..20u32, 3).unwrap_err();
    match &err {
        Error::TaskPanicked {
            task,
            message,
            index,
            pid,
            location,
        } => {
            assert!(task.ends_with("failure::explode_on_seven"), "{task}");
            assert_eq!(message, "seven is right out");
            assert_eq!(*index, 7);
            assert!(
                pool.pids().contains(pid),
                "pid {pid} is one of the pool's workers"
            );
            assert!(
                location
                    .as_deref()
                    .unwrap_or_default()
                    .contains("failure.rs"),
                "{location:?}"
            );
        }
        other => panic!("expected TaskPanicked, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("explode_on_seven")
            && text.contains("item 7")
            && text.contains("seven is right out"),
        "{text}"
    );
    // The same workers serve the next call.
    assert_eq!(
        pool.map(explode_on_seven, 0..7u32).unwrap(),
        (0..7).collect::<Vec<_>>()
    );
    assert!(matches!(
        pool.apply(explode_on_seven, (7,)),
        Err(Error::TaskPanicked { index: 0, .. })
    ));
}

#[test]
fn unregistered_functions_and_closures_are_refused() {
    let pool = Pool::new(1).unwrap();
    let err = pool.map(not_a_task, [1u32, 2]).unwrap_err();
    assert!(
        matches!(&err, Error::NotRegistered { name } if name.ends_with("not_a_task")),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("#[pool_task]"),
        "the message says how to fix it: {err}"
    );
    let closure = |n: u32| n * 2;
    assert!(matches!(
        pool.map(closure, [1u32]),
        Err(Error::NotRegistered { .. })
    ));
    assert!(matches!(
        pool.apply(|| 1u8, ()),
        Err(Error::NotRegistered { .. })
    ));
    assert_eq!(
        pool.map(noisy, [1u32]).unwrap(),
        [2],
        "the pool still works"
    );
}

#[test]
fn a_task_may_print() {
    let pool = Pool::new(1).unwrap();
    assert_eq!(pool.map(noisy, 0..3u32).unwrap(), [1, 2, 3]);
}

#[test]
fn values_that_cannot_be_serialized_fail_with_their_index() {
    let pool = Pool::new(1).unwrap();
    let items = vec![
        Fussy(vec![1]),
        Fussy(vec![1, 2]),
        Fussy(vec![]),
        Fussy(vec![3]),
    ];
    match pool.map(fussy_len, &items).unwrap_err() {
        Error::Serialization {
            index,
            what,
            message,
            ..
        } => {
            assert_eq!(index, 2);
            assert_eq!(what, "serialized as an argument");
            assert!(!message.is_empty());
        }
        other => panic!("expected Serialization, got {other:?}"),
    }
    match pool.map_chunked(make_fussy, [3usize, 0, 2], 3).unwrap_err() {
        Error::Serialization { index, what, .. } => {
            assert_eq!(index, 1);
            assert_eq!(what, "serialized in the worker");
        }
        other => panic!("expected Serialization, got {other:?}"),
    }
    assert_eq!(
        pool.map(make_fussy, [2usize]).unwrap(),
        [Fussy(vec![1, 1])],
        "the pool still works"
    );
}

#[test]
fn results_over_the_frame_limit_fail_that_call_only() {
    let pool = Pool::builder()
        .processes(1)
        .max_frame_size(64 * 1024)
        .build()
        .unwrap();
    let pid = pool.pids()[0];
    assert!(matches!(
        pool.apply(blob, (200_000usize,)),
        Err(Error::Protocol { .. })
    ));
    assert!(matches!(
        pool.apply(takes_vec, (vec![0u8; 200_000],)),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(pool.apply(blob, (10usize,)).unwrap(), vec![7; 10]);
    assert_eq!(pool.pids(), [pid], "the worker survived both");
}

#[pool_task]
fn exit_with(code: i32) -> i32 {
    std::process::exit(code)
}

#[pool_task]
fn abort_now() {
    std::process::abort()
}

#[pool_task]
fn my_pid() -> u32 {
    std::process::id()
}

#[pool_task]
fn linger(ms: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(ms));
    ms
}

#[test]
fn a_worker_that_exits_or_aborts_is_reported_and_replaced() {
    let pool = Pool::new(1).unwrap();
    let first = pool.pids()[0];
    match pool.map_chunked(exit_with, [3i32], 1).unwrap_err() {
        Error::WorkerDied {
            pid,
            exit,
            index,
            task,
        } => {
            assert_eq!(pid, first);
            assert_eq!(exit, procpool::WorkerExit::Code(3));
            assert_eq!(index, 0);
            assert!(task.ends_with("exit_with"), "{task}");
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    let second = pool.apply(my_pid, ()).unwrap();
    assert_ne!(second, first, "a new worker replaced the dead one");
    let err = pool.apply(abort_now, ()).unwrap_err();
    assert!(
        matches!(err, Error::WorkerDied { exit: procpool::WorkerExit::Signal(6), pid, .. } if pid == second),
        "{err:?}"
    );
    assert_eq!(
        pool.apply(linger, (1u64,)).unwrap(),
        1,
        "the pool keeps serving"
    );
}

#[test]
fn a_worker_killed_from_outside_is_reported() {
    let pool = std::sync::Arc::new(Pool::new(1).unwrap());
    let victim = pool.pids()[0];
    let started = crate::support::marker("killed-from-outside");
    let caller = {
        let pool = std::sync::Arc::clone(&pool);
        let mark = Some(started.to_string_lossy().into_owned());
        let items = [(10u64, None), (10, None), (60_000, mark), (10, None)];
        std::thread::spawn(move || pool.starmap_chunked(crate::support::nap_marked, items, 1))
    };
    crate::support::wait_for(&started); // item 2 is running
    let pid = rustix::process::Pid::from_raw(victim as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let err = caller.join().unwrap().unwrap_err();
    assert!(
        matches!(err, Error::WorkerDied { exit: procpool::WorkerExit::Signal(9), index: 2, pid, .. } if pid == victim),
        "{err:?}"
    );
    assert!(err.to_string().contains("killed by signal 9"), "{err}");
    assert_eq!(pool.apply(linger, (1u64,)).unwrap(), 1);
}
