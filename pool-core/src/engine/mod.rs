//! The pool's engine: a shared queue of batches and one driver thread per worker.
//!
//! A driver owns one worker process at a time. It takes a batch from the queue,
//! writes it to the worker, waits for the results and hands them to the batch's
//! sink; then the next (keeping a few small, quick batches in flight: see
//! `driver`). `apply` may borrow an idle driver's worker from the calling thread
//! (`Engine::run_direct`). A worker that dies, breaks the protocol or runs past the
//! task time limit is reaped and replaced by the same driver, and the batch it held
//! gets an error. Near the end of a call, a driver taking a slow batch from a
//! short queue keeps only its share and puts the rest back (guided scheduling,
//! [`Engine::next`]). Every batch reaches its sink exactly once — run, failed, or
//! dropped from the queue by `terminate` (see `Drop for Batch`) — so a caller
//! waiting on results is always woken: nothing waits forever.
//!
//! # Parts
//!
//! - [`Engine`]: what the pool handle and its drivers share — the [`Config`], the
//!   queue and its counters ([`State`]), the table of [`Worker`]s and the drivers'
//!   [`Connection`]s, one slot of each per driver.
//! - `driver`: the thread of one slot ([`drive`] and its `Driver`).
//! - `connection`: a driver's end of one worker: its start through the [`Launch`],
//!   the handshake, the initializer, frames out and replies in, the reaping.
//! - `worker`: the [`Worker`] and [`Launch`] traits and the local child process.
//! - `solo`: one worker for one call, without queue or driver ([`Solo`], what a
//!   `Process` runs on).
//! - `fake` (unit tests only): workers that are threads of the test process.
//!
//! # Locks
//!
//! A driver holds its slot of [`Engine::links`] for as long as it has work in
//! flight, and takes [`Engine::state`] or its slot of [`Engine::workers`] under it,
//! never the other way round. `state` is held for a few field updates only: no other
//! lock is taken under it and no sink is told anything under it (a sink may run a
//! user callback that calls the pool), which is why batches dropped from the queue
//! are collected first and dropped once it is released.
//!
//! The design notes, with the reasons behind the rules, are in `README.md` beside
//! this file.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

mod connection;
mod driver;
#[cfg(test)]
mod fake;
mod solo;
mod worker;

pub(crate) use solo::Solo;
pub(crate) use worker::{Launch, LocalLaunch, Worker};

use crate::handoff::Keep;
pub(crate) use crate::sync::lock;

use crate::error::Error;
use crate::transport::{LinkConfig, Transport};

/// What a pool is configured with. Its `Debug` leaves the secret out.
///
/// Built once by `PoolBuilder::build`, which has checked its values, and read-only
/// after: drivers and connections read it through [`Engine::config`].
#[derive(Clone)]
pub(crate) struct Config {
    /// Workers in the pool: one driver thread, one slot of [`Engine::workers`] and
    /// one of [`Engine::links`] each.
    pub(crate) processes: usize,
    /// The transport [`LocalLaunch`] spawns workers through; its name goes in the
    /// worker's environment marker, so that the worker connects with the same one.
    pub(crate) transport: &'static dyn Transport,
    /// How workers start: as child processes through `transport` ([`LocalLaunch`]).
    /// The unit tests give a launch of threads (`fake::ThreadLaunch`).
    pub(crate) launch: std::sync::Arc<dyn Launch>,
    /// The frame cap and the start-up limit. The cap bounds every frame both ways
    /// (a batch's share of it: [`Engine::max_chunk`]); the limit times the
    /// handshake and, without a task time limit, the initializer.
    pub(crate) link: LinkConfig,
    /// Items a worker runs before it is replaced ([`Driver::recycle`]). Counted in
    /// items; a frame is never split, so a worker may run a few more.
    ///
    /// [`Driver::recycle`]: driver::Driver::recycle
    pub(crate) max_tasks_per_child: Option<usize>,
    /// Resident bytes after which a worker is replaced (a soft limit). Read after
    /// each reply ([`Connection::check_memory`]); a worker over it gets nothing more
    /// sent ahead and is replaced once nothing is in flight on it.
    pub(crate) max_memory_per_child: Option<u64>,
    /// Run by every new worker before it takes work ([`Connection::start`]); a
    /// failure keeps that worker out of the pool.
    pub(crate) initializer: Option<Initializer>,
    /// The time limit of one item. With it a driver keeps one frame in flight and
    /// groups nothing, the worker reports each item's start, and each item gets the
    /// whole limit; it also bounds the initializer. Time-outs are never retried.
    pub(crate) task_timeout: Option<Duration>,
    /// Times a batch lost with a dead worker is run again. Only a death uses one
    /// (not a time-out or a protocol error); a pool with retries never takes the
    /// direct path of [`Engine::run_direct`].
    pub(crate) retry_lost_tasks: u32,
    /// The pool was built by a normally scheduled thread: its drivers run as
    /// `SCHED_BATCH` and its workers normally (see `sys::schedule_as_batch`).
    pub(crate) batch_drivers: bool,
    /// `RLIMIT_AS` of each worker, in bytes: a hard limit, set by
    /// `sys::prepare_worker` between `fork` and `exec`.
    pub(crate) memory_limit: Option<u64>,
    /// Echoed by every worker in its handshake: a link whose worker does not know
    /// it is refused at the handshake ([`Connection::start`]).
    pub(crate) secret: u128,
}

