//! The driver thread of one worker: batches from the queue to the worker and back,
//! pipelining small quick batches, replacing the worker when it fails.
//!
//! [`drive`] is the thread's body: it starts the slot's first worker and then runs a
//! [`Driver`], whose loop is four named steps (fill, await the front reply, handle a
//! lost worker, recycle). What happens to the batches of a worker that died is
//! decided by [`worker_lost`], with [`fates`].
//!
//! The send-ahead and grouping rules are tuned by the constants below; the design
//! notes (`README.md` beside this file) explain them.

use std::collections::VecDeque;
use std::sync::mpsc::Sender;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::connection::{Connection, Frame, LinkFailure};
use super::{Batch, Engine, HEADER_ROOM, ResultFrame, lock};
use crate::error::{Error, WorkerExit, chunk_too_large};

/// Batches a driver keeps in flight on one worker, so the worker never waits for
/// the pool between small batches.
///
/// Counted in frames, the one the worker runs included: while it runs one, up to
/// three more wait in its link. 1 instead with a task time limit
/// ([`Driver::depth`]).
const PIPELINE_DEPTH: usize = 4;

/// A worker that finished its last batch faster than this gets the next batches of
/// the same task sent ahead.
///
/// Timed from the previous reply, or from the send when nothing was in flight
/// ([`Driver::busy_since`]). A slower task gets one frame at a time: the round trip
/// is small beside its run time, and a batch sent ahead would wait on this worker
/// while another may be free.
const SEND_AHEAD_BELOW: Duration = Duration::from_micros(500);

/// Only frames up to this size are sent ahead: everything in flight must fit in the
/// link's kernel buffer (64 KiB for a pipe), or pool and worker could both block
/// writing to each other (see [`ahead_frame`]).
///
/// The bound that holds on a usual 64 KiB pipe, where a quarter of the buffer would
/// allow 16 KiB.
const PIPELINE_MAX_FRAME: usize = 12 * 1024;

/// Largest payload a frame sent ahead may carry on a link holding `capacity` bytes:
/// [`PIPELINE_DEPTH`] frames of it, with their headers, fit.
///
/// The smaller of a quarter of `capacity` and [`PIPELINE_MAX_FRAME`], less
/// [`HEADER_ROOM`]: 11.5 KiB on a 64 KiB pipe, 0 (nothing sent ahead) on a link of
/// 2 KiB or less. Kept per worker in [`Connection::ahead_frame`]. Only frames sent
/// ahead need the bound: the first frame goes to an idle worker, which reads it
/// whole before it writes anything.
pub(super) fn ahead_frame(capacity: usize) -> usize {
    (capacity / PIPELINE_DEPTH)
        .min(PIPELINE_MAX_FRAME)
        .saturating_sub(HEADER_ROOM)
}

/// Small batches of a quick task go to a worker several in one frame (each keeps its
/// own results and errors), so that a wake-up of the worker and of the driver serves
/// many items, not one. A group is sized to take about this long on the worker, by the
/// time per item of the last frame…
const GROUP_BUDGET: Duration = Duration::from_micros(200);

/// …and holds at most this many items.
///
/// [`group_size`] clamps to it (a pace too quick to measure would otherwise give
/// up to 200 000 items); a group's bytes are bounded apart, by
/// [`Connection::ahead_frame`].
const GROUP_MAX_ITEMS: usize = 4096;

/// A batch taken from a short queue (guided scheduling, [`Engine::next`]) is cut
/// only if it is expected to take at least this long, by the pace of the last frame
/// of its task on this driver: a cut costs a round trip, which must be small beside
/// what it spreads over the workers…
const GUIDED_ABOVE: Duration = Duration::from_millis(2);

/// …and only if its items take at least this long each: batches of tiny items are
/// left whole (they are grouped and sent ahead instead, and a cut would scan many
/// lengths under the queue's lock).
const GUIDED_MIN_ITEM: Duration = Duration::from_micros(100);

/// The body of driver thread `slot`. Reports the first worker's start-up through
/// `started`, then serves the queue until the pool closes.
///
/// First the thread is made a driver of this pool: `DRIVER_OF` names the engine (so
/// that a callback blocking on its own pool is refused), `SIGPIPE` is blocked (a write
/// to a dead worker must be an error, not a signal that ends the program), and, for a
/// pool built by a normally scheduled thread, it runs as `SCHED_BATCH`. If the first
/// worker cannot start, the driver reports that, counts itself occupied and stops
/// without serving. At the end the slot's worker is shut down (politely after `close`,
/// killed after `terminate`), and the driver leaves the engine
/// ([`Engine::driver_exit`]) with the error it stopped on, if any.
pub(crate) fn drive(engine: Arc<Engine>, slot: usize, started: Sender<Result<u32, Error>>) {
    super::DRIVER_OF.with(|pool| pool.set(Arc::as_ptr(&engine) as usize));
    crate::sys::block_sigpipe();
    if engine.config.batch_drivers {
        crate::sys::schedule_as_batch();
    }
    match Connection::start(&engine, slot) {
        Ok(conn) => {
            let _ = started.send(Ok(conn.pid));
            *lock(&engine.links[slot]) = Some(conn);
        }
        Err(e) => {
            let _ = started.send(Err(e.clone()));
            engine.set_occupied(&mut false, true);
            engine.driver_exit(Some(e));
            return;
        }
    }
    drop(started);
    let lost = Driver::new(&engine, slot).run();
    let conn = lock(&engine.links[slot]).take();
    if let Some(conn) = conn {
        conn.shutdown(&engine);
    }
    engine.driver_exit(lost);
}

