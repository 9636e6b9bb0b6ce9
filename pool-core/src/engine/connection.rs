//! A driver's connection to its worker: start-up (through the pool's [`Launch`]),
//! handshake, initializer, the exchange of frames, and the end of the worker.
//!
//! A connection's life: [`Connection::start`] (launch, handshake, initializer), then
//! [`send`](Connection::send) and [`receive`](Connection::receive) for each frame
//! (or [`exchange`](Connection::exchange) for a direct call), then
//! [`shutdown`](Connection::shutdown) when the pool closes or the worker is
//! recycled, or [`reap_failed`](Connection::reap_failed) when the link failed
//! ([`LinkFailure`]). Once reaped, [`started`](Connection::started) tells how far
//! the worker got.
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
///
/// Every failure ends the worker: the connection reaps it, and its batches are
/// settled by `worker_lost` (or, on the direct path, by `run_direct`). Only a
/// `Closed` failure may be retried.
#[derive(Debug)]
pub(super) enum LinkFailure {
    /// The worker went away (end of stream while waiting for a reply).
    ///
    /// From the receiver ([`Received::Closed`], or an I/O error through `From`);
    /// also what [`Connection::reap_failed`] makes of a protocol error of a worker
    /// that died by itself, and what `worker_lost` makes of `Unsent` once it has
    /// read the replies the worker sent before.
    Closed,
    /// A frame could not be written: the worker had gone, and never got it.
    ///
    /// From [`Connection::send`], on an I/O error of the sender.
    Unsent,
    /// An item ran past the task time limit; `done` items of the batch had finished.
    ///
    /// From [`receive_within`](Connection::receive_within) when no frame came within
    /// the limit of one item; `done` is the item of the last `Started` report (0 before
    /// any): the one that was running. The worker is killed; never retried.
    TimedOut { done: u32 },
    /// The worker sent something it should not have; it is killed.
    ///
    /// A reply that does not decode, or answers another frame, or with another
    /// count; a bad or late handshake; a failed initializer; any error of the
    /// transport but I/O (a frame over the cap). Never retried.
    Broken(Error),
}

/// An error of the link: I/O means the worker is gone ([`LinkFailure::Closed`]);
/// anything else, such as a frame cut short or over the cap, is
/// [`LinkFailure::Broken`], which [`Connection::reap_failed`] may still find to be
/// a death.
impl From<Error> for LinkFailure {
    fn from(e: Error) -> Self {
        match e {
            Error::Io(_) => LinkFailure::Closed,
            other => LinkFailure::Broken(other),
        }
    }
}

/// How long a direct call watches for its answer before its thread sleeps.
///
/// Longer than the worker's own watch for the next call after a direct one (50 µs,
/// `LINGER` in `worker::serve`): a thread put to sleep and woken again costs tens
/// of microseconds, the time of many a quick task.
const DIRECT_SPIN: Duration = Duration::from_micros(100);

/// One chunk of work as it goes on the wire: its items are the concatenation of
/// `items` (several batches may travel in one frame).
pub(super) struct Frame<'a> {
    /// Registered name of the task.
    pub(super) task: &'static str,
    /// Input index of the frame's first item (that of its first batch).
    pub(super) first_index: usize,
    /// Items in the frame, all batches together: the worker's `Done` must name
    /// as many.
    pub(super) count: u32,
    /// The payloads of the frame's batches, in order, written after the header as
    /// they are: no copy into one buffer.
    pub(super) items: &'a [&'a [u8]],
    /// Sent by the caller's own thread, which waits for the answer (`apply`).
    pub(super) direct: bool,
}

