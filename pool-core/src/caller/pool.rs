//! The [`Pool`] handle and its [`PoolBuilder`].
//!
//! A pool is an `Arc` of the engine's shared state plus the handles of its driver
//! threads. Every call goes the same way: look the task up in the registry by the
//! type of the function item, check the arguments, encode the items into batches
//! (for `map`, a chunk or a [`PIECE_BYTES`] piece of a big one; for `imap`, a
//! chunk) and queue them with a sink that gathers the replies — a `Collector` for
//! `map`, `starmap` and `apply`, the stream's decoder for `imap`. `apply` may skip
//! the queue (the engine's direct path). Nothing here talks to a worker.

use std::borrow::Borrow;

use super::inputs::{Inputs, StreamInputs};
use std::fmt;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encoded bytes after which a chunk's items go out as one piece and the rest as
/// further pieces.
///
/// So that a big chunk does not wait to be encoded whole: the workers start on its
/// first piece while the rest is encoded. An item is never split, so a piece may
/// pass this by up to one item.
const PIECE_BYTES: usize = 128 * 1024;

use super::encode::{check_chunksize, default_chunksize, push_argument};
use crate::error::chunk_too_large;

use crate::caller::imap::{Fill, Imap, Source};
use crate::caller::result::{AsyncResult, Callbacks, Collector, Progress, decode_one};
use crate::engine::{self, Batch, Call, Config, Engine, HEADER_ROOM, Initializer, ReplySink, lock};
use crate::error::Error;
use crate::process;
use crate::task::Task;
use crate::transport::{IntoTransport, LinkConfig, Transport};
use crate::wire::protocol::DEFAULT_MAX_FRAME;
use crate::wire::registry::{self, TaskEntry};

/// A pool of worker processes running `#[pool_task]` functions.
///
/// Workers are the current program, re-executed; `procpool::init()` at the top of
/// `main` is where they start serving. Every method takes `&self`: share a pool
/// between threads with `Arc` and submit from all of them at once.
///
/// Dropping the pool terminates and reaps its workers: no orphan, no zombie.
///
/// ```rust,ignore
/// #[pool_task]
/// fn square(n: u64) -> u64 { n * n }
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init();
///     let pool = Pool::new(4)?;
///     assert_eq!(pool.map(square, 1..=3u64)?, [1, 4, 9]);
///     assert_eq!(pool.apply(square, (7,))?, 49);
///     for r in pool.imap(square, 0..u64::MAX)?.take(5) { println!("{}", r?); }
///     Ok(())
/// }
/// ```
pub struct Pool {
    /// The engine's state, shared with the drivers and with the feeder thread of
    /// each `imap`.
    shared: Arc<Engine>,
    /// The driver threads, joined once by whoever closes or drops the pool first.
    drivers: Mutex<Drivers>,
    /// Signalled when the drivers have been joined.
    joined: Condvar,
}

/// The pool's driver threads, and who joins them.
#[derive(Default)]
struct Drivers {
    /// One per worker slot; taken by the thread that joins them.
    handles: Vec<JoinHandle<()>>,
    /// The drivers' thread ids, kept after their handles are taken.
    ids: Vec<ThreadId>,
    /// A thread has taken the handles and is joining them.
    joining: bool,
    /// Every driver has been joined.
    joined: bool,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.shared.config.processes)
            .field("transport", &self.shared.config.transport.name())
            .field("pids", &self.shared.pids())
            .finish()
    }
}

/// Configures and starts a [`Pool`]; from [`Pool::builder`].
///
/// The setters never fail: every value is checked by [`build`](Self::build), which
/// reports the first bad one.
///
/// ```rust,ignore
/// let pool = Pool::builder()
///     .processes(8)
///     .initializer(load_model, ("model.bin".to_string(),))
///     .task_timeout(Duration::from_secs(30))
///     .retry_lost_tasks(2)
///     .max_tasks_per_child(10_000)
///     .build()?;
/// ```
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    /// `None`: the machine's available parallelism.
    processes: Option<usize>,
    /// `None`: the first transport `init()` recorded.
    transport: Option<&'static dyn Transport>,
    /// The frame cap in bytes, both ways.
    max_frame: usize,
    /// How long each new worker may take to answer the handshake.
    startup_timeout: Duration,
    /// Items after which a worker is replaced.
    max_tasks_per_child: Option<usize>,
    /// Resident bytes after which a worker is replaced.
    max_memory_per_child: Option<u64>,
    /// The initializer, encoded when it is set; an error (an unregistered task,
    /// arguments that do not serialize) is kept for `build` to return.
    initializer: Option<Result<Initializer, Error>>,
    /// The limit on one item's run.
    task_timeout: Option<Duration>,
    /// Runs of a chunk lost with its worker that are tried again.
    retry_lost_tasks: u32,
    /// Each worker's `RLIMIT_AS`.
    memory_limit: Option<u64>,
}

