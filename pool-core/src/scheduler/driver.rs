//! The driver thread of one worker: batches from the queue to the worker and back,
//! pipelining small quick batches, replacing the worker when it fails.

use std::collections::VecDeque;
use std::sync::mpsc::Sender;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::connection::{Connection, LinkFailure, Request};
use super::{Batch, Shared, lock};
use crate::error::{Error, WorkerExit};

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
                    return Some(e);
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
            let (exit, failure) = conn.reap_failed(shared, failure);
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