/// A driver's end of one live worker: the link to it, and what went over it.
///
/// The [`Worker`] itself is not here but in the engine's table,
/// [`Engine::workers`], at `slot`, where `terminate` can kill it while the driver
/// is blocked on the link; the connection takes it from there when it reaps it.
/// Kept in [`Engine::links`]: held by its driver while work is in flight, else free
/// for a direct call to borrow.
#[derive(Debug)]
pub(super) struct Connection {
    /// The pool's end of the worker's link, from the launch.
    pub(super) link: Link,
    /// The worker's [`Worker::pid`], named in errors and checked in the handshake.
    pub(super) pid: u32,
    /// The driver's slot: where the worker is in [`Engine::workers`].
    pub(super) slot: usize,
    /// Items run by this worker, for `max_tasks_per_child`.
    ///
    /// Counted when a frame's answer arrives, a refusal included.
    pub(super) items_done: usize,
    /// Items sent to this worker (run or in flight).
    ///
    /// Counted once a frame is written; what the driver sends ahead is bounded by
    /// `max_tasks_per_child` less this.
    pub(super) items_sent: usize,
    /// The buffer every frame header is encoded into, reused from frame to frame.
    pub(super) header: Vec<u8>,
    /// Largest batch payload sent ahead to this worker while it is busy: the frames
    /// in flight must fit the link's buffer.
    ///
    /// [`ahead_frame`](super::driver::ahead_frame) of the sender's
    /// [`capacity`](crate::transport::FrameSender::capacity), set at the start.
    pub(super) ahead_frame: usize,
    /// The id of the last frame written.
    ///
    /// What `run_direct` asks a dead worker about, to tell whether its call had
    /// started.
    pub(super) last_sent: u64,
    /// The worker's resident memory passed the soft limit: replace it once idle.
    ///
    /// Set, and cleared, by [`check_memory`](Self::check_memory) after each reply.
    pub(super) over_memory: bool,
    /// The worker once reaped, kept to ask how far it got ([`Connection::started`]).
    dead: Option<Box<dyn Worker>>,
}