impl Default for PoolBuilder {
    /// The defaults each setter names: one worker per CPU, the default transport, a
    /// 1 GiB frame cap, 20 s to start, no recycling, no limits, no retries.
    fn default() -> Self {
        PoolBuilder {
            processes: None,
            transport: None,
            max_frame: DEFAULT_MAX_FRAME,
            startup_timeout: Duration::from_secs(20),
            max_tasks_per_child: None,
            max_memory_per_child: None,
            initializer: None,
            task_timeout: None,
            retry_lost_tasks: 0,
            memory_limit: None,
        }
    }
}

impl PoolBuilder {
    /// Number of worker processes. Default: `std::thread::available_parallelism()`.
    /// Zero is refused by [`build`](Self::build).
    pub fn processes(mut self, processes: usize) -> Self {
        self.processes = Some(processes);
        self
    }

    /// Which transport carries the frames; default: the first compiled-in one (pipe).
    ///
    /// It must be one `init()` recorded (compiled into this program): the worker
    /// looks it up by name in its own list.
    pub fn transport(mut self, transport: impl IntoTransport) -> Self {
        self.transport = Some(transport.into_transport());
        self
    }

    /// Largest frame (one chunk of arguments or results) in bytes; default 1 GiB.
    /// A chunk that does not fit is refused with [`Error::InvalidArgument`] (arguments)
    /// or [`Error::Protocol`] (results), never truncated.
    ///
    /// [`build`](Self::build) refuses a cap under 2048 bytes (room for the headers)
    /// or over `u32::MAX`. A `map` chunk is sent in pieces of about 128 KiB; the cap
    /// matters for large items, for `imap` chunks, which go whole, and for results.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// How long a new worker may take to answer the handshake; default 20 s.
    ///
    /// Also the initializer's time limit when there is no
    /// [`task_timeout`](Self::task_timeout). Zero is refused by [`build`](Self::build).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Replace each worker by a fresh process after it has run `items` items (Python's
    /// `maxtasksperchild`), to bound leaks in long-running pools. The items sent to a
    /// worker together (a chunk, or a 128 KiB piece of a bigger one) are never split,
    /// so a worker may run a few more items than this before it is replaced.
    /// Zero is refused by [`build`](Self::build).
    pub fn max_tasks_per_child(mut self, items: usize) -> Self {
        self.max_tasks_per_child = Some(items);
        self
    }

    /// Replaces a worker by a fresh process, without any error, once its resident
    /// memory has passed `bytes` after a chunk: a soft limit for tasks that leak or
    /// fragment memory (loky recycles its workers above 300 MB), beside the hard
    /// [`memory_limit`](Self::memory_limit). Read from `/proc/<pid>/statm` after each
    /// reply (one read system call); while a worker is over, nothing more is sent
    /// ahead to it, and it is replaced once its last chunk is back. Zero is refused
    /// by [`build`](Self::build).
    pub fn max_memory_per_child(mut self, bytes: u64) -> Self {
        self.max_memory_per_child = Some(bytes);
        self
    }

    /// Runs the registered task `task(args...)` once in every new worker before it
    /// takes work — to open a connection, load a model, set a per-process static.
    ///
    /// If it fails (panics), that worker is not used and the failure is reported as
    /// [`Error::InitializerFailed`] by `build` for the first workers. If a
    /// replacement worker's initializer fails later, that driver gives up (the pool
    /// runs on with fewer workers); once no worker is left, calls fail with that
    /// error. The pool never loops respawning workers whose initializer fails.
    ///
    /// The initializer is timed, by [`task_timeout`](Self::task_timeout) or else
    /// [`startup_timeout`](Self::startup_timeout): a worker stuck in it is killed
    /// and reported as [`Error::Timeout`]. An unregistered task or arguments that do
    /// not serialize are reported by `build`.
    pub fn initializer<F, Args>(mut self, task: F, args: Args) -> Self
    where
        F: Task<Args>,
        Args: Serialize,
    {
        let _ = task;
        let spec = entry_of::<F>().and_then(|entry| {
            let mut payload = Vec::new();
            push_argument(&mut payload, entry, 0, &args)?;
            Ok(Initializer {
                task: entry.name(),
                payload,
                kept: crate::handoff::take_kept(),
            })
        });
        self.initializer = Some(spec);
        self
    }

    /// Kills a worker whose task runs longer than `limit`; that item fails with
    /// [`Error::Timeout`] (the other items of its chunk fail with it), and a fresh
    /// worker takes over. Zero is refused by [`build`](Self::build).
    ///
    /// Each item is timed on its own (the worker reports each item's start), so a
    /// chunk may take `chunksize` times the limit. With a limit, batches are neither
    /// sent ahead nor grouped: quick tasks pay a round trip per chunk.
    pub fn task_timeout(mut self, limit: Duration) -> Self {
        self.task_timeout = Some(limit);
        self
    }

