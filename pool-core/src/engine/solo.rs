//! One worker for one call, outside any pool: what a `Process` runs on.
//!
//! The same launch, handshake and frames as a pool's worker ([`Launch`], the
//! connection's `greet` and `await_reply`), without a queue or a driver: a frame
//! of one item goes out, its answer comes back, the link is closed (the worker
//! reads the end of its stream and exits with code 0) and the worker is reaped.
//! A worker that ends before it answers is [`Error::WorkerDied`] with its exit.
//!
//! [`Launch`]: super::Launch

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::connection::{LinkFailure, await_reply, greet};
use super::{Config, ResultFrame, Worker};
use crate::error::{Error, WorkerExit};
use crate::transport::Link;
use crate::wire::protocol::{self, ToWorker};

/// A worker started for one call.
#[derive(Debug)]
pub(crate) struct Solo {
    /// The worker process.
    worker: Box<dyn Worker>,
    /// The parent's end of its link.
    link: Link,
    /// Its pid.
    pid: u32,
}

impl Solo {
    /// Starts a worker as a pool configured by `config` would (its
    /// [`Launch`](super::Launch)). Whatever thread calls this is the one whose end
    /// kills the worker (`PR_SET_PDEATHSIG`): it must outlive the worker.
    ///
    /// # Errors
    ///
    /// What the launch fails with.
    pub(crate) fn launch(config: &Config) -> Result<Solo, Error> {
        let (worker, link) = config.launch.launch(config)?;
        let pid = worker.pid();
        Ok(Solo { worker, link, pid })
    }

    /// The worker's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// A pidfd of the worker, to signal it from other threads without the risk of
    /// a reused pid (the worker is reaped only by [`run`](Self::run)).
    ///
    /// # Errors
    ///
    /// What `pidfd_open` reports (Linux before 5.3 has none).
    pub(crate) fn pidfd(&self) -> std::io::Result<OwnedFd> {
        let pid = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| std::io::Error::other("the worker has no valid pid"))?;
        Ok(rustix::process::pidfd_open(
            pid,
            rustix::process::PidfdFlags::empty(),
        )?)
    }

    /// Runs `payload` (one encoded argument tuple) as task `task`, then ends and
    /// reaps the worker: the answer's result items or the call's error, and how the
    /// worker ended.
    ///
    /// `with_answer` runs on the answer while the worker is still alive, before its
    /// link is closed: decoding it there lets handles in the result be taken from
    /// the worker (see `handoff`).
    ///
    /// Errors of the call: [`Error::Startup`] for a worker that exited before its
    /// handshake (one killed by a signal then is [`Error::WorkerDied`]) or did not
    /// answer it within the start-up limit, the protocol
    /// error of a bad handshake or a bad answer (the worker is killed), the
    /// refusal of a task the worker does not know, and [`Error::WorkerDied`] (item
    /// 0) when the worker ended before it answered.
    pub(crate) fn run<T>(
        mut self,
        config: &Config,
        task: &'static str,
        payload: &[u8],
        with_answer: impl FnOnce(Result<ResultFrame, Error>) -> T,
    ) -> (Result<T, Error>, WorkerExit) {
        let answer = self.exchange(config, task, payload);
        match answer {
            Ok(answer) => {
                let value = with_answer(answer);
                // The end of its stream: the worker's serve loop returns, it exits 0.
                drop(self.link);
                (Ok(value), self.worker.wait())
            }
            Err(LinkFailure::Broken(e)) => {
                let (exit, by_itself) = end(&mut *self.worker);
                match e {
                    // Cut short by a worker that was dying anyway.
                    Error::Protocol(_) if by_itself => (Err(died(task, self.pid, exit)), exit),
                    e => (Err(e), exit),
                }
            }
            Err(LinkFailure::TimedOut { .. }) => {
                let (exit, _) = end(&mut *self.worker);
                (
                    Err(Error::Startup(format!(
                        "worker {} did not answer",
                        self.pid
                    ))),
                    exit,
                )
            }
            Err(LinkFailure::Closed | LinkFailure::Unsent) => {
                let exit = self.worker.wait();
                (Err(died(task, self.pid, exit)), exit)
            }
        }
    }

    /// Handshake, the frame of one item, its answer.
    ///
    /// # Errors
    ///
    /// A failure of the link; a worker gone before its handshake is
    /// [`LinkFailure::Broken`] with its [`Error::Startup`].
    fn exchange(
        &mut self,
        config: &Config,
        task: &'static str,
        payload: &[u8],
    ) -> Result<Result<ResultFrame, Error>, LinkFailure> {
        match greet(
            &mut self.link,
            self.pid,
            config.link.startup_timeout,
            config.secret,
        ) {
            Ok(()) => {}
            Err(LinkFailure::Closed | LinkFailure::Unsent) => {
                let exit = self.worker.wait();
                if let WorkerExit::Signal(_) = exit {
                    // Killed (terminate, kill, the OOM killer) before it got to the
                    // task: a death, like one a moment later.
                    return Err(LinkFailure::Broken(died(task, self.pid, exit)));
                }
                return Err(LinkFailure::Broken(Error::Startup(format!(
                    "worker {} {exit} before the handshake: make procpool::init() the first \
                     line of main (or use #[procpool::main] / procpool::test_support!())",
                    self.pid
                ))));
            }
            Err(other) => return Err(other),
        }
        let run = ToWorker::Run {
            id: 1,
            task,
            first_index: 0,
            count: 1,
            report_starts: false,
            direct: false,
        };
        let mut header = Vec::with_capacity(64);
        protocol::encode_header(&run, &mut header)?;
        match self.link.sender.send(&[&header, payload]) {
            Ok(()) => {}
            Err(Error::Io(_)) => return Err(LinkFailure::Unsent),
            Err(e) => return Err(LinkFailure::Broken(e)),
        }
        await_reply(&mut self.link, 1, 1, None)
    }
}

/// [`Error::WorkerDied`] of a worker that ended while it ran `task`.
fn died(task: &str, pid: u32, exit: WorkerExit) -> Error {
    Error::WorkerDied {
        task: task.to_owned(),
        pid,
        exit,
        index: 0,
    }
}

/// Ends a worker whose link failed: up to 100 ms to exit by itself, then
/// `SIGKILL`. How it ended, and whether by itself.
fn end(worker: &mut dyn Worker) -> (WorkerExit, bool) {
    let deadline = Instant::now() + Duration::from_millis(100);
    while Instant::now() < deadline {
        if let Some(exit) = worker.try_exit() {
            return (exit, true);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    worker.kill();
    (worker.wait(), false)
}
