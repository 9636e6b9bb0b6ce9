//! Helper for tests: a program that restores the default `SIGPIPE` disposition (as
//! command-line tools do), then kills its pool's workers while they idle and while
//! they run, on the transport named by `PROCPOOL_TEST_TRANSPORT`. It must live to
//! print `alive` and exit 0: a write to a dead worker is an error, never a signal.

use std::time::Duration;

use procpool::pool_task;

#[pool_task]
fn square(n: u64) -> u64 {
    n * n
}

#[pool_task]
fn my_pid() -> u32 {
    std::process::id()
}

/// Exits the worker at item 100.
#[pool_task]
fn exit_at_100(n: u64) -> u64 {
    if n == 100 {
        std::process::exit(3);
    }
    n
}

#[procpool::main]
fn main() -> Result<(), procpool::Error> {
    // SAFETY: setting a signal's disposition to its default, before any thread of
    // ours exists besides the pool's (none yet).
    #[allow(unsafe_code)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let transport = std::env::var("PROCPOOL_TEST_TRANSPORT").ok();
    let pool = procpool_downstream::builder_for(transport.as_deref())?
        .processes(1)
        .build()?;
    for _ in 0..5 {
        let pid = pool.apply(my_pid, ())?;
        procpool_downstream::kill9(pid);
        procpool_downstream::wait_until_dead(pid, Duration::from_secs(10));
        println!("after an idle kill: {:?}", pool.apply(square, (3u64,)));
    }
    let mut died = 0;
    for _ in 0..30 {
        if let Err(procpool::Error::WorkerDied { .. }) = pool.map_chunked(exit_at_100, 0..200u64, 1)
        {
            died += 1;
        }
    }
    println!("maps whose worker died: {died}");
    println!("alive");
    Ok(())
}