impl Connection {
    /// Starts a worker for driver `slot`, completes the handshake and runs the
    /// initializer.
    ///
    /// The worker goes into [`Engine::workers`] as soon as the launch returns,
    /// before anything can block, so that `terminate` can kill one stuck in its
    /// handshake or initializer; one launched after `terminate` went through the
    /// table is reaped here at once (see [`Engine::terminating`] for why one of the
    /// two always sees the other). A worker that fails any step is reaped.
    ///
    /// The initializer is timed even without a task time limit (by the start-up
    /// limit then): a worker stuck in it must not hold its driver forever.
    ///
    /// # Errors
    ///
    /// - whatever the launch failed with;
    /// - [`Error::PoolClosed`] when the pool is terminating;
    /// - [`Error::Startup`], naming the worker's exit and `procpool::init()`, for a
    ///   worker that ended before its handshake (or while it ran the initializer:
    ///   the message is the same), and for one that did not answer the handshake
    ///   within the start-up limit;
    /// - the protocol error of a handshake that is not procpool's, of another
    ///   version or build, from another pid, or without the pool's secret;
    /// - [`Error::InitializerFailed`] when the initializer failed, the protocol
    ///   error of the refusal if the worker refused to run it, and
    ///   [`Error::Timeout`] (naming the initializer) when it ran past its limit.
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
        let mut greeted = false;
        let ready = conn
            .handshake(config.link.startup_timeout, config.secret)
            .and_then(|()| {
                greeted = true;
                conn.initialize(shared)
            });
        match ready {
            Ok(()) => Ok(conn),
            Err(failure) => {
                let exit = conn.reap(shared);
                Err(match (failure, &config.initializer) {
                    // It answered the handshake, then died in the initializer.
                    (LinkFailure::Closed | LinkFailure::Unsent, Some(init)) if greeted => {
                        Error::InitializerFailed {
                            task: init.task.to_owned(),
                            pid,
                            source: Box::new(Error::WorkerDied {
                                task: init.task.to_owned(),
                                pid,
                                exit,
                                index: 0,
                            }),
                        }
                    }
                    (LinkFailure::Closed | LinkFailure::Unsent, _) => Error::Startup(format!(
                        "worker {pid} {exit} before the handshake: make procpool::init() the first \
                         line of main (or use #[procpool::main] / procpool::test_support!())"
                    )),
                    (LinkFailure::TimedOut { .. }, _) => Error::Timeout {
                        task: config.initializer.as_ref().map(|i| i.task.to_owned()),
                        index: None,
                        pid: Some(pid),
                        after: config.task_timeout.unwrap_or(config.link.startup_timeout),
                    },
                    (LinkFailure::Broken(e), _) => e,
                })
            }
        }
    }

    /// Waits up to `timeout` for the worker's `Hello`, and checks it against this
    /// build, this worker's pid and the pool's secret ([`check_hello`]).
    ///
    /// # Errors
    ///
    /// [`LinkFailure::Closed`] if the worker ended first; [`LinkFailure::Broken`]
    /// with an [`Error::Startup`] if it did not answer in time, or with a protocol
    /// error if its first frame is not a good `Hello`.
    fn handshake(&mut self, timeout: Duration, shared_secret: u128) -> Result<(), LinkFailure> {
        greet(&mut self.link, self.pid, timeout, shared_secret)
    }

    /// Runs the pool's initializer, if any; a failure keeps the worker out of the pool.
    ///
    /// A frame of one item, timed by the task time limit or, without one, by the
    /// start-up limit; its reply is checked for a failed item ([`first_failure`]).
    ///
    /// # Errors
    ///
    /// [`LinkFailure::Broken`] with [`Error::InitializerFailed`] when the task
    /// failed (or its reply did not decode), with the refusal's protocol error if
    /// the worker refused it; the failures of [`send`](Self::send) and
    /// [`receive`](Self::receive) otherwise.
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
    ///
    /// For a direct call: after the write, the calling thread watches the link for
    /// [`DIRECT_SPIN`] before it blocks in [`receive`](Self::receive).
    ///
    /// # Errors
    ///
    /// Those of [`send`](Self::send) and [`receive`](Self::receive); an error of the
    /// watch, as one of the receiver.
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
    ///
    /// The frame is a `Run` header and the batches' payloads; its id is new, from
    /// [`Engine::next_batch`]. The worker is asked to report each item's start when
    /// the pool has a task time limit and the frame holds more than one item (a
    /// single item starts with its frame). The items count as sent only once the
    /// frame is written.
    ///
    /// # Errors
    ///
    /// [`LinkFailure::Unsent`] on an I/O error (the worker is gone);
    /// [`LinkFailure::Broken`] if the transport refused the frame (over the cap) or
    /// the header did not encode.
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
    ///
    /// # Errors
    ///
    /// As [`receive_within`](Self::receive_within).
    pub(super) fn receive(
        &mut self,
        shared: &Engine,
        id: u64,
        count: u32,
    ) -> Result<Result<ResultFrame, Error>, LinkFailure> {
        self.receive_within(id, count, shared.config.task_timeout)
    }

    /// [`receive`](Self::receive) with an explicit limit per item.
    ///
    /// A `Started` report of this frame records the running item and restarts the
    /// clock, so each item gets the whole limit. `Done` with this id and count is
    /// the answer; `Refused` with this id is `Ok(Err(..))`. Either counts the
    /// frame's items as done.
    ///
    /// # Errors
    ///
    /// [`LinkFailure::Closed`] at the end of the stream; [`LinkFailure::TimedOut`]
    /// when no frame came within the limit; [`LinkFailure::Broken`] for a frame
    /// that does not decode or any other message (another frame's reply, another
    /// count, a `Started` past the last item).
    fn receive_within(
        &mut self,
        id: u64,
        count: u32,
        timeout: Option<Duration>,
    ) -> Result<Result<ResultFrame, Error>, LinkFailure> {
        let answer = await_reply(&mut self.link, id, count, timeout)?;
        self.items_done += count as usize;
        Ok(answer)
    }

    /// Stops the worker (politely unless the pool is terminating) and reaps it.
    ///
    /// Politely: a `Shutdown` frame, then up to 5 s for the worker to exit before
    /// it is killed. If the pool is terminating or the frame cannot be written, it
    /// is reaped as by [`reap`](Self::reap).
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
    ///
    /// The two are told apart by whether the worker ends by itself within 100 ms of
    /// the failure: a worker that dies mid-write leaves the receiver a frame cut
    /// short, which the transport reports as a protocol error; a worker still alive
    /// after the grace is taken to have sent garbage, and is killed. Only
    /// [`Error::Protocol`] is reconsidered; other failures pass unchanged.
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
    ///
    /// Asks [`Worker::resident_bytes`] through the table's lock; an unreadable size
    /// leaves [`over_memory`](Self::over_memory) as it was.
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
    ///
    /// Asked of the reaped worker ([`Worker::started`]); before the reap there is
    /// nothing to ask, and the answer is the cautious `Some(0)` too.
    pub(super) fn started(&self, id: u64) -> Option<u32> {
        self.dead
            .as_ref()
            .map_or(Some(0), |worker| worker.started(id))
    }

    /// How the worker ended, and whether it did so by itself (not by our SIGKILL).
    ///
    /// Takes the worker out of the table, then polls [`Worker::try_exit`] with a
    /// pause doubling from 50 µs to 5 ms, for up to `grace` and only while the pool
    /// is not terminating; a worker still running is then killed and waited for.
    /// No lock is held while it waits. The worker is kept as `dead` for
    /// [`started`](Self::started). A worker already taken (reaped before) gives
    /// `(Unknown, false)`.
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

