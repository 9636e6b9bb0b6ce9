//! Results that arrive later: [`AsyncResult`], its [`Callbacks`], and the collector
//! that turns batch replies into one typed outcome.
//!
//! Every `map`, `starmap` and `apply` (blocking or not) is a [`Collector`]: the sink
//! of all the call's batches. Drivers hand it each batch's reply as it comes back;
//! it decodes the results, puts them in input order, and once every item is in —
//! or at the first error — settles the call in two steps: under its lock it marks
//! the outcome *decided* (later replies are ignored; after an error the call's
//! queued batches are cancelled), then without the lock it runs the callbacks and
//! publishes the outcome, which wakes whoever waits in [`AsyncResult::get`]. The
//! blocking calls are the `_async` ones followed by `get` (`apply` first tries the
//! direct path, which needs no collector).

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::engine::{Call, Reply, ReplySink, lock};
use crate::error::{Error, fewer_items};
use crate::wire::protocol::{self, Items, STATUS_FAILED, STATUS_OK};

/// How far a call has got, for progress hooks.
///
/// Given to [`Callbacks::on_progress`] (on a pool thread, as chunks finish) and to
/// `Imap::with_progress` (on the consuming thread, as chunks arrive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Items finished (successfully or not).
    pub done: usize,
    /// Items in the call, when known (`imap` over an iterator of unknown length: `None`).
    pub total: Option<usize>,
    /// Time since the call was submitted.
    pub elapsed: Duration,
}

/// A boxed [`Callbacks::on_success`]: run at most once, with the result.
type SuccessFn<R> = Box<dyn FnOnce(&R) + Send>;
/// A boxed [`Callbacks::on_error`]: run at most once, with the error.
type ErrorFn = Box<dyn FnOnce(&Error) + Send>;
/// A boxed [`Callbacks::on_progress`]: run any number of times.
type ProgressFn = Box<dyn FnMut(Progress) + Send>;

/// Functions run when an asynchronous call progresses or completes, like the
/// `callback` and `error_callback` of Python's `apply_async`.
///
/// They run on one of the pool's threads, before the [`AsyncResult`] becomes ready,
/// with no lock held: they may call the pool, even terminate it. Keep them short —
/// the thread that runs them is a worker's driver. A blocking call of the same pool
/// (`map`, `apply`, `starmap`, `imap`, `AsyncResult::get` of a call not done yet) is refused
/// there with [`Error::InvalidArgument`] instead of deadlocking; its `*_async`
/// methods work, and so does any other pool. (`wait` on an `AsyncResult` of the
/// same pool cannot fail and would wait: don't.) A callback that panics is contained: the pool goes on.
/// The callback that does not run is dropped when the call completes, releasing what
/// it captured.
///
/// Those threads keep `SIGPIPE` blocked (a write to a closed pipe there is an
/// `EPIPE` error, never the signal), and threads they start inherit that mask.
///
/// Those threads are scheduled as `SCHED_BATCH` when the pool was built by a normally
/// scheduled thread (their wake-ups do not preempt others; same CPU share), and a
/// thread or process started from a callback inherits that policy. A pool built in a
/// callback schedules its own workers normally.
///
/// ```rust,ignore
/// let done = pool.map_async_with(
///     square,
///     1..=1000u64,
///     None,
///     Callbacks::new()
///         .on_success(|squares: &Vec<u64>| println!("{} squares", squares.len()))
///         .on_error(|e| eprintln!("failed: {e}"))
///         .on_progress(|p| eprintln!("{}/{:?}", p.done, p.total)),
/// )?;
/// // ... other work ...
/// let squares = done.get()?; // the callbacks have run by now
/// ```
pub struct Callbacks<R> {
    /// Taken by the collector and run if the call succeeds.
    on_success: Option<SuccessFn<R>>,
    /// Taken by the collector and run if the call fails.
    on_error: Option<ErrorFn>,
    /// Moved into the collector's progress hook.
    on_progress: Option<ProgressFn>,
}

