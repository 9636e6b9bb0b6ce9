//! The [`Pool`] handle and its [`PoolBuilder`].

use std::borrow::Borrow;
use std::fmt;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::protocol::{self, DEFAULT_MAX_FRAME, ItemFailure, Items, STATUS_FAILED, STATUS_OK};
use crate::registry::{self, TaskEntry};
use crate::runtime;
use crate::scheduler::{self, Batch, Config, Job, Reply, Shared, lock};
use crate::task::Task;
use crate::transport::{IntoTransport, LinkConfig, Transport};

/// Room kept in a frame for the batch header.
const HEADER_ROOM: usize = 1024;

/// A pool of worker processes running `#[pool_task]` functions.
///
/// Workers are the current program, re-executed; `procpool::init()` at the top of
/// `main` is where they start serving. Every method takes `&self`: share a pool
/// between threads with `Arc` and submit from all of them at once.
///
/// Dropping the pool terminates and reaps its workers: no orphan, no zombie.
pub struct Pool {
    shared: Arc<Shared>,
    drivers: Mutex<Vec<JoinHandle<()>>>,
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
#[derive(Debug, Clone)]
pub struct PoolBuilder {
    processes: Option<usize>,
    transport: Option<&'static dyn Transport>,
    max_frame: usize,
    startup_timeout: Duration,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            processes: None,
            transport: None,
            max_frame: DEFAULT_MAX_FRAME,
            startup_timeout: Duration::from_secs(20),
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
    pub fn transport(mut self, transport: impl IntoTransport) -> Self {
        self.transport = Some(transport.into_transport());
        self
    }

