//! [`Process`]: one registered task in a process of its own — Python's
//! `Process(target=f, args=(a,)).start()`, with the task's return value.
//!
//! A process is a worker of its own (the program re-executed, as a pool's are)
//! that runs one item and exits: [`Solo`] starts it, shakes hands, sends the one
//! frame and reaps it. All of that runs on the process's *monitor* thread, which
//! the handle starts and which lives exactly as long as the child: the child's
//! parent-death signal is tied to the thread that spawned it, so it is spawned
//! there, and it is killed when this program ends, however it ends. The answer is
//! decoded on the monitor too, while the child is still alive, so that handles in
//! the result can be taken from it; then the child is told to end and reaped, and
//! the outcome and the exit status are published together.
//!
//! | Python | procpool |
//! |---|---|
//! | `p = Process(target=f, args=(a, b)); p.start()` | `let p = Process::spawn(f, (a, b))?` |
//! | `p.join()` (returns `None`) | `p.join()?` returns `f`'s value, or why there is none |
//! | `p.join(timeout)` | `p.join_timeout(d)` (`Err(Timeout)`, still joinable) |
//! | `p.is_alive()`, `p.exitcode`, `p.pid` | `p.is_alive()`, `p.exit_status()`, `p.pid()` |
//! | `p.terminate()`, `p.kill()` | `p.terminate()?`, `p.kill()?` |
//! | a `Process` left unjoined (a zombie until the parent exits) | dropped: killed and reaped |

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::encode::push_argument;
use super::pool::entry_of;
use super::result::decode_one;
use crate::engine::{Config, Reply, Solo, lock};
use crate::error::{Error, WorkerExit};
use crate::handoff;
use crate::task::Task;

/// A task running in a child process of its own: see the module for how.
///
/// `Process<R>` is `Send`; `R` is the task's output. The child starts at once and
/// runs until the task returns (it then exits with code 0), panics (exit code 0
/// too: the panic is the outcome), or is killed. Dropping a handle that was not
/// joined kills the child and reaps it: no orphan, no zombie.
///
/// ```rust,ignore
/// #[procpool::pool_task]
/// fn add(a: u64, b: u64) -> u64 { a + b }
///
/// let p = procpool::Process::spawn(add, (2, 3))?;
/// assert_eq!(p.join()?, 5);
/// ```
pub struct Process<R> {
    /// The child's pid.
    pid: u32,
    /// A pidfd of the child, for signals that cannot reach a reused pid (`None` on
    /// a kernel without pidfds: signals then go by pid, while the child is unreaped).
    pidfd: Option<OwnedFd>,
    /// The task's name, for the errors of waits.
    task: &'static str,
    /// Where the monitor publishes the outcome.
    slot: Arc<Slot<R>>,
    /// The monitor thread, joined on drop.
    monitor: Option<std::thread::JoinHandle<()>>,
    /// The output type.
    _output: PhantomData<fn() -> R>,
}

/// What the monitor publishes: the outcome and the exit, together.
struct Slot<R> {
    /// `None` while the child runs.
    state: Mutex<Option<Ended<R>>>,
    /// Signalled when `state` is set.
    ended: Condvar,
}

/// How the child ended.
struct Ended<R> {
    /// The task's value or the error; `None` once a join has taken it.
    outcome: Option<Result<R, Error>>,
    /// How the child process ended.
    exit: WorkerExit,
}