    /// Runs a chunk again, up to `times` times, when its worker dies while running it
    /// (killed, crashed, out of memory). Delivery becomes *at-least-once*: an item
    /// may have run, with its side effects, in the worker that died. Results are
    /// still returned exactly once, in order. Default 0: a lost chunk is an
    /// [`Error::WorkerDied`]. Time-outs are never retried.
    pub fn retry_lost_tasks(mut self, times: u32) -> Self {
        self.retry_lost_tasks = times;
        self
    }

    /// Limits each worker's address space to `bytes` (`RLIMIT_AS`), so a runaway task
    /// fails — its allocation aborts the worker, reported as [`Error::WorkerDied`] —
    /// instead of taking the machine down. Count generously: the limit covers the
    /// program's code, thread stacks and allocator reserves too.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Starts the workers and waits until each has answered the handshake.
    ///
    /// Workers start in parallel, one driver thread each, and run the initializer
    /// before they count as started. If any fails, the pool is dropped (what did
    /// start is terminated and reaped) and the first failure is returned.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidArgument`] for a bad setting (zero processes, a zero limit,
    ///   a frame cap out of range), and when no transport is compiled in. (A task
    ///   may build a pool: its workers are the task's worker's children.)
    /// - [`Error::NotInitialized`] if `procpool::init()` has not run.
    /// - The initializer's [`Error::NotRegistered`] or [`Error::Serialization`].
    /// - The first worker's failure: [`Error::Startup`] (it exited before the
    ///   handshake, or did not answer in time), [`Error::Protocol`] (a handshake
    ///   that does not match), [`Error::InitializerFailed`], [`Error::Timeout`] (an
    ///   initializer over its limit), [`Error::Io`] (it could not be spawned).
    /// - [`Error::Io`] if the secret cannot be drawn or a driver thread cannot start.
    /// - [`Error::Startup`] if some worker has not answered within
    ///   `startup_timeout` plus 5 s.
    pub fn build(self) -> Result<Pool, Error> {
        let config = self.config()?;
        let (processes, startup_timeout) = (config.processes, config.link.startup_timeout);
        let shared = Arc::new(Engine::new(config));
        let pool = Pool {
            shared: Arc::clone(&shared),
            drivers: Mutex::new(Drivers::default()),
            joined: Condvar::new(),
        };
        let (started_tx, started_rx) = mpsc::channel();
        for slot in 0..processes {
            let shared = Arc::clone(&shared);
            let started = started_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("procpool-driver-{slot}"))
                .spawn(move || engine::drive(shared, slot, started))?;
            let mut drivers = lock(&pool.drivers);
            drivers.ids.push(handle.thread().id());
            drivers.handles.push(handle);
        }
        drop(started_tx);
        let mut first_error = None;
        for _ in 0..processes {
            match started_rx.recv_timeout(startup_timeout + Duration::from_secs(5)) {
                Ok(Ok(_pid)) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(Error::Startup(format!(
                        "workers did not start within {startup_timeout:?}"
                    )));
                    break;
                }
            }
        }
        match first_error {
            None => Ok(pool),
            Some(e) => Err(e), // dropping `pool` terminates and reaps what did start
        }
    }

    /// The checked configuration of a pool built from this builder (also what a
    /// `Process` is launched with, from a builder of one process).
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build), but for the workers' own failures.
    pub(crate) fn config(self) -> Result<Config, Error> {
        let processes = match self.processes {
            Some(0) => {
                return Err(Error::InvalidArgument(
                    "a pool needs at least one process, got 0".into(),
                ));
            }
            Some(n) => n,
            // Locally the machine's parallelism; on rank 0 of a cluster job, the
            // agents' parallelism summed.
            None => crate::cluster::remote::cluster().map_or_else(
                || std::thread::available_parallelism().map_or(1, |n| n.get()),
                |c| c.parallelism(),
            ),
        };
        if self.max_frame < 2 * HEADER_ROOM || self.max_frame > u32::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "max_frame_size must be between {} and {} bytes, got {}",
                2 * HEADER_ROOM,
                u32::MAX,
                self.max_frame
            )));
        }
        if self.max_memory_per_child == Some(0) {
            return Err(Error::InvalidArgument(
                "max_memory_per_child must be at least 1 byte, got 0".into(),
            ));
        }
        if self.max_tasks_per_child == Some(0) {
            return Err(Error::InvalidArgument(
                "max_tasks_per_child must be at least 1, got 0".into(),
            ));
        }
        if self.task_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::InvalidArgument(
                "task_timeout must be more than zero".into(),
            ));
        }
        let initializer = match self.initializer {
            None => None,
            Some(Ok(init)) => Some(init),
            Some(Err(e)) => return Err(e),
        };
        if self.startup_timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "startup_timeout must be more than zero".into(),
            ));
        }
        let transports = process::transports()?;
        let transport = match self.transport {
            Some(t) => t,
            None => *transports
                .first()
                .ok_or_else(|| Error::InvalidArgument("no transport is compiled in".into()))?,
        };
        let link = LinkConfig {
            max_frame: self.max_frame,
            startup_timeout: self.startup_timeout,
        };
        let mut config = Config::local(transport, link, crate::transport::random_secret()?);
        // On rank 0 of a cluster job, workers start on the agents.
        if crate::cluster::remote::cluster().is_some() {
            config.launch = Arc::new(crate::cluster::remote::RemoteLaunch);
        }
        Ok(Config {
            processes,
            max_tasks_per_child: self.max_tasks_per_child,
            max_memory_per_child: self.max_memory_per_child,
            initializer,
            task_timeout: self.task_timeout,
            retry_lost_tasks: self.retry_lost_tasks,
            batch_drivers: crate::sys::builds_batch_drivers(),
            memory_limit: self.memory_limit,
            ..config
        })
    }
}

