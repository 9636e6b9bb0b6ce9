//! Test fixture: a crate that uses procpool as an outside user would — tasks of its
//! own, tasks of another library crate (`procpool-task-lib`), helper binaries for the
//! multi-process tests, and property tests.

use procpool::pool_task;
use serde::{Deserialize, Serialize};

/// Steps of the Collatz sequence from `n` down to 1 (0 for 0).
#[pool_task]
pub fn collatz_steps(n: u64) -> u32 {
    let (mut n, mut steps) = (n, 0);
    while n > 1 {
        n = if n % 2 == 0 {
            n / 2
        } else {
            3 * (n % (u64::MAX / 4)) + 1
        };
        steps += 1;
    }
    steps
}

/// A record with a bit of everything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// An identifier.
    pub id: u32,
    /// A name.
    pub name: String,
    /// Optional tags.
    pub tags: Option<Vec<String>>,
    /// Raw bytes.
    pub blob: Vec<u8>,
}

/// Summarizes a record and a weight.
#[pool_task]
pub fn summarize(record: Record, weight: i16) -> (u32, usize, i64) {
    let tags = record.tags.map_or(0, |t| t.len());
    (
        record.id,
        record.name.len() + tags,
        i64::from(weight) * record.blob.len() as i64,
    )
}

/// A pool builder on the transport called `name` (`"pipe"`, `"ipc"`, `"shm"`), or on the
/// default transport for `None`.
pub fn builder_for(name: Option<&str>) -> Result<procpool::PoolBuilder, procpool::Error> {
    let builder = procpool::Pool::builder();
    Ok(match name {
        None => builder,
        #[cfg(feature = "pipe")]
        Some("pipe") => builder.transport(procpool::Transport::Pipe),
        #[cfg(feature = "ipc")]
        Some("ipc") => builder.transport(procpool::Transport::Ipc),
        #[cfg(feature = "shm")]
        Some("shm") => builder.transport(procpool::Transport::Shm),
        Some(other) => {
            return Err(procpool::Error::InvalidArgument(format!(
                "transport `{other}` is not compiled in"
            )));
        }
    })
}

/// Sends `SIGKILL` to process `pid` (for the tests that kill workers); a process
/// that is already gone is not an error.
pub fn kill9(pid: u32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Waits (up to `limit`, a liveness bound) until process `pid` has exited: it is
/// gone, or a zombie waiting to be reaped by its parent.
pub fn wait_until_dead(pid: u32, limit: std::time::Duration) {
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if matches!(state, None | Some("Z" | "X")) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// True once process `pid` no longer exists (reaped), within 10 s (a liveness bound).
pub fn wait_until_gone(pid: u32) -> bool {
    (0..10_000).any(|_| {
        let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !gone {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        gone
    })
}

/// Waits until the file `path` exists, then removes it; panics after 60 s (a
/// liveness bound, not a timing claim). For tests that must know a task started.
pub fn wait_for_file(path: &std::path::Path) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < until,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let _ = std::fs::remove_file(path);
}

/// Entries in directory `dir` (`/proc/self/fd`: open descriptors; `/proc/self/task`:
/// threads); `usize::MAX` if it cannot be read.
pub fn count_entries(dir: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.count())
        .unwrap_or(usize::MAX)
}

/// Children of this process in state Z (exited, not reaped).
pub fn zombies() -> usize {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return usize::MAX;
    };
    entries
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid ...: split after the last ')' since comm may hold spaces.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let ppid = fields.next();
            state == Some("Z") && ppid == Some(me.as_str())
        })
        .count()
}

/// Mappings of this process backed by a `memfd` (lines of `/proc/self/maps`
/// naming `/memfd:`): shared memory, channel messages, workers' progress pages.
pub fn memfd_mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|maps| maps.lines().filter(|l| l.contains("/memfd:")).count())
        .unwrap_or(usize::MAX)
}