impl<R> Default for Callbacks<R> {
    fn default() -> Self {
        Callbacks {
            on_success: None,
            on_error: None,
            on_progress: None,
        }
    }
}

impl<R> std::fmt::Debug for Callbacks<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callbacks")
            .field("on_success", &self.on_success.is_some())
            .field("on_error", &self.on_error.is_some())
            .field("on_progress", &self.on_progress.is_some())
            .finish()
    }
}

impl<R> Callbacks<R> {
    /// No callback.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run with the result when the call succeeds (Python's `callback`).
    ///
    /// It gets the result by reference: the [`AsyncResult`] still hands it out
    /// afterwards.
    pub fn on_success(mut self, f: impl FnOnce(&R) + Send + 'static) -> Self {
        self.on_success = Some(Box::new(f));
        self
    }

    /// Run with the error when the call fails (Python's `error_callback`).
    ///
    /// Runs once per call, with the error that decided it (the first error to come
    /// back), not once per failed item.
    pub fn on_error(mut self, f: impl FnOnce(&Error) + Send + 'static) -> Self {
        self.on_error = Some(Box::new(f));
        self
    }

    /// Run as chunks of items finish, with a strictly increasing count whose last
    /// value is the total (chunks finishing together may share one update).
    ///
    /// The count includes failed items. Updates stop once the call is decided: a
    /// call that fails may end before the count reaches the total.
    pub fn on_progress(mut self, f: impl FnMut(Progress) + Send + 'static) -> Self {
        self.on_progress = Some(Box::new(f));
        self
    }
}

/// Runs a user callback, containing its panic.
///
/// Callbacks run on driver threads: a panic unwinding there would end the driver,
/// not just the callback.
fn contained(f: impl FnOnce()) {
    let _ = panic::catch_unwind(AssertUnwindSafe(f));
}

/// Decodes one reply: `ok(value)` for each item that succeeded and `failed(index,
/// error)` for each that did not, in order. A failed batch gives each of its items
/// the batch's error. The loop carries only values: an item's `Result` (with its
/// large `Error`) is never built on the common path.
///
/// Returns the bytes of the reply's items read, if all of the batch's items were
/// there (as [`ReplySink::deliver`]).
///
/// `failed` gets each item's index in the caller's input (`first_index` onwards):
/// an item that failed in the worker, one whose result does not decode here, and
/// — when the reply runs short or a length is broken — every item from there on.
pub(crate) fn decode_reply<R: DeserializeOwned>(
    task: &str,
    reply: Reply,
    mut ok: impl FnMut(R),
    mut failed: impl FnMut(usize, Error),
) -> Option<usize> {
    let first = reply.first_index;
    let count = reply.count as usize;
    let frame = match reply.outcome {
        Ok(frame) => frame,
        Err(e) => {
            for index in first..first + count {
                failed(index, e.clone());
            }
            return None;
        }
    };
    let mut items = Items::new(frame.items());
    let mut complete = true;
    for index in first..first + count {
        match items.next_item() {
            // The common case first, inlined: a successful item that decodes.
            Ok(Some([STATUS_OK, body @ ..])) => match postcard::from_bytes(body) {
                Ok(value) => ok(value),
                Err(e) => failed(index, undecodable(task, index, e)),
            },
            Ok(Some(item)) => failed(index, decode_failure(task, item, index, reply.pid)),
            Ok(None) => {
                complete = false;
                failed(index, fewer_items(count));
            }
            Err(e) => {
                complete = false;
                failed(index, e);
            }
        }
    }
    complete.then(|| frame.items().len() - items.remaining())
}

