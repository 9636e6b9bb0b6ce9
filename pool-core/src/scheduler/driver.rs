//! The driver thread of one worker: batches from the queue to the worker and back,
//! pipelining small quick batches, replacing the worker when it fails.

use std::collections::VecDeque;
use std::sync::mpsc::Sender;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::connection::{Connection, LinkFailure, Request};
use super::{Batch, ResultFrame, Shared, lock};
use crate::error::{Error, WorkerExit};
use crate::pool::encode::chunk_too_large;

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

/// Room kept in a frame sent ahead for its length prefix and header (the task's
/// name is in it).
const FRAME_OVERHEAD: usize = 512;

/// Largest payload a frame sent ahead may carry on a link holding `capacity` bytes:
/// [`PIPELINE_DEPTH`] frames of it, with their headers, fit.
pub(super) fn ahead_frame(capacity: usize) -> usize {
    (capacity / PIPELINE_DEPTH)
        .min(PIPELINE_MAX_FRAME)
        .saturating_sub(FRAME_OVERHEAD)
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
pub(crate) fn drive(shared: Arc<Shared>, slot: usize, started: Sender<Result<u32, Error>>) {
    if shared.config.batch_drivers {
        crate::sys::schedule_as_batch();
    }
    match Connection::start(&shared, slot) {
        Ok(conn) => {
            let _ = started.send(Ok(conn.pid));
            *lock(&shared.links[slot]) = Some(conn);
        }
        Err(e) => {
            let _ = started.send(Err(e.duplicate()));
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
/// Returns why it gave up, or `None` when the pool closed.
fn serve(shared: &Shared, slot: usize) -> Option<Error> {
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
        while in_flight.len() < depth && failure.is_none() {
            let (items_sent, ahead) = link
                .as_ref()
                .and_then(|l| l.as_ref())
                .map_or((0, 0), |c| (c.items_sent, c.ahead_frame));
            let allowance = max_items.saturating_sub(items_sent);
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
                    group.into_iter().for_each(|b| shared.requeue(b));
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
                    batch.complete(conn.pid, Err(error.duplicate()));
                }
                if in_flight.is_empty() {
                    shared.set_occupied(&mut occupied, false);
                }
                continue;
            }
            let parts: Vec<&[u8]> = group.iter().map(|b| &b.payload[..]).collect();
            let request = Request {
                task,
                first_index: group[0].first_index,
                count: group.iter().map(|b| b.count).sum(),
                items: &parts,
                direct: false,
            };
            let sent = conn.send(shared, &request);
            drop(parts);
            match sent {
                Ok(id) => in_flight.push_back((group, id)),
                Err(f) => {
                    in_flight.push_back((group, 0));
                    failure = Some(f);
                }
            }
        }
        let Some((group, id)) = in_flight.pop_front() else {
            break; // nothing in flight and nothing queued: the pool is closing
        };
        // Work is in flight, so the link is held and has a connection.
        let Some(conn) = link.as_mut().and_then(|l| l.as_mut()) else {
            for batch in group {
                batch.complete(0, Err(Error::protocol("driver lost its connection")));
            }
            continue;
        };
        if failure.is_none() {
            let count: u32 = group.iter().map(|b| b.count).sum();
            match conn.receive(shared, id, count) {
                Ok(Err(_)) if group.len() > 1 => {
                    // The worker could not answer the group in one frame (its results
                    // are over the cap): each batch goes again, in a frame of its own.
                    quick = None;
                    group_items = 1;
                    busy_since = Instant::now();
                    for mut batch in group.into_iter().rev() {
                        batch.solo = true;
                        shared.requeue(batch);
                    }
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
                    if in_flight.is_empty() {
                        shared.set_occupied(&mut occupied, false);
                    }
                }
                Err(f) => {
                    in_flight.push_front((group, id));
                    failure = Some(f);
                }
            }
        } else {
            in_flight.push_front((group, id));
        }
        if let Some(failure) = failure {
            // The worker is gone: every batch it held fails or runs again.
            let (exit, failure) = conn.reap_failed(shared, failure);
            let pid = conn.pid;
            let lost_batches: Vec<Batch> = in_flight.drain(..).flat_map(|(g, _)| g).collect();
            // The first batch gets the failure, the others `Closed`. Batches run
            // again go back to the head of the queue: last first, to keep their order.
            let mut failure = Some(failure);
            for (k, batch) in lost_batches.into_iter().enumerate().rev() {
                let cause = if k == 0 { failure.take() } else { None };
                lost(
                    shared,
                    batch,
                    pid,
                    exit,
                    cause.unwrap_or(LinkFailure::Closed),
                );
            }
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
        if conn.items_done >= max_items
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
                batch.complete(pid, Err(e.duplicate()));
            }
        }
    }
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
pub(super) fn failure_error(
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

    #[test]
    fn frames_sent_ahead_fit_the_link() {
        // A 64 KiB pipe: the usual cap.
        assert_eq!(ahead_frame(64 * 1024), PIPELINE_MAX_FRAME - FRAME_OVERHEAD);
        // A one-page pipe (the user is over pipe-user-pages-soft): small frames only,
        // and all of them with their headers fit.
        let small = ahead_frame(4096);
        assert!(small > 0 && PIPELINE_DEPTH * (small + FRAME_OVERHEAD) <= 4096);
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