impl Config {
    /// A configuration of one local worker over `transport`, with no options: the
    /// base a pool builder fills in, and what a cluster agent starts its workers
    /// with (after setting the pool's memory limit).
    pub(crate) fn local(transport: &'static dyn Transport, link: LinkConfig, secret: u128) -> Self {
        Config {
            processes: 1,
            transport,
            launch: Arc::new(LocalLaunch),
            link,
            max_tasks_per_child: None,
            max_memory_per_child: None,
            initializer: None,
            task_timeout: None,
            retry_lost_tasks: 0,
            batch_drivers: false,
            memory_limit: None,
            secret,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("processes", &self.processes)
            .field("transport", &self.transport.name())
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

/// A task run once in every new worker, with its encoded arguments.
///
/// Sent as a frame of one item before the worker gets any batch; its reply is
/// checked for a failed item ([`Connection::start`]).
#[derive(Debug, Clone)]
pub(crate) struct Initializer {
    /// Registered name of the task.
    pub(crate) task: &'static str,
    /// One length-prefixed item: the argument tuple.
    pub(crate) payload: Vec<u8>,
    /// What the handles in the arguments need kept alive for every new worker to
    /// take them (see `handoff`): held as long as the pool.
    #[expect(
        dead_code,
        reason = "held, never read: dropping it is what frees the handles"
    )]
    pub(crate) kept: Vec<Keep>,
}

/// Where the outcome of a batch goes.
///
/// Implemented by the caller side: the collector of a `map` or an `apply`, the
/// decoder of an `imap`. The batches of one call share one sink (`Arc`) and are
/// answered by any driver, concurrently: hence `Sync`.
pub(crate) trait ReplySink: Send + Sync {
    /// Takes the outcome of one batch. Called exactly once per batch, on a pool
    /// thread or on the thread that dropped the batch. Returns how many bytes of
    /// the reply's items it read if it read all of the batch's items, `None` if not
    /// (see [`ResultFrame::share_out`]).
    ///
    /// The count lets a grouped reply be cut where this batch's items end without
    /// walking them a second time. It may run user callbacks: the engine calls it
    /// with no lock of the queue held.
    fn deliver(&self, reply: Reply) -> Option<usize>;
}

/// The call a batch belongs to: the cancellation flag its batches share, and the
/// pool it was made on.
///
/// `Default` (no pool known) is for tests.
#[derive(Debug, Default)]
pub(crate) struct Call {
    /// Set once the call's outcome is decided by an error, or the call is abandoned
    /// (its `AsyncResult` never handed out, its `Imap` dropped). Its batches still
    /// queued are then dropped unrun when a driver meets them at the head of the
    /// queue ([`Engine::next`], [`Engine::take_ahead`]); those in flight run to the
    /// end. Relaxed: a batch that runs after all only costs work, and its sink
    /// ignores the outcome.
    cancelled: AtomicBool,
    /// The address of the pool's [`Engine`] (0: not known), to tell its drivers.
    pool: usize,
}

impl Call {
    /// The flag of a call to the pool of `shared`.
    pub(crate) fn of(shared: &Engine) -> Self {
        Call {
            cancelled: AtomicBool::new(false),
            pool: shared as *const Engine as usize,
        }
    }

    /// Whether the calling thread is a driver of this call's pool (a callback).
    /// `AsyncResult::get` refuses to wait there: the result may need that very
    /// driver, which would be waiting for itself.
    pub(crate) fn on_own_driver(&self) -> bool {
        on_driver_of(self.pool)
    }

    /// Cancels the call's batches still queued (see [`Call::cancelled`]); calling
    /// it again changes nothing.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

/// A chunk of items of one call, waiting for a worker.
///
/// The unit of the queue and of the answer: a frame carries one batch or, for a
/// quick task, several ([`Frame`]), but each batch gets its own [`Reply`]. A batch
/// is answered exactly once: [`complete`](Batch::complete) consumes it, and a batch
/// dropped unanswered tells its sink [`Error::PoolClosed`] (`Drop`).
#[derive(Debug)]
pub(crate) struct Batch {
    /// Registered name of the call's task, looked up in the worker's registry.
    pub(crate) task: &'static str,
    /// Index in the call's input of the batch's first item: where its results go,
    /// and the base of the index an error names.
    pub(crate) first_index: usize,
    /// Items in the batch.
    pub(crate) count: u32,
    /// The batch's encoded items: length-prefixed argument tuples, written after
    /// the frame's header as they are.
    pub(crate) payload: Vec<u8>,
    /// The call the batch belongs to: its batches met in the queue after it was
    /// cancelled are dropped unrun.
    pub(crate) job: Arc<Call>,
    /// Runs of this batch lost with a dead worker so far.
    pub(crate) retries: u32,
    /// Times this batch was requeued because its worker was found dead before it
    /// had started it (see `driver::worker_lost`); bounded, so that a worker that
    /// always dies on receiving it cannot keep it going round.
    pub(crate) restarts: u32,
    /// Goes to a worker in a frame of its own: it was in a group whose reply the
    /// worker could not send (over the frame cap).
    pub(crate) solo: bool,
    /// What the handles in the batch's arguments need kept alive until a worker
    /// has taken them (see `handoff`): the batch lives until it is answered, which
    /// is after its worker decoded them. Empty without handles; a batch with
    /// handles is never cut ([`Batch::split_front`]), its only read.
    pub(crate) kept: Vec<Keep>,
    /// Taken when the outcome is delivered; see `Drop`. `None` only once the batch
    /// has been answered or disarmed: that is what makes delivery exactly once.
    pub(crate) sink: Option<Arc<dyn ReplySink>>,
}

/// So that [`Batch`] can derive `Debug`: a sink shows nothing but its kind.
impl std::fmt::Debug for dyn ReplySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplySink")
    }
}

