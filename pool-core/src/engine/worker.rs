//! The engine's view of one worker: the [`Worker`] trait it talks to, the
//! [`Launch`] that starts one, and their first implementation, a local child process
//! of this program ([`LocalLaunch`], [`LocalWorker`]).
//!
//! The engine never holds a `Child` itself. It asks a [`Launch`] for a worker and the
//! pool's end of its link, and keeps the [`Worker`] in a table where `terminate` can
//! reach it from any thread while the driver holds the link. Workers that the pool
//! did not spawn (the ranks of an MPI job, say) get a `Launch` and a `Worker` of
//! their own; the drivers, the queue and the rules for a dead worker's batches stay
//! the same.

use std::fmt;
use std::os::unix::fs::FileExt;
use std::process::{Child, Command, Stdio};

use super::Config;
use crate::error::{Error, WorkerExit};
use crate::sys::{self, ProgressPage};
use crate::transport::Link;
use crate::wire::marker::{MARKER_ENV, Marker};

/// One worker as the engine sees it: an id to report, a way to end it and to learn
/// how it ended, and what it can tell about its last frame and its size.
///
/// The engine keeps it in its table of workers, behind a mutex: `terminate` calls
/// [`kill`](Self::kill) from its own thread while the driver is blocked on the
/// link, and the connection takes it out of the table to reap it.
pub(crate) trait Worker: Send + fmt::Debug {
    /// The process id (or rank) named in errors and by `Pool::pids`.
    ///
    /// Must be the pid the worker's handshake names: the link is refused otherwise.
    fn pid(&self) -> u32;

    /// Ends the worker at once (`terminate`, a time limit, a broken protocol). Safe
    /// to call on a worker that has already exited.
    ///
    /// `terminate` calls it for each worker in turn, under the table's lock: it
    /// should not wait for the worker to end.
    fn kill(&mut self);

    /// How the worker ended, if it has; never waits.
    ///
    /// Polled while a reaper gives the worker its grace to exit by itself.
    fn try_exit(&mut self) -> Option<WorkerExit>;

    /// Waits until the worker, killed or exiting, has ended; how it ended.
    fn wait(&mut self) -> WorkerExit;

    /// Once it has ended: how far it got in frame `id` — `Some(k)` if it had started
    /// the frame and was at its item `k`, `None` if it had not started it. A worker
    /// that cannot tell says it had started, at item 0 (the cautious answer: its
    /// batch is failed or retried, never run twice without a retry).
    ///
    /// Asked only once the worker has ended, when the answer can no longer change.
    fn started(&self, id: u64) -> Option<u32> {
        let _ = id;
        Some(0)
    }

    /// What its progress page says (the frame and the item it last started), if it
    /// has one: what a cluster agent reports of a worker that died, so that rank 0
    /// can answer [`started`](Self::started) for it.
    fn progress(&self) -> Option<(u64, u32)> {
        None
    }

    /// Its resident memory in bytes, if it can be read (`max_memory_per_child`).
    ///
    /// Read after every reply while the pool has that limit: it should be cheap.
    fn resident_bytes(&self) -> Option<u64> {
        None
    }
}

/// Starts workers for a pool.
///
/// One per pool, shared by its drivers (hence `Sync`), and called on a driver's
/// thread whenever its slot needs a worker: at start-up, after a death, to recycle.
pub(crate) trait Launch: Send + Sync + fmt::Debug {
    /// Starts one worker for a pool configured by `config`: its handle and the
    /// pool's end of its link. The handshake is the engine's.
    ///
    /// # Errors
    ///
    /// Whatever kept the worker from starting (the system refused a process or a
    /// pipe, the transport failed).
    fn launch(&self, config: &Config) -> Result<(Box<dyn Worker>, Link), Error>;
}

/// Starts workers as child processes of this program, re-executed with the
/// environment marker, through the pool's [`Transport`](crate::transport::Transport).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalLaunch;

