//! The driver thread of one worker: batches from the queue to the worker and back,
//! pipelining small quick batches, replacing the worker when it fails.

use std::collections::VecDeque;
use std::sync::mpsc::Sender;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::connection::{Connection, Frame, LinkFailure};
use super::{Batch, Engine, HEADER_ROOM, ResultFrame, lock};
use crate::error::chunk_too_large;
use crate::error::{Error, WorkerExit};

/// Batches a driver keeps in flight on one worker, so the worker never waits for
/// the pool between small batches.
const PIPELINE_DEPTH: usize = 4;

/// A worker that finished its last batch faster than this gets the next batches of
/// the same task sent ahead.
const SEND_AHEAD_BELOW: Duration = Duration::from_micros(500);

/// Only frames up to this size are sent ahead: everything in flight must fit in the
/// link's kernel buffer (64 KiB for a pipe), or pool and worker could both block
/// writing to each other (see [`ahead_frame`]).
const PIPELINE_MAX_FRAME: usize = 12 * 1024;

/// Largest payload a frame sent ahead may carry on a link holding `capacity` bytes:
/// [`PIPELINE_DEPTH`] frames of it, with their headers, fit.
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
const GROUP_MAX_ITEMS: usize = 4096;

/// The body of driver thread `slot`. Reports the first worker's start-up through
/// `started`, then serves the queue until the pool closes.
pub(crate) fn drive(shared: Arc<Engine>, slot: usize, started: Sender<Result<u32, Error>>) {
    super::DRIVER_OF.with(|pool| pool.set(Arc::as_ptr(&shared) as usize));
    crate::sys::block_sigpipe();
    if shared.config.batch_drivers {
        crate::sys::schedule_as_batch();
    }
    match Connection::start(&shared, slot) {
        Ok(conn) => {
            let _ = started.send(Ok(conn.pid));
            *lock(&shared.links[slot]) = Some(conn);
        }
        Err(e) => {
            let _ = started.send(Err(e.clone()));
            shared.set_occupied(&mut false, true);
            shared.driver_exit(Some(e));
            return;
        }
    }
    drop(started);
    let lost = serve(&shared, slot);
    let conn = lock(&shared.links[slot]).take();
    if let Some(conn) = conn {
        conn.shutdown(&shared);
    }
    shared.driver_exit(lost);
}

/// The connection behind a held link, starting a new worker if the last one was
/// lost by a direct call.
fn connection<'a>(
    shared: &Engine,
    slot: usize,
    link: &'a mut MutexGuard<'_, Option<Connection>>,
) -> Result<&'a mut Connection, Error> {
    if link.is_none() {
        **link = Some(Connection::start(shared, slot)?);
    }
    link.as_mut().ok_or(Error::PoolClosed)
}