impl Batch {
    /// Drops the batch without telling its sink.
    ///
    /// For the batches [`Engine::submit`] refuses: their caller gets the error from
    /// `submit` itself, so the sink (and its callbacks) must not hear of a call
    /// that never started.
    fn disarm(mut self) {
        self.sink = None;
    }

    /// Hands the outcome to the sink; what it read, as [`ReplySink::deliver`].
    ///
    /// `pid` is the worker that answered (0: none did). `None`, and nothing told, if
    /// the sink was already taken.
    fn complete(mut self, pid: u32, outcome: Result<ResultFrame, Error>) -> Option<usize> {
        let sink = self.sink.take()?;
        sink.deliver(Reply {
            first_index: self.first_index,
            count: self.count,
            pid,
            outcome,
        })
    }
}

impl Batch {
    /// Cuts the batch after its first `keep` items: `self` keeps those, and the
    /// rest comes back as a batch of its own (guided scheduling, see
    /// [`Engine::next`]). `None`, and the batch unchanged, if `keep` leaves nothing
    /// on one side, if the batch holds handles (their [`kept`](Batch::kept) must
    /// live as long as both parts), or if its payload does not hold `keep` items.
    ///
    /// The rest is the same call's: same task, [`job`](Batch::job) and sink, the
    /// same [`retries`](Batch::retries), [`restarts`](Batch::restarts) and
    /// [`solo`](Batch::solo), its [`first_index`](Batch::first_index) `keep` items
    /// on. Both parts are answered once each, and the sink places results by
    /// index, so the call sees its items once and in order. The payload is cut at an
    /// item boundary found by scanning `keep` lengths; nothing is decoded.
    fn split_front(&mut self, keep: u32) -> Option<Batch> {
        if keep == 0 || keep >= self.count || !self.kept.is_empty() {
            return None;
        }
        let mut items = crate::wire::protocol::Items::new(&self.payload);
        for _ in 0..keep {
            items.next_item().ok()??;
        }
        let at = self.payload.len() - items.remaining();
        let rest = Batch {
            task: self.task,
            first_index: self.first_index + keep as usize,
            count: self.count - keep,
            payload: self.payload.split_off(at),
            job: Arc::clone(&self.job),
            retries: self.retries,
            restarts: self.restarts,
            solo: self.solo,
            kept: Vec::new(),
            sink: self.sink.clone(),
        };
        self.count = keep;
        Some(rest)
    }
}

/// The backstop of exactly-once delivery: whatever path loses a batch without
/// answering it — the queue emptied by `terminate`, a cancelled batch met at the
/// head of the queue, frames still in flight when a driver stops — its sink hears
/// [`Error::PoolClosed`].
impl Drop for Batch {
    /// A batch dropped without running (the pool terminated, or the call was
    /// abandoned) still answers its caller, with pid 0.
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            let _ = sink.deliver(Reply {
                first_index: self.first_index,
                count: self.count,
                pid: 0,
                outcome: Err(Error::PoolClosed),
            });
        }
    }
}

/// A worker's answer to a batch: its result items, `range` of a reply frame (shared
/// by the batches that went to the worker together in one frame).
///
/// Each result item is a LEB128 length, a status byte and the postcard-encoded
/// output or failure; the caller side decodes them (`decode_reply`).
#[derive(Debug)]
pub(crate) struct ResultFrame {
    /// The whole reply frame, header included; one allocation shared by the
    /// batches of a group.
    pub(crate) frame: Arc<Vec<u8>>,
    /// Where this batch's items start in `frame`, up to the end of the frame: in a
    /// part handed out by [`share_out`](Self::share_out), the items of the batches
    /// after it follow its own.
    pub(crate) range: Range<usize>,
}

impl ResultFrame {
    /// The whole of `frame` after `offset` (the end of its header); an offset past
    /// the end gives no items.
    pub(crate) fn new(frame: Vec<u8>, offset: usize) -> Self {
        let end = frame.len();
        ResultFrame {
            frame: Arc::new(frame),
            range: offset.min(end)..end,
        }
    }

    /// The bytes of [`range`](Self::range): the batch's result items (and, in a
    /// part of a group, those of the batches after it).
    pub(crate) fn items(&self) -> &[u8] {
        self.frame.get(self.range.clone()).unwrap_or_default()
    }

