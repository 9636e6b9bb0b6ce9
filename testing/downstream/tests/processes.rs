//! Whole programs, run as child processes: what a user sees on the terminal, and
//! what happens without `procpool::init()` (parent death is in the conformance suite).

use std::process::Command;

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
