//! A driver's connection to its worker: start-up (through the pool's [`Launch`]),
//! handshake, initializer, the exchange of frames, and the end of the worker.
//!
//! [`Launch`]: super::Launch

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::worker::Worker;
use super::{Engine, ResultFrame, lock};
use crate::error::{Error, WorkerExit};
use crate::transport::{Link, Received};
use crate::wire::protocol::{self, FromWorker, MAGIC, PROTOCOL_VERSION, ToWorker};
use crate::wire::registry;

/// How a link to a worker failed.
#[derive(Debug)]
pub(super) enum LinkFailure {
    /// The worker went away (end of stream while waiting for a reply).
    Closed,
    /// A frame could not be written: the worker had gone, and never got it.
    Unsent,
    /// An item ran past the task time limit; `done` items of the batch had finished.
    TimedOut { done: u32 },
    /// The worker sent something it should not have; it is killed.
    Broken(Error),
}

impl From<Error> for LinkFailure {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(_) => LinkFailure::Closed,
            other => LinkFailure::Broken(other),
        }
    }
}

/// How long a direct call watches for its answer before its thread sleeps.
const DIRECT_SPIN: Duration = Duration::from_micros(100);

/// One chunk of work as it goes on the wire: its items are the concatenation of
/// `items` (several batches may travel in one frame).
pub(super) struct Frame<'a> {
    pub(super) task: &'static str,
    pub(super) first_index: usize,
    pub(super) count: u32,
    pub(super) items: &'a [&'a [u8]],
    /// Sent by the caller's own thread, which waits for the answer (`apply`).
    pub(super) direct: bool,
}

/// One live worker process and the link to it.
#[derive(Debug)]
pub(super) struct Connection {
    pub(super) link: Link,
    pub(super) pid: u32,
    pub(super) slot: usize,
    /// Items run by this worker, for `max_tasks_per_child`.
    pub(super) items_done: usize,
    /// Items sent to this worker (run or in flight).
    pub(super) items_sent: usize,
    pub(super) header: Vec<u8>,
    /// Largest batch payload sent ahead to this worker while it is busy: the frames
    /// in flight must fit the link's buffer.
    pub(super) ahead_frame: usize,
    /// The id of the last frame written.
    pub(super) last_sent: u64,
    /// The worker's resident memory passed the soft limit: replace it once idle.
    pub(super) over_memory: bool,
    /// The worker once reaped, kept to ask how far it got ([`Connection::started`]).
    dead: Option<Box<dyn Worker>>,
}

impl Connection {
    /// Starts a worker for driver `slot`, completes the handshake and runs the
    /// initializer.
    pub(super) fn start(shared: &Engine, slot: usize) -> Result<Connection, Error> {
        let config = &shared.config;
        let (worker, link) = config.launch.launch(config)?;
        let pid = worker.pid();
        *lock(&shared.workers[slot]) = Some(worker);
        let ahead_frame = super::driver::ahead_frame(link.sender.capacity());
        let mut conn = Connection {
            link,
            pid,
            slot,
            items_done: 0,
            items_sent: 0,
            header: Vec::with_capacity(128),
            ahead_frame,
            last_sent: 0,
            over_memory: false,
            dead: None,
        };
        if shared.is_terminating() {
            conn.reap(shared);
            return Err(Error::PoolClosed);
        }
        let ready = conn
            .handshake(config.link.startup_timeout, config.secret)
            .and_then(|()| conn.initialize(shared));
        match ready {
            Ok(()) => Ok(conn),
            Err(failure) => {
                let exit = conn.reap(shared);
                Err(match failure {
                    LinkFailure::Closed | LinkFailure::Unsent => Error::Startup(format!(
                        "worker {pid} {exit} before the handshake: make procpool::init() the first \
                         line of main (or use #[procpool::main] / procpool::test_support!())"
                    )),
                    LinkFailure::TimedOut { .. } => Error::Timeout {
                        task: config.initializer.as_ref().map(|i| i.task.to_owned()),
                        index: None,
                        pid: Some(pid),
                        after: config.task_timeout.unwrap_or(config.link.startup_timeout),
                    },
                    LinkFailure::Broken(e) => e,
                })
            }
        }
    }