    /// Hands out a frame that answered several batches at once: `deliver` gets each
    /// batch with its part, the items from where those of the batch before ended,
    /// and says how many bytes of them it read (`None`: the batch's items are
    /// skipped here, by its count). So the frame is walked once, by the decoders,
    /// not once more to cut it. If the items run short, the batches left get the
    /// error.
    ///
    /// Every batch goes to `deliver` exactly once, in order; `count` gives its
    /// items. A batch whose part held fewer items than its count has already seen
    /// that in its own part; the error then goes to every batch after it.
    pub(crate) fn share_out<B>(
        mut self,
        batches: impl IntoIterator<Item = B>,
        count: impl Fn(&B) -> u32,
        mut deliver: impl FnMut(B, Result<ResultFrame, Error>) -> Option<usize>,
    ) {
        let mut short: Option<Error> = None;
        for batch in batches {
            if let Some(e) = &short {
                deliver(batch, Err(e.clone()));
                continue;
            }
            let n = count(&batch);
            let part = ResultFrame {
                frame: Arc::clone(&self.frame),
                range: self.range.clone(),
            };
            let read = match deliver(batch, Ok(part)) {
                Some(read) => Ok(read),
                None => self.skip(n),
            };
            match read {
                Ok(read) => self.range.start = (self.range.start + read).min(self.range.end),
                Err(e) => short = Some(e),
            }
        }
    }

    /// Bytes taken by the first `count` items, or why there are not that many.
    ///
    /// # Errors
    ///
    /// A protocol error: an item's length runs past the end, or fewer than `count`
    /// items are left.
    fn skip(&self, count: u32) -> Result<usize, Error> {
        let mut items = crate::wire::protocol::Items::new(self.items());
        for _ in 0..count {
            if items.next_item()?.is_none() {
                return Err(crate::error::fewer_items(count as usize));
            }
        }
        Ok(self.range.len() - items.remaining())
    }
}

/// What the caller of a batch receives.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The batch's [`Batch::first_index`]: where its results go in the input order.
    pub(crate) first_index: usize,
    /// The batch's items: a failed batch gives each of them the error.
    pub(crate) count: u32,
    /// The worker that answered, for the errors the caller side builds; 0 when none
    /// did (the batch was dropped, or the pool closed).
    pub(crate) pid: u32,
    /// The result items, or the error of the whole batch.
    pub(crate) outcome: Result<ResultFrame, Error>,
}

/// The queue and the counters the drivers keep about themselves, under
/// [`Engine::state`].
#[derive(Debug)]
struct State {
    /// Batches no driver has taken yet, oldest first; batches put back after a
    /// worker died go to the head, in their order ([`Engine::requeue`]).
    queue: VecDeque<Batch>,
    /// `close` or `terminate` was called: `submit` refuses work, drivers finish the
    /// queue and stop.
    closed: bool,
    /// Drivers still running (with a worker, or starting one).
    ///
    /// `processes` at first; each driver takes itself off once, as it stops
    /// ([`Engine::driver_exit`]). At 0, `submit` refuses work with
    /// [`fatal`](Self::fatal).
    running: usize,
    /// Drivers with nothing in flight: queued batches are left to them rather than
    /// sent ahead on a busy worker.
    ///
    /// `processes` at first; changed only by [`Engine::set_occupied`], on a
    /// driver's change between idle and busy. A driver that stops counts as busy
    /// for good, so no batch waits for it.
    available: usize,
    /// Drivers asleep waiting for work: a batch queued while none is needs no
    /// wake-up call (a system call, even with nobody to wake).
    ///
    /// Raised and lowered by [`Engine::next`] around its wait, under the lock, so
    /// that `submit` and `requeue`, reading it under the same lock, never miss a
    /// driver about to sleep.
    waiting: usize,
    /// Why the last driver gave up, for calls made after that.
    ///
    /// Set by [`Engine::driver_exit`] for every driver that stops on an error (the
    /// last such error stays); read once no driver runs.
    fatal: Option<Error>,
}

/// State shared by the pool handle and its drivers.
///
/// One per pool, in an `Arc` held by the `Pool` and by each driver thread. Its
/// address identifies the pool to [`Call`] and to the thread-local `DRIVER_OF`.
#[derive(Debug)]
pub(crate) struct Engine {
    /// The pool's configuration, read-only.
    pub(crate) config: Config,
    /// The queue and its counters; held briefly, see the module's notes on locks.
    state: Mutex<State>,
    /// Where drivers sleep in [`Engine::next`]; `submit`, `requeue`, `close` and
    /// `terminate` wake them.
    work: Condvar,
    /// Set once by [`terminate`](Self::terminate), and read without the lock by
    /// every loop that must stop at it: drivers, [`Connection::start`], reaping.
    ///
    /// `SeqCst`: `Connection::start` puts its worker in the table, then reads the
    /// flag; `terminate` sets the flag, then kills what the table holds. Either the
    /// one sees the flag or the other sees the worker.
    terminating: AtomicBool,
    /// The worker of each driver, so `terminate` can kill it from any thread.
    ///
    /// Filled by [`Connection::start`] before the handshake; emptied by the
    /// connection's reaping, which keeps the worker to ask how far it got.
    workers: Vec<Mutex<Option<Box<dyn Worker>>>>,
    /// Each driver's connection to its worker. The driver holds it while it has work
    /// in flight; while the driver waits for work, `run_direct` may borrow it.
    ///
    /// `None` before the first start, after a worker was lost on the direct path,
    /// while a driver replaces its worker, and once it has stopped.
    links: Vec<Mutex<Option<Connection>>>,
    /// The source of frame ids: unique in the pool, and never 0, which a progress
    /// page holds before a worker's first frame.
    next_batch: AtomicU64,
}

