//! Helper for tests: a program that forgets `procpool::init()`.
//!
//! With `SKIP_INIT_IN_WORKERS=1` it calls `init()` in the parent only, as a program
//! that runs `init()` too late or conditionally would: its workers run `main` again
//! and must refuse to start pools of their own (the fork-bomb guard).

use procpool::Pool;

fn main() {
    let in_worker = std::env::var_os("PROCPOOL_WORKER").is_some();
    if std::env::var_os("SKIP_INIT_IN_WORKERS").is_some() && !in_worker {
        procpool::init();
    }
    match Pool::new(2) {
        Ok(pool) => println!("started {} workers", pool.processes()),
        Err(e) => {
            eprintln!("pid {}: {e}", std::process::id());
            std::process::exit(if matches!(e, procpool::Error::NotInitialized(_)) {
                3
            } else {
                4
            });
        }
    }
}
