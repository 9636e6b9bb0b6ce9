//! Helpers shared by the test modules: knowing that a task has started, without
//! sleeping and hoping.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use procpool::pool_task;

/// A fresh path for a marker file (not created).
pub(crate) fn marker(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("procpool-{name}-{}-{n}", std::process::id()))
}

/// Sleeps `ms` milliseconds, first creating the file `started` if one is named, so
/// that a test knows the item is running.
#[pool_task]
pub(crate) fn nap_marked(ms: u64, started: Option<String>) -> u64 {
    if let Some(path) = started {
        let _ = std::fs::File::create(path);
    }
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Waits until `path` exists, then removes it; panics after 60 s (a liveness bound,
/// not a timing claim).
pub(crate) fn wait_for(path: &Path) {
    let until = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(Instant::now() < until, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = std::fs::remove_file(path);
}

/// Waits until the file `gate` exists (the test opens the gate), then returns `n`:
/// a task that is certainly still running until the test says so.
#[pool_task]
pub(crate) fn gated(gate: String, n: u64) -> u64 {
    while !Path::new(&gate).exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    n
}

/// Opens the gate of [`gated`] tasks waiting on `path`.
pub(crate) fn open_gate(path: &Path) {
    std::fs::File::create(path).expect("gate file");
}