/// The driver's loop: batches from the queue to the worker of `slot` and back.
/// Returns why it gave up, or `None` when the pool closed.
fn serve(shared: &Engine, slot: usize) -> Option<Error> {
    // Time limits are measured per batch: no sending ahead then.
    let depth = if shared.config.task_timeout.is_some() {
        1
    } else {
        PIPELINE_DEPTH
    };
    let max_items = shared.config.max_tasks_per_child.unwrap_or(usize::MAX);
    // Frames in flight: the batches each carries, and its id.
    let mut in_flight: VecDeque<(Vec<Batch>, u64)> = VecDeque::with_capacity(depth);
    let mut occupied = false;
    // Batches are sent ahead only while they are quick: for long tasks the round
    // trip is negligible, and a batch queued behind a long one on this worker could
    // have run at once on another.
    let mut quick: Option<&'static str> = None; // the task whose last frame was quick
    let mut group_items = 1; // items per frame for that task
    let mut busy_since = Instant::now();
    // Held while work is in flight; released while waiting for work.
    let mut link: Option<MutexGuard<'_, Option<Connection>>> = None;
    loop {
        let mut failure = None;
        // A frame that could not be written (the worker had gone).
        let mut unsent: Option<Vec<Batch>> = None;
        while in_flight.len() < depth && failure.is_none() {
            let (items_sent, ahead, over_memory) = link
                .as_ref()
                .and_then(|l| l.as_ref())
                .map_or((0, 0, false), |c| {
                    (c.items_sent, c.ahead_frame, c.over_memory)
                });
            // A worker to be replaced gets nothing more sent ahead.
            let allowance = if over_memory {
                0
            } else {
                max_items.saturating_sub(items_sent)
            };
            let next = if in_flight.is_empty() {
                link = None;
                shared.next()
            } else {
                match quick.filter(|_| allowance > 0) {
                    Some(task) => shared.try_next(|b| b.task == task && b.payload.len() <= ahead),
                    None => None,
                }
            };
            let Some(batch) = next else { break };
            if in_flight.is_empty() {
                shared.set_occupied(&mut occupied, true);
                busy_since = Instant::now();
            }
            let task = batch.task;
            let mut group = vec![batch];
            let held = link.get_or_insert_with(|| lock(&shared.links[slot]));
            let conn = match connection(shared, slot, held) {
                Ok(conn) => conn,
                Err(e) => {
                    shared.requeue(group);
                    shared.set_occupied(&mut occupied, true);
                    return Some(e);
                }
            };
            // A group is sent ahead like any frame: it stays within the link's
            // buffer, and within the frame cap.
            let bytes = conn.ahead_frame.min(shared.max_chunk());
            if depth > 1
                && group_items > 1
                && quick == Some(task)
                && !group[0].solo
                && group[0].payload.len() <= bytes
            {
                let limit = group_items.min(allowance);
                shared.take_more(&mut group, |b| b.task == task, limit, bytes);
            }
            let payload: usize = group.iter().map(|b| b.payload.len()).sum();
            if payload > shared.max_chunk() {
                // Refused before a byte is written (an `imap` chunk over the cap): the
                // link stays in step and the worker lives; only this batch fails.
                let error =
                    chunk_too_large(task, group[0].first_index, payload, shared.max_chunk());
                for batch in group {
                    batch.complete(conn.pid, Err(error.clone()));
                }
                if in_flight.is_empty() {
                    shared.set_occupied(&mut occupied, false);
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
            let sent = conn.send(shared, &frame);
            drop(parts);
            match sent {
                Ok(id) => in_flight.push_back((group, id)),
                Err(f) => {
                    unsent = Some(group);
                    failure = Some(f);
                }
            }
        }
        if in_flight.is_empty() && unsent.is_none() {
            break; // nothing in flight and nothing queued: the pool is closing
        }
        // Work is in flight, so the link is held and has a connection.
        let Some(conn) = link.as_mut().and_then(|l| l.as_mut()) else {
            for batch in in_flight
                .drain(..)
                .flat_map(|(g, _)| g)
                .chain(unsent.into_iter().flatten())
            {
                batch.complete(0, Err(Error::protocol("driver lost its connection")));
            }
            continue;
        };
        if failure.is_none()
            && let Some((group, id)) = in_flight.pop_front()
        {
            let count: u32 = group.iter().map(|b| b.count).sum();
            match conn.receive(shared, id, count) {
                Ok(Err(_)) if group.len() > 1 => {
                    // The worker could not answer the group in one frame (its results
                    // are over the cap): each batch goes again, in a frame of its own.
                    quick = None;
                    group_items = 1;
                    busy_since = Instant::now();
                    shared.requeue(
                        group
                            .into_iter()
                            .map(|mut batch| {
                                batch.solo = true;
                                batch
                            })
                            .collect(),
                    );
                    if in_flight.is_empty() {
                        shared.set_occupied(&mut occupied, false);
                    }
                }
                Ok(outcome) => {
                    let now = Instant::now();
                    let took = now - busy_since;
                    quick = (took < SEND_AHEAD_BELOW).then_some(group[0].task);
                    group_items = group_size(took, count);
                    busy_since = now;
                    complete(group, conn.pid, outcome);
                    if let Some(limit) = shared.config.max_memory_per_child {
                        conn.check_memory(limit);
                    }
                    if in_flight.is_empty() {
                        shared.set_occupied(&mut occupied, false);
                    }
                }
                Err(f) => {
                    in_flight.push_front((group, id));
                    failure = Some(f);
                }
            }
        }
        if let Some(failure) = failure {
            // The worker is gone: each batch it held is failed, or runs again.
            worker_lost(shared, conn, &mut in_flight, unsent, failure);
            quick = None;
            group_items = 1;
            shared.set_occupied(&mut occupied, false);
            if let Some(held) = link.as_mut() {
                **held = None;
            }
            if shared.is_terminating() {
                shared.set_occupied(&mut occupied, true);
                return None;
            }
            // Replace the worker now rather than with the next batch.
            if let Some(held) = link.as_mut()
                && let Err(e) = connection(shared, slot, held)
            {
                shared.set_occupied(&mut occupied, true);
                return Some(e);
            }
            continue;
        }
        if shared.is_terminating() {
            break;
        }
        if (conn.items_done >= max_items || conn.over_memory)
            && in_flight.is_empty()
            && let Some(held) = link.as_mut()
        {
            if let Some(old) = held.take() {
                old.shutdown(shared);
            }
            if let Err(e) = connection(shared, slot, held) {
                shared.set_occupied(&mut occupied, true);
                return Some(e);
            }
        }
    }
    shared.set_occupied(&mut occupied, true);
    None
}

/// Items per frame for a task whose last frame of `count` items took `took`: as many
/// as fit the group budget at that pace.
fn group_size(took: Duration, count: u32) -> usize {
    let per_item = took.as_nanos() / u128::from(count.max(1));
    let fit = GROUP_BUDGET.as_nanos() / per_item.max(1);
    usize::try_from(fit)
        .unwrap_or(usize::MAX)
        .clamp(1, GROUP_MAX_ITEMS)
}

/// Hands each batch of a frame its part of the reply.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Its items had all run; their results died with the worker.
    Finished,
    /// It was running: item `index` of the input was.
    Running { index: usize },
    /// The worker never started it.
    Unstarted,
}

/// The fates of the batches of one frame of `counts` items each, for a worker that
/// was at item `at` of the frame (`None`: had not started the frame).
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
///   front frame
///   the worker had not started goes back to the queue, at most [`MAX_RESTARTS`]
///   times.
///
/// The running batch's error is delivered first, so a `map` reports it.
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
    let mut front = true;
    let frames = in_flight.drain(..).map(|(g, id)| (g, Some(id)));
    for (group, id) in frames.chain(unsent.map(|g| (g, None))) {
        if !std::mem::take(&mut front) {
            requeued.extend(group);
            continue;
        }
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
/// could not answer in one frame (its results are over the cap), sends each batch
/// again in a frame of its own.
fn answered(shared: &Engine, group: Vec<Batch>, pid: u32, outcome: Result<ResultFrame, Error>) {
    if group.len() > 1 && outcome.is_err() {
        let solo = group
            .into_iter()
            .map(|mut batch| {
                batch.solo = true;
                batch
            })
            .collect();
        shared.requeue(solo);
    } else {
        complete(group, pid, outcome);
    }
}

/// The error a batch of `task` gets when its worker failed while running item
/// `index` of the input (for a time-out, the item of the batch's first index plus
/// the items done).
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
