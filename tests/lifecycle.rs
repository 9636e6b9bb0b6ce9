//! close / join / terminate / drop, and what outlives a pool: nothing.

use std::sync::Arc;
use std::time::Duration;

use procpool::{Error, Pool, pool_task};

#[pool_task]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// True while `pid` is a live process or an unreaped zombie.
fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn dropping_a_pool_kills_and_reaps_its_workers() {
    let pool = Pool::new(3).unwrap();
    let pids = pool.pids();
    assert_eq!(pids.len(), 3);
    assert!(pids.iter().all(|&p| exists(p)));
    assert_eq!(pool.map(nap, [1u64, 1, 1]).unwrap(), [1, 1, 1]);
    drop(pool);
    // Drop returns after reaping: no process and no zombie is left, at once.
    let left: Vec<u32> = pids.into_iter().filter(|&p| exists(p)).collect();
    assert!(left.is_empty(), "workers still there after drop: {left:?}");
}

#[test]
fn close_then_join_lets_queued_work_finish() {
    let pool = Arc::new(Pool::new(2).unwrap());
    let pids = pool.pids();
    assert!(
        matches!(pool.join(), Err(Error::InvalidArgument { .. })),
        "join before close is refused"
    );
    let started = crate::support::marker("close-then-join");
    let worker = {
        let pool = Arc::clone(&pool);
        let mut items = vec![(30u64, None); 6];
        items[0].1 = Some(started.to_string_lossy().into_owned());
        std::thread::spawn(move || pool.starmap_chunked(crate::support::nap_marked, items, 1))
    };
    crate::support::wait_for(&started); // the map is under way
    pool.close();
    assert!(matches!(pool.map(nap, [1u64]), Err(Error::PoolClosed)));
    assert!(matches!(pool.apply(nap, (1u64,)), Err(Error::PoolClosed)));
    pool.join().unwrap();
    assert!(
        pids.iter().all(|&p| !exists(p)),
        "workers exited and were reaped"
    );
    let done = worker.join().unwrap();
    // The map was under way before close: queued work still runs.
    assert_eq!(done.unwrap(), [30; 6]);
}

#[test]
fn terminate_ends_running_work_with_an_error_not_a_hang() {
    let pool = Arc::new(Pool::new(2).unwrap());
    let pids = pool.pids();
    let caller = {
        let pool = Arc::clone(&pool);
        std::thread::spawn(move || pool.map_chunked(nap, [200u64; 100], 1))
    };
    std::thread::sleep(Duration::from_millis(50));
    pool.terminate();
    let result = caller.join().unwrap();
    assert!(matches!(result, Err(Error::PoolClosed)), "{result:?}");
    pool.join().unwrap();
    assert!(pids.iter().all(|&p| !exists(p)));
    assert!(matches!(pool.map(nap, [1u64]), Err(Error::PoolClosed)));
}

/// The scheduling policy of a thread or process, from `/proc/<path>/stat`
/// (0 `SCHED_OTHER`, 3 `SCHED_BATCH`).
fn policy(path: &str) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{path}/stat")).unwrap();
    // Fields after the command name, which is in parentheses: state is field 3 and
    // policy field 41.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(41 - 3).unwrap().parse().unwrap()
}

/// The test thread's policy, and the one its pools' drivers should have: normally
/// scheduled callers get batch drivers; others are left as they are.
fn policies() -> (u32, u32) {
    let caller = policy("thread-self");
    (caller, if caller == 0 { 3 } else { caller })
}

#[test]
fn drivers_run_as_batch_threads_and_workers_as_normal_processes() {
    let (caller, driver_policy) = policies();
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(nap, [1u64, 1]).unwrap(), [1, 1]);
    let drivers: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|t| t.unwrap().file_name().into_string().unwrap())
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .is_ok_and(|comm| comm.trim() == "procpool-driver")
        })
        .map(|tid| policy(&format!("self/task/{tid}")))
        .collect();
    assert!(drivers.len() >= 2, "driver threads: {drivers:?}");
    assert!(
        drivers.iter().all(|&p| p == driver_policy),
        "driver policies: {drivers:?}"
    );
    // Workers, first ones and a replacement alike, are scheduled as the caller is.
    let first = pool.pids();
    assert!(first.iter().all(|p| policy(&p.to_string()) == caller));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(first[0] as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    // Work until the killed worker's driver has met the death and replaced it.
    let mut now = pool.pids();
    for _ in 0..200 {
        if !now.contains(&first[0]) {
            break;
        }
        let _ = pool.map(nap, [1u64, 1, 1, 1]);
        now = pool.pids();
    }
    assert!(
        !now.contains(&first[0]),
        "the killed worker was replaced: {now:?}"
    );
    assert!(
        now.iter().all(|p| policy(&p.to_string()) == caller),
        "{now:?}"
    );
}

#[test]
fn a_pool_built_in_a_callback_schedules_its_workers_as_the_first_caller() {
    let (caller, driver_policy) = policies();
    let pool = Pool::new(1).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let call = pool
        .apply_async_with(
            nap,
            (1u64,),
            procpool::Callbacks::new().on_success(move |_| {
                // On a driver thread: build a pool there and look at its workers.
                let here = policy("thread-self");
                let inner = Pool::new(1).unwrap();
                let workers: Vec<u32> = inner
                    .pids()
                    .iter()
                    .map(|p| policy(&p.to_string()))
                    .collect();
                let _ = tx.send((here, workers, inner.apply(nap, (1u64,)).unwrap()));
            }),
        )
        .unwrap();
    assert_eq!(call.get().unwrap(), 1);
    let (here, workers, answer) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(here, driver_policy, "callbacks run on a driver thread");
    assert_eq!(
        workers,
        [caller],
        "the inner pool's worker is scheduled as the caller"
    );
    assert_eq!(answer, 1);
}