    fn handshake(&mut self, timeout: Duration, shared_secret: u128) -> Result<(), LinkFailure> {
        let mut frame = Vec::new();
        match self
            .link
            .receiver
            .recv(&mut frame, Instant::now().checked_add(timeout))?
        {
            Received::Frame => {}
            Received::Closed => return Err(LinkFailure::Closed),
            Received::TimedOut => {
                return Err(LinkFailure::Broken(Error::Startup(format!(
                    "worker {} did not answer within {timeout:?}: is procpool::init() the first \
                     line of main?",
                    self.pid
                ))));
            }
        }
        let hello = match protocol::decode_header::<FromWorker<'_>>(&frame)?.0 {
            FromWorker::Hello(hello) => hello,
            other => {
                return Err(LinkFailure::Broken(Error::protocol(format!(
                    "expected a handshake, got {other:?}"
                ))));
            }
        };
        let problem = check_hello(&hello, self.pid, shared_secret);
        match problem {
            Some(p) => Err(LinkFailure::Broken(Error::protocol(p))),
            None => Ok(()),
        }
    }

    /// Runs the pool's initializer, if any; a failure keeps the worker out of the pool.
    fn initialize(&mut self, shared: &Engine) -> Result<(), LinkFailure> {
        let Some(init) = &shared.config.initializer else {
            return Ok(());
        };
        let frame = Frame {
            task: init.task,
            first_index: 0,
            count: 1,
            items: &[&init.payload],
            direct: false,
        };
        // The initializer is timed even without a task time limit: a worker stuck in
        // it must not hold its driver forever.
        let limit = shared
            .config
            .task_timeout
            .unwrap_or(shared.config.link.startup_timeout);
        let id = self.send(shared, &frame)?;
        let frame = self
            .receive_within(id, 1, Some(limit))?
            .map_err(LinkFailure::Broken)?;
        match first_failure(&frame, init.task, self.pid) {
            Ok(None) => Ok(()),
            Ok(Some(e)) | Err(e) => Err(LinkFailure::Broken(Error::InitializerFailed {
                task: init.task.to_owned(),
                pid: self.pid,
                source: Box::new(e),
            })),
        }
    }

    /// Sends one frame and waits for its answer. `Ok(Err(..))` is a batch the
    /// worker refused (it lives on).
    pub(super) fn exchange(
        &mut self,
        shared: &Engine,
        frame: &Frame<'_>,
    ) -> Result<Result<ResultFrame, Error>, LinkFailure> {
        let id = self.send(shared, frame)?;
        // The caller waits anyway: watch for a quick answer before going to sleep.
        self.link.receiver.arriving_within(DIRECT_SPIN)?;
        self.receive(shared, id, frame.count)
    }

    /// Writes one batch to the worker; returns its id.
    pub(super) fn send(&mut self, shared: &Engine, frame: &Frame<'_>) -> Result<u64, LinkFailure> {
        let id = shared.next_batch.fetch_add(1, Ordering::Relaxed);
        let msg = ToWorker::Run {
            id,
            task: frame.task,
            first_index: frame.first_index as u64,
            count: frame.count,
            report_starts: shared.config.task_timeout.is_some() && frame.count > 1,
            direct: frame.direct,
        };
        protocol::encode_header(&msg, &mut self.header)?;
        let mut parts = Vec::with_capacity(frame.items.len() + 1);
        parts.push(&self.header[..]);
        parts.extend_from_slice(frame.items);
        self.link.sender.send(&parts).map_err(|e| match e {
            Error::Io(_) => LinkFailure::Unsent,
            other => LinkFailure::from(other),
        })?;
        self.items_sent += frame.count as usize;
        self.last_sent = id;
        Ok(id)
    }

    /// Waits for the answer to batch `id` of `count` items, timing each item if the
    /// pool has a task time limit.
    pub(super) fn receive(
        &mut self,
        shared: &Engine,
        id: u64,
        count: u32,
    ) -> Result<Result<ResultFrame, Error>, LinkFailure> {
        self.receive_within(id, count, shared.config.task_timeout)
    }

    /// [`receive`](Self::receive) with an explicit limit per item.
    fn receive_within(
        &mut self,
        id: u64,
        count: u32,
        timeout: Option<Duration>,
    ) -> Result<Result<ResultFrame, Error>, LinkFailure> {
        let mut done = 0;
        loop {
            let mut frame = Vec::new();
            let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
            match self.link.receiver.recv(&mut frame, deadline)? {
                Received::Frame => {}
                Received::Closed => return Err(LinkFailure::Closed),
                Received::TimedOut => return Err(LinkFailure::TimedOut { done }),
            }
            let (msg, rest) = protocol::decode_header::<FromWorker<'_>>(&frame)?;
            let offset = frame.len() - rest.len();
            match msg {
                FromWorker::Started { id: got, item } if got == id && item < count => {
                    done = item;
                }
                FromWorker::Done { id: got, count: n } if got == id && n == count => {
                    self.items_done += count as usize;
                    return Ok(Ok(ResultFrame::new(frame, offset)));
                }
                FromWorker::Refused { id: got, reason } if got == id => {
                    self.items_done += count as usize;
                    return Ok(Err(Error::protocol(reason)));
                }
                other => {
                    return Err(LinkFailure::Broken(Error::protocol(format!(
                        "unexpected reply to batch {id} of {count} items: {other:?}"
                    ))));
                }
            }
        }
    }

    /// Stops the worker (politely unless the pool is terminating) and reaps it.
    pub(super) fn shutdown(mut self, shared: &Engine) {
        if !shared.is_terminating()
            && protocol::encode_header(&ToWorker::Shutdown, &mut self.header).is_ok()
            && self.link.sender.send(&[&self.header]).is_ok()
        {
            // A worker that does not exit after `Shutdown` (stopped, stuck flushing
            // stdout, a hanging exit handler) is killed after a while, not waited for.
            self.reap_within(shared, Duration::from_secs(5));
            return;
        }
        self.reap(shared);
    }

    /// Makes sure the worker is gone and returns how it ended. Unless the pool is
    /// terminating, a worker that is already exiting gets up to 100 ms to finish, so
    /// its own exit status (not our SIGKILL) is reported.
    pub(super) fn reap(&mut self, shared: &Engine) -> WorkerExit {
        self.reap_within(shared, Duration::from_millis(100))
    }

    /// [`reap`](Self::reap), giving the worker up to `grace` to exit by itself. The
    /// process table lock is not held while waiting; `terminate` ends the wait.
    fn reap_within(&mut self, shared: &Engine, grace: Duration) -> WorkerExit {
        self.reap_status(shared, grace).0
    }

    /// Reaps a worker whose link failed. A frame cut short by a worker that was
    /// dying anyway (it exited, or someone else killed it) is that worker's death, not
    /// a protocol error, so its chunk may be retried.
    pub(super) fn reap_failed(
        &mut self,
        shared: &Engine,
        failure: LinkFailure,
    ) -> (WorkerExit, LinkFailure) {
        let (exit, by_itself) = self.reap_status(shared, Duration::from_millis(100));
        let failure = match failure {
            LinkFailure::Broken(Error::Protocol(_)) if by_itself => LinkFailure::Closed,
            other => other,
        };
        (exit, failure)
    }

    /// After a reply: notes whether the worker's resident memory is over `limit`
    /// bytes (a worker whose size cannot be read counts as under it).
    pub(super) fn check_memory(&mut self, shared: &Engine, limit: u64) {
        let resident = lock(&shared.workers[self.slot])
            .as_ref()
            .and_then(|w| w.resident_bytes());
        if let Some(bytes) = resident {
            self.over_memory = bytes > limit;
        }
    }

    /// Once the worker is dead: how far it got in frame `id`. `Some(k)` if it had
    /// started the frame and was at its item `k`, `None` if it had not started it.
    /// Without a progress page, every frame counts as started, at item 0.
    pub(super) fn started(&self, id: u64) -> Option<u32> {
        self.dead
            .as_ref()
            .map_or(Some(0), |worker| worker.started(id))
    }

    /// How the worker ended, and whether it did so by itself (not by our SIGKILL).
    fn reap_status(&mut self, shared: &Engine, grace: Duration) -> (WorkerExit, bool) {
        let Some(mut worker) = lock(&shared.workers[self.slot]).take() else {
            return (WorkerExit::Unknown, false);
        };
        let mut pause = Duration::from_micros(50);
        let mut waited = Duration::ZERO;
        let mut ended = None;
        while !shared.is_terminating() && waited < grace {
            if let Some(exit) = worker.try_exit() {
                ended = Some(exit);
                break;
            }
            std::thread::sleep(pause);
            waited += pause;
            pause = (pause * 2).min(Duration::from_millis(5));
        }
        let outcome = match ended {
            Some(exit) => (exit, true),
            None => {
                worker.kill();
                (worker.wait(), false)
            }
        };
        self.dead = Some(worker);
        outcome
    }
}