    /// Largest frame (one chunk of arguments or results) in bytes; default 1 GiB.
    /// A chunk that does not fit is refused with [`Error::InvalidArgument`] (arguments)
    /// or [`Error::Protocol`] (results), never truncated.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// How long a new worker may take to answer the handshake; default 20 s.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Starts the workers and waits until each has answered the handshake.
    pub fn build(self) -> Result<Pool, Error> {
        let processes = match self.processes {
            Some(0) => {
                return Err(Error::InvalidArgument(
                    "a pool needs at least one process, got 0".into(),
                ));
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if self.max_frame < 2 * HEADER_ROOM || self.max_frame > u32::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "max_frame_size must be between {} and {} bytes, got {}",
                2 * HEADER_ROOM,
                u32::MAX,
                self.max_frame
            )));
        }
        if self.startup_timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "startup_timeout must be more than zero".into(),
            ));
        }
        let transports = runtime::transports()?;
        let transport = match self.transport {
            Some(t) => t,
            None => *transports
                .first()
                .ok_or_else(|| Error::InvalidArgument("no transport is compiled in".into()))?,
        };
        let shared = Arc::new(Shared::new(Config {
            processes,
            transport,
            link: LinkConfig {
                max_frame: self.max_frame,
            },
            startup_timeout: self.startup_timeout,
        }));
        let pool = Pool {
            shared: Arc::clone(&shared),
            drivers: Mutex::new(Vec::with_capacity(processes)),
        };
        let (started_tx, started_rx) = mpsc::channel();
        for slot in 0..processes {
            let shared = Arc::clone(&shared);
            let started = started_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("procpool-driver-{slot}"))
                .spawn(move || scheduler::drive(shared, slot, started))?;
            lock(&pool.drivers).push(handle);
        }
        drop(started_tx);
        let mut first_error = None;
        for _ in 0..processes {
            match started_rx.recv_timeout(self.startup_timeout + Duration::from_secs(5)) {
                Ok(Ok(_pid)) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(Error::Startup(format!(
                        "workers did not start within {:?}",
                        self.startup_timeout
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
}

impl Pool {
    /// A pool of `processes` workers with default settings.
    ///
    /// `Pool::new(0)` is an [`Error::InvalidArgument`].
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
    /// Items are cut into chunks of `ceil(len / (4 * processes))`, as Python does.
    /// `items` may be any `IntoIterator` whose items are the parameter's type or a
    /// reference to it. The first failing item (in completion order) ends the call
    /// with its error.
    pub fn map<F, A, I>(&self, task: F, items: I) -> Result<Vec<F::Output>, Error>
    where
        F: Task<(A,)>,
        A: Serialize,
        I: IntoIterator,
        I::Item: Borrow<A>,
    {
        self.run_many::<F, A, _, F::Output>(&task, items, None)
    }

    /// [`map`](Self::map) with an explicit chunk size (items per message to a worker).
    /// A chunk size of zero is an [`Error::InvalidArgument`].
    pub fn map_chunked<F, A, I>(
        &self,
        task: F,
        items: I,
        chunksize: usize,
    ) -> Result<Vec<F::Output>, Error>
    where
        F: Task<(A,)>,
        A: Serialize,
        I: IntoIterator,
        I::Item: Borrow<A>,
    {
        self.run_many::<F, A, _, F::Output>(&task, items, Some(chunksize))
    }

    /// Applies a task to every argument tuple: `starmap(add, [(1, 2), (3, 4)])` is
    /// `[add(1, 2), add(3, 4)]`. Chunking as in [`map`](Self::map).
    pub fn starmap<F, Args, I>(&self, task: F, items: I) -> Result<Vec<F::Output>, Error>
    where
        F: Task<Args>,
        Args: Serialize,
        I: IntoIterator,
        I::Item: Borrow<Args>,
    {
        self.run_many::<F, Args, _, F::Output>(&task, items, None)
    }

    /// [`starmap`](Self::starmap) with an explicit chunk size.
    pub fn starmap_chunked<F, Args, I>(
        &self,
        task: F,
        items: I,
        chunksize: usize,
    ) -> Result<Vec<F::Output>, Error>
    where
        F: Task<Args>,
        Args: Serialize,
        I: IntoIterator,
        I::Item: Borrow<Args>,
    {
        self.run_many::<F, Args, _, F::Output>(&task, items, Some(chunksize))
    }

    /// Runs a task once in a worker and waits for its result:
    /// `pool.apply(add, (1, 2))`, `pool.apply(square, (7,))`.
    pub fn apply<F, Args>(&self, task: F, args: Args) -> Result<F::Output, Error>
    where
        F: Task<Args>,
        Args: Serialize,
    {
        let mut out =
            self.run_many::<F, Args, _, F::Output>(&task, std::iter::once(args), Some(1))?;
        out.pop()
            .ok_or_else(|| Error::protocol("no result for apply"))
    }

    /// Stops accepting work. Queued work still runs; then workers exit.
    /// Submitting afterwards is an [`Error::PoolClosed`].
    pub fn close(&self) {
        self.shared.close();
    }

    /// Kills the workers now. Queued and running work ends with an error.
    pub fn terminate(&self) {
        self.shared.terminate();
    }

    /// Waits until every worker has exited and been reaped. Needs [`close`](Self::close)
    /// or [`terminate`](Self::terminate) first, as in Python (else an
    /// [`Error::InvalidArgument`], not a hang).
    pub fn join(&self) -> Result<(), Error> {
        if !self.shared.is_closed() {
            return Err(Error::InvalidArgument(
                "join() needs close() or terminate() first".into(),
            ));
        }
        self.join_drivers();
        Ok(())
    }

    fn join_drivers(&self) {
        let handles = std::mem::take(&mut *lock(&self.drivers));
        for handle in handles {
            let _ = handle.join();
        }
    }

    /// Encodes, chunks, queues and collects one call.
    fn run_many<F, A, B, R>(
        &self,
        _task: &F,
        items: impl IntoIterator<Item = B>,
        chunksize: Option<usize>,
    ) -> Result<Vec<R>, Error>
    where
        F: 'static,
        A: Serialize,
        B: Borrow<A>,
        R: DeserializeOwned,
    {
        if chunksize == Some(0) {
            return Err(Error::InvalidArgument(
                "chunksize must be at least 1, got 0".into(),
            ));
        }
        let entry = entry_of::<F>()?;
        let encoded = encode::<A, B>(entry, items.into_iter(), chunksize, self.processes())?;
        let max_chunk = self.shared.config.link.max_frame - HEADER_ROOM;
        if let Some(c) = encoded.chunks.iter().find(|c| c.bytes.len() > max_chunk) {
            return Err(Error::InvalidArgument(format!(
                "a chunk of task `{}` starting at item {} needs {} bytes, over the frame limit of {} \
                 bytes: use a smaller chunksize or raise max_frame_size",
                entry.name(),
                c.first_index,
                c.bytes.len(),
                max_chunk
            )));
        }
        let total = encoded.len;
        if total == 0 {
            return Ok(Vec::new());
        }
        let (tx, rx) = mpsc::channel();
        let job = Arc::new(Job::default());
        let payload = Arc::new(encoded.buf);
        let batches: Vec<Batch> = encoded
            .chunks
            .into_iter()
            .map(|c| Batch {
                task: entry.name(),
                first_index: c.first_index,
                count: c.count,
                payload: Arc::clone(&payload),
                range: c.bytes,
                job: Arc::clone(&job),
                reply: tx.clone(),
            })
            .collect();
        drop(tx);
        self.shared.submit(batches)?;
        let result = collect(entry, &rx, total);
        if result.is_err() {
            job.cancel();
        }
        result
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.terminate();
        self.join_drivers();
    }
}

fn entry_of<F: 'static>() -> Result<&'static TaskEntry, Error> {
    registry::by_type::<F>().ok_or_else(|| Error::NotRegistered {
        name: std::any::type_name::<F>().to_owned(),
    })
}

/// One chunk of encoded items.
#[derive(Debug)]
struct Chunk {
    first_index: usize,
    count: u32,
    bytes: std::ops::Range<usize>,
}

/// All items of a call, encoded into one buffer and cut into chunks.
#[derive(Debug)]
struct Encoded {
    buf: Vec<u8>,
    chunks: Vec<Chunk>,
    len: usize,
}

/// Python's default chunk size: `ceil(len / (4 * processes))`.
fn default_chunksize(len: usize, processes: usize) -> usize {
    len.div_ceil(4 * processes).max(1)
}

fn encode<A, B>(
    entry: &TaskEntry,
    items: impl Iterator<Item = B>,
    chunksize: Option<usize>,
    processes: usize,
) -> Result<Encoded, Error>
where
    A: Serialize,
    B: Borrow<A>,
{
    let (low, high) = items.size_hint();
    // With a known length the chunk size is fixed before encoding; otherwise every
    // item is a boundary and they are regrouped once the length is known.
    let stride = match (chunksize, high == Some(low)) {
        (Some(c), _) => c,
        (None, true) => default_chunksize(low, processes),
        (None, false) => 1,
    }
    .min(u32::MAX as usize);
    let mut buf = Vec::with_capacity(low.saturating_mul(2).min(1 << 24));
    let mut ends = Vec::new(); // (end offset, items so far)
    let mut len = 0usize;
    for item in items {
        protocol::push_item(&mut buf, |b| postcard::to_io(item.borrow(), b).map(|_| ())).map_err(
            |e| Error::Serialization {
                task: entry.name().to_owned(),
                index: len,
                what: "serialized as an argument",
                message: e.to_string(),
            },
        )?;
        len += 1;
        if len.is_multiple_of(stride) {
            ends.push((buf.len(), len));
        }
    }
    if !len.is_multiple_of(stride) {
        ends.push((buf.len(), len));
    }
    if chunksize.is_none() && stride == 1 {
        let chunk = default_chunksize(len, processes);
        ends.retain(|&(_, n)| n.is_multiple_of(chunk) || n == len);
    }
    let mut chunks = Vec::with_capacity(ends.len());
    let (mut start, mut first) = (0, 0);
    for (end, n) in ends {
        chunks.push(Chunk {
            first_index: first,
            count: (n - first) as u32,
            bytes: start..end,
        });
        (start, first) = (end, n);
    }
    Ok(Encoded { buf, chunks, len })
}

/// Waits for the replies of one call and decodes them into input order.
fn collect<R: DeserializeOwned>(
    entry: &TaskEntry,
    rx: &Receiver<Reply>,
    total: usize,
) -> Result<Vec<R>, Error> {
    let mut slots: Vec<Option<R>> = Vec::with_capacity(total);
    slots.resize_with(total, || None);
    let mut remaining = total;
    while remaining > 0 {
        let reply = rx.recv().map_err(|_| Error::PoolClosed)?;
        let count = reply.count as usize;
        decode_reply(entry.name(), reply, |index, value| {
            if let Some(slot) = slots.get_mut(index) {
                *slot = Some(value);
            }
        })?;
        remaining = remaining.saturating_sub(count);
    }
    slots
        .into_iter()
        .collect::<Option<Vec<R>>>()
        .ok_or_else(|| Error::protocol("a result is missing"))
}

/// Decodes the results of one batch, handing each to `put(index, value)`; the first
/// failed item becomes the error.
fn decode_reply<R: DeserializeOwned>(
    task: &str,
    reply: Reply,
    mut put: impl FnMut(usize, R),
) -> Result<(), Error> {
    let frame = reply.outcome?;
    let mut items = Items::new(frame.items());
    for k in 0..reply.count as usize {
        let index = reply.first_index + k;
        let item = items.next_item()?.ok_or_else(|| {
            Error::protocol(format!(
                "reply holds fewer than the {} items announced",
                reply.count
            ))
        })?;
        let (&status, body) = item
            .split_first()
            .ok_or_else(|| Error::protocol("empty result item"))?;
        match status {
            STATUS_OK => {
                let value = postcard::from_bytes(body).map_err(|e| Error::Serialization {
                    task: task.to_owned(),
                    index,
                    what: "deserialized in the parent",
                    message: e.to_string(),
                })?;
                put(index, value);
            }
            STATUS_FAILED => {
                let failure: ItemFailure = postcard::from_bytes(body)
                    .map_err(|e| Error::protocol(format!("malformed task failure: {e}")))?;
                return Err(failure_to_error(failure, task, index, reply.pid));
            }
            other => return Err(Error::protocol(format!("unknown result status {other}"))),
        }
    }
    Ok(())
}

fn failure_to_error(failure: ItemFailure, task: &str, index: usize, pid: u32) -> Error {
    let task = task.to_owned();
    match failure {
        ItemFailure::Panicked { message, location } => Error::TaskPanicked {
            task,
            message,
            location,
            index,
            pid,
        },
        ItemFailure::ArgDecode(message) => Error::Serialization {
            task,
            index,
            what: "deserialized in the worker",
            message,
        },
        ItemFailure::OutputEncode(message) => Error::Serialization {
            task,
            index,
            what: "serialized in the worker",
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_chunksize_follows_python() {
        assert_eq!(default_chunksize(10, 4), 1);
        assert_eq!(default_chunksize(1_000_000, 2), 125_000);
        assert_eq!(default_chunksize(17, 1), 5);
        assert_eq!(default_chunksize(0, 3), 1);
    }
}
