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
    let worker = {
        let pool = Arc::clone(&pool);
        std::thread::spawn(move || pool.map_chunked(nap, [30u64; 6], 1))
    };
    std::thread::sleep(Duration::from_millis(10));
    pool.close();
    assert!(matches!(pool.map(nap, [1u64]), Err(Error::PoolClosed)));
    assert!(matches!(pool.apply(nap, (1u64,)), Err(Error::PoolClosed)));
    pool.join().unwrap();
    assert!(
        pids.iter().all(|&p| !exists(p)),
        "workers exited and were reaped"
    );
    let done = worker.join().unwrap();
    // The map was queued before close, so it either finished or was refused whole.
    match done {
        Ok(v) => assert_eq!(v, [30; 6]),
        Err(e) => assert!(matches!(e, Error::PoolClosed), "{e:?}"),
    }
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