/// The error of a successful result that does not deserialize as the task's
/// output here.
#[cold]
/// The value of a one-item reply (`apply`, a `Process`), or its error.
pub(crate) fn decode_one<R: DeserializeOwned>(task: &str, reply: Reply) -> Result<R, Error> {
    let (mut value, mut error) = (None, None);
    decode_reply(task, reply, |v| value = Some(v), |_, e| error = Some(e));
    match (value, error) {
        (Some(v), None) => Ok(v),
        (_, Some(e)) => Err(e),
        (None, None) => Err(Error::Protocol(format!("no result for task `{task}`"))),
    }
}

fn undecodable(task: &str, index: usize, e: postcard::Error) -> Error {
    Error::Serialization {
        task: task.to_owned(),
        index,
        what: "deserialized in the parent",
        message: e.to_string(),
    }
}

/// The error of a result item that is not a success.
#[cold]
fn decode_failure(task: &str, item: &[u8], index: usize, pid: u32) -> Error {
    match item.split_first() {
        Some((&STATUS_FAILED, body)) => match postcard::from_bytes::<protocol::ItemFailure>(body) {
            Ok(failure) => failure.into_error(task, index, pid),
            Err(e) => Error::protocol(format!("malformed task failure: {e}")),
        },
        Some((other, _)) => Error::protocol(format!("unknown result status {other}")),
        None => Error::protocol("empty result item"),
    }
}

/// Collects the replies of one call into its outcome: the items in input order,
/// turned into `R` by `finish` (`Vec<T>` for `map`, the single `T` for `apply`).
pub(crate) struct Collector<T, R> {
    /// The task's registered name, for errors.
    task: &'static str,
    /// The call's cancellation flag, set when the outcome is decided by an error or
    /// the call is abandoned: its batches still queued are dropped unrun.
    job: Arc<Call>,
    /// Items in the call.
    total: usize,
    /// When the call was submitted, for [`Progress::elapsed`].
    started: Instant,
    /// Turns the results, in input order, into the outcome.
    finish: fn(Vec<T>) -> Result<R, Error>,
    /// Everything the deliveries change, under one lock.
    state: Mutex<CollectState<T, R>>,
    /// Signalled when the outcome is published.
    ready: Condvar,
    /// The progress hook, called without `state` held.
    on_progress: Mutex<ProgressHook>,
}

/// A progress hook and the last count it was given.
struct ProgressHook {
    /// The user's hook; `None` without one, and once the call is settled or
    /// abandoned (unless it was running at that moment).
    f: Option<ProgressFn>,
    /// The count last given to it: a delivery that does not raise it calls nothing.
    reported: usize,
}

