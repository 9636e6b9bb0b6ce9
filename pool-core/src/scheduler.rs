//! The pool's engine: a shared queue of batches and one driver thread per worker.
//!
//! A driver owns one worker process at a time. It takes a batch from the queue,
//! writes it to the worker, waits for the results and hands them to the batch's
//! sink; then the next. A worker that dies, breaks the protocol or runs past the
//! task time limit is reaped and replaced by the same driver, and the batch it held
//! gets an error. Every batch reaches its sink exactly once — run, failed, or
//! dropped from the queue by `terminate` (see `Drop for Batch`) — so a caller
//! waiting on results is always woken: nothing waits forever.

use std::collections::VecDeque;
use std::ops::Range;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, WorkerExit};
use crate::protocol::{self, FromWorker, MAGIC, PROTOCOL_VERSION, ToWorker};
use crate::registry;
use crate::runtime::{MARKER_ENV, Marker};
use crate::sys;
use crate::transport::{Link, LinkConfig, Received, Transport};

/// Locks, ignoring poisoning: every critical section leaves the state consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a pool is configured with.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) transport: &'static dyn Transport,
    pub(crate) link: LinkConfig,
    pub(crate) startup_timeout: Duration,
    pub(crate) max_tasks_per_child: Option<usize>,
    pub(crate) initializer: Option<Initializer>,
    pub(crate) task_timeout: Option<Duration>,
    /// Times a batch lost with a dead worker is run again.
    pub(crate) retry_lost_tasks: u32,
    /// `RLIMIT_AS` of each worker, in bytes.
    pub(crate) memory_limit: Option<u64>,
    /// Echoed by every worker in its handshake.
    pub(crate) secret: u128,
}

/// A task run once in every new worker, with its encoded arguments.
#[derive(Debug, Clone)]
pub(crate) struct Initializer {
    pub(crate) task: &'static str,
    /// One length-prefixed item: the argument tuple.
    pub(crate) payload: Vec<u8>,
}

/// Where the outcome of a batch goes.
pub(crate) trait ReplySink: Send + Sync {
    /// Takes the outcome of one batch. Called exactly once per batch, on a pool
    /// thread or on the thread that dropped the batch.
    fn deliver(&self, reply: Reply);
}

impl ReplySink for Sender<Reply> {
    fn deliver(&self, reply: Reply) {
        let _ = self.send(reply);
    }
}

/// A cancellation flag shared by the batches of one call.
#[derive(Debug, Default)]
pub(crate) struct Job {
    cancelled: AtomicBool,
}

impl Job {
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

/// A chunk of items of one call, waiting for a worker.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) task: &'static str,
    pub(crate) first_index: usize,
    pub(crate) count: u32,
    /// The encoded items of the whole call; this batch is `range` of it.
    pub(crate) payload: Arc<Vec<u8>>,
    pub(crate) range: Range<usize>,
    pub(crate) job: Arc<Job>,
    /// Runs of this batch lost with a dead worker so far.
    pub(crate) retries: u32,
    /// Taken when the outcome is delivered; see `Drop`.
    pub(crate) sink: Option<Arc<dyn ReplySink>>,
}

impl std::fmt::Debug for dyn ReplySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplySink")
    }
}

impl Batch {
    /// Drops the batch without telling its sink.
    fn disarm(mut self) {
        self.sink = None;
    }

    /// Hands the outcome to the sink.
    fn complete(mut self, pid: u32, outcome: Result<ResultFrame, Error>) {
        if let Some(sink) = self.sink.take() {
            sink.deliver(Reply {
                first_index: self.first_index,
                count: self.count,
                pid,
                outcome,
            });
        }
    }
}

impl Drop for Batch {
    /// A batch dropped without running (the pool terminated, or the call was
    /// abandoned) still answers its caller.
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            sink.deliver(Reply {
                first_index: self.first_index,
                count: self.count,
                pid: 0,
                outcome: Err(Error::PoolClosed),
            });
        }
    }
}

/// A worker's answer to a batch: the reply frame and where its items start.
#[derive(Debug)]
pub(crate) struct ResultFrame {
    pub(crate) frame: Vec<u8>,
    pub(crate) offset: usize,
}

impl ResultFrame {
    pub(crate) fn items(&self) -> &[u8] {
        &self.frame[self.offset..]
    }
}