/// What is wrong with a worker's handshake, if anything.
fn check_hello(hello: &protocol::Hello, pid: u32, secret: u128) -> Option<String> {
    if hello.magic != MAGIC {
        Some("the worker did not speak procpool's protocol (bad magic)".to_owned())
    } else if hello.protocol != PROTOCOL_VERSION {
        Some(format!(
            "protocol version mismatch: pool {PROTOCOL_VERSION}, worker {}",
            hello.protocol
        ))
    } else if hello.build_id != registry::build_id() {
        Some(
            "build mismatch: the worker is a different build of this program (was it rebuilt \
             while running?)"
                .to_owned(),
        )
    } else if hello.pid != pid {
        Some(format!(
            "handshake from pid {} on the link to worker {pid}",
            hello.pid
        ))
    } else if hello.secret != secret {
        Some(format!(
            "worker {pid} does not know this pool's secret: connection refused"
        ))
    } else {
        None
    }
}

/// The error of the first failed item of a reply, if any.
fn first_failure(frame: &ResultFrame, task: &str, pid: u32) -> Result<Option<Error>, Error> {
    let mut items = protocol::Items::new(frame.items());
    while let Some(item) = items.next_item()? {
        match item.split_first() {
            Some((&protocol::STATUS_OK, _)) => {}
            Some((&protocol::STATUS_FAILED, body)) => {
                let failure: protocol::ItemFailure = postcard::from_bytes(body)
                    .map_err(|e| Error::protocol(format!("malformed task failure: {e}")))?;
                return Ok(Some(failure.into_error(task, 0, pid)));
            }
            _ => return Err(Error::protocol("malformed result item")),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol::Hello;

    fn good() -> Hello {
        Hello {
            magic: MAGIC,
            protocol: PROTOCOL_VERSION,
            build_id: registry::build_id(),
            pid: 10,
            secret: 99,
        }
    }

    #[test]
    fn a_good_handshake_passes() {
        assert_eq!(check_hello(&good(), 10, 99), None);
    }

    #[test]
    fn every_handshake_mismatch_is_named() {
        let cases: [(Hello, &str); 5] = [
            (
                Hello {
                    magic: *b"HTTP",
                    ..good()
                },
                "bad magic",
            ),
            (
                Hello {
                    protocol: PROTOCOL_VERSION + 1,
                    ..good()
                },
                "protocol version mismatch",
            ),
            (
                Hello {
                    build_id: registry::build_id() ^ 1,
                    ..good()
                },
                "build mismatch",
            ),
            (Hello { pid: 11, ..good() }, "handshake from pid 11"),
            (
                Hello {
                    secret: 98,
                    ..good()
                },
                "secret",
            ),
        ];
        for (hello, expected) in cases {
            let problem = check_hello(&hello, 10, 99).expect("refused");
            assert!(problem.contains(expected), "{problem}");
        }
    }
}