thread_local! {
    /// On a driver thread: the address of its pool's [`Engine`] (0 elsewhere), so
    /// that a callback blocking on its own pool is refused instead of deadlocking.
    static DRIVER_OF: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Whether the calling thread is a driver of the pool whose [`Engine`] is at `pool`
/// (never for 0, the address of no pool).
fn on_driver_of(pool: usize) -> bool {
    pool != 0 && DRIVER_OF.with(std::cell::Cell::get) == pool
}

/// The error of a callback that waits on its own pool.
pub(crate) fn blocking_in_callback() -> Error {
    Error::InvalidArgument(
        "a callback of this pool called one of its blocking methods (map, apply, starmap, \
         imap, AsyncResult::get of one of its calls), which would wait for the callback's own \
         thread: use the *_async methods from callbacks, or another pool"
            .into(),
    )
}

/// Room kept in a frame for its header (and a transport's length prefix): what a
/// batch may not use of the frame cap, and of the room of a frame sent ahead.
///
/// A `Run` header is the task's name and a few varints; a frame's payload is
/// bounded by the cap less this ([`Engine::max_chunk`]), and a frame sent ahead by
/// its share of the link's buffer less this (`driver::ahead_frame`).
pub(crate) const HEADER_ROOM: usize = 512;

impl Engine {
    /// Largest encoded batch payload that fits a frame.
    ///
    /// A `map` or `apply` chunk over it is refused by the caller side; one that
    /// reaches a driver (an `imap` chunk) fails there before anything is written
    /// (`chunk_too_large`), so the worker lives.
    pub(crate) fn max_chunk(&self) -> usize {
        self.config.link.max_frame.saturating_sub(HEADER_ROOM)
    }

    /// An engine for `config`, with an empty queue and no worker yet: every driver
    /// counts as running and available until it says otherwise. The pool then
    /// starts one [`drive`] thread per slot.
    pub(crate) fn new(config: Config) -> Self {
        let processes = config.processes;
        Engine {
            config,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
                running: processes,
                available: processes,
                waiting: 0,
                fatal: None,
            }),
            work: Condvar::new(),
            terminating: AtomicBool::new(false),
            workers: (0..processes).map(|_| Mutex::new(None)).collect(),
            links: (0..processes).map(|_| Mutex::new(None)).collect(),
            next_batch: AtomicU64::new(1),
        }
    }

    /// Queues batches, or says why the pool takes no work.
    /// Refused batches are disarmed: the caller gets the error, and the call's sink
    /// (callbacks included) hears nothing.
    ///
    /// Wakes none when no driver sleeps, else one for one batch added and all of
    /// them otherwise: `notify_one` is a system call even with nobody to wake, and a
    /// driver that is not asleep looks at the queue before it sleeps.
    ///
    /// # Errors
    ///
    /// [`Error::PoolClosed`] once `close` or `terminate` was called; once every
    /// driver has stopped, the error the last failing one gave up with
    /// ([`State::fatal`]), else `PoolClosed`.
    pub(crate) fn submit(&self, batches: impl IntoIterator<Item = Batch>) -> Result<(), Error> {
        let mut state = lock(&self.state);
        let refused = if state.closed || self.is_terminating() {
            Some(Error::PoolClosed)
        } else if state.running == 0 {
            Some(state.fatal.as_ref().map_or(Error::PoolClosed, Error::clone))
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
        let waiting = state.waiting;
        drop(state);
        // With no driver asleep, every driver looks at the queue before it sleeps.
        match (waiting, added) {
            (0, _) => {}
            (_, 1) => self.work.notify_one(),
            _ => self.work.notify_all(),
        }
        Ok(())
    }

    /// Records that a driver has work in flight (`true`) or none (`false`); a driver
    /// that stops counts as occupied.
    ///
    /// `occupied` is the driver's own record of what it last said: the counter
    /// [`State::available`] (and its lock) is touched only on a change, so a driver
    /// that keeps its worker busy pays nothing per frame.
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

    /// Runs one call on an idle worker from the calling thread, skipping the two
    /// thread hand-offs of the queue (the caller writes, the caller reads). `None`
    /// when no worker is idle or the pool's options need the driver (worker
    /// recycling, retries): the caller then queues the call as usual.
    ///
    /// The call goes direct only if all of these hold:
    ///
    /// - the pool has no `max_tasks_per_child`, `max_memory_per_child` or
    ///   `retry_lost_tasks`, which drivers apply;
    /// - the pool is neither closed nor terminating;
    /// - the queue is empty (a direct call must not overtake queued work) and some
    ///   driver is available;
    /// - some driver's link is free (`try_lock`: a driver holds its own while it
    ///   has work in flight) and holds a live connection.
    ///
    /// The frame is marked `direct`: the caller watches for the answer before it
    /// sleeps ([`Connection::exchange`]), and the worker watches for the next call
    /// after answering. The driver whose link is borrowed waits for it if it gets
    /// a batch meanwhile.
    ///
    /// If the link fails, the worker is reaped and the slot's connection left empty:
    /// its driver starts a new worker with its next batch. A worker found dead
    /// before it got the call ([`LinkFailure::Unsent`], or [`LinkFailure::Closed`]
    /// with [`Connection::started`] saying the frame never started) lost nothing:
    /// `None`, and the call goes to the queue. Any other failure is the call's
    /// answer ([`failure_error`]); this path has no retry.
    pub(crate) fn run_direct(&self, task: &'static str, items: &[u8]) -> Option<Reply> {
        let config = &self.config;
        if config.max_tasks_per_child.is_some()
            || config.max_memory_per_child.is_some()
            || config.retry_lost_tasks > 0
        {
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
            let frame = Frame {
                task,
                first_index: 0,
                count: 1,
                items: &[items],
                direct: true,
            };
            let pid = conn.pid;
            let outcome = match conn.exchange(self, &frame) {
                Ok(outcome) => outcome,
                Err(failure) => {
                    let sent = conn.last_sent;
                    let (exit, failure) = conn.reap_failed(self, failure);
                    let unstarted = match failure {
                        LinkFailure::Unsent => true,
                        LinkFailure::Closed => conn.started(sent).is_none(),
                        _ => false,
                    };
                    *guard = None;
                    if unstarted {
                        // The worker had died before it got the call (while idle):
                        // nothing was lost. The queue runs the call on the worker
                        // its driver starts instead.
                        return None;
                    }
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

    /// Puts batches whose worker died back at the head of the queue, in their order.
    ///
    /// Also used for the batches of a group the worker refused, and for a batch
    /// whose driver could not start a worker. While the pool terminates they get
    /// [`Error::PoolClosed`] instead. Wakes a sleeping driver for one batch, every
    /// sleeping driver for several (the frames a dead worker had been sent ahead can
    /// run on the idle workers at once), none if none sleeps.
    fn requeue(&self, batches: Vec<Batch>) {
        if batches.is_empty() {
            return;
        }
        let several = batches.len() > 1;
        let mut state = lock(&self.state);
        if self.is_terminating() {
            drop(state);
            for batch in batches {
                batch.complete(0, Err(Error::PoolClosed));
            }
            return;
        }
        for batch in batches.into_iter().rev() {
            state.queue.push_front(batch);
        }
        let waiting = state.waiting;
        drop(state);
        match (waiting, several) {
            (0, _) => {}
            (_, false) => self.work.notify_one(),
            (_, true) => self.work.notify_all(),
        }
    }

    /// The next batch if one is queued now and `wanted` accepts it, without waiting.
    ///
    /// How a driver sends a batch ahead: under [`take_ahead`](Self::take_ahead)'s
    /// rule, so `None` also when the batch is left for an idle driver.
    fn try_next(&self, wanted: impl Fn(&Batch) -> bool) -> Option<Batch> {
        let mut one = Vec::with_capacity(1);
        let mut taken = false;
        self.take_ahead(&mut one, |b| {
            !taken && wanted(b) && {
                taken = true;
                true
            }
        });
        one.pop()
    }

    /// Adds to `group` the batches at the head of the queue that `wanted` accepts,
    /// while their items stay within `max_items` and their bytes within `max_bytes`.
    ///
    /// The limits count the batches already in `group`. It stops at the first batch
    /// that does not fit, so a group is consecutive batches of the queue; a
    /// [`solo`](Batch::solo) batch never joins one. Under
    /// [`take_ahead`](Self::take_ahead)'s rule.
    fn take_more(
        &self,
        group: &mut Vec<Batch>,
        wanted: impl Fn(&Batch) -> bool,
        max_items: usize,
        max_bytes: usize,
    ) {
        let mut items: usize = group.iter().map(|b| b.count as usize).sum();
        let mut bytes: usize = group.iter().map(|b| b.payload.len()).sum();
        self.take_ahead(group, |b| {
            let fits = wanted(b)
                && !b.solo
                && items + b.count as usize <= max_items
                && bytes + b.payload.len() <= max_bytes;
            if fits {
                items += b.count as usize;
                bytes += b.payload.len();
            }
            fits
        });
    }

    /// Moves batches from the head of the queue into `taken` while `accept` takes
    /// them, without waiting, leaving to idle drivers the work they could start.
    /// Cancelled batches met on the way are dropped (after the lock: a dropped batch
    /// tells its sink).
    ///
    /// The rule: batches are taken only while the queue holds more of them than
    /// there are [`available`](State::available) drivers, so each idle driver still
    /// finds one, and no batch waits behind work on a busy worker while another
    /// worker idles. Nothing is taken once the pool terminates.
    fn take_ahead(&self, taken: &mut Vec<Batch>, mut accept: impl FnMut(&Batch) -> bool) {
        let mut cancelled = Vec::new();
        let mut state = lock(&self.state);
        if self.is_terminating() {
            return;
        }
        while state.queue.len() > state.available {
            let Some(front) = state.queue.front() else {
                break;
            };
            let cancel = front.job.is_cancelled();
            if !cancel && !accept(front) {
                break;
            }
            let Some(batch) = state.queue.pop_front() else {
                break;
            };
            if cancel {
                cancelled.push(batch);
            } else {
                taken.push(batch);
            }
        }
        drop(state);
        drop(cancelled);
    }

    /// The next batch to run; `None` when the driver should stop.
    ///
    /// Waits while the queue is empty and the pool open, counted in
    /// [`State::waiting`]. After `close` it still hands out what is queued (drivers
    /// finish the queue); once the pool terminates, `None` at once. Cancelled
    /// batches met on the way are dropped.
    ///
    /// Guided scheduling at the end of a call: when fewer batches are left queued
    /// than there are drivers running (so some will soon be idle), a batch of 2
    /// items or more that `slow` says is worth it (the driver knows its task to be
    /// slow, see `Driver::slow`) is cut ([`Batch::split_front`]): the driver takes
    /// `ceil(count / running)` items and the rest goes back to the head of the
    /// queue, where an idle driver (woken if one sleeps) takes it, cutting it again
    /// under the same rule. So the last items of a call spread over the workers
    /// instead of running behind one another on one. The cut is made under the
    /// lock; it scans item lengths and copies the rest's bytes, and happens only
    /// while the queue is that short.
    fn next(&self, slow: impl Fn(&Batch) -> bool) -> Option<Batch> {
        // Declared first, so dropped after the lock: a dropped batch tells its sink.
        let mut cancelled = Vec::new();
        let mut state = lock(&self.state);
        loop {
            if self.is_terminating() {
                return None;
            }
            while let Some(mut batch) = state.queue.pop_front() {
                if !batch.job.is_cancelled() {
                    let running = state.running;
                    let short = running > 1 && state.queue.len() < running;
                    let mut woken = false;
                    if short && batch.count >= 2 && slow(&batch) {
                        let parts = u32::try_from(running).unwrap_or(u32::MAX);
                        let keep = batch.count.div_ceil(parts).max(1);
                        if let Some(rest) = batch.split_front(keep) {
                            state.queue.push_front(rest);
                            woken = state.waiting > 0;
                        }
                    }
                    drop(state);
                    if woken {
                        self.work.notify_one();
                    }
                    drop(cancelled);
                    return Some(batch);
                }
                cancelled.push(batch);
            }
            if state.closed {
                return None;
            }
            state.waiting += 1;
            state = self
                .work
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.waiting -= 1;
        }
    }

    /// Refuses a call that would wait for this pool's own work from one of its
    /// driver threads (a callback): the driver would wait for itself, and with one
    /// worker, or all drivers in such callbacks, nothing would ever run.
    ///
    /// # Errors
    ///
    /// [`blocking_in_callback`]'s [`Error::InvalidArgument`] on a driver thread of
    /// this pool.
    pub(crate) fn may_block_here(&self) -> Result<(), Error> {
        if on_driver_of(self as *const Engine as usize) {
            return Err(blocking_in_callback());
        }
        Ok(())
    }

    /// Whether [`terminate`](Self::terminate) was called (see
    /// [`Engine::terminating`]).
    pub(crate) fn is_terminating(&self) -> bool {
        self.terminating.load(Ordering::SeqCst)
    }

    /// Whether `close` or `terminate` was called: what `Pool::join` requires.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// No new work; drivers finish the queue, then stop their workers.
    ///
    /// Wakes every sleeping driver, so that each sees `closed`; a driver stops its
    /// worker politely ([`Connection::shutdown`]). Does not wait: `join` does.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.work.notify_all();
    }

    /// No new work, queued work dropped (its callers get an error), workers killed.
    ///
    /// In this order: the flag, so that no loop starts anything new; the queue,
    /// taken under the lock and dropped after it (each batch tells its sink
    /// [`Error::PoolClosed`]); every sleeping driver woken; every worker in the table
    /// killed. That fails the reads of the drivers waiting on replies; they settle
    /// their frames, with `PoolClosed` ([`failure_error`] checks the flag), and
    /// stop. Does not wait: `join` does.
    pub(crate) fn terminate(&self) {
        self.terminating.store(true, Ordering::SeqCst);
        let dropped = {
            let mut state = lock(&self.state);
            state.closed = true;
            std::mem::take(&mut state.queue)
        };
        drop(dropped);
        self.work.notify_all();
        for worker in &self.workers {
            if let Some(worker) = lock(worker).as_mut() {
                worker.kill();
            }
        }
    }

    /// The process ids of the current workers.
    ///
    /// Those in the table: a worker being reaped (or shut down) is no longer listed.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.workers
            .iter()
            .filter_map(|w| lock(w).as_ref().map(|w| w.pid()))
            .collect()
    }

    /// A driver stops: because the pool closed (`why` is `None`) or because it could
    /// not get a worker. If it was the last one running, whatever is still queued
    /// (work requeued for a retry, say) fails now instead of waiting forever.
    ///
    /// Called once by each driver, last thing. An error becomes [`State::fatal`];
    /// the batches failed here get the fatal error, or [`Error::PoolClosed`].
    fn driver_exit(&self, why: Option<Error>) {
        let (dropped, error) = {
            let mut state = lock(&self.state);
            state.running = state.running.saturating_sub(1);
            if let Some(e) = &why {
                state.fatal = Some(e.clone());
            }
            let dropped = if state.running == 0 {
                std::mem::take(&mut state.queue)
            } else {
                VecDeque::new()
            };
            let error = state.fatal.as_ref().map_or(Error::PoolClosed, Error::clone);
            (dropped, error)
        };
        for batch in dropped {
            batch.complete(0, Err(error.clone()));
        }
    }
}

use connection::{Connection, Frame, LinkFailure};
pub(crate) use driver::drive;
use driver::failure_error;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol;

    fn frame_of(items: &[&[u8]]) -> ResultFrame {
        let mut frame = vec![9, 9]; // a header to skip
        for item in items {
            protocol::push_item::<()>(&mut frame, |b| {
                b.extend_from_slice(item);
                Ok(())
            })
            .unwrap();
        }
        ResultFrame::new(frame, 2)
    }

    /// Shares `frame` out to batches of `counts`; each takes its items and reports
    /// what it read when `reports` says so (else the frame skips them itself).
    fn share(
        frame: ResultFrame,
        counts: &[u32],
        reports: bool,
    ) -> Vec<Result<Vec<Vec<u8>>, Error>> {
        let mut got = Vec::new();
        frame.share_out(
            counts.iter().copied(),
            |&n| n,
            |n, part| {
                let part = match part {
                    Ok(part) => part,
                    Err(e) => {
                        got.push(Err(e));
                        return None;
                    }
                };
                let mut items = protocol::Items::new(part.items());
                let mut mine = Vec::new();
                for _ in 0..n {
                    match items.next_item() {
                        Ok(Some(item)) => mine.push(item.to_vec()),
                        _ => break,
                    }
                }
                let read = part.items().len() - items.remaining();
                got.push(Ok(mine));
                reports.then_some(read)
            },
        );
        got
    }

    #[test]
    fn a_grouped_reply_is_shared_out_by_item_counts() {
        let big = [7u8; 300]; // a two-byte length
        for reports in [true, false] {
            let frame = frame_of(&[b"a", &big, b"", b"cd", b"e"]);
            let parts: Vec<_> = share(frame, &[2, 0, 1, 2], reports)
                .into_iter()
                .map(Result::unwrap)
                .collect();
            assert_eq!(parts[0], [b"a".to_vec(), big.to_vec()]);
            assert!(parts[1].is_empty());
            assert_eq!(parts[2], [Vec::<u8>::new()]);
            assert_eq!(parts[3], [b"cd".to_vec(), b"e".to_vec()]);
        }
    }

    #[test]
    fn a_batch_is_cut_at_an_item_boundary() {
        let big = [7u8; 300]; // a two-byte length
        let items: [&[u8]; 4] = [b"a", &big, b"", b"cd"];
        let mut payload = Vec::new();
        for item in items {
            protocol::push_item::<()>(&mut payload, |b| {
                b.extend_from_slice(item);
                Ok(())
            })
            .unwrap();
        }
        let mut batch = Batch {
            task: "t",
            first_index: 10,
            count: 4,
            payload: payload.clone(),
            job: Arc::new(Call::default()),
            retries: 1,
            restarts: 2,
            solo: true,
            kept: Vec::new(),
            sink: None,
        };
        assert!(batch.split_front(0).is_none());
        assert!(batch.split_front(4).is_none());
        let rest = batch.split_front(2).unwrap();
        assert_eq!((batch.first_index, batch.count), (10, 2));
        assert_eq!((rest.first_index, rest.count), (12, 2));
        assert_eq!((rest.retries, rest.restarts, rest.solo), (1, 2, true));
        assert!(Arc::ptr_eq(&rest.job, &batch.job));
        let mut joined = batch.payload.clone();
        joined.extend_from_slice(&rest.payload);
        assert_eq!(joined, payload);
        let read = |p: &[u8]| {
            let mut items = protocol::Items::new(p);
            std::iter::from_fn(|| items.next_item().unwrap().map(<[u8]>::to_vec))
                .collect::<Vec<_>>()
        };
        assert_eq!(read(&batch.payload), [b"a".to_vec(), big.to_vec()]);
        assert_eq!(read(&rest.payload), [Vec::new(), b"cd".to_vec()]);
        // A payload short of the items it claims is left whole.
        let mut short = rest;
        short.count = 5;
        assert!(short.split_front(3).is_none());
        assert_eq!(short.count, 5);
    }

    #[test]
    fn a_short_grouped_reply_fails_the_batches_it_cannot_fill() {
        // The second batch finds one of its two items: it reads it, and the frame
        // (walking its items itself, as for a sink that did not read them) finds
        // the reply short; the batch after gets the error.
        let parts = share(frame_of(&[b"a", b"b", b"c"]), &[2, 2, 1], false);
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].as_ref().unwrap(), &[b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(parts[1].as_ref().unwrap(), &[b"c".to_vec()]);
        assert!(matches!(parts[2], Err(Error::Protocol(_))));
    }
}