/// How filling the pipeline ended.
enum Filled {
    /// As far as it could: the pipeline is full, or nothing more may go now.
    /// With nothing in flight, the pool is closed and its queue empty, or it
    /// terminates: the driver stops.
    Done,
    /// A frame could not be written: the worker is gone. `unsent` is that frame.
    Lost {
        /// The batches of the frame that could not be written, for
        /// [`worker_lost`] to settle with those in flight.
        unsent: Vec<Batch>,
        /// How the write failed: [`LinkFailure::Unsent`], or
        /// [`LinkFailure::Broken`] if the transport refused the frame.
        failure: LinkFailure,
    },
}

/// One driver: the batches of the queue to the worker of its slot and back.
///
/// Its loop ([`run`](Self::run)) is four named steps: [`fill`](Self::fill) the
/// pipeline from the queue, [`await_front`](Self::await_front) the reply to the
/// oldest frame in flight, [`on_lost`](Self::on_lost) when the worker failed, and
/// [`recycle`](Self::recycle) a worker that reached its limits. The engine's notes
/// (`README.md` beside this file) explain the rules each step follows.
///
/// Invariants between the steps: a frame in flight means the link is held and
/// holds a live connection, and the driver counts as occupied; the link is let go
/// only in `fill`, when nothing is in flight and the driver is about to wait for
/// work.
pub(super) struct Driver<'e> {
    /// The pool's shared state.
    engine: &'e Engine,
    /// This driver's index in [`Engine::workers`] and [`Engine::links`].
    slot: usize,
    /// Frames kept in flight at most: 1 with a task time limit (each item is timed
    /// alone), else [`PIPELINE_DEPTH`].
    depth: usize,
    /// Items a worker runs before it is replaced (`max_tasks_per_child`);
    /// `usize::MAX` without that option.
    max_items: usize,
    /// Frames in flight, oldest first: the batches each carries, and its id.
    /// Only the front one can have been started by the worker.
    in_flight: VecDeque<(Vec<Batch>, u64)>,
    /// This driver counts as busy in the engine (see [`Engine::set_occupied`]).
    occupied: bool,
    /// The task whose last frame came back quick enough to send more ahead. For
    /// long tasks the round trip does not matter, and a batch queued behind a long
    /// one on this worker could have run at once on another.
    quick: Option<&'static str>,
    /// Items per frame for that task (see [`group_size`]). 1, no grouping, at first
    /// and again once the worker is lost or refuses a group.
    group_items: usize,
    /// The task of the last frame answered and its time per item: what
    /// [`slow`](Self::slow) judges a batch of that task by. `None` before the first
    /// reply.
    pace: Option<(&'static str, Duration)>,
    /// Since when the frame now at the front has been there.
    ///
    /// Set when a frame goes to an idle worker and at every reply, so the time to
    /// the next reply is what the worker took for that frame.
    busy_since: Instant,
    /// The connection, held while work is in flight and released while the driver
    /// waits for work (then a direct call may borrow it).
    ///
    /// A held guard with `None` inside: the worker is gone, and
    /// [`connection`](Self::connection) starts the next.
    link: Option<MutexGuard<'e, Option<Connection>>>,
}

impl<'e> Driver<'e> {
    /// The driver of `slot`, with nothing in flight.
    pub(super) fn new(engine: &'e Engine, slot: usize) -> Self {
        let depth = if engine.config.task_timeout.is_some() {
            1
        } else {
            PIPELINE_DEPTH
        };
        Driver {
            engine,
            slot,
            depth,
            max_items: engine.config.max_tasks_per_child.unwrap_or(usize::MAX),
            in_flight: VecDeque::with_capacity(depth),
            occupied: false,
            quick: None,
            group_items: 1,
            pace: None,
            busy_since: Instant::now(),
            link: None,
        }
    }

    /// Serves the queue until the pool closes (`None`) or no worker can be started
    /// for this slot any more (the error).
    ///
    /// Each turn fills the pipeline, waits for the front reply, then recycles the
    /// worker if it is spent. A failed write (in `fill`) or read (in `await_front`)
    /// goes to `on_lost`, which replaces the worker, and the turn starts over. When
    /// the pool terminates the loop stops at once: frames still in flight are
    /// dropped with the driver, and their batches tell their sinks `PoolClosed`. A
    /// stopping driver counts as occupied, so no batch is left queued for it.
    pub(super) fn run(mut self) -> Option<Error> {
        let stop = loop {
            match self.fill() {
                Err(e) => break Some(e),
                Ok(Filled::Lost { unsent, failure }) => match self.on_lost(Some(unsent), failure) {
                    Ok(true) => continue,
                    Ok(false) => break None,
                    Err(e) => break Some(e),
                },
                Ok(Filled::Done) if self.in_flight.is_empty() => break None, // closing
                Ok(Filled::Done) => {}
            }
            if let Err(failure) = self.await_front() {
                match self.on_lost(None, failure) {
                    Ok(true) => continue,
                    Ok(false) => break None,
                    Err(e) => break Some(e),
                }
            }
            if self.engine.is_terminating() {
                break None;
            }
            if let Err(e) = self.recycle() {
                break Some(e);
            }
        };
        self.set_occupied(true);
        stop
    }