impl Pool {
    /// A pool of `processes` workers with default settings.
    ///
    /// `Pool::new(0)` is an [`Error::InvalidArgument`].
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build`].
    pub fn new(processes: usize) -> Result<Pool, Error> {
        Pool::builder().processes(processes).build()
    }

    /// A builder for a pool with non-default settings.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// Number of worker processes.
    pub fn processes(&self) -> usize {
        self.shared.config.processes
    }

    /// Process ids of the current workers. A worker that is being replaced (after
    /// it died) is missing from the list until its successor has started.
    pub fn pids(&self) -> Vec<u32> {
        self.shared.pids()
    }

    /// Applies a one-parameter task to every item, in parallel; results in input order.
    ///
    /// Items are cut into chunks of `ceil(len / (4 * processes))`, as Python does; a
    /// chunk whose encoded arguments pass 128 KiB goes to the workers in pieces of
    /// that size (the first piece is on its way while the rest is encoded).
    /// `items` may be any `IntoIterator` whose items are the parameter's type or a
    /// reference to it. The first failing item (in completion order) ends the call
    /// with its error.
    ///
    /// ```rust,ignore
    /// let squares = pool.map(square, [1u64, 2, 3])?;   // items by value
    /// let lengths = pool.map(char_count, &names)?;     // or by reference: &String
    /// ```
    ///
    /// # Errors
    ///
    /// - Before anything runs: [`Error::NotRegistered`]; [`Error::Serialization`]
    ///   for an argument that does not serialize; [`Error::InvalidArgument`] for a
    ///   piece of encoded arguments over the frame cap, an input whose exact
    ///   `size_hint` was wrong, or a call from a callback of this pool;
    ///   [`Error::PoolClosed`], or the error that made the pool lose its last worker.
    /// - From the workers, the first failed item's error: [`Error::TaskPanicked`],
    ///   [`Error::WorkerDied`], [`Error::Timeout`], [`Error::Serialization`],
    ///   [`Error::Protocol`]; [`Error::PoolClosed`] if the pool is terminated
    ///   meanwhile. The chunks still queued are then cancelled.
    pub fn map<F, A, I>(&self, task: F, items: I) -> Result<Vec<F::Output>, Error>
    where
        F: Task<(A,)>,
        A: Serialize,
        I: Inputs<A>,
    {
        self.shared.may_block_here()?;
        self.map_async_with(task, items, None, Callbacks::new())?
            .get()
    }

    /// [`map`](Self::map) with an explicit chunk size (items per message to a worker).
    /// A chunk size of zero is an [`Error::InvalidArgument`].
    ///
    /// Larger chunks cost fewer messages; smaller ones balance uneven items better
    /// and lose less when a worker dies (a lost chunk fails, or reruns, whole).
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    pub fn map_chunked<F, A, I>(
        &self,
        task: F,
        items: I,
        chunksize: usize,
    ) -> Result<Vec<F::Output>, Error>
    where
        F: Task<(A,)>,
        A: Serialize,
        I: Inputs<A>,
    {
        self.shared.may_block_here()?;
        self.map_async_with(task, items, Some(chunksize), Callbacks::new())?
            .get()
    }

    /// [`map`](Self::map) that calls `on_progress` (on a pool thread) each time a chunk
    /// finishes: draw your own progress bar. With the `progress` feature of the
    /// `procpool` facade, `map_progress` draws one for you.
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    pub fn map_with_progress<F, A, I>(
        &self,
        task: F,
        items: I,
        on_progress: impl FnMut(Progress) + Send + 'static,
    ) -> Result<Vec<F::Output>, Error>
    where
        F: Task<(A,)>,
        A: Serialize,
        I: Inputs<A>,
    {
        self.shared.may_block_here()?;
        self.map_async_with(task, items, None, Callbacks::new().on_progress(on_progress))?
            .get()
    }

    /// Starts a [`map`](Self::map) and returns at once. The input is read and encoded
    /// before this returns; results arrive in the [`AsyncResult`].
    ///
    /// Unlike `map`, it may be called from a callback of this pool (it does not
    /// wait); waiting for its result there is what is refused.
    ///
    /// # Errors
    ///
    /// Those of [`map`](Self::map) that come before anything runs (but for the
    /// refusal in a callback); the workers' come through the [`AsyncResult`].
    pub fn map_async<F, A, I>(
        &self,
        task: F,
        items: I,
    ) -> Result<AsyncResult<Vec<F::Output>>, Error>
    where
        F: Task<(A,)>,
        A: Serialize,
        I: Inputs<A>,
    {
        self.map_async_with(task, items, None, Callbacks::new())
    }