thread_local! {
    /// True while this thread runs a progress hook: a delivery it causes (say, by
    /// terminating the pool) does not call the hook again.
    static IN_PROGRESS_HOOK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The mutable part of a [`Collector`].
struct CollectState<T, R> {
    /// The results of items `0..len`, in input order; `None` while a driver decodes
    /// the chunk that comes next straight into it.
    values: Option<Vec<T>>,
    /// Items before this one are in `values` or being decoded into it.
    next: usize,
    /// Chunks decoded out of order, by first index, until those before them are in.
    pending: BTreeMap<usize, Vec<T>>,
    /// Items whose reply has not come back yet.
    remaining: usize,
    /// The outcome is decided (its callbacks may still be running): later
    /// deliveries are ignored.
    decided: bool,
    /// Set once the callbacks have run: the result is ready.
    outcome: Option<Result<R, Error>>,
    /// Whether the outcome was `Ok`, kept after it is taken (for `successful`).
    succeeded: Option<bool>,
    /// The outcome has been handed out: waiters stop waiting, a second `get` fails.
    taken: bool,
    /// Moved to the [`Settling`] when the outcome is decided.
    on_success: Option<SuccessFn<R>>,
    /// Moved to the [`Settling`] when the outcome is decided.
    on_error: Option<ErrorFn>,
}

/// What settling needs once the lock is released.
struct Settling<T, R> {
    /// The results in input order (all of them, unless `error` is set).
    values: Vec<T>,
    /// The error that decided the call, if one did.
    error: Option<Error>,
    /// The callbacks, to run without the lock.
    on_success: Option<SuccessFn<R>>,
    /// The callbacks, to run without the lock.
    on_error: Option<ErrorFn>,
}

impl<T: DeserializeOwned + Send, R: Send> Collector<T, R> {
    /// The collector of a call of `total` items.
    ///
    /// A call of no items is settled here and now: its outcome (`finish` of an
    /// empty `Vec`) is ready at once, and its callbacks run on the calling thread.
    pub(crate) fn new(
        task: &'static str,
        job: Arc<Call>,
        total: usize,
        finish: fn(Vec<T>) -> Result<R, Error>,
        callbacks: Callbacks<R>,
    ) -> Arc<Self> {
        let collector = Arc::new(Collector {
            task,
            job,
            total,
            started: Instant::now(),
            finish,
            state: Mutex::new(CollectState {
                values: Some(Vec::new()),
                next: 0,
                pending: BTreeMap::new(),
                remaining: total,
                decided: false,
                outcome: None,
                succeeded: None,
                taken: false,
                on_success: callbacks.on_success,
                on_error: callbacks.on_error,
            }),
            ready: Condvar::new(),
            on_progress: Mutex::new(ProgressHook {
                f: callbacks.on_progress,
                reported: 0,
            }),
        });
        if total == 0 {
            let settling = collector.decide(&mut lock(&collector.state), None);
            if let Some(settling) = settling {
                collector.settle(settling);
            }
        }
        collector
    }

    /// Under the lock: if every item is in (or `error`), marks the outcome decided
    /// and takes what settling needs.
    ///
    /// Returns `Some` at most once per call (never after [`abandon`](Self::abandon));
    /// an error also cancels the call's queued batches, whose results nobody would
    /// read.
    fn decide(
        &self,
        state: &mut CollectState<T, R>,
        error: Option<Error>,
    ) -> Option<Settling<T, R>> {
        if state.decided || (error.is_none() && state.remaining > 0) {
            return None;
        }
        state.decided = true;
        if error.is_some() {
            self.job.cancel();
        }
        Some(Settling {
            values: state.values.take().unwrap_or_default(),
            error,
            on_success: state.on_success.take(),
            on_error: state.on_error.take(),
        })
    }

    /// Without the lock: builds the outcome, runs the callbacks (which may call the
    /// pool, even terminate it), then publishes the outcome and wakes the waiters.
    ///
    /// Callbacks first, then the outcome: so that when `get` returns, the callback
    /// has run (as in Python). An outcome without error but with fewer values than
    /// items would mean a reply was lost or counted twice; it is reported as
    /// [`Error::Protocol`] rather than handed to `finish`.
    fn settle(&self, settling: Settling<T, R>) {
        let Settling {
            values,
            error,
            on_success,
            on_error,
        } = settling;
        let outcome = match error {
            Some(e) => Err(e),
            None if values.len() != self.total => Err(Error::protocol("a result is missing")),
            None => (self.finish)(values),
        };
        // The callback that does not run is dropped here, releasing its captures.
        match (&outcome, on_success, on_error) {
            (Ok(value), Some(f), _) => contained(|| f(value)),
            (Err(e), _, Some(f)) => contained(|| f(e)),
            _ => {}
        }
        // (A hook running right now keeps it; it is dropped with the collector.)
        if let Ok(mut hook) = self.on_progress.try_lock() {
            hook.f = None;
        }
        let mut state = lock(&self.state);
        state.succeeded = Some(outcome.is_ok());
        state.outcome = Some(outcome);
        drop(state);
        self.ready.notify_all();
    }

    /// Makes the call's outcome unreachable and silent: for a call abandoned before
    /// its `AsyncResult` was handed out. Its queued chunks are cancelled.
    ///
    /// Used when encoding or queuing one of the call's chunks fails: the caller gets
    /// that error, and the chunks already queued must neither run for nothing nor
    /// call the callbacks.
    pub(crate) fn abandon(&self) {
        self.job.cancel();
        let mut state = lock(&self.state);
        state.decided = true;
        state.on_success = None;
        state.on_error = None;
        drop(state);
        if let Ok(mut hook) = self.on_progress.try_lock() {
            hook.f = None;
        }
    }
}

impl<T, R> Collector<T, R> {
    /// Calls the progress hook with the count of finished items, if it grew: counts
    /// are strictly increasing and the last one is the total (updates from chunks
    /// finishing together may coalesce).
    ///
    /// The hook has a lock of its own, held while it runs, so that two drivers never
    /// run it at once; the count is read under that lock, so a later count is never
    /// given before an earlier one.
    fn report_progress(&self) {
        if IN_PROGRESS_HOOK.with(std::cell::Cell::get) {
            return;
        }
        let mut hook = lock(&self.on_progress);
        let ProgressHook { f, reported } = &mut *hook;
        let Some(f) = f.as_mut() else { return };
        let done = self.total - lock(&self.state).remaining;
        if done <= *reported {
            return;
        }
        *reported = done;
        let progress = Progress {
            done,
            total: Some(self.total),
            elapsed: self.started.elapsed(),
        };
        IN_PROGRESS_HOOK.with(|flag| flag.set(true));
        contained(|| f(progress));
        IN_PROGRESS_HOOK.with(|flag| flag.set(false));
    }
}

impl<T: DeserializeOwned + Send, R: Send> ReplySink for Collector<T, R> {
    /// The chunk that comes next is decoded straight into the result vector, taken
    /// out of the state meanwhile; a chunk that arrives early is decoded (in parallel)
    /// into a vector of its own and moved in once those before it are in. So the
    /// results are in place, in order, as soon as the last chunk is decoded.
    ///
    /// Why: a `map` of millions of small items would otherwise decode every value
    /// into a chunk vector and move it again at the end. Chunks come back roughly in
    /// order (the queue is first in, first out), so most values are written once,
    /// into the vector `get` returns, and
    /// the lock is held only to claim and return it, never while decoding. An early
    /// chunk that fails is not kept: its error decides the call.
    fn deliver(&self, reply: Reply) -> Option<usize> {
        let first = reply.first_index;
        let count = reply.count as usize;
        let claimed = {
            let mut state = lock(&self.state);
            if state.decided {
                return None;
            }
            let next = state.next;
            match state.values.take_if(|_| first == next) {
                Some(mut values) => {
                    state.next = first + count;
                    values.reserve_exact(self.total - values.len());
                    Some(values)
                }
                None => None,
            }
        };
        let in_order = claimed.is_some();
        let mut values = claimed.unwrap_or_else(|| Vec::with_capacity(count));
        let mut error = None;
        let read = decode_reply(
            self.task,
            reply,
            |value| values.push(value),
            |_, e| {
                error.get_or_insert(e);
            },
        );
        let settling = {
            let mut state = lock(&self.state);
            if state.decided {
                return read;
            }
            let state = &mut *state;
            if in_order {
                state.values = Some(values);
            } else if error.is_none() {
                state.pending.insert(first, values);
            }
            if let Some(values) = state.values.as_mut() {
                while let Some(chunk) = state.pending.remove(&values.len()) {
                    values.extend(chunk);
                }
                state.next = values.len();
            }
            state.remaining = state.remaining.saturating_sub(count);
            self.decide(state, error)
        };
        self.report_progress();
        if let Some(settling) = settling {
            self.settle(settling);
        }
        read
    }
}

/// The waiting side of a [`Collector`], without its item type.
///
/// So that [`AsyncResult`] has one type parameter, the outcome's: the item type
/// `T` of a `map` (whose outcome is `Vec<T>`) lives only behind this trait object.
trait Outcome<R>: Send + Sync {
    /// Waits until the outcome is set or `deadline` passes; true if set.
    fn wait_until(&self, deadline: Option<Instant>) -> bool;
    /// Takes the outcome; `None` if not set or taken already.
    fn take(&self) -> Option<Result<R, Error>>;
    /// `Some(true)` if set and `Ok`, `Some(false)` if set and `Err` (also once taken),
    /// `None` if not set.
    fn succeeded(&self) -> Option<bool>;
    /// Whether the calling thread is a driver of the call's pool (a callback).
    fn on_own_driver(&self) -> bool;
}

impl<T: DeserializeOwned + Send, R: Send> Outcome<R> for Collector<T, R> {
    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let state = lock(&self.state);
        crate::sync::wait_until(&self.ready, state, deadline, |s| {
            s.outcome.is_some() || s.taken
        })
        .1
    }

    fn take(&self) -> Option<Result<R, Error>> {
        let mut state = lock(&self.state);
        let outcome = state.outcome.take();
        if outcome.is_some() {
            state.taken = true;
        }
        outcome
    }

    fn succeeded(&self) -> Option<bool> {
        lock(&self.state).succeeded
    }

    fn on_own_driver(&self) -> bool {
        self.job.on_own_driver()
    }
}