impl Launch for LocalLaunch {
    /// Builds the command (`/proc/self/exe` with this program's arguments, the
    /// marker, stdin from `/dev/null`, the hook that runs between `fork` and `exec`:
    /// see [`sys::prepare_worker`]), makes the progress page, and hands the command
    /// to the transport, which adds its link and spawns it.
    ///
    /// `statm` is opened only when the pool has a soft memory limit. Without a
    /// progress page (it could not be made), a dead worker's frame counts as started.
    fn launch(&self, config: &Config) -> Result<(Box<dyn Worker>, Link), Error> {
        let mut command = Command::new("/proc/self/exe");
        let mut args = std::env::args_os();
        if let Some(arg0) = args.next() {
            std::os::unix::process::CommandExt::arg0(&mut command, arg0);
        }
        command.args(args);
        // Best effort: without it, a dead worker's frame counts as started.
        let progress = ProgressPage::create().ok();
        let marker = Marker {
            transport: config.transport.name().to_owned(),
            parent: std::process::id(),
            max_frame: config.link.max_frame,
            secret: config.secret,
            progress: progress.is_some(),
        };
        command
            .env(MARKER_ENV, marker.encode())
            .stdin(Stdio::null());
        sys::prepare_worker(
            &mut command,
            rustix::process::getpid(),
            config.memory_limit,
            progress.as_ref(),
        );
        let (child, link) = config.transport.spawn(command, config.link)?;
        let pid = child.id();
        let statm = config
            .max_memory_per_child
            .and_then(|_| std::fs::File::open(format!("/proc/{pid}/statm")).ok());
        let worker = LocalWorker {
            child,
            progress,
            statm,
        };
        Ok((Box::new(worker), link))
    }
}

/// A worker that is a child process of this program.
#[derive(Debug)]
pub(crate) struct LocalWorker {
    /// The child process: [`kill`](Worker::kill) sends it `SIGKILL`,
    /// [`try_exit`](Worker::try_exit) and [`wait`](Worker::wait) reap it.
    child: Child,
    /// Where the worker notes the frame and item it runs (`None` if it could not be
    /// made).
    progress: Option<ProgressPage>,
    /// `/proc/<pid>/statm`, open when the pool has a soft memory limit.
    statm: Option<std::fs::File>,
}

impl Worker for LocalWorker {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `SIGKILL`; an error (the child was already reaped) is ignored.
    fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// A `waitpid` that fails counts as an end, [`WorkerExit::Unknown`].
    fn try_exit(&mut self) -> Option<WorkerExit> {
        match self.child.try_wait() {
            Ok(status) => status.map(WorkerExit::from),
            Err(_) => Some(WorkerExit::Unknown),
        }
    }

    /// As [`try_exit`](Worker::try_exit), blocking.
    fn wait(&mut self) -> WorkerExit {
        self.child
            .wait()
            .map_or(WorkerExit::Unknown, WorkerExit::from)
    }

    /// From the progress page: the item noted if the page names frame `id`, else
    /// `None` (the worker had not begun it); `Some(0)` without a page.
    fn started(&self, id: u64) -> Option<u32> {
        let Some(page) = &self.progress else {
            return Some(0);
        };
        let (frame, item) = page.last_started();
        (frame == id).then_some(item)
    }

    fn progress(&self) -> Option<(u64, u32)> {
        self.progress.as_ref().map(ProgressPage::last_started)
    }

    /// The second field of `/proc/<pid>/statm` (resident pages) times the page size:
    /// one `pread`.
    fn resident_bytes(&self) -> Option<u64> {
        let statm = self.statm.as_ref()?;
        let mut text = [0u8; 128];
        let n = statm.read_at(&mut text, 0).ok()?;
        let pages: u64 = std::str::from_utf8(&text[..n])
            .ok()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(pages.saturating_mul(rustix::param::page_size() as u64))
    }
}