    /// Whether `batch` is slow enough to be cut when taken from a short queue
    /// ([`Engine::next`]): its task is the one of the last reply, whose items took at
    /// least [`GUIDED_MIN_ITEM`] each, and at that pace the batch takes at least
    /// [`GUIDED_ABOVE`]. A task this driver has not timed yet is never cut.
    fn slow(pace: Option<(&'static str, Duration)>, batch: &Batch) -> bool {
        pace.is_some_and(|(task, per_item)| {
            task == batch.task
                && per_item >= GUIDED_MIN_ITEM
                && per_item.saturating_mul(batch.count) >= GUIDED_ABOVE
        })
    }

    /// Records whether this driver has work in flight (see [`Engine::set_occupied`]).
    fn set_occupied(&mut self, now: bool) {
        self.engine.set_occupied(&mut self.occupied, now);
    }

    /// The connection, holding the link and starting a new worker if the last one
    /// is gone (it died, or a direct call lost it).
    ///
    /// Taking the link waits while a direct call has borrowed it.
    ///
    /// # Errors
    ///
    /// The error of [`Connection::start`]: no worker could be started.
    fn connection(&mut self) -> Result<&mut Connection, Error> {
        let (engine, slot) = (self.engine, self.slot);
        let held = self.link.get_or_insert_with(|| lock(&engine.links[slot]));
        if held.is_none() {
            **held = Some(Connection::start(engine, slot)?);
        }
        held.as_mut().ok_or(Error::PoolClosed)
    }

    /// Sends frames from the queue while the pipeline has room: waits for work when
    /// nothing is in flight, else takes only batches of the quick task that fit the
    /// link's buffer (grouping small ones). Fails the batches of a frame over the cap
    /// (the worker lives). `Err` when no worker could be started.
    ///
    /// With nothing in flight it lets go of the link and waits in [`Engine::next`].
    /// Otherwise it sends ahead only batches of the task the last reply found
    /// quick, while the worker's allowance is not spent (the items it may still
    /// take before `max_tasks_per_child`; none once it is over
    /// `max_memory_per_child`), and only one that fits [`Connection::ahead_frame`]
    /// ([`Engine::try_next`]).
    ///
    /// A frame's first batch takes more batches of its task into a group
    /// ([`Engine::take_more`]) when the pool has no time limit, the last reply
    /// found this task quick and gave a group size over 1, and the batch is not
    /// [`solo`](Batch::solo) and fits `ahead_frame` itself: up to `group_items`
    /// items and the allowance, within `ahead_frame` bytes and the frame cap.
    ///
    /// # Errors
    ///
    /// No worker could be started for the slot; the batch taken goes back to the
    /// head of the queue.
    fn fill(&mut self) -> Result<Filled, Error> {
        let engine = self.engine;
        while self.in_flight.len() < self.depth {
            let (items_sent, ahead, over_memory) = self
                .link
                .as_ref()
                .and_then(|l| l.as_ref())
                .map_or((0, 0, false), |c| {
                    (c.items_sent, c.ahead_frame, c.over_memory)
                });
            // A worker to be replaced gets nothing more sent ahead.
            let allowance = if over_memory {
                0
            } else {
                self.max_items.saturating_sub(items_sent)
            };
            let next = if self.in_flight.is_empty() {
                self.link = None;
                let pace = self.pace;
                engine.next(|b| Self::slow(pace, b))
            } else {
                match self.quick.filter(|_| allowance > 0) {
                    Some(task) => engine.try_next(|b| b.task == task && b.payload.len() <= ahead),
                    None => None,
                }
            };
            let Some(batch) = next else { break };
            if self.in_flight.is_empty() {
                self.set_occupied(true);
                self.busy_since = Instant::now();
            }
            let task = batch.task;
            let mut group = vec![batch];
            let (depth, group_items, quick) = (self.depth, self.group_items, self.quick);
            let conn = match self.connection() {
                Ok(conn) => conn,
                Err(e) => {
                    engine.requeue(group);
                    self.set_occupied(true);
                    return Err(e);
                }
            };
            // A group is sent ahead like any frame: it stays within the link's
            // buffer, and within the frame cap.
            let bytes = conn.ahead_frame.min(engine.max_chunk());
            if depth > 1
                && group_items > 1
                && quick == Some(task)
                && !group[0].solo
                && group[0].payload.len() <= bytes
            {
                let limit = group_items.min(allowance);
                engine.take_more(&mut group, |b| b.task == task, limit, bytes);
            }
            let payload: usize = group.iter().map(|b| b.payload.len()).sum();
            if payload > engine.max_chunk() {
                // Refused before a byte is written (an `imap` chunk over the cap): the
                // link stays in step and the worker lives; only this batch fails.
                let error =
                    chunk_too_large(task, group[0].first_index, payload, engine.max_chunk());
                for batch in group {
                    batch.complete(conn.pid, Err(error.clone()));
                }
                if self.in_flight.is_empty() {
                    self.set_occupied(false);
                }
                continue;
            }
            let parts: Vec<&[u8]> = group.iter().map(|b| &b.payload[..]).collect();
            let frame = Frame {
                task,
                first_index: group[0].first_index,
                count: group.iter().map(|b| b.count).sum(),
                items: &parts,
                direct: false,
            };
            let sent = conn.send(engine, &frame);
            drop(parts);
            match sent {
                Ok(id) => self.in_flight.push_back((group, id)),
                Err(failure) => {
                    return Ok(Filled::Lost {
                        unsent: group,
                        failure,
                    });
                }
            }
        }
        Ok(Filled::Done)
    }

    /// Waits for the reply to the oldest frame in flight and hands each of its
    /// batches its part; learns from the time it took whether to send ahead and how
    /// many items to group. `Err` when the worker failed (the frame stays in flight).
    ///
    /// A reply of the front frame's task within [`SEND_AHEAD_BELOW`] makes that
    /// task `quick`; its pace sets `group_items` ([`group_size`]). With
    /// `max_memory_per_child`, the worker's size is read after each reply. A refusal
    /// of a group of several batches is taken as results over the frame cap: the
    /// batches go back to the queue one a frame ([`requeue_solo`]), and send-ahead
    /// and grouping start over. A refused single batch gets the refusal as its
    /// error.
    ///
    /// # Errors
    ///
    /// How the link failed; the frame is back at the front of `in_flight`, for
    /// [`on_lost`](Self::on_lost) to settle.
    fn await_front(&mut self) -> Result<(), LinkFailure> {
        let engine = self.engine;
        let Some((group, id)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let Some(conn) = self.link.as_mut().and_then(|l| l.as_mut()) else {
            // Work in flight always holds a live connection; should it not, the
            // batches still get an answer.
            for batch in group {
                batch.complete(0, Err(Error::protocol("driver lost its connection")));
            }
            return Ok(());
        };
        let count: u32 = group.iter().map(|b| b.count).sum();
        match conn.receive(engine, id, count) {
            Ok(Err(_)) if group.len() > 1 => {
                // The worker could not answer the group in one frame (its results
                // are over the cap): each batch goes again, in a frame of its own.
                self.quick = None;
                self.group_items = 1;
                self.busy_since = Instant::now();
                requeue_solo(engine, group);
            }
            Ok(outcome) => {
                let now = Instant::now();
                let took = now - self.busy_since;
                self.quick = (took < SEND_AHEAD_BELOW).then_some(group[0].task);
                self.group_items = group_size(took, count);
                self.pace = Some((group[0].task, took / count.max(1)));
                self.busy_since = now;
                complete(group, conn.pid, outcome);
                if let Some(limit) = engine.config.max_memory_per_child {
                    conn.check_memory(engine, limit);
                }
            }
            Err(failure) => {
                self.in_flight.push_front((group, id));
                return Err(failure);
            }
        }
        if self.in_flight.is_empty() {
            self.set_occupied(false);
        }
        Ok(())
    }

    /// The worker failed: settles each batch it held (see [`worker_lost`]) and
    /// starts its replacement. `Ok(false)` when the pool is terminating (stop),
    /// `Err` when no replacement could be started.
    ///
    /// `unsent` is the frame whose write failed (from `fill`); `None` when the read
    /// failed (from `await_front`). Afterwards nothing is in flight: the driver is
    /// available, and send-ahead and grouping start over for the new worker, which
    /// is started now rather than with the next batch.
    ///
    /// # Errors
    ///
    /// The replacement could not be started ([`Connection::start`]).
    fn on_lost(&mut self, unsent: Option<Vec<Batch>>, failure: LinkFailure) -> Result<bool, Error> {
        let engine = self.engine;
        if let Some(conn) = self.link.as_mut().and_then(|l| l.as_mut()) {
            worker_lost(engine, conn, &mut self.in_flight, unsent, failure);
        }
        self.quick = None;
        self.group_items = 1;
        self.set_occupied(false);
        if let Some(held) = self.link.as_mut() {
            **held = None;
        }
        if engine.is_terminating() {
            return Ok(false);
        }
        // Replace the worker now rather than with the next batch.
        if self.link.is_some() {
            self.connection()?;
        }
        Ok(true)
    }

    /// Replaces a worker that reached `max_tasks_per_child` or passed
    /// `max_memory_per_child`, once nothing is in flight on it.
    ///
    /// The old worker is shut down politely ([`Connection::shutdown`]: up to 5 s to
    /// exit) and the new one started at once, both under the held link.
    ///
    /// # Errors
    ///
    /// The new worker could not be started ([`Connection::start`]).
    fn recycle(&mut self) -> Result<(), Error> {
        let engine = self.engine;
        let spent = self
            .link
            .as_ref()
            .and_then(|l| l.as_ref())
            .is_some_and(|c| c.items_done >= self.max_items || c.over_memory);
        if !spent || !self.in_flight.is_empty() {
            return Ok(());
        }
        if let Some(old) = self.link.as_mut().and_then(|held| held.take()) {
            old.shutdown(engine);
        }
        self.connection().map(|_| ())
    }
}

/// Items per frame for a task whose last frame of `count` items took `took`: as many
/// as fit the group budget at that pace.
///
/// At least 1 (slow items are not grouped), at most [`GROUP_MAX_ITEMS`]; 100 items
/// in 100 µs give 200.
fn group_size(took: Duration, count: u32) -> usize {
    let per_item = took.as_nanos() / u128::from(count.max(1));
    let fit = GROUP_BUDGET.as_nanos() / per_item.max(1);
    usize::try_from(fit)
        .unwrap_or(usize::MAX)
        .clamp(1, GROUP_MAX_ITEMS)
}

/// Hands each batch of a frame its part of the reply.
///
/// A single batch gets the outcome whole; a group's reply is shared out by item
/// count ([`ResultFrame::share_out`]), and an error goes to each of its batches.
fn complete(mut group: Vec<Batch>, pid: u32, outcome: Result<ResultFrame, Error>) {
    if group.len() == 1 {
        if let Some(batch) = group.pop() {
            batch.complete(pid, outcome);
        }
        return;
    }
    match outcome {
        Ok(frame) => frame.share_out(group, |b| b.count, |batch, part| batch.complete(pid, part)),
        Err(e) => {
            for batch in group {
                batch.complete(pid, Err(e.clone()));
            }
        }
    }
}

/// How often a batch is put back because its worker was found dead before it had
/// started it, at the head of the line (the case that cannot be told apart from a
/// worker that dies on receiving it), before it counts as lost with that worker.
const MAX_RESTARTS: u32 = 3;

/// What a dead worker had done with one of the batches it held.
///
/// Decided for the batches of the front frame only, by [`fates`]; every batch of a
/// frame behind it is unstarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Its items had all run; their results died with the worker.
    Finished,
    /// It was running: item `index` of the input was.
    /// It gets the failure, or a retry.
    Running { index: usize },
    /// The worker never started it.
    Unstarted,
}

/// The fates of the batches of one frame of `counts` items each, for a worker that
/// was at item `at` of the frame (`None`: had not started the frame).
///
/// `counts` gives each batch's first index and item count, in the frame's order.
/// A batch is [`Finished`](Fate::Finished) if `at` is past its last item (a batch
/// of no items never is), else [`Running`](Fate::Running) if `at` is at or past its
/// first item, else [`Unstarted`](Fate::Unstarted); with `at` `None`, all are
/// unstarted.
fn fates(counts: impl IntoIterator<Item = (usize, u32)>, at: Option<u32>) -> Vec<Fate> {
    let mut offset = 0u32;
    counts
        .into_iter()
        .map(|(first_index, count)| {
            let start = offset;
            offset = offset.saturating_add(count);
            match at {
                Some(k) if k >= offset && count > 0 => Fate::Finished,
                Some(k) if k >= start => Fate::Running {
                    index: first_index + (k - start) as usize,
                },
                _ => Fate::Unstarted,
            }
        })
        .collect()
}

/// The worker of `conn` failed with `failure` holding the frames `in_flight` (the
/// front one sent first) and, if a write failed, the `unsent` frame: reaps it and
/// settles each batch (see the engine's notes on a dead worker's work).
///
/// - The worker runs frames in order and everything it wrote arrives before the end
///   of its stream, so only the front frame can have started; the frames behind it
///   and the unsent one never did, and go back to the queue without using a retry.
/// - After a failed write, the replies the worker sent before dying are read first.
/// - Within the front frame, the progress page tells which batch was running and at
///   which item: that batch gets the failure (or a retry, if it died with the
///   worker); the batches before it finished, but their results are lost with the
///   worker: with retries on they run again, without using one, else they fail. A
///   front frame the worker had not started goes back to the queue, at most
///   [`MAX_RESTARTS`] times.
///
/// The running batch's error is delivered first, so a `map` reports it.
///
/// Where the worker was in the front frame: for a time-out, the item it last
/// reported starting; for a protocol error (one that
/// [`reap_failed`](Connection::reap_failed) did not find to be a death), the frame's
/// first item, so the first batch is charged; otherwise what the dead worker tells
/// ([`Connection::started`]). The unsent frame, with nothing in flight before it,
/// counts as not started. A batch put back as not started at the head of the line
/// counts one restart; one that has used [`MAX_RESTARTS`] makes the frame count as
/// started at item 0 instead. Only a death (`Closed`) is retried, and not while the
/// pool terminates; a batch that is not retried gets [`failure_error`].
fn worker_lost(
    shared: &Engine,
    conn: &mut Connection,
    in_flight: &mut VecDeque<(Vec<Batch>, u64)>,
    unsent: Option<Vec<Batch>>,
    failure: LinkFailure,
) {
    let (exit, mut failure) = conn.reap_failed(shared, failure);
    let pid = conn.pid;
    if matches!(failure, LinkFailure::Unsent) {
        // The worker may have answered frames before it died: their replies are
        // still in the link, followed by its end.
        while let Some((group, id)) = in_flight.pop_front() {
            let count = group.iter().map(|b| b.count).sum();
            match conn.receive(shared, id, count) {
                Ok(outcome) => answered(shared, group, pid, outcome),
                Err(_) => {
                    in_flight.push_front((group, id));
                    break;
                }
            }
        }
        failure = LinkFailure::Closed;
    }
    let mut requeued = Vec::new();
    let mut finished = Vec::new();
    let mut frames = in_flight
        .drain(..)
        .map(|(g, id)| (g, Some(id)))
        .chain(unsent.map(|g| (g, None)));
    // Only the front frame can have started; the others go back as they are.
    if let Some((group, id)) = frames.next() {
        let at = match (&failure, id) {
            (LinkFailure::TimedOut { done }, _) => Some(*done),
            (LinkFailure::Broken(_), _) => Some(0),
            (_, Some(id)) => conn.started(id),
            (_, None) => None, // the unsent frame, with nothing before it
        };
        // Not started at the head of the line: once too often, it counts as lost.
        let at = at.or_else(|| {
            group
                .iter()
                .any(|b| b.restarts >= MAX_RESTARTS)
                .then_some(0)
        });
        let fates = fates(group.iter().map(|b| (b.first_index, b.count)), at);
        for (mut batch, fate) in group.into_iter().zip(fates) {
            match fate {
                Fate::Unstarted => {
                    if at.is_none() {
                        batch.restarts += 1;
                    }
                    requeued.push(batch);
                }
                Fate::Running { index } => {
                    let retry = matches!(failure, LinkFailure::Closed)
                        && batch.retries < shared.config.retry_lost_tasks
                        && !shared.is_terminating();
                    if retry {
                        batch.retries += 1;
                        requeued.push(batch);
                    } else {
                        let task = batch.task;
                        let failure = std::mem::replace(&mut failure, LinkFailure::Closed);
                        let error = failure_error(shared, task, index, pid, exit, failure);
                        batch.complete(pid, Err(error));
                    }
                }
                // It did not die with the worker: running it again uses no retry (every
                // death charges the batch that was running, so this ends).
                Fate::Finished if shared.config.retry_lost_tasks > 0 => requeued.push(batch),
                Fate::Finished => finished.push(batch),
            }
        }
    }
    requeued.extend(frames.flat_map(|(group, _)| group));
    for batch in finished {
        let error = failure_error(
            shared,
            batch.task,
            batch.first_index,
            pid,
            exit,
            LinkFailure::Closed,
        );
        batch.complete(pid, Err(error));
    }
    shared.requeue(requeued);
}

/// Hands each batch of a frame its part of the reply, or, for a group the worker
/// refused (its results are over the cap, so it could not answer in one frame),
/// sends each batch again in a frame of its own.
///
/// For the replies read after a failed write, in [`worker_lost`]; `await_front`
/// makes the same choice itself.
fn answered(engine: &Engine, group: Vec<Batch>, pid: u32, outcome: Result<ResultFrame, Error>) {
    if group.len() > 1 && outcome.is_err() {
        requeue_solo(engine, group);
    } else {
        complete(group, pid, outcome);
    }
}

/// Puts the batches of a group the worker refused back in the queue, each to go in
/// a frame of its own.
///
/// At the head of the queue, in order; marked [`solo`](Batch::solo), so that
/// [`Engine::take_more`] never groups them again. No retry or restart is used.
fn requeue_solo(engine: &Engine, group: Vec<Batch>) {
    let solo = group
        .into_iter()
        .map(|mut batch| {
            batch.solo = true;
            batch
        })
        .collect();
    engine.requeue(solo);
}

/// The error a batch of `task` gets when its worker failed while running item
/// `index` of the input (for a time-out, the item of the batch's first index plus
/// the items done).
///
/// [`Error::PoolClosed`] while the pool terminates (the kill was the pool's own);
/// else a death ([`LinkFailure::Closed`] or [`LinkFailure::Unsent`]) is
/// [`Error::WorkerDied`] with the worker's exit, a time-out is [`Error::Timeout`]
/// with the pool's limit, and a protocol failure is its own error.
pub(super) fn failure_error(
    shared: &Engine,
    task: &str,
    index: usize,
    pid: u32,
    exit: WorkerExit,
    failure: LinkFailure,
) -> Error {
    if shared.is_terminating() {
        return Error::PoolClosed;
    }
    match failure {
        LinkFailure::Closed | LinkFailure::Unsent => Error::WorkerDied {
            task: task.to_owned(),
            pid,
            exit,
            index,
        },
        LinkFailure::TimedOut { .. } => Error::Timeout {
            task: Some(task.to_owned()),
            index: Some(index),
            pid: Some(pid),
            after: shared.config.task_timeout.unwrap_or_default(),
        },
        LinkFailure::Broken(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fake::{NoTransport, ThreadLaunch};
    use crate::engine::{Call, Config, Reply, ReplySink};
    use crate::transport::LinkConfig;
    use crate::wire::protocol;
    use std::sync::Mutex;

    /// What a test sink heard for each batch: its first index, and its values or
    /// error.
    type Heard = Vec<(usize, Result<Vec<u32>, Error>)>;

    /// Records every reply, decoded.
    #[derive(Default)]
    struct Record {
        heard: Mutex<Heard>,
    }

    impl ReplySink for Record {
        fn deliver(&self, reply: Reply) -> Option<usize> {
            let first = reply.first_index;
            let (mut values, mut error) = (Vec::new(), None);
            let read = crate::caller::result::decode_reply::<u32>(
                "t",
                reply,
                |v| values.push(v),
                |_, e| {
                    error.get_or_insert(e);
                },
            );
            lock(&self.heard).push((first, error.map_or(Ok(values), Err)));
            read
        }
    }

    /// An engine of `processes` fake workers with its drivers running; `configure`
    /// adjusts the defaults.
    fn engine(
        processes: usize,
        configure: impl FnOnce(&mut Config),
    ) -> (
        Arc<Engine>,
        Arc<ThreadLaunch>,
        Vec<std::thread::JoinHandle<()>>,
    ) {
        let launch = Arc::new(ThreadLaunch::default());
        let link = LinkConfig {
            max_frame: 1 << 20,
            startup_timeout: Duration::from_secs(20),
        };
        let mut config = Config {
            processes,
            launch: Arc::clone(&launch) as Arc<dyn crate::engine::Launch>,
            ..Config::local(&NoTransport, link, 0x5ec2e7)
        };
        configure(&mut config);
        let engine = Arc::new(Engine::new(config));
        let (tx, rx) = std::sync::mpsc::channel();
        let drivers = (0..processes)
            .map(|slot| {
                let (engine, tx) = (Arc::clone(&engine), tx.clone());
                std::thread::spawn(move || drive(engine, slot, tx))
            })
            .collect();
        for _ in 0..processes {
            rx.recv().unwrap().unwrap();
        }
        (engine, launch, drivers)
    }

    /// A batch of `task` over `items`, from input index `first`, told to `sink`.
    fn batch(task: &'static str, first: usize, items: &[u32], sink: &Arc<Record>) -> Batch {
        let mut payload = Vec::new();
        for n in items {
            protocol::push_item(&mut payload, |b| protocol::encode_into(&(*n,), b)).unwrap();
        }
        Batch {
            task,
            first_index: first,
            count: items.len() as u32,
            payload,
            job: Arc::new(Call::default()),
            retries: 0,
            restarts: 0,
            solo: false,
            kept: Vec::new(),
            sink: Some(Arc::clone(sink) as Arc<dyn ReplySink>),
        }
    }

    /// The registered name of the fake's task `name` (`"square"`, `"die"`).
    fn name_of(name: &str) -> &'static str {
        let path = format!("procpool_core::engine::fake::{name}");
        crate::wire::registry::task_names()
            .into_iter()
            .find(|n| *n == path)
            .expect("the fake's tasks are registered")
    }

    /// Waits until `sink` heard `n` replies (a liveness bound, not a timing claim).
    fn heard(sink: &Record, n: usize) -> Heard {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let heard = lock(&sink.heard);
            if heard.len() >= n {
                let mut all: Heard = heard.iter().map(|(i, r)| (*i, r.clone())).collect();
                all.sort_by_key(|(i, _)| *i);
                return all;
            }
            drop(heard);
            assert!(
                Instant::now() < until,
                "only {} of {n} replies",
                lock(&sink.heard).len()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `heard` is batch `first`, answered with `values`.
    fn assert_ok(heard: &(usize, Result<Vec<u32>, Error>), first: usize, values: &[u32]) {
        assert_eq!(heard.0, first);
        assert_eq!(
            heard.1.as_ref().ok().map(Vec::as_slice),
            Some(values),
            "{heard:?}"
        );
    }

    fn stop(engine: &Engine, drivers: Vec<std::thread::JoinHandle<()>>) {
        engine.close();
        for driver in drivers {
            driver.join().unwrap();
        }
    }

    #[test]
    fn fill_and_await_carry_every_batch_to_its_sink() {
        let (engine, launch, drivers) = engine(2, |_| {});
        let sink = Arc::new(Record::default());
        let square = name_of("square");
        // Many small batches of a quick task: sent ahead and grouped.
        let batches: Vec<Batch> = (0..500u32)
            .map(|k| batch(square, 2 * k as usize, &[2 * k, 2 * k + 1], &sink))
            .collect();
        engine.submit(batches).unwrap();
        let heard = heard(&sink, 500);
        for (k, (first, values)) in heard.iter().enumerate() {
            let n = 2 * k as u32;
            assert_eq!(*first, 2 * k);
            assert_eq!(values.as_ref().unwrap(), &[n * n, (n + 1) * (n + 1)]);
        }
        assert_eq!(launch.launched(), 2, "no worker replaced");
        stop(&engine, drivers);
    }

    #[test]
    fn on_lost_fails_the_running_batch_at_its_item_and_requeues_the_rest() {
        let (engine, launch, drivers) = engine(1, |_| {});
        let sink = Arc::new(Record::default());
        let (square, die) = (name_of("square"), name_of("die"));
        // Warm up, so that the next batches are sent ahead of the dying one.
        engine.submit([batch(square, 0, &[1], &sink)]).unwrap();
        heard(&sink, 1);
        engine
            .submit([
                batch(square, 10, &[1, 2], &sink),
                batch(die, 20, &[5, 6, 7], &sink),
                batch(square, 30, &[3], &sink),
                batch(square, 40, &[4], &sink),
            ])
            .unwrap();
        let heard = heard(&sink, 5);
        assert_ok(&heard[1], 10, &[1, 4]);
        assert!(
            matches!(
                &heard[2],
                (
                    20,
                    Err(Error::WorkerDied {
                        index: 22,
                        exit: WorkerExit::Signal(9),
                        ..
                    })
                )
            ),
            "the batch running when its worker died fails at the item it was at: {:?}",
            heard[2]
        );
        assert_ok(&heard[3], 30, &[9]);
        assert_ok(&heard[4], 40, &[16]);
        assert_eq!(launch.launched(), 2, "the dead worker was replaced");
        stop(&engine, drivers);
    }

    #[test]
    fn a_worker_killed_while_idle_is_replaced_and_nothing_fails() {
        let (engine, launch, drivers) = engine(1, |_| {});
        let sink = Arc::new(Record::default());
        let square = name_of("square");
        engine.submit([batch(square, 0, &[3], &sink)]).unwrap();
        heard(&sink, 1);
        launch.kill_newest();
        engine.submit([batch(square, 1, &[4], &sink)]).unwrap();
        let heard = heard(&sink, 2);
        assert_ok(&heard[1], 1, &[16]);
        assert_eq!(launch.launched(), 2);
        stop(&engine, drivers);
    }

    #[test]
    fn recycle_replaces_a_worker_at_max_tasks_per_child() {
        let (engine, launch, drivers) = engine(1, |c| c.max_tasks_per_child = Some(4));
        let sink = Arc::new(Record::default());
        let square = name_of("square");
        let batches: Vec<Batch> = (0..12u32)
            .map(|k| batch(square, k as usize, &[k], &sink))
            .collect();
        engine.submit(batches).unwrap();
        let heard = heard(&sink, 12);
        assert!(
            heard
                .iter()
                .all(|(i, r)| r.as_ref().unwrap() == &[(*i * *i) as u32])
        );
        // No worker ran more than 4 of the 12 items (each batch is one item), and
        // the last one may have been replaced already, eagerly.
        let launched = launch.launched();
        assert!((3..=4).contains(&launched), "{launched} workers");
        stop(&engine, drivers);
    }

    #[test]
    fn a_retry_is_used_by_the_running_batch_only() {
        let (engine, launch, drivers) = engine(1, |c| c.retry_lost_tasks = 1);
        let sink = Arc::new(Record::default());
        let (square, die) = (name_of("square"), name_of("die"));
        engine.submit([batch(square, 0, &[1], &sink)]).unwrap();
        heard(&sink, 1);
        // The dying batch is retried once, dies again and fails; the batch behind
        // it was never started by either worker and runs on the third.
        engine
            .submit([batch(die, 1, &[7], &sink), batch(square, 2, &[2], &sink)])
            .unwrap();
        let heard = heard(&sink, 3);
        assert!(
            matches!(heard[1], (1, Err(Error::WorkerDied { .. }))),
            "{:?}",
            heard[1]
        );
        assert_ok(&heard[2], 2, &[4]);
        assert_eq!(launch.launched(), 3);
        stop(&engine, drivers);
    }

    /// The replies `sink` heard once they cover `items` items, sorted by first index.
    fn heard_items(sink: &Record, items: usize) -> Heard {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let got: usize = lock(&sink.heard)
                .iter()
                .map(|(_, r)| r.as_ref().map_or(0, Vec::len))
                .sum();
            if got >= items {
                return heard(sink, 0);
            }
            assert!(Instant::now() < until, "only {got} of {items} items");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_slow_batch_taken_from_a_short_queue_is_cut_and_answered_in_order_once() {
        let (engine, _launch, drivers) = engine(2, |_| {});
        let nap = name_of("nap");
        // Warm up, so that both drivers know the task to be slow (3 ms an item).
        let warm = Arc::new(Record::default());
        let batches: Vec<Batch> = (0..6u32)
            .map(|k| batch(nap, 2 * k as usize, &[2 * k, 2 * k + 1], &warm))
            .collect();
        engine.submit(batches).unwrap();
        heard_items(&warm, 12);
        // One batch of 12 items, with nothing else queued: the driver that takes it
        // keeps 6 and puts the rest back, which is cut again in turn.
        let sink = Arc::new(Record::default());
        let items: Vec<u32> = (100..112).collect();
        engine.submit([batch(nap, 100, &items, &sink)]).unwrap();
        heard_items(&sink, 12);
        stop(&engine, drivers);
        let heard = heard(&sink, 0);
        assert!(heard.len() > 1, "the batch was not cut: {heard:?}");
        let mut next = 100;
        for (first, values) in &heard {
            assert_eq!(
                *first, next,
                "parts cover the batch once, in order: {heard:?}"
            );
            let values = values.as_ref().unwrap();
            let expected: Vec<u32> = (next as u32..).take(values.len()).collect();
            assert_eq!(values, &expected);
            next += values.len();
        }
        assert_eq!(next, 112);
    }

    #[test]
    fn a_batch_of_quick_items_is_not_cut() {
        let (engine, _launch, drivers) = engine(2, |_| {});
        let square = name_of("square");
        let warm = Arc::new(Record::default());
        let batches: Vec<Batch> = (0..20u32)
            .map(|k| batch(square, k as usize, &[k], &warm))
            .collect();
        engine.submit(batches).unwrap();
        heard(&warm, 20);
        let sink = Arc::new(Record::default());
        let items: Vec<u32> = (0..3000).collect();
        engine.submit([batch(square, 0, &items, &sink)]).unwrap();
        heard_items(&sink, 3000);
        stop(&engine, drivers);
        assert_eq!(heard(&sink, 0).len(), 1, "one reply: the batch went whole");
    }

    #[test]
    fn frames_sent_ahead_fit_the_link() {
        // A 64 KiB pipe: the usual cap.
        assert_eq!(ahead_frame(64 * 1024), PIPELINE_MAX_FRAME - HEADER_ROOM);
        // A one-page pipe (the user is over pipe-user-pages-soft): small frames only,
        // and all of them with their headers fit.
        let small = ahead_frame(4096);
        assert!(small > 0 && PIPELINE_DEPTH * (small + HEADER_ROOM) <= 4096);
        // Too small to send anything ahead.
        assert_eq!(ahead_frame(1024), 0);
    }

    #[test]
    fn groups_fit_the_budget() {
        // 1 µs an item: 200 items fit 200 µs.
        assert_eq!(group_size(Duration::from_micros(100), 100), 200);
        // Very quick items: capped.
        assert_eq!(group_size(Duration::from_nanos(10), 100), GROUP_MAX_ITEMS);
        // Slow items: one at a time.
        assert_eq!(group_size(Duration::from_millis(5), 1), 1);
        assert_eq!(group_size(Duration::ZERO, 0), GROUP_MAX_ITEMS);
    }
}