/// The result of `apply_async`, `map_async` or `starmap_async`: ready later.
///
/// It does not borrow the pool and may outlive it: if the pool is terminated or
/// dropped first, the result is an [`Error::PoolClosed`], never a hang.
///
/// The work goes on whether or not the handle is kept: dropping it does not cancel
/// the call (its callbacks still run).
///
/// ```rust,ignore
/// let pending = pool.apply_async(slow, (input,))?;
/// while !pending.wait_timeout(Duration::from_millis(100)) {
///     spinner.tick();
/// }
/// let value = pending.get()?;
/// ```
pub struct AsyncResult<R> {
    /// The call's collector, seen through [`Outcome`].
    outcome: Arc<dyn Outcome<R>>,
    /// The task's registered name, for the error of a wait that timed out.
    task: &'static str,
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("task", &self.task)
            .field("ready", &self.ready())
            .finish()
    }
}

impl<R: Send + 'static> AsyncResult<R> {
    /// The handle of the call `collector` collects.
    pub(crate) fn new<T: DeserializeOwned + Send + 'static>(
        collector: Arc<Collector<T, R>>,
    ) -> Self {
        let task = collector.task;
        AsyncResult {
            outcome: collector,
            task,
        }
    }
}

impl<R> AsyncResult<R> {
    /// True once the call has finished, successfully or not. Never blocks.
    ///
    /// "Finished" includes the callbacks: they have run when this turns true.
    pub fn ready(&self) -> bool {
        self.outcome.wait_until(Some(Instant::now()))
    }