    /// [`map_async`](Self::map_async) with an optional chunk size and [`Callbacks`]
    /// (Python's `callback` and `error_callback`, and a progress hook).
    ///
    /// If this returns an error, the callbacks never run (chunks already queued are
    /// cancelled).
    ///
    /// # Errors
    ///
    /// As [`map_async`](Self::map_async), and [`Error::InvalidArgument`] for a
    /// chunk size of zero.
    pub fn map_async_with<F, A, I>(
        &self,
        task: F,
        items: I,
        chunksize: Option<usize>,
        callbacks: Callbacks<Vec<F::Output>>,
    ) -> Result<AsyncResult<Vec<F::Output>>, Error>
    where
        F: Task<(A,)>,
        A: Serialize,
        I: Inputs<A>,
    {
        self.submit_all::<F, A, _, F::Output, _>(&task, items, chunksize, Ok, callbacks)
    }

    /// Applies a task to every argument tuple: `starmap(add, [(1, 2), (3, 4)])` is
    /// `[add(1, 2), add(3, 4)]`. Chunking as in [`map`](Self::map).
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    pub fn starmap<F, Args, I>(&self, task: F, items: I) -> Result<Vec<F::Output>, Error>
    where
        F: Task<Args>,
        Args: Serialize,
        I: Inputs<Args>,
    {
        self.shared.may_block_here()?;
        self.starmap_async_with(task, items, None, Callbacks::new())?
            .get()
    }

    /// [`starmap`](Self::starmap) with an explicit chunk size.
    ///
    /// # Errors
    ///
    /// As [`map_chunked`](Self::map_chunked).
    pub fn starmap_chunked<F, Args, I>(
        &self,
        task: F,
        items: I,
        chunksize: usize,
    ) -> Result<Vec<F::Output>, Error>
    where
        F: Task<Args>,
        Args: Serialize,
        I: Inputs<Args>,
    {
        self.shared.may_block_here()?;
        self.starmap_async_with(task, items, Some(chunksize), Callbacks::new())?
            .get()
    }

    /// Starts a [`starmap`](Self::starmap) and returns at once.
    ///
    /// # Errors
    ///
    /// As [`map_async`](Self::map_async).
    pub fn starmap_async<F, Args, I>(
        &self,
        task: F,
        items: I,
    ) -> Result<AsyncResult<Vec<F::Output>>, Error>
    where
        F: Task<Args>,
        Args: Serialize,
        I: Inputs<Args>,
    {
        self.starmap_async_with(task, items, None, Callbacks::new())
    }

    /// [`starmap_async`](Self::starmap_async) with an optional chunk size and [`Callbacks`].
    ///
    /// # Errors
    ///
    /// As [`map_async_with`](Self::map_async_with).
    pub fn starmap_async_with<F, Args, I>(
        &self,
        task: F,
        items: I,
        chunksize: Option<usize>,
        callbacks: Callbacks<Vec<F::Output>>,
    ) -> Result<AsyncResult<Vec<F::Output>>, Error>
    where
        F: Task<Args>,
        Args: Serialize,
        I: Inputs<Args>,
    {
        self.submit_all::<F, Args, _, F::Output, _>(&task, items, chunksize, Ok, callbacks)
    }