/// What the caller of a batch receives.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) first_index: usize,
    pub(crate) count: u32,
    pub(crate) pid: u32,
    pub(crate) outcome: Result<ResultFrame, Error>,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Batch>,
    closed: bool,
    /// Drivers that still have a worker (or are starting one).
    live: usize,
    /// Drivers with nothing in flight: queued batches are left to them rather than
    /// sent ahead on a busy worker.
    available: usize,
    /// Why the last driver gave up, for calls made after that.
    fatal: Option<Error>,
}

/// State shared by the pool handle and its drivers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    state: Mutex<State>,
    work: Condvar,
    terminating: AtomicBool,
    /// The worker process of each driver, so `terminate` can kill it.
    children: Vec<Mutex<Option<Child>>>,
    /// Each driver's connection to its worker. The driver holds it while it has work
    /// in flight; while the driver waits for work, `run_direct` may borrow it.
    links: Vec<Mutex<Option<Connection>>>,
    next_batch: AtomicU64,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Self {
        let processes = config.processes;
        Shared {
            config,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
                live: processes,
                available: processes,
                fatal: None,
            }),
            work: Condvar::new(),
            terminating: AtomicBool::new(false),
            children: (0..processes).map(|_| Mutex::new(None)).collect(),
            links: (0..processes).map(|_| Mutex::new(None)).collect(),
            next_batch: AtomicU64::new(1),
        }
    }

    /// Queues batches, or says why the pool takes no work.
    /// Refused batches are disarmed: the caller gets the error, and the call's sink
    /// (callbacks included) hears nothing.
    pub(crate) fn submit(&self, batches: impl IntoIterator<Item = Batch>) -> Result<(), Error> {
        let mut state = lock(&self.state);
        let refused = if state.closed || self.is_terminating() {
            Some(Error::PoolClosed)
        } else if state.live == 0 {
            Some(
                state
                    .fatal
                    .as_ref()
                    .map_or(Error::PoolClosed, Error::duplicate),
            )
        } else {
            None
        };
        if let Some(error) = refused {
            drop(state);
            batches.into_iter().for_each(Batch::disarm);
            return Err(error);
        }
        let before = state.queue.len();
        state.queue.extend(batches);
        let added = state.queue.len() - before;
        drop(state);
        if added == 1 {
            self.work.notify_one();
        } else {
            self.work.notify_all();
        }
        Ok(())
    }

    /// Records that a driver has work in flight (`true`) or none (`false`); a driver
    /// that stops counts as occupied.
    fn set_occupied(&self, occupied: &mut bool, now: bool) {
        if *occupied != now {
            let mut state = lock(&self.state);
            if now {
                state.available = state.available.saturating_sub(1);
            } else {
                state.available += 1;
            }
            *occupied = now;
        }
    }

    /// Runs one request on an idle worker from the calling thread, skipping the two
    /// thread hand-offs of the queue (the caller writes, the caller reads). `None`
    /// when no worker is idle or the pool's options need the driver (worker
    /// recycling, retries): the caller then queues the request as usual.
    pub(crate) fn run_direct(&self, task: &'static str, items: &[u8]) -> Option<Reply> {
        if self.config.max_tasks_per_child.is_some() || self.config.retry_lost_tasks > 0 {
            return None;
        }
        {
            let state = lock(&self.state);
            if state.closed
                || self.is_terminating()
                || !state.queue.is_empty()
                || state.available == 0
            {
                return None;
            }
        }
        for link in &self.links {
            let Ok(mut guard) = link.try_lock() else {
                continue; // busy with its driver, or another direct call
            };
            let Some(conn) = guard.as_mut() else {
                continue; // being replaced: the driver starts a new worker with its next batch
            };
            let request = Request {
                task,
                first_index: 0,
                count: 1,
                items,
            };
            let pid = conn.pid;
            let outcome = match conn.exchange(self, &request) {
                Ok(outcome) => outcome,
                Err(failure) => {
                    let exit = conn.reap(self);
                    *guard = None;
                    Err(failure_error(self, task, 0, pid, exit, failure))
                }
            };
            return Some(Reply {
                first_index: 0,
                count: 1,
                pid,
                outcome,
            });
        }
        None
    }

    /// Puts a batch whose worker died back at the head of the queue.
    fn requeue(&self, batch: Batch) {
        let mut state = lock(&self.state);
        if self.is_terminating() {
            drop(state);
            batch.complete(0, Err(Error::PoolClosed));
            return;
        }
        state.queue.push_front(batch);
        drop(state);
        self.work.notify_one();
    }

    /// The next batch if one is queued now and `wanted` accepts it, without waiting.
    fn try_next(&self, wanted: impl Fn(&Batch) -> bool) -> Option<Batch> {
        let mut state = lock(&self.state);
        let mut cancelled = Vec::new(); // dropped after the lock is released
        if self.is_terminating() {
            return None;
        }
        // Work that a driver with nothing in flight could start is not sent ahead.
        while state.queue.len() > state.available {
            if !state.queue.front().is_some_and(&wanted) {
                break;
            }
            let Some(batch) = state.queue.pop_front() else {
                break;
            };
            if !batch.job.is_cancelled() {
                drop(state);
                drop(cancelled);
                return Some(batch);
            }
            cancelled.push(batch);
        }
        None
    }

    /// The next batch to run; `None` when the driver should stop.
    fn next(&self) -> Option<Batch> {
        let mut state = lock(&self.state);
        let mut cancelled = Vec::new(); // dropped after the lock is released
        loop {
            if self.is_terminating() {
                return None;
            }
            while let Some(batch) = state.queue.pop_front() {
                if !batch.job.is_cancelled() {
                    drop(state);
                    drop(cancelled);
                    return Some(batch);
                }
                cancelled.push(batch);
            }
            if state.closed {
                return None;
            }
            state = self
                .work
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    pub(crate) fn is_terminating(&self) -> bool {
        self.terminating.load(Ordering::SeqCst)
    }

    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// No new work; drivers finish the queue, then stop their workers.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.work.notify_all();
    }

    /// No new work, queued work dropped (its callers get an error), workers killed.
    pub(crate) fn terminate(&self) {
        self.terminating.store(true, Ordering::SeqCst);
        let dropped = {
            let mut state = lock(&self.state);
            state.closed = true;
            std::mem::take(&mut state.queue)
        };
        drop(dropped);
        self.work.notify_all();
        for child in &self.children {
            if let Some(child) = lock(child).as_mut() {
                let _ = child.kill();
            }
        }
    }

    /// The process ids of the current workers.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children
            .iter()
            .filter_map(|c| lock(c).as_ref().map(Child::id))
            .collect()
    }

    /// A driver could not get a worker: if it was the last one, fail what is queued.
    fn driver_lost(&self, why: Error) {
        let dropped = {
            let mut state = lock(&self.state);
            state.live = state.live.saturating_sub(1);
            let dropped = if state.live == 0 {
                std::mem::take(&mut state.queue)
            } else {
                VecDeque::new()
            };
            state.fatal = Some(why.duplicate());
            dropped
        };
        for batch in dropped {
            batch.complete(0, Err(why.duplicate()));
        }
    }
}