    /// `Some(true)` if the call finished successfully, `Some(false)` if it failed,
    /// `None` while it runs (Python raises `ValueError` there). The answer stays after
    /// [`get_timeout`](Self::get_timeout) has returned the result.
    pub fn successful(&self) -> Option<bool> {
        self.outcome.succeeded()
    }

    /// Blocks until the call has finished.
    ///
    /// Unlike [`get`](Self::get), it is not refused on a thread of the same pool:
    /// from a callback, waiting for a call of the same pool may never end.
    pub fn wait(&self) {
        self.outcome.wait_until(None);
    }

    /// Blocks until the call has finished or `timeout` passes; true if finished.
    ///
    /// A `timeout` too large to add to the current time waits without limit.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.outcome.wait_until(Instant::now().checked_add(timeout))
    }

    /// Blocks until the call has finished and returns its result.
    ///
    /// From a callback of the same pool, a call that is not ready yet is an
    /// [`Error::InvalidArgument`]: waiting there could wait for the callback's own
    /// thread forever.
    ///
    /// Callbacks run on the pool's driver threads, each the only thread that talks
    /// to its worker. A callback that waits for a call of its own pool holds its
    /// driver: with one worker, or with every driver in such a callback, the call
    /// could never run. The check is cheap (the call remembers its pool, each driver
    /// knows whose it is), and a call that is already done is returned anyway.
    ///
    /// # Errors
    ///
    /// The call's own error (the first item to fail, [`Error::PoolClosed`] if the
    /// pool went away), [`Error::InvalidArgument`] as above, or if
    /// [`get_timeout`](Self::get_timeout) has already returned the result.
    pub fn get(self) -> Result<R, Error> {
        if !self.ready() && self.outcome.on_own_driver() {
            return Err(crate::engine::blocking_in_callback());
        }
        self.outcome.wait_until(None);
        self.outcome.take().unwrap_or_else(|| Err(already_taken()))
    }

    /// Waits up to `timeout` for the result. If the call is not done by then, this
    /// is an [`Error::Timeout`] and the handle stays usable; a result returned
    /// (`Ok` or the call's own error) is spent, and asking again is an
    /// [`Error::InvalidArgument`].
    ///
    /// Not refused on a pool's own thread, unlike [`get`](Self::get): the wait is
    /// bounded.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] (with the task, no index and no pid) if the call is not
    /// done within `timeout`; otherwise as [`get`](Self::get).
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<R, Error> {
        if !self.outcome.wait_until(Instant::now().checked_add(timeout)) {
            return Err(Error::Timeout {
                task: Some(self.task.to_owned()),
                index: None,
                pid: None,
                after: timeout,
            });
        }
        self.outcome.take().unwrap_or_else(|| Err(already_taken()))
    }
}

