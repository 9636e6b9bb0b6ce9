//! The loop a worker process runs: handshake, then batches until the pool lets go.
//!
//! One frame in, one frame out: the worker reads a batch, runs all its items, and
//! writes one `Done` frame with a result item per argument item (or one `Refused`).
//! It never reads ahead; frames the pool sends ahead wait in the link. With a time
//! limit it also writes a `Started` frame before each item but the first, which
//! lets the pool time items one by one.

use std::io::Write;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use crate::error::Error;
use crate::sys::ProgressPage;
use crate::transport::{Link, Received};
use crate::wire::protocol::{self, FromWorker, Hello, Items, MAGIC, PROTOCOL_VERSION, ToWorker};
use crate::wire::registry::BatchRun;
use crate::wire::registry::{self, TaskEntry};
use crate::worker::batch;

/// How long a worker that answered a direct call watches for the next request
/// before it sleeps.
const LINGER: Duration = Duration::from_micros(50);

/// The serving side of a worker process.
///
/// `procpool::init()` builds one from the transport's link and calls
/// [`Server::run`].
pub(crate) struct Server {
    /// The worker's end of the link to the pool.
    link: Link,
    /// This process's id, sent in the handshake and named in refusals.
    pid: u32,
    /// The pool's secret from the marker, echoed in the handshake.
    secret: u128,
    /// Where the frame and item being run are noted for the pool, if it gave a page.
    ///
    /// When this worker dies, the pool reads there whether it had started the oldest
    /// frame it was sent, and at which item: that item's batch gets the error (or a
    /// retry), and a frame it had not started goes back to the queue. Without a page
    /// the pool counts every frame of a dead worker as started.
    progress: Option<ProgressPage>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A worker serving over `link`, answering the handshake with the pool's `secret`.
    pub(crate) fn new(link: Link, secret: u128) -> Self {
        Server {
            link,
            pid: std::process::id(),
            secret,
            progress: None,
        }
    }

    /// Notes the frame and item it runs in `page`, shared with the pool.
    pub(crate) fn with_progress(mut self, page: ProgressPage) -> Self {
        self.progress = Some(page);
        self
    }

    /// Sends the handshake, then runs batches until the pool sends `Shutdown` or
    /// closes the channel. Task panics are caught and reported per item; only a
    /// broken channel or a malformed frame ends the loop with an error.
    ///
    /// For each batch: the task is looked up by name (the last batch's entry is
    /// reused when the name matches), the page notes the frame's id, the items run,
    /// stdout is flushed (so what a task printed comes out before the caller has its
    /// result), and the results go back in one frame. A task this build does not
    /// know, or results over the frame cap, are answered with `Refused`: that batch
    /// fails and the worker goes on. After a frame sent `direct` (an `apply`)
    /// the worker watches the link for [`LINGER`] before it sleeps.
    ///
    /// # Errors
    ///
    /// What the link reports when it breaks (the worker then exits with
    /// `WORKER_FAILURE_EXIT`), and [`Error::Protocol`] for a frame whose header does
    /// not decode or a batch that holds more or fewer items than it announces.
    pub(crate) fn run(mut self) -> Result<(), Error> {
        batch::install_panic_hook();
        let mut header = Vec::with_capacity(64);
        let hello = Hello {
            magic: MAGIC,
            protocol: PROTOCOL_VERSION,
            build_id: registry::build_id(),
            pid: self.pid,
            secret: self.secret,
        };
        protocol::encode_header(&FromWorker::Hello(hello), &mut header)?;
        self.link.sender.send(&[&header])?;

        let mut frame = Vec::new();
        let mut results = Vec::new();
        let mut cached: Option<&'static TaskEntry> = None;
        let mut linger = false;
        // The item counter of the page, or one nobody reads.
        let unshared = AtomicU32::new(0);
        let page = self.progress.take();
        let item = page.as_ref().map_or(&unshared, ProgressPage::item);
        loop {
            if linger {
                // The last call's caller is likely to call again within microseconds:
                // watch for it a moment before sleeping, to be awake when it comes.
                self.link.receiver.arriving_within(LINGER)?;
            }
            match self.link.receiver.recv(&mut frame, None)? {
                Received::Frame => {}
                Received::Closed => return Ok(()),
                Received::TimedOut => continue,
            }
            let (msg, payload) = protocol::decode_header::<ToWorker<'_>>(&frame)?;
            let (id, task, count, report_starts) = match msg {
                ToWorker::Shutdown => return Ok(()),
                ToWorker::Run {
                    id,
                    task,
                    count,
                    report_starts,
                    direct,
                    ..
                } => {
                    linger = direct;
                    (id, task, count, report_starts)
                }
            };
            let entry = match cached
                .filter(|e| e.name() == task)
                .or_else(|| registry::by_name(task))
            {
                Some(entry) => entry,
                None => {
                    let reason = format!("task `{task}` is not registered in worker {}", self.pid);
                    self.refuse(id, &reason, &mut header)?;
                    continue;
                }
            };
            cached = Some(entry);
            if let Some(page) = &page {
                page.begin(id);
            }
            results.clear();
            let sender = &mut self.link.sender;
            let header_buf = &mut header;
            let mut started = |item: u32| -> Result<(), Error> {
                protocol::encode_header(&FromWorker::Started { id, item }, header_buf)?;
                sender.send(&[header_buf])
            };
            let started: Option<&mut dyn FnMut(u32) -> Result<(), Error>> = if report_starts {
                Some(&mut started)
            } else {
                None
            };
            run_frame(entry, payload, count, &mut results, started, item)?;
            // Handles in the results must outlive the parent's decoding of them,
            // which nothing reports back: they stay for the worker's life.
            crate::handoff::retain(crate::handoff::take_kept());
            // Let what tasks printed out before their results arrive.
            let _ = std::io::stdout().flush();
            protocol::encode_header(&FromWorker::Done { id, count }, &mut header)?;
            match self.link.sender.send(&[&header, &results]) {
                // Refused before anything was written (over the frame cap): the link
                // is still in step, so only this batch fails.
                Err(Error::Protocol(reason)) => self.refuse(id, &reason, &mut header)?,
                other => other?,
            }
        }
    }

    /// Answers batch `id` with a refusal: the batch fails, the worker goes on.
    ///
    /// # Errors
    ///
    /// What the link reports if the refusal cannot be sent.
    fn refuse(&mut self, id: u64, reason: &str, header: &mut Vec<u8>) -> Result<(), Error> {
        protocol::encode_header(&FromWorker::Refused { id, reason }, header)?;
        self.link.sender.send(&[header])
    }
}

/// Runs `count` items of `entry` from `payload`, appending one result item each;
/// `started(k)`, if given, is called before item `k > 0` runs, and `item` is set to
/// `k` as item `k` starts.
///
/// # Errors
///
/// A malformed batch, or a `started` hook that could not send its `Started`.
fn run_frame<'a>(
    entry: &TaskEntry,
    payload: &'a [u8],
    count: u32,
    out: &'a mut Vec<u8>,
    started: Option<&'a mut (dyn FnMut(u32) -> Result<(), Error> + 'a)>,
    item: &'a AtomicU32,
) -> Result<(), Error> {
    entry.run(&mut BatchRun {
        items: Items::new(payload),
        count,
        out,
        started,
        item,
    })
}
