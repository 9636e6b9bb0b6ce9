//! Helper for tests: runs N pool create/map/drop cycles (first argument, default
//! 1000) on the transport named by `PROCPOOL_TEST_TRANSPORT`, then one pool whose
//! workers are SIGKILLed five times during maps (with retries), and prints the open
//! descriptors and threads before and after, and the zombie children left:
//! `fds A B threads C D zombies Z`.

use procpool::pool_task;

#[pool_task]
fn double(x: u32) -> u32 {
    x * 2
}

use procpool_downstream::{count_entries as count, zombies};

fn cycle(transport: Option<&str>) {
    let pool = procpool_downstream::builder_for(transport)
        .and_then(|b| b.processes(2).build())
        .expect("pool");
    assert_eq!(
        pool.map(double, 0..10u32).expect("map"),
        (0..10).map(|x| x * 2).collect::<Vec<_>>()
    );
}

#[pool_task]
fn slow_double(x: u32) -> u32 {
    std::thread::sleep(std::time::Duration::from_micros(200));
    x * 2
}

/// Maps while another thread kills a worker five times; every result must survive.
fn chaos(transport: Option<&str>) {
    let pool = std::sync::Arc::new(
        procpool_downstream::builder_for(transport)
            .and_then(|b| b.processes(2).retry_lost_tasks(5).build())
            .expect("pool"),
    );
    let killer = {
        let pool = std::sync::Arc::clone(&pool);
        std::thread::spawn(move || {
            for round in 0..5u32 {
                std::thread::sleep(std::time::Duration::from_millis(30));
                let pids = pool.pids();
                if let Some(&pid) = pids.get(round as usize % pids.len().max(1)) {
                    procpool_downstream::kill9(pid);
                }
            }
        })
    };
    while !killer.is_finished() {
        let out = pool
            .map_chunked(slow_double, 0..500u32, 5)
            .expect("map survives kills");
        assert!(out.iter().enumerate().all(|(i, &v)| v == 2 * i as u32));
    }
    killer.join().expect("killer");
}

#[procpool::main]
fn main() {
    let cycles: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let transport = std::env::var("PROCPOOL_TEST_TRANSPORT").ok();
    cycle(transport.as_deref()); // let lazy one-time state settle first
    let (fds, threads) = (count("/proc/self/fd"), count("/proc/self/task"));
    for _ in 0..cycles {
        cycle(transport.as_deref());
    }
    chaos(transport.as_deref());
    println!(
        "fds {fds} {} threads {threads} {} zombies {}",
        count("/proc/self/fd"),
        count("/proc/self/task"),
        zombies()
    );
}