    /// Runs a task once in a worker and waits for its result:
    /// `pool.apply(add, (1, 2))`, `pool.apply(square, (7,))`.
    ///
    /// When a worker is idle and nothing is queued, the calling thread talks to it
    /// directly (no hand-off to a pool thread), so a round trip costs little more
    /// than the pipe's. Pools with `max_tasks_per_child`, `max_memory_per_child` or
    /// `retry_lost_tasks` always
    /// go through the queue, where those options are applied.
    ///
    /// On the direct path a worker that turns out to have died while idle costs
    /// nothing: the call goes through the queue instead, to the worker that replaces
    /// it.
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map), for its one item (reported at index 0).
    pub fn apply<F, Args>(&self, task: F, args: Args) -> Result<F::Output, Error>
    where
        F: Task<Args>,
        Args: Serialize,
    {
        let _ = task; // its type is what the registry looks up
        self.shared.may_block_here()?;
        let entry = entry_of::<F>()?;
        let mut payload = Vec::new();
        push_argument(&mut payload, entry, 0, &args)?;
        // Handles in the arguments stay alive here until the call is answered.
        let kept = crate::handoff::take_kept();
        if payload.len() <= self.max_chunk()
            && let Some(reply) = self.shared.run_direct(entry.name(), &payload)
        {
            return decode_one(entry.name(), reply);
        }
        // No idle worker: queue the arguments already encoded.
        let job = Arc::new(Call::of(&self.shared));
        let collector = Collector::new(entry.name(), Arc::clone(&job), 1, single, Callbacks::new());
        let sink: Arc<dyn ReplySink> = collector.clone();
        if let Err(e) = self.send_chunk(entry, &job, &sink, (0, 1), payload, kept) {
            collector.abandon();
            return Err(e);
        }
        AsyncResult::new(collector).get()
    }

    /// Starts an [`apply`](Self::apply) and returns at once.
    ///
    /// Always through the queue: there is no caller waiting to do the direct path's
    /// round trip.
    ///
    /// # Errors
    ///
    /// As [`map_async`](Self::map_async).
    pub fn apply_async<F, Args>(&self, task: F, args: Args) -> Result<AsyncResult<F::Output>, Error>
    where
        F: Task<Args>,
        Args: Serialize,
    {
        self.apply_async_with(task, args, Callbacks::new())
    }

    /// [`apply_async`](Self::apply_async) with [`Callbacks`].
    ///
    /// # Errors
    ///
    /// As [`map_async`](Self::map_async).
    pub fn apply_async_with<F, Args>(
        &self,
        task: F,
        args: Args,
        callbacks: Callbacks<F::Output>,
    ) -> Result<AsyncResult<F::Output>, Error>
    where
        F: Task<Args>,
        Args: Serialize,
    {
        self.submit_all::<F, Args, _, F::Output, _>(
            &task,
            std::iter::once(args),
            Some(1),
            single,
            callbacks,
        )
    }

    /// Lazily applies a one-parameter task to every item; results in input order as
    /// they become available. Chunk size 1, as in Python; see [`Imap`] for memory bounds.
    ///
    /// The input is read on the stream's own thread, hence `Send + 'static`; it may
    /// be endless. Each item's outcome is a `Result` of the stream: a failed item
    /// does not end it.
    ///
    /// # Errors
    ///
    /// [`Error::NotRegistered`], [`Error::PoolClosed`], or [`Error::Io`] if the
    /// feeder thread cannot start. Everything else comes through the stream.
    pub fn imap<F, A, I>(&self, task: F, items: I) -> Result<Imap<F::Output>, Error>
    where
        F: Task<(A,)>,
        A: Serialize + 'static,
        I: StreamInputs<A>,
    {
        self.stream::<F, A, I>(&task, items, 1, true)
    }

    /// [`imap`](Self::imap) with `chunksize` items per message: much faster for tiny tasks.
    ///
    /// A chunk goes out once it is full (or the input ends), and an `imap` chunk is
    /// never cut in pieces: it must fit the frame cap whole.
    ///
    /// # Errors
    ///
    /// As [`imap`](Self::imap), and [`Error::InvalidArgument`] for a chunk size of
    /// zero.
    pub fn imap_chunked<F, A, I>(
        &self,
        task: F,
        items: I,
        chunksize: usize,
    ) -> Result<Imap<F::Output>, Error>
    where
        F: Task<(A,)>,
        A: Serialize + 'static,
        I: StreamInputs<A>,
    {
        self.stream::<F, A, I>(&task, items, chunksize, true)
    }

    /// Like [`imap`](Self::imap), but results come in completion order.
    ///
    /// A slow item then holds back only itself, not the results after it.
    ///
    /// # Errors
    ///
    /// As [`imap`](Self::imap).
    pub fn imap_unordered<F, A, I>(&self, task: F, items: I) -> Result<Imap<F::Output>, Error>
    where
        F: Task<(A,)>,
        A: Serialize + 'static,
        I: StreamInputs<A>,
    {
        self.stream::<F, A, I>(&task, items, 1, false)
    }

    /// [`imap_unordered`](Self::imap_unordered) with an explicit chunk size.
    ///
    /// # Errors
    ///
    /// As [`imap_chunked`](Self::imap_chunked).
    pub fn imap_unordered_chunked<F, A, I>(
        &self,
        task: F,
        items: I,
        chunksize: usize,
    ) -> Result<Imap<F::Output>, Error>
    where
        F: Task<(A,)>,
        A: Serialize + 'static,
        I: StreamInputs<A>,
    {
        self.stream::<F, A, I>(&task, items, chunksize, false)
    }

    /// Stops accepting work. Queued work still runs; then workers exit.
    /// Submitting afterwards is an [`Error::PoolClosed`].
    ///
    /// An `imap` whose input is still being read ends with that error after the
    /// results of the chunks it had queued.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Kills the workers now. Queued and running work ends with
    /// [`Error::PoolClosed`]; every pending result and stream is woken with it.
    pub fn terminate(&self) {
        self.shared.terminate();
    }

    /// Waits until every worker has exited and been reaped. Needs [`close`](Self::close)
    /// or [`terminate`](Self::terminate) first, as in Python (else an
    /// [`Error::InvalidArgument`], not a hang).
    ///
    /// Safe from several threads at once, and from a callback of this pool: the
    /// callback's own driver is not waited for (it ends when the callback returns).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if the pool is neither closed nor terminated.
    pub fn join(&self) -> Result<(), Error> {
        if !self.shared.is_closed() {
            return Err(Error::InvalidArgument(
                "join() needs close() or terminate() first".into(),
            ));
        }
        self.join_drivers();
        Ok(())
    }

    /// Joins the driver threads once, whoever calls first; later and concurrent
    /// callers wait for that. A driver thread (a callback of this pool that joins or
    /// drops it) does not wait for itself: it ends when its callback returns.
    fn join_drivers(&self) {
        let me = std::thread::current().id();
        let handles = {
            let mut drivers = lock(&self.drivers);
            let own = drivers.ids.contains(&me);
            if drivers.joining {
                while !drivers.joined && !own {
                    drivers = self
                        .joined
                        .wait(drivers)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                return;
            }
            drivers.joining = true;
            std::mem::take(&mut drivers.handles)
        };
        for handle in handles {
            if handle.thread().id() != me {
                let _ = handle.join();
            }
        }
        lock(&self.drivers).joined = true;
        self.joined.notify_all();
    }

    /// Encodes and chunks all items, queues them, and returns the pending outcome.
    ///
    /// The common body of `map`, `starmap` and the `_async` calls; `finish` makes the
    /// outcome from the results (`Ok` for a `Vec`, [`single`] for `apply`).
    ///
    /// # Errors
    ///
    /// [`Error::NotRegistered`], a zero chunk size, and whatever
    /// [`submit_streaming`](Self::submit_streaming) returns.
    fn submit_all<F, A, B, T, R>(
        &self,
        _task: &F,
        items: impl IntoIterator<Item = B>,
        chunksize: Option<usize>,
        finish: fn(Vec<T>) -> Result<R, Error>,
        callbacks: Callbacks<R>,
    ) -> Result<AsyncResult<R>, Error>
    where
        F: 'static,
        A: Serialize,
        B: Borrow<A>,
        T: DeserializeOwned + Send + 'static,
        R: Send + 'static,
    {
        let entry = entry_of::<F>()?;
        let chunksize = check_chunksize(chunksize)?;
        let items = items.into_iter();
        let (low, high) = items.size_hint();
        if high == Some(low) {
            return self
                .submit_streaming::<A, B, T, R>(entry, items, low, chunksize, finish, callbacks);
        }
        // The default chunk size needs the length: an input that does not know it is
        // gathered first (its items, not their encoding), then sent like any other.
        let items: Vec<B> = items.collect();
        let total = items.len();
        self.submit_streaming::<A, B, T, R>(
            entry,
            items.into_iter(),
            total,
            chunksize,
            finish,
            callbacks,
        )
    }

    /// Queues one encoded chunk of a call: items `first..first + count` in `buf`,
    /// with what their handles need kept alive (`kept`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `buf` is over the frame cap (checked here, so
    /// that the call fails at once), or what the queue refuses with:
    /// [`Error::PoolClosed`], or why the last driver gave up. The batch is then
    /// dropped silently; the caller abandons the call.
    fn send_chunk(
        &self,
        entry: &'static TaskEntry,
        job: &Arc<Call>,
        sink: &Arc<dyn ReplySink>,
        (first, count): (usize, usize),
        buf: Vec<u8>,
        kept: Vec<crate::handoff::Keep>,
    ) -> Result<(), Error> {
        if buf.len() > self.max_chunk() {
            return Err(chunk_too_large(
                entry.name(),
                first,
                buf.len(),
                self.max_chunk(),
            ));
        }
        let batch = Batch {
            task: entry.name(),
            first_index: first,
            count: count as u32,
            payload: buf,
            job: Arc::clone(job),
            retries: 0,
            restarts: 0,
            solo: false,
            kept,
            sink: Some(Arc::clone(sink)),
        };
        self.shared.submit(std::iter::once(batch))
    }

    /// Largest encoded chunk that fits a frame.
    fn max_chunk(&self) -> usize {
        self.shared.max_chunk()
    }

    /// With the number of items known, each chunk goes to the workers as soon as it
    /// is encoded, so encoding overlaps with the work.
    ///
    /// Each piece's buffer is sized like the piece before it, so a long call does
    /// not grow its buffers by doubling over and over.
    ///
    /// # Errors
    ///
    /// [`Error::PoolClosed`] if the pool is closed; an item's
    /// [`Error::Serialization`]; [`Error::InvalidArgument`] if the input yields fewer
    /// or more items than `total`; [`send_chunk`](Self::send_chunk)'s errors. Any of
    /// them abandons the call: chunks already queued are cancelled, the callbacks
    /// never run.
    fn submit_streaming<A, B, T, R>(
        &self,
        entry: &'static TaskEntry,
        mut items: impl Iterator<Item = B>,
        total: usize,
        chunksize: Option<usize>,
        finish: fn(Vec<T>) -> Result<R, Error>,
        callbacks: Callbacks<R>,
    ) -> Result<AsyncResult<R>, Error>
    where
        A: Serialize,
        B: Borrow<A>,
        T: DeserializeOwned + Send + 'static,
        R: Send + 'static,
    {
        if self.shared.is_closed() {
            return Err(Error::PoolClosed);
        }
        let chunk = chunksize
            .unwrap_or_else(|| default_chunksize(total, self.processes()))
            .min(u32::MAX as usize);
        let job = Arc::new(Call::of(&self.shared));
        let collector =
            Collector::<T, R>::new(entry.name(), Arc::clone(&job), total, finish, callbacks);
        let sink: Arc<dyn ReplySink> = collector.clone();
        // On any error, chunks already sent are cancelled and their results dropped,
        // silently: the caller gets the error, the callbacks never run.
        let abandon = |e: Error| {
            collector.abandon();
            e
        };
        let mut first = 0;
        let mut last_len = 0; // bytes of the previous piece: the next one is sized alike
        // Under a small frame cap, pieces stay well within it (an item may carry a
        // piece past its bound).
        let piece_bytes = PIECE_BYTES.min(self.max_chunk() / 2).max(1);
        while first < total {
            let end = first + chunk.min(total - first);
            // A chunk goes out in pieces of about `PIECE_BYTES`: workers start on the
            // first piece while the rest is encoded, and a worker's next piece is
            // queued while the pool decodes its last results.
            while first < end {
                let mut buf = Vec::with_capacity(last_len.max((end - first).min(1 << 16) * 2) + 16);
                let mut index = first;
                while index < end && buf.len() < piece_bytes {
                    let item = items.next().ok_or_else(|| {
                        abandon(Error::InvalidArgument(format!(
                            "the input promised {total} items (exact size_hint) but ended after {index}"
                        )))
                    })?;
                    push_argument(&mut buf, entry, index, item.borrow()).map_err(abandon)?;
                    index += 1;
                }
                last_len = buf.len();
                let kept = crate::handoff::take_kept();
                self.send_chunk(entry, &job, &sink, (first, index - first), buf, kept)
                    .map_err(abandon)?;
                first = index;
            }
        }
        if items.next().is_some() {
            return Err(abandon(Error::InvalidArgument(format!(
                "the input promised {total} items (exact size_hint) but yielded more"
            ))));
        }
        Ok(AsyncResult::new(collector))
    }

    /// The body of the four `imap` calls: checks the call, wraps the input in the
    /// [`Source`] the feeder thread runs, and starts the stream.
    ///
    /// The input's `size_hint`, if exact, becomes the stream's known total (for its
    /// own `size_hint` and progress); the input is not collected first, as `map`'s
    /// may be.
    ///
    /// # Errors
    ///
    /// As [`imap_chunked`](Self::imap_chunked).
    fn stream<F, A, I>(
        &self,
        _task: &F,
        items: I,
        chunksize: usize,
        ordered: bool,
    ) -> Result<Imap<F::Output>, Error>
    where
        F: Task<(A,)>,
        A: Serialize + 'static,
        I: StreamInputs<A>,
    {
        // Its stream's `next` waits for the pool: refused from the pool's own driver.
        self.shared.may_block_here()?;
        let entry = entry_of::<F>()?;
        let chunksize = check_chunksize(Some(chunksize))?.unwrap_or(1);
        if self.shared.is_closed() {
            return Err(Error::PoolClosed);
        }
        let mut items = items.into_iter();
        let (low, high) = items.size_hint();
        let total = (high == Some(low)).then_some(low);
        let mut index = 0usize;
        let task = entry.name();
        // Runs on the stream's feeder thread; `fill` says how far it got, even if
        // the input panics.
        let source: Source = Box::new(move |fill: &mut Fill<'_>| {
            while fill.count < fill.max {
                if fill.stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                let Some(item) = items.next() else {
                    fill.ended = true;
                    return;
                };
                if let Err(e) = push_argument(&mut fill.buf, entry, index, item.borrow()) {
                    fill.ended = true;
                    fill.error = Some(e);
                    return;
                }
                index += 1;
                fill.count += 1;
                fill.end = fill.buf.len();
            }
        });
        Imap::new(
            Arc::clone(&self.shared),
            task,
            source,
            total,
            chunksize,
            ordered,
        )
    }
}

impl Drop for Pool {
    /// Terminates (pending results and streams get [`Error::PoolClosed`]) and joins
    /// the drivers, which reap their workers.
    fn drop(&mut self) {
        self.shared.terminate();
        self.join_drivers();
    }
}

/// The one result of an `apply`.
///
/// # Errors
///
/// [`Error::Protocol`] if there is none, which the collector's count rules out.
fn single<T>(mut v: Vec<T>) -> Result<T, Error> {
    v.pop()
        .ok_or_else(|| Error::Protocol("no result for apply".into()))
}

/// The registry entry of the function item type `F`.
///
/// # Errors
///
/// [`Error::NotRegistered`] naming `F`'s type (a closure, a function pointer, a
/// function without `#[pool_task]`).
pub(super) fn entry_of<F: 'static>() -> Result<&'static TaskEntry, Error> {
    registry::by_type::<F>().ok_or_else(|| Error::NotRegistered {
        name: std::any::type_name::<F>().to_owned(),
    })
}