/// The error of a result asked for after `get_timeout` returned it.
fn already_taken() -> Error {
    Error::InvalidArgument("this result was already returned by get_timeout".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ResultFrame;

    /// A reply carrying `values` as successful result items, from `first` on.
    fn reply(first: usize, values: &[u32]) -> Reply {
        let mut frame = Vec::new();
        for v in values {
            protocol::push_item::<()>(&mut frame, |b| {
                b.push(STATUS_OK);
                protocol::encode_into(v, b).map_err(drop)
            })
            .unwrap();
        }
        Reply {
            first_index: first,
            count: values.len() as u32,
            pid: 1,
            outcome: Ok(ResultFrame::new(frame, 0)),
        }
    }

    fn collector(total: usize) -> Arc<Collector<u32, Vec<u32>>> {
        Collector::new("t", Arc::new(Call::default()), total, Ok, Callbacks::new())
    }

    #[test]
    fn chunks_in_any_order_end_in_input_order() {
        let expected: Vec<u32> = (0..10).map(|i| i * 3).collect();
        let chunks = [0..2, 2..5, 5..6, 6..10];
        // Every order of the four chunks, as drivers may deliver them.
        let orders = [
            [0, 1, 2, 3],
            [3, 2, 1, 0],
            [1, 3, 0, 2],
            [2, 0, 3, 1],
            [1, 0, 2, 3],
        ];
        for order in orders {
            let c = collector(expected.len());
            for k in order {
                let r = chunks[k].clone();
                assert!(c.take().is_none(), "not ready before the last chunk");
                c.deliver(reply(r.start, &expected[r]));
            }
            assert_eq!(c.take().unwrap().unwrap(), expected, "order {order:?}");
        }
    }

    #[test]
    fn a_failed_chunk_fails_the_call_and_later_chunks_are_ignored() {
        let c = collector(4);
        c.deliver(reply(2, &[5, 6]));
        c.deliver(Reply {
            first_index: 0,
            count: 2,
            pid: 1,
            outcome: Err(Error::PoolClosed),
        });
        c.deliver(reply(0, &[1, 2]));
        assert!(matches!(c.take(), Some(Err(Error::PoolClosed))));
    }

    #[test]
    fn a_short_reply_is_a_protocol_error() {
        let c = collector(3);
        let mut short = reply(0, &[1, 2]);
        short.count = 3;
        c.deliver(short);
        assert!(matches!(c.take(), Some(Err(Error::Protocol(_)))));
    }
}
