//! The pool's engine: a shared queue of batches and one driver thread per worker.
//!
//! A driver owns one worker process at a time. It takes a batch from the queue,
//! writes it to the worker, waits for the results and hands them to the batch's
//! sink; then the next (keeping a few small, quick batches in flight: see
//! `driver`). `apply` may borrow an idle driver's worker from the calling thread
//! (`Engine::run_direct`). A worker that dies, breaks the protocol or runs past the
//! task time limit is reaped and replaced by the same driver, and the batch it held
//! gets an error. Every batch reaches its sink exactly once — run, failed, or
//! dropped from the queue by `terminate` (see `Drop for Batch`) — so a caller
//! waiting on results is always woken: nothing waits forever.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

mod connection;
mod driver;
#[cfg(test)]
mod fake;
mod worker;

pub(crate) use worker::{Launch, LocalLaunch, Worker};

pub(crate) use crate::sync::lock;

use crate::error::Error;
use crate::transport::{LinkConfig, Transport};

/// What a pool is configured with. Its `Debug` leaves the secret out.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) transport: &'static dyn Transport,
    /// How workers start: as child processes through `transport` ([`LocalLaunch`]).
    pub(crate) launch: std::sync::Arc<dyn Launch>,
    pub(crate) link: LinkConfig,
    pub(crate) max_tasks_per_child: Option<usize>,
    /// Resident bytes after which a worker is replaced (a soft limit).
    pub(crate) max_memory_per_child: Option<u64>,
    pub(crate) initializer: Option<Initializer>,
    pub(crate) task_timeout: Option<Duration>,
    /// Times a batch lost with a dead worker is run again.
    pub(crate) retry_lost_tasks: u32,
    /// The pool was built by a normally scheduled thread: its drivers run as
    /// `SCHED_BATCH` and its workers normally (see `sys::schedule_as_batch`).
    pub(crate) batch_drivers: bool,
    /// `RLIMIT_AS` of each worker, in bytes.
    pub(crate) memory_limit: Option<u64>,
    /// Echoed by every worker in its handshake.
    pub(crate) secret: u128,
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
#[derive(Debug, Clone)]
pub(crate) struct Initializer {
    pub(crate) task: &'static str,
    /// One length-prefixed item: the argument tuple.
    pub(crate) payload: Vec<u8>,
}

/// Where the outcome of a batch goes.
pub(crate) trait ReplySink: Send + Sync {
    /// Takes the outcome of one batch. Called exactly once per batch, on a pool
    /// thread or on the thread that dropped the batch. Returns how many bytes of
    /// the reply's items it read if it read all of the batch's items, `None` if not
    /// (see [`ResultFrame::share_out`]).
    fn deliver(&self, reply: Reply) -> Option<usize>;
}

/// The call a batch belongs to: the cancellation flag its batches share, and the
/// pool it was made on.
#[derive(Debug, Default)]
pub(crate) struct Call {
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
    pub(crate) fn on_own_driver(&self) -> bool {
        self.pool != 0 && DRIVER_OF.with(std::cell::Cell::get) == self.pool
    }

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
    /// The batch's encoded items.
    pub(crate) payload: Vec<u8>,
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

    /// Hands the outcome to the sink; what it read, as [`ReplySink::deliver`].
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

impl Drop for Batch {
    /// A batch dropped without running (the pool terminated, or the call was
    /// abandoned) still answers its caller.
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
#[derive(Debug)]
pub(crate) struct ResultFrame {
    pub(crate) frame: Arc<Vec<u8>>,
    pub(crate) range: Range<usize>,
}

impl ResultFrame {
    /// The whole of `frame` after `offset`.
    pub(crate) fn new(frame: Vec<u8>, offset: usize) -> Self {
        let end = frame.len();
        ResultFrame {
            frame: Arc::new(frame),
            range: offset.min(end)..end,
        }
    }

    pub(crate) fn items(&self) -> &[u8] {
        self.frame.get(self.range.clone()).unwrap_or_default()
    }

    /// Hands out a frame that answered several batches at once: `deliver` gets each
    /// batch with its part, the items from where those of the batch before ended,
    /// and says how many bytes of them it read (`None`: the batch's items are
    /// skipped here, by its count). So the frame is walked once, by the decoders,
    /// not once more to cut it. If the items run short, the batches left get the
    /// error.
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
    pub(crate) first_index: usize,
    pub(crate) count: u32,
    pub(crate) pid: u32,
    pub(crate) outcome: Result<ResultFrame, Error>,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Batch>,
    closed: bool,
    /// Drivers still running (with a worker, or starting one).
    running: usize,
    /// Drivers with nothing in flight: queued batches are left to them rather than
    /// sent ahead on a busy worker.
    available: usize,
    /// Drivers asleep waiting for work: a batch queued while none is needs no
    /// wake-up call (a system call, even with nobody to wake).
    waiting: usize,
    /// Why the last driver gave up, for calls made after that.
    fatal: Option<Error>,
}

/// State shared by the pool handle and its drivers.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) config: Config,
    state: Mutex<State>,
    work: Condvar,
    terminating: AtomicBool,
    /// The worker of each driver, so `terminate` can kill it from any thread.
    workers: Vec<Mutex<Option<Box<dyn Worker>>>>,
    /// Each driver's connection to its worker. The driver holds it while it has work
    /// in flight; while the driver waits for work, `run_direct` may borrow it.
    links: Vec<Mutex<Option<Connection>>>,
    next_batch: AtomicU64,
}

thread_local! {
    /// On a driver thread: the address of its pool's [`Engine`] (0 elsewhere), so
    /// that a callback blocking on its own pool is refused instead of deadlocking.
    static DRIVER_OF: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The error of a callback that waits on its own pool.
pub(crate) fn blocking_in_callback() -> Error {
    Error::InvalidArgument(
        "a callback of this pool called one of its blocking methods (map, apply, starmap, \
         AsyncResult::get of one of its calls), which would wait for the callback's own \
         thread: use the *_async methods from callbacks, or another pool"
            .into(),
    )
}

/// Room kept in a frame for its header (and a transport's length prefix): what a
/// batch may not use of the frame cap, and of the room of a frame sent ahead.
pub(crate) const HEADER_ROOM: usize = 512;

impl Engine {
    /// Largest encoded batch payload that fits a frame.
    pub(crate) fn max_chunk(&self) -> usize {
        self.config.link.max_frame.saturating_sub(HEADER_ROOM)
    }

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
    fn requeue(&self, batches: Vec<Batch>) {
        if batches.is_empty() {
            return;
        }
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
        if waiting > 0 {
            self.work.notify_one();
        }
    }

    /// The next batch if one is queued now and `wanted` accepts it, without waiting.
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
    fn next(&self) -> Option<Batch> {
        // Declared first, so dropped after the lock: a dropped batch tells its sink.
        let mut cancelled = Vec::new();
        let mut state = lock(&self.state);
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
    pub(crate) fn may_block_here(&self) -> Result<(), Error> {
        if DRIVER_OF.with(std::cell::Cell::get) == self as *const Engine as usize {
            return Err(blocking_in_callback());
        }
        Ok(())
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
        for worker in &self.workers {
            if let Some(worker) = lock(worker).as_mut() {
                worker.kill();
            }
        }
    }

    /// The process ids of the current workers.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.workers
            .iter()
            .filter_map(|w| lock(w).as_ref().map(|w| w.pid()))
            .collect()
    }

    /// A driver stops: because the pool closed (`why` is `None`) or because it could
    /// not get a worker. If it was the last one running, whatever is still queued
    /// (work requeued for a retry, say) fails now instead of waiting forever.
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