/// Waits up to `timeout` for the `Hello` of worker `pid` on `link`, and checks it
/// against this build, the pid and the `shared_secret` ([`check_hello`]).
///
/// # Errors
///
/// As [`Connection::handshake`].
pub(super) fn greet(
    link: &mut Link,
    pid: u32,
    timeout: Duration,
    shared_secret: u128,
) -> Result<(), LinkFailure> {
    let mut frame = Vec::new();
    match link
        .receiver
        .recv(&mut frame, Instant::now().checked_add(timeout))?
    {
        Received::Frame => {}
        Received::Closed => return Err(LinkFailure::Closed),
        Received::TimedOut => {
            return Err(LinkFailure::Broken(Error::Startup(format!(
                "worker {} did not answer within {timeout:?}: is procpool::init() the first \
                 line of main?",
                pid
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
    let problem = check_hello(&hello, pid, shared_secret);
    match problem {
        Some(p) => Err(LinkFailure::Broken(Error::protocol(p))),
        None => Ok(()),
    }
}

/// Waits on `link` for the answer to frame `id` of `count` items, each item
/// within `timeout` (a `Started` report restarts the clock): the result items, or
/// `Ok(Err(..))` for a refusal.
///
/// # Errors
///
/// As [`Connection::receive_within`].
pub(super) fn await_reply(
    link: &mut Link,
    id: u64,
    count: u32,
    timeout: Option<Duration>,
) -> Result<Result<ResultFrame, Error>, LinkFailure> {
    let mut done = 0;
    loop {
        let mut frame = Vec::new();
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        match link.receiver.recv(&mut frame, deadline)? {
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
                return Ok(Ok(ResultFrame::new(frame, offset)));
            }
            FromWorker::Refused { id: got, reason } if got == id => {
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

/// What is wrong with a worker's handshake, if anything.
///
/// In order: procpool's magic, the protocol version, the build (the fingerprint
/// of the task registry), the pid the launch gave, the pool's secret.
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
///
/// Used for the initializer's reply: the failure is named with item index 0.
///
/// # Errors
///
/// A protocol error for an item that does not decode, or whose status is neither
/// success nor failure.
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