/// How a link to a worker failed.
#[derive(Debug)]
enum LinkFailure {
    /// The worker went away (end of stream, broken pipe).
    Closed,
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

/// One chunk of work as it goes on the wire.
struct Request<'a> {
    task: &'static str,
    first_index: usize,
    count: u32,
    items: &'a [u8],
}

/// One live worker process and the link to it.
#[derive(Debug)]
struct Connection {
    link: Link,
    pid: u32,
    slot: usize,
    /// Items run by this worker, for `max_tasks_per_child`.
    items_done: usize,
    /// Items sent to this worker (run or in flight).
    items_sent: usize,
    header: Vec<u8>,
}

impl Connection {
    /// Starts a worker for driver `slot`, completes the handshake and runs the
    /// initializer.
    fn start(shared: &Shared, slot: usize) -> Result<Connection, Error> {
        let config = &shared.config;
        let mut command = Command::new("/proc/self/exe");
        let mut args = std::env::args_os();
        if let Some(arg0) = args.next() {
            std::os::unix::process::CommandExt::arg0(&mut command, arg0);
        }
        command.args(args);
        let marker = Marker {
            transport: config.transport.name().to_owned(),
            parent: std::process::id(),
            max_frame: config.link.max_frame,
            secret: config.secret,
        };
        command
            .env(MARKER_ENV, marker.encode())
            .stdin(Stdio::null());
        sys::prepare_worker(&mut command, rustix::process::getpid(), config.memory_limit);

        let (child, link) = config.transport.spawn(command, config.link)?;
        let pid = child.id();
        *lock(&shared.children[slot]) = Some(child);
        let mut conn = Connection {
            link,
            pid,
            slot,
            items_done: 0,
            items_sent: 0,
            header: Vec::with_capacity(128),
        };
        if shared.is_terminating() {
            conn.reap(shared);
            return Err(Error::PoolClosed);
        }
        let ready = conn
            .handshake(config.startup_timeout, config.secret)
            .and_then(|()| conn.initialize(shared));
        match ready {
            Ok(()) => Ok(conn),
            Err(failure) => {
                let exit = conn.reap(shared);
                Err(match failure {
                    LinkFailure::Closed => Error::Startup(format!(
                        "worker {pid} {exit} before the handshake: make procpool::init() the first \
                         line of main (or use #[procpool::main] / procpool::test_support!())"
                    )),
                    LinkFailure::TimedOut { .. } => Error::Timeout {
                        task: config.initializer.as_ref().map(|i| i.task.to_owned()),
                        index: None,
                        pid: Some(pid),
                        after: config.task_timeout.unwrap_or(config.startup_timeout),
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
            .recv(&mut frame, Some(Instant::now() + timeout))?
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
    fn initialize(&mut self, shared: &Shared) -> Result<(), LinkFailure> {
        let Some(init) = &shared.config.initializer else {
            return Ok(());
        };
        let request = Request {
            task: init.task,
            first_index: 0,
            count: 1,
            items: &init.payload,
        };
        let frame = self
            .exchange(shared, &request)?
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

    /// Sends one request and waits for its answer. `Ok(Err(..))` is a batch the
    /// worker refused (it lives on).
    fn exchange(
        &mut self,
        shared: &Shared,
        request: &Request<'_>,
    ) -> Result<Result<ResultFrame, Error>, LinkFailure> {
        let id = self.send(shared, request)?;
        self.receive(shared, id, request.count)
    }

    /// Writes one batch to the worker; returns its id.
    fn send(&mut self, shared: &Shared, request: &Request<'_>) -> Result<u64, LinkFailure> {
        let id = shared.next_batch.fetch_add(1, Ordering::Relaxed);
        let msg = ToWorker::Batch {
            id,
            task: request.task,
            first_index: request.first_index as u64,
            count: request.count,
            progress: shared.config.task_timeout.is_some() && request.count > 1,
        };
        protocol::encode_header(&msg, &mut self.header)?;
        self.link.sender.send(&[&self.header, request.items])?;
        self.items_sent += request.count as usize;
        Ok(id)
    }

    /// Waits for the answer to batch `id` of `count` items, timing each item if the
    /// pool has a task time limit.
    fn receive(
        &mut self,
        shared: &Shared,
        id: u64,
        count: u32,
    ) -> Result<Result<ResultFrame, Error>, LinkFailure> {
        let timeout = shared.config.task_timeout;
        let mut done = 0;
        loop {
            let mut frame = Vec::new();
            let deadline = timeout.map(|t| Instant::now() + t);
            match self.link.receiver.recv(&mut frame, deadline)? {
                Received::Frame => {}
                Received::Closed => return Err(LinkFailure::Closed),
                Received::TimedOut => return Err(LinkFailure::TimedOut { done }),
            }
            let (msg, rest) = protocol::decode_header::<FromWorker<'_>>(&frame)?;
            let offset = frame.len() - rest.len();
            match msg {
                FromWorker::Progress { id: got, done: now } if got == id && now < count => {
                    done = now;
                }
                FromWorker::Done { id: got, count: n } if got == id && n == count => {
                    self.items_done += count as usize;
                    return Ok(Ok(ResultFrame { frame, offset }));
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
    fn shutdown(mut self, shared: &Shared) {
        if !shared.is_terminating()
            && protocol::encode_header(&ToWorker::Shutdown, &mut self.header).is_ok()
            && self.link.sender.send(&[&self.header]).is_ok()
        {
            if let Some(mut child) = lock(&shared.children[self.slot]).take() {
                let _ = child.wait();
            }
            return;
        }
        self.reap(shared);
    }

    /// Makes sure the worker is gone and returns how it ended. Unless the pool is
    /// terminating, a worker that is already exiting gets up to 100 ms to finish, so
    /// its own exit status (not our SIGKILL) is reported.
    fn reap(&mut self, shared: &Shared) -> WorkerExit {
        let Some(mut child) = lock(&shared.children[self.slot]).take() else {
            return WorkerExit::Unknown;
        };
        let mut pause = Duration::from_micros(50);
        let mut waited = Duration::ZERO;
        while !shared.is_terminating() && waited < Duration::from_millis(100) {
            match child.try_wait() {
                Ok(Some(status)) => return status.into(),
                Ok(None) => {
                    std::thread::sleep(pause);
                    waited += pause;
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
                Err(_) => break,
            }
        }
        let _ = child.kill();
        child.wait().map_or(WorkerExit::Unknown, WorkerExit::from)
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

/// Batches a driver keeps in flight on one worker, so the worker never waits for
/// the pool between small batches.
const PIPELINE_DEPTH: usize = 4;

/// A worker that finished its last batch faster than this gets the next batches of
/// the same task sent ahead.
const SEND_AHEAD_BELOW: Duration = Duration::from_micros(500);

/// Only frames up to this size are sent ahead: everything in flight must fit in the
/// link's kernel buffer (64 KiB for a pipe), or pool and worker could both block
/// writing to each other.
const PIPELINE_MAX_FRAME: usize = 12 * 1024;

/// The body of driver thread `slot`. Reports the first worker's start-up through
/// `started`, then serves the queue until the pool closes.
pub(crate) fn drive(shared: Arc<Shared>, slot: usize, started: Sender<Result<u32, Error>>) {
    match Connection::start(&shared, slot) {
        Ok(conn) => {
            let _ = started.send(Ok(conn.pid));
            *lock(&shared.links[slot]) = Some(conn);
        }
        Err(e) => {
            let _ = started.send(Err(e.duplicate()));
            shared.set_occupied(&mut false, true);
            shared.driver_lost(e);
            return;
        }
    }
    drop(started);
    serve(&shared, slot);
    if let Some(conn) = lock(&shared.links[slot]).take() {
        conn.shutdown(&shared);
    }
}

/// The connection behind a held link, starting a new worker if the last one was
/// lost by a direct call.
fn connection<'a>(
    shared: &Shared,
    slot: usize,
    link: &'a mut MutexGuard<'_, Option<Connection>>,
) -> Result<&'a mut Connection, Error> {
    if link.is_none() {
        **link = Some(Connection::start(shared, slot)?);
    }
    link.as_mut().ok_or(Error::PoolClosed)
}

/// The driver's loop: batches from the queue to the worker of `slot` and back.
fn serve(shared: &Shared, slot: usize) {
    // Time limits are measured per batch: no sending ahead then.
    let depth = if shared.config.task_timeout.is_some() {
        1
    } else {
        PIPELINE_DEPTH
    };
    let max_items = shared.config.max_tasks_per_child.unwrap_or(usize::MAX);
    let mut in_flight: VecDeque<(Batch, u64)> = VecDeque::with_capacity(depth);
    let mut occupied = false;
    // Batches are sent ahead only while they are quick: for long tasks the round
    // trip is negligible, and a batch queued behind a long one on this worker could
    // have run at once on another.
    let mut quick: Option<&'static str> = None; // the task whose last batch was quick
    let mut busy_since = Instant::now();
    // Held while work is in flight; released while waiting for work.
    let mut link: Option<MutexGuard<'_, Option<Connection>>> = None;
    loop {
        let mut failure = None;
        while in_flight.len() < depth && failure.is_none() {
            let next = if in_flight.is_empty() {
                link = None;
                shared.next()
            } else {
                let items_sent = link
                    .as_ref()
                    .and_then(|l| l.as_ref())
                    .map_or(usize::MAX, |c| c.items_sent);
                match quick.filter(|_| items_sent < max_items) {
                    Some(task) => {
                        shared.try_next(|b| b.task == task && b.range.len() <= PIPELINE_MAX_FRAME)
                    }
                    None => None,
                }
            };
            let Some(batch) = next else { break };
            if in_flight.is_empty() {
                shared.set_occupied(&mut occupied, true);
                busy_since = Instant::now();
            }
            let held = link.get_or_insert_with(|| lock(&shared.links[slot]));
            let conn = match connection(shared, slot, held) {
                Ok(conn) => conn,
                Err(e) => {
                    shared.requeue(batch);
                    shared.set_occupied(&mut occupied, true);
                    shared.driver_lost(e);
                    return;
                }
            };
            let request = Request {
                task: batch.task,
                first_index: batch.first_index,
                count: batch.count,
                items: &batch.payload[batch.range.clone()],
            };
            match conn.send(shared, &request) {
                Ok(id) => in_flight.push_back((batch, id)),
                Err(f) => {
                    in_flight.push_back((batch, 0));
                    failure = Some(f);
                }
            }
        }
        let Some((batch, id)) = in_flight.pop_front() else {
            break; // nothing in flight and nothing queued: the pool is closing
        };
        // Work is in flight, so the link is held and has a connection.
        let Some(conn) = link.as_mut().and_then(|l| l.as_mut()) else {
            batch.complete(0, Err(Error::protocol("driver lost its connection")));
            continue;
        };
        if failure.is_none() {
            match conn.receive(shared, id, batch.count) {
                Ok(outcome) => {
                    let now = Instant::now();
                    quick = (now - busy_since < SEND_AHEAD_BELOW).then_some(batch.task);
                    busy_since = now;
                    batch.complete(conn.pid, outcome);
                    if in_flight.is_empty() {
                        shared.set_occupied(&mut occupied, false);
                    }
                }
                Err(f) => {
                    in_flight.push_front((batch, id));
                    failure = Some(f);
                }
            }
        } else {
            in_flight.push_front((batch, id));
        }
        if let Some(failure) = failure {
            // The worker is gone: every batch it held fails or runs again.
            let exit = conn.reap(shared);
            let pid = conn.pid;
            let mut failure = Some(failure);
            for (batch, _) in in_flight.drain(..) {
                let cause = failure.take().unwrap_or(LinkFailure::Closed);
                lost(shared, batch, pid, exit, cause);
            }
            quick = None;
            shared.set_occupied(&mut occupied, false);
            if let Some(held) = link.as_mut() {
                **held = None;
            }
            if shared.is_terminating() {
                shared.set_occupied(&mut occupied, true);
                return;
            }
            // Replace the worker now rather than with the next batch.
            if let Some(held) = link.as_mut()
                && let Err(e) = connection(shared, slot, held)
            {
                shared.set_occupied(&mut occupied, true);
                shared.driver_lost(e);
                return;
            }
            continue;
        }
        if shared.is_terminating() {
            break;
        }
        if conn.items_done >= max_items
            && in_flight.is_empty()
            && let Some(held) = link.as_mut()
        {
            if let Some(old) = held.take() {
                old.shutdown(shared);
            }
            if let Err(e) = connection(shared, slot, held) {
                shared.set_occupied(&mut occupied, true);
                shared.driver_lost(e);
                return;
            }
        }
    }
    shared.set_occupied(&mut occupied, true);
}

/// A batch whose worker failed: run it again if it was lost with a dead worker and
/// may be retried, else complete it with the error.
fn lost(shared: &Shared, mut batch: Batch, pid: u32, exit: WorkerExit, failure: LinkFailure) {
    let retry = matches!(failure, LinkFailure::Closed)
        && batch.retries < shared.config.retry_lost_tasks
        && !shared.is_terminating();
    if retry {
        batch.retries += 1;
        shared.requeue(batch);
    } else {
        let error = failure_error(shared, batch.task, batch.first_index, pid, exit, failure);
        batch.complete(pid, Err(error));
    }
}

/// The error a chunk of `task` starting at `first_index` gets when its worker failed.
fn failure_error(
    shared: &Shared,
    task: &str,
    first_index: usize,
    pid: u32,
    exit: WorkerExit,
    failure: LinkFailure,
) -> Error {
    if shared.is_terminating() {
        return Error::PoolClosed;
    }
    match failure {
        LinkFailure::Closed => Error::WorkerDied {
            task: task.to_owned(),
            pid,
            exit,
            index: first_index,
        },
        LinkFailure::TimedOut { done } => Error::Timeout {
            task: Some(task.to_owned()),
            index: Some(first_index + done as usize),
            pid: Some(pid),
            after: shared.config.task_timeout.unwrap_or_default(),
        },
        LinkFailure::Broken(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Hello;

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
