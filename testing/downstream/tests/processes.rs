//! Whole programs, run as child processes: what a user sees on the terminal, what
//! happens without `procpool::init()`, and that workers die with their parent.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn exists(pid: u32) -> bool {
    // A zombie still has a /proc entry, so this also catches unreaped workers.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits up to `limit` for `done`; a liveness bound, not a timing assertion.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

#[test]
fn a_task_prints_to_the_users_stdout() {
    let out = Command::new(env!("CARGO_BIN_EXE_print_task"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    for n in 0..4 {
        assert!(stdout.contains(&format!("for item {n}")), "{stdout}");
    }
    assert!(stdout.contains("results [0, 10, 20, 30]"), "{stdout}");
    let parent = out.status.code();
    assert_eq!(parent, Some(0));
}

#[test]
fn without_init_a_pool_refuses_to_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_no_init"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("procpool::init() was not called"),
        "{stderr}"
    );
}

#[test]
fn a_worker_that_skipped_init_does_not_start_pools_of_its_own() {
    let out = Command::new(env!("CARGO_BIN_EXE_no_init"))
        .env("SKIP_INIT_IN_WORKERS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    // Each worker ran main, hit the guard and exited; the parent reports that.
    assert!(stderr.contains("started as a procpool worker"), "{stderr}");
    assert!(stderr.contains("before the handshake"), "{stderr}");
    assert_eq!(
        out.status.code(),
        Some(4),
        "the parent got a startup error: {stderr}"
    );
    let guard_lines = stderr
        .lines()
        .filter(|l| l.contains("started as a procpool worker"))
        .count();
    assert!(
        (1..=2).contains(&guard_lines),
        "no recursion: {guard_lines} workers hit the guard\n{stderr}"
    );
}

#[test]
fn workers_die_when_their_parent_is_killed() {
    let mut parent = Command::new(env!("CARGO_BIN_EXE_hold_pool"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(parent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{line}");
    assert!(pids.iter().all(|&p| exists(p)));
    parent.kill().unwrap(); // SIGKILL: no destructor runs in the parent
    parent.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || pids.iter().all(|&p| !exists(p))),
        "workers outlived their killed parent: {pids:?}"
    );
}