impl<R: DeserializeOwned + Send + 'static> Process<R> {
    /// Starts `task(args)` in a new process.
    ///
    /// `task` is a `#[pool_task]`; `args` its arguments as a tuple, as for
    /// [`Pool::apply`](crate::Pool::apply). Handles in them (channel ends, shared
    /// memory, locks) reach the child, which takes their descriptors from this
    /// process; they are kept alive here until the task has returned.
    ///
    /// The child is this program re-executed (so `procpool::init()` must be the
    /// first line of `main`), through the default transport. A process may start
    /// processes and pools of its own, and so may a pool task.
    ///
    /// # Errors
    ///
    /// [`Error::NotRegistered`] for a function that is not a `#[pool_task]`,
    /// [`Error::Serialization`] for arguments that do not serialize,
    /// [`Error::NotInitialized`] if `init()` has not run, [`Error::Io`] if the
    /// process or its monitor thread cannot be started. A child that starts but
    /// fails its handshake gives its [`Error::Startup`] from [`join`](Self::join).
    pub fn spawn<F, Args>(task: F, args: Args) -> Result<Process<R>, Error>
    where
        F: Task<Args, Output = R>,
        Args: Serialize,
    {
        let _ = task; // its type is what the registry looks up
        let entry = entry_of::<F>()?;
        let mut payload = Vec::new();
        push_argument(&mut payload, entry, 0, &args)?;
        drop(args);
        let kept = handoff::take_kept();
        let config = config()?;
        let name = entry.name();
        let slot = Arc::new(Slot {
            state: Mutex::new(None),
            ended: Condvar::new(),
        });
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
        let published = Arc::clone(&slot);
        let monitor = std::thread::Builder::new()
            .name(format!("procpool-process-{name}"))
            .spawn(move || {
                let solo = match Solo::launch(&config) {
                    Ok(solo) => solo,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let pid = solo.pid();
                let _ = started_tx.send(Ok((pid, solo.pidfd().ok())));
                let (outcome, exit) = solo.run(&config, name, &payload, |answer| {
                    decode_one::<R>(
                        name,
                        Reply {
                            first_index: 0,
                            count: 1,
                            pid,
                            outcome: answer,
                        },
                    )
                });
                // The task has returned (or never will): what its arguments shared
                // may go now.
                drop(kept);
                let outcome = outcome.and_then(|decoded| decoded);
                *lock(&published.state) = Some(Ended {
                    outcome: Some(outcome),
                    exit,
                });
                published.ended.notify_all();
            })?;
        let (pid, pidfd) = match started_rx.recv() {
            Ok(Ok(started)) => started,
            Ok(Err(e)) => {
                let _ = monitor.join();
                return Err(e);
            }
            Err(_) => {
                let _ = monitor.join();
                return Err(Error::Startup(
                    "the process's monitor thread ended before it started the process".into(),
                ));
            }
        };
        Ok(Process {
            pid,
            pidfd,
            task: name,
            slot,
            monitor: Some(monitor),
            _output: PhantomData,
        })
    }

    /// Waits for the task's end and returns its value.
    ///
    /// # Errors
    ///
    /// [`Error::TaskPanicked`] if it panicked; [`Error::WorkerDied`] with the exit
    /// status if the process ended without returning (killed, `terminate`d, or a
    /// call of `std::process::exit`); [`Error::Startup`] if it never got to the
    /// task; [`Error::Serialization`] if its value does not decode here;
    /// [`Error::InvalidArgument`] if a `join_timeout` already returned the value.
    pub fn join(mut self) -> Result<R, Error> {
        self.wait_until(None)
    }

    /// As [`join`](Self::join), waiting at most `timeout`; the process stays
    /// joinable after a time-out.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] (the task named, no pid: nothing was killed) if the
    /// process is still running; otherwise as [`join`](Self::join).
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<R, Error> {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.wait_until(Some((deadline, timeout))),
            None => self.wait_until(None),
        }
    }

    /// Waits until the monitor publishes, or the deadline; takes the outcome.
    fn wait_until(&mut self, deadline: Option<(Instant, Duration)>) -> Result<R, Error> {
        let state = lock(&self.slot.state);
        let at = deadline.map(|(at, _)| at);
        let (mut state, ended) =
            crate::sync::wait_until(&self.slot.ended, state, at, |s| s.is_some());
        match (state.as_mut(), deadline) {
            (Some(ended), _) => ended.outcome.take().unwrap_or_else(|| {
                Err(Error::InvalidArgument(
                    "the process's result was already taken by an earlier join".into(),
                ))
            }),
            (None, Some((_, timeout))) if !ended => Err(Error::Timeout {
                task: Some(self.task.to_owned()),
                index: None,
                pid: None,
                after: timeout,
            }),
            (None, _) => Err(Error::protocol("a process's wait ended without its end")),
        }
    }
}

impl<R> Process<R> {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the child is still running (not yet reaped).
    pub fn is_alive(&self) -> bool {
        lock(&self.slot.state).is_none()
    }

    /// How the child ended: `None` while it runs. `Some(WorkerExit::Code(0))` after
    /// a task that returned (or panicked: the panic is the outcome, not the exit);
    /// `Signal(15)` after [`terminate`](Self::terminate).
    pub fn exit_status(&self) -> Option<WorkerExit> {
        lock(&self.slot.state).as_ref().map(|ended| ended.exit)
    }

    /// Sends `SIGTERM`, as Python's `terminate()`. A process that has already
    /// ended is left alone.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the signal cannot be sent.
    pub fn terminate(&self) -> Result<(), Error> {
        self.signal(rustix::process::Signal::TERM)
    }

    /// Sends `SIGKILL`, as Python's `kill()`. A process that has already ended is
    /// left alone.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the signal cannot be sent.
    pub fn kill(&self) -> Result<(), Error> {
        self.signal(rustix::process::Signal::KILL)
    }

    /// Sends `signal` to the child unless it has ended: through its pidfd, or by
    /// pid under the slot's lock (the monitor reaps before it publishes, and it
    /// publishes under that lock, so an unpublished child is unreaped).
    fn signal(&self, signal: rustix::process::Signal) -> Result<(), Error> {
        let result = match &self.pidfd {
            Some(pidfd) => rustix::process::pidfd_send_signal(pidfd, signal),
            None => {
                let state = lock(&self.slot.state);
                if state.is_some() {
                    return Ok(());
                }
                match i32::try_from(self.pid)
                    .ok()
                    .and_then(rustix::process::Pid::from_raw)
                {
                    Some(pid) => rustix::process::kill_process(pid, signal),
                    None => return Ok(()),
                }
            }
        };
        match result {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(std::io::Error::from(e).into()),
        }
    }
}

impl<R> Drop for Process<R> {
    /// A child still running is killed; the monitor then reaps it, and is joined.
    fn drop(&mut self) {
        if self.is_alive() {
            let _ = self.signal(rustix::process::Signal::KILL);
        }
        if let Some(monitor) = self.monitor.take() {
            let _ = monitor.join();
        }
    }
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("pid", &self.pid)
            .field("task", &self.task)
            .field("exit_status", &self.exit_status())
            .finish_non_exhaustive()
    }
}

/// The configuration a process's child is launched with: a pool's defaults for one
/// worker (the default transport, a secret of its own).
///
/// # Errors
///
/// Those of `PoolBuilder::config`: no `init()`, no secret.
fn config() -> Result<Config, Error> {
    let mut config = super::pool::PoolBuilder::default().processes(1).config()?;
    // A process is a child of this one, also on rank 0 of a cluster job.
    config.launch = Arc::new(crate::engine::LocalLaunch);
    Ok(config)
}
