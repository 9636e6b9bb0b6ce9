//! Lazy, streaming maps: [`Imap`], behind `Pool::imap` and `Pool::imap_unordered`.
//!
//! Three parties share a stream:
//!
//! ```text
//! feeder thread ── reads the input, encodes a chunk ── submit(batch) ──▶ engine queue
//!      ▲                                                                     │
//!      │ Link: consumed count, wake_at                                       ▼
//! consumer (Imap::next) ◀── Inbox: Msg::Chunk / Msg::Ended ◀── Decoder (on a driver)
//! ```
//!
//! - The **feeder** ([`Feeder`]) runs the input iterator on a thread of its own, so
//!   the consumer never waits inside the input and the input may wait on results.
//!   It reads a chunk, queues it as one batch, and stops when the read-ahead is
//!   full, until the consumer has taken enough.
//! - The **decoder** ([`Decoder`]) is the batches' sink: it decodes each reply on
//!   the driver thread that received it and leaves the values in the [`Inbox`].
//! - The **consumer** (the `Imap` itself) takes every message at once, puts chunks
//!   in order (or not, for `imap_unordered`) and hands the items out one by one;
//!   after each chunk it publishes how far it got, which is what frees the feeder.
//!
//! Every batch answers exactly once (run, failed, or dropped by a terminating pool),
//! and the feeder always says where the input ended, so the consumer never waits for
//! something that cannot come.

use std::any::Any;
use std::collections::{BTreeMap, VecDeque};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::caller::result::{self, Progress};
use crate::engine::{Batch, Call, Engine, Reply, ReplySink, lock};
use crate::error::Error;

/// The results of one chunk, in order: the values, and apart from them the few
/// errors with their positions, so each item costs only its value (the decoded
/// values cross from a pool thread to the consumer: smaller is faster).
struct Decoded<R> {
    /// The successful values, in order, without the errors' places.
    values: std::vec::IntoIter<R>,
    /// `(position in the chunk, error)`, by position.
    errors: VecDeque<(usize, Error)>,
    /// Values to hand out before the next error (or the end): the one count the
    /// consumer's loop looks at per item.
    clean: usize,
    /// Items in the chunk (what is left is `len()`).
    total: usize,
}

impl<R> Decoded<R> {
    /// A chunk of `total` items: `values` for the successes and `errors` at their
    /// positions (`values.len() + errors.len() == total` for a whole chunk).
    fn new(values: Vec<R>, errors: VecDeque<(usize, Error)>, total: usize) -> Self {
        let mut chunk = Decoded {
            values: values.into_iter(),
            errors,
            clean: 0,
            total,
        };
        chunk.clean = chunk.clean_run();
        chunk
    }

    /// Items handed out so far.
    fn taken(&self) -> usize {
        self.total
            .saturating_sub(self.values.len() + self.errors.len())
    }

    /// Values from here to the next error or the end.
    fn clean_run(&self) -> usize {
        match self.errors.front() {
            Some((at, _)) => at.saturating_sub(self.taken()),
            None => self.values.len(),
        }
    }

    /// The item after a run of values: an error, or the end.
    #[inline(never)]
    fn next_after_run(&mut self) -> Option<Result<R, Error>> {
        let taken = self.taken();
        let item = match self.errors.front() {
            Some((at, _)) if *at <= taken => self.errors.pop_front().map(|(_, e)| Err(e)),
            _ => self.values.next().map(Ok),
        };
        self.clean = self.clean_run();
        item
    }
}

impl<R> Iterator for Decoded<R> {
    type Item = Result<R, Error>;

    /// A value while the run of values lasts (one count to look at), else
    /// [`next_after_run`](Self::next_after_run), out of line.
    #[inline]
    fn next(&mut self) -> Option<Result<R, Error>> {
        if self.clean > 0 {
            self.clean -= 1;
            return self.values.next().map(Ok);
        }
        self.next_after_run()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.values.len() + self.errors.len();
        (left, Some(left))
    }
}

impl<R> ExactSizeIterator for Decoded<R> {}

/// What reaches the consumer: a chunk of results, or the end of the input.
enum Msg<R> {
    /// A decoded chunk: its first index and its items.
    Chunk(usize, Decoded<R>),
    /// Sent by the feeder after its last batch: the items it submitted, and why the
    /// input ended early (an item that failed to encode, a refused batch, a panic).
    Ended { read: usize, error: Option<Error> },
}

impl<R> Msg<R> {
    /// Whether this is what a consumer waiting for `want` waits for.
    fn answers(&self, want: Want) -> bool {
        match (self, want) {
            (Msg::Chunk(first, _), Want::Chunk(wanted)) => *first == wanted,
            _ => true,
        }
    }
}

/// What the consumer waits for.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Any chunk (completion order), or the end.
    Any,
    /// The chunk starting at this index (input order: the ones after it cannot be
    /// handed out before it), or the end.
    Chunk(usize),
}

/// Where the results of an [`Imap`] arrive: the pool threads' decoders and the
/// feeder put messages in, the consumer takes them all out at once. A message wakes
/// the consumer only if it is what the consumer waits for (a notify is a system
/// call, and a woken consumer with nothing to do only sleeps again): in input
/// order, a chunk that comes early does not.
struct Inbox<R> {
    /// The messages and what the consumer waits for.
    mailbox: Mutex<Mailbox<R>>,
    /// Where the consumer waits.
    arrived: Condvar,
}

/// The messages of an [`Inbox`] not yet taken.
struct Mailbox<R> {
    /// In the order they came.
    messages: Vec<Msg<R>>,
    /// What the consumer waits for, while it waits and nothing has answered it.
    waiting: Option<Want>,
    /// The stream was dropped: what comes is dropped at once.
    closed: bool,
}

impl<R> Inbox<R> {
    /// An empty inbox.
    fn new() -> Self {
        Inbox {
            mailbox: Mutex::new(Mailbox {
                messages: Vec::new(),
                waiting: None,
                closed: false,
            }),
            arrived: Condvar::new(),
        }
    }

    /// Leaves `message`, waking the consumer if it waits for it.
    fn put(&self, message: Msg<R>) {
        let mut mailbox = lock(&self.mailbox);
        if mailbox.closed {
            drop(mailbox);
            drop(message);
            return;
        }
        let wake = mailbox.waiting.is_some_and(|want| message.answers(want));
        mailbox.messages.push(message);
        if wake {
            mailbox.waiting = None; // one call is enough
            drop(mailbox);
            self.arrived.notify_one();
        }
    }

    /// Waits until what the consumer `want`s has arrived, or until `deadline`, then
    /// moves every message that arrived into `into`. `false` if the deadline came
    /// first.
    ///
    /// All at once: the consumer takes the lock once for everything that came while
    /// it was busy, not once per chunk. What came before the deadline is handed over
    /// even when the wanted message did not come.
    fn take(&self, want: Want, deadline: Option<Instant>, into: &mut Vec<Msg<R>>) -> bool {
        let mut mailbox = lock(&self.mailbox);
        let mut in_time = true;
        while !mailbox.messages.iter().any(|m| m.answers(want)) {
            mailbox.waiting = Some(want);
            mailbox = match deadline {
                None => self
                    .arrived
                    .wait(mailbox)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        in_time = false;
                        break;
                    }
                    match self.arrived.wait_timeout(mailbox, left) {
                        Ok((mailbox, _)) => mailbox,
                        Err(poisoned) => poisoned.into_inner().0,
                    }
                }
            };
        }
        mailbox.waiting = None;
        into.append(&mut mailbox.messages);
        in_time
    }

    /// The stream is dropped: the messages waiting, and those to come, go.
    fn close(&self) {
        let messages = {
            let mut mailbox = lock(&self.mailbox);
            mailbox.closed = true;
            std::mem::take(&mut mailbox.messages)
        };
        drop(messages);
    }
}

/// Decodes replies on the pool thread that received them, so the consumer only
/// moves finished values.
struct Decoder<R> {
    /// The task's registered name, for errors.
    task: &'static str,
    /// Where the decoded chunks go.
    inbox: Arc<Inbox<R>>,
}

impl<R: DeserializeOwned + Send> ReplySink for Decoder<R> {
    /// Decodes the reply into one [`Decoded`] chunk (a failed batch gives each of its
    /// items the batch's error) and leaves it in the inbox, dropped there if the
    /// stream is gone. Decoding here spreads it over the drivers, in parallel, and
    /// leaves the consumer only the moves.
    fn deliver(&self, reply: Reply) -> Option<usize> {
        let first = reply.first_index;
        let len = reply.count as usize;
        let mut values = Vec::with_capacity(len);
        let mut errors = VecDeque::new();
        let read = result::decode_reply(
            self.task,
            reply,
            |value| values.push(value),
            |index, e| errors.push_back((index - first, e)),
        );
        self.inbox
            .put(Msg::Chunk(first, Decoded::new(values, errors, len)));
        read
    }
}

/// Reads up to `fill.max` more input items and encodes them into `fill.buf` (one
/// loop per chunk, not a call per item). Runs on the feeder thread.
pub(crate) type Source = Box<dyn FnMut(&mut Fill<'_>) + Send>;

/// A chunk being read by a [`Source`], and what it did. It is written as the items
/// go, so that what was read before a panic in the input is known.
pub(crate) struct Fill<'a> {
    /// The chunk's encoded items.
    pub(crate) buf: Vec<u8>,
    /// Most items to read.
    pub(crate) max: u32,
    /// Items encoded so far.
    pub(crate) count: u32,
    /// Where the last of them ends in `buf` (past it: an item cut off by a panic).
    pub(crate) end: usize,
    /// The input ended (or an item failed to encode: `error`); nothing more comes.
    pub(crate) ended: bool,
    /// The item after the `count` encoded could not be encoded.
    pub(crate) error: Option<Error>,
    /// The stream was dropped: read no further item.
    pub(crate) stop: &'a AtomicBool,
}

/// Chunks kept in flight per worker process.
///
/// The read-ahead of a stream is `CHUNKS_PER_WORKER × processes × chunksize` items:
/// enough for every worker to have its next chunks queued while the consumer is
/// behind, bounded so that an endless input streams in constant memory.
const CHUNKS_PER_WORKER: usize = 8;

/// A feeder whose read-ahead is full waits for a chunk and this fraction of the
/// read-ahead to be free: one wake-up for a few chunks, and still a deep pipeline
/// (on two cores, a wake-up per chunk or per half of it did no better).
const REFILL_DIVISOR: usize = 8;

/// Name of the thread that reads the input of an [`Imap`].
const FEEDER_NAME: &str = "procpool-imap-feeder";

/// The results of `imap` (input order) or `imap_unordered` (completion order), one
/// `Result` per item.
///
/// The input is read lazily, on a thread of the stream's own
/// (`procpool-imap-feeder`, started with the stream), as Python's `imap` does: the
/// results that are ready are yielded while the input waits, so the input may
/// depend on the results (a crawler whose next URL comes from a result). At most
/// `8 × processes × chunksize` items are read ahead of what you have consumed, so
/// an endless or huge iterator streams in constant memory (Python's `imap` reads
/// its whole input into a queue). A chunk goes out once it is full or the input
/// ends: with a `chunksize` over 1, an input that waits on results must first
/// supply a whole chunk.
///
/// A failed item yields its error and the stream goes on; if the pool is closed or
/// dropped the stream yields [`Error::PoolClosed`] and ends, never hangs. A panic in
/// the input iterator (or in the `Serialize` of an item) yields an
/// [`Error::InvalidArgument`] after the results of the items read before it, and
/// ends the stream.
///
/// Dropping the iterator cancels the chunks not yet started and stops the feeder:
/// it reads no further item. If the feeder is waiting inside the input's `next()`
/// at that moment, the drop does not wait for it (that could hang): the thread is
/// left to end by itself when `next()` returns, dropping the input then. Otherwise
/// it has ended, and the input is dropped, when the drop returns.
///
/// ```rust,ignore
/// let lines = BufReader::new(File::open("huge.csv")?).lines().map_while(Result::ok);
/// for parsed in pool.imap_chunked(parse_line, lines, 256)? {
///     match parsed {
///         Ok(record) => store(record),
///         Err(e) => eprintln!("skipped: {e}"), // one bad line; the stream goes on
///     }
/// }
/// ```
pub struct Imap<R> {
    /// The task's registered name, for errors.
    task: &'static str,
    /// Items per chunk (per batch).
    chunksize: usize,
    /// `imap` (input order) rather than `imap_unordered`.
    ordered: bool,
    /// The stream's cancellation flag, shared with its batches: set by the drop.
    job: Arc<Call>,
    /// Shared with the feeder thread.
    link: Arc<Link>,
    /// `None` once dropped.
    feeder: Option<JoinHandle<()>>,
    /// Where the decoders and the feeder leave the stream's messages.
    inbox: Arc<Inbox<R>>,
    /// Messages taken from the inbox, to look at (kept for its allocation).
    arrived: Vec<Msg<R>>,
    /// Items handed to the consumer in the chunks before `current` (see
    /// [`Imap::yielded`]).
    yielded_before: usize,
    /// Items in the chunks received.
    received: usize,
    /// Items the feeder submitted, once its input ended.
    end: Option<usize>,
    /// Ordered mode: chunks that arrived early, by first index.
    early: BTreeMap<usize, Decoded<R>>,
    /// Ordered mode: the first index of the chunk to hand out next.
    next_expected: usize,
    /// The chunk being handed out.
    current: Decoded<R>,
    /// Chunks ready to hand out after it, in order.
    ready: VecDeque<Decoded<R>>,
    /// An error to yield once everything before it has been yielded.
    last_error: Option<Error>,
    /// Items in the input, if its `size_hint` was exact.
    total: Option<usize>,
    /// When the stream started, for [`Progress::elapsed`].
    started: Instant,
    /// The hook of [`with_progress`](Imap::with_progress), run on the consumer's thread.
    on_progress: Option<Box<dyn FnMut(Progress) + Send>>,
}

/// What the consumer of an [`Imap`] and its feeder thread share.
#[derive(Debug)]
struct Link {
    /// Items handed to the consumer, as far as the feeder knows: published once per
    /// chunk, and before the consumer waits.
    consumed: AtomicUsize,
    /// The `consumed` count the feeder waits for; `usize::MAX` when it does not
    /// wait (a notify is a system call, even with nobody to wake).
    wake_at: AtomicUsize,
    /// The stream was dropped: the feeder stops.
    stop: AtomicBool,
    /// The feeder is in the input (the [`Source`]): a drop then does not join it.
    in_input: AtomicBool,
    /// Items taken from the input.
    read: AtomicUsize,
    /// Held around `room`.
    lock: Mutex<()>,
    /// Where the feeder waits for the consumer.
    room: Condvar,
}

impl Link {
    /// The consumer has been handed `consumed` items: wakes the feeder if it waits
    /// for that many.
    fn publish(&self, consumed: usize) {
        self.consumed.store(consumed, Ordering::SeqCst);
        // Either the feeder sees the count before it sleeps, or this sees its mark.
        // The mark is taken down here, so that the chunks consumed before the
        // feeder is up do not call again; the feeder puts it back if it still waits.
        if consumed >= self.wake_at.load(Ordering::SeqCst)
            && self.wake_at.swap(usize::MAX, Ordering::SeqCst) != usize::MAX
        {
            let _guard = lock(&self.lock);
            self.room.notify_one();
        }
    }
}

/// The feeder thread of an [`Imap`]: reads the input, submits its chunks.
struct Feeder<R> {
    /// The pool's queue, where the chunks go.
    shared: Arc<Engine>,
    /// The task's registered name, in each batch.
    task: &'static str,
    /// The input, read and encoded.
    source: Source,
    /// Most items per chunk.
    chunksize: usize,
    /// Most items read ahead of the consumer.
    ahead: usize,
    /// The stream's cancellation flag, in each batch.
    job: Arc<Call>,
    /// The stream's [`Decoder`], in each batch.
    sink: Arc<dyn ReplySink>,
    /// Where the end of the input is told.
    inbox: Arc<Inbox<R>>,
    /// What it shares with the consumer.
    link: Arc<Link>,
    /// Items submitted.
    read: usize,
    /// The consumer was told where the input ended (see `Drop`).
    told: bool,
}

impl<R: Send + 'static> Feeder<R> {
    /// Reads and submits chunks while the read-ahead allows, until the input ends
    /// or the stream is dropped; then tells the consumer where the input ended.
    ///
    /// Around each call into the input it raises `in_input`, then checks `stop`: with
    /// the drop storing `stop` before it reads `in_input` (all `SeqCst`), either the
    /// drop sees the feeder in the input and leaves it, or the feeder sees the drop
    /// and returns; the drop never joins a thread stuck in `next()`. A panic in the
    /// input is caught: the items encoded before it go out as the last chunk, and the
    /// panic becomes the stream's last error. A refused batch (the pool closed) ends
    /// the input with that error.
    fn run(mut self) {
        // Size of the last chunk, to size the next one's buffer.
        let mut last_chunk_bytes = 0;
        let link = Arc::clone(&self.link);
        let error = loop {
            if !self.wait_for_room(self.read) {
                return;
            }
            link.in_input.store(true, Ordering::SeqCst);
            // Either the drop sees the feeder in the input, or this sees the drop.
            if link.stop.load(Ordering::SeqCst) {
                return;
            }
            let mut fill = Fill {
                buf: Vec::with_capacity(last_chunk_bytes + 16),
                max: u32::try_from(self.chunksize).unwrap_or(u32::MAX),
                count: 0,
                end: 0,
                ended: false,
                error: None,
                stop: &link.stop,
            };
            let panicked = panic::catch_unwind(AssertUnwindSafe(|| (self.source)(&mut fill))).err();
            link.in_input.store(false, Ordering::SeqCst);
            if link.stop.load(Ordering::SeqCst) {
                return;
            }
            let Fill {
                mut buf,
                count,
                end,
                ended,
                mut error,
                ..
            } = fill;
            if let Some(payload) = panicked {
                error = Some(input_panicked(payload));
            }
            buf.truncate(end);
            link.read.fetch_add(count as usize, Ordering::Release);
            if count > 0 {
                last_chunk_bytes = buf.len();
                let batch = Batch {
                    task: self.task,
                    first_index: self.read,
                    count,
                    payload: buf,
                    job: Arc::clone(&self.job),
                    retries: 0,
                    restarts: 0,
                    solo: false,
                    kept: crate::handoff::take_kept(),
                    sink: Some(Arc::clone(&self.sink)),
                };
                if let Err(e) = self.shared.submit(std::iter::once(batch)) {
                    break Some(e);
                }
                self.read += count as usize;
            }
            if ended || error.is_some() {
                break error;
            }
        };
        self.told = true;
        self.inbox.put(Msg::Ended {
            read: self.read,
            error,
        });
    }

    /// Waits until another chunk may be read after `read` items; `false` if the
    /// stream was dropped.
    ///
    /// The bound: a chunk may be read while `read + chunksize <= consumed + window`,
    /// `window` being the read-ahead (at least one chunk), so the feeder is never
    /// more than `window` items ahead of what the consumer has taken. When it is
    /// full, the feeder sets `wake_at` to the count at which a chunk *and* an eighth
    /// of the window are free ([`REFILL_DIVISOR`]), capped at `read` (the consumer
    /// can publish no more than it received, so a higher mark could never be
    /// reached), and sleeps until the consumer's [`Link::publish`] passes it.
    fn wait_for_room(&self, read: usize) -> bool {
        let link = &*self.link;
        let window = self.ahead.max(self.chunksize);
        let fits = |consumed: usize| read + self.chunksize <= consumed.saturating_add(window);
        if link.stop.load(Ordering::Relaxed) {
            return false;
        }
        if fits(link.consumed.load(Ordering::Acquire)) {
            return true;
        }
        // Wait till a chunk and an eighth of the read-ahead are free: one wake-up
        // for a few chunks. (A chunk fits then; and the consumer gets to `read` at
        // most, before it waits.)
        let wake_at = (read + self.chunksize + window / REFILL_DIVISOR)
            .saturating_sub(window)
            .min(read);
        let mut guard = lock(&link.lock);
        let go_on = loop {
            if link.stop.load(Ordering::SeqCst) {
                break false;
            }
            link.wake_at.store(wake_at, Ordering::SeqCst);
            if link.consumed.load(Ordering::SeqCst) >= wake_at {
                break true;
            }
            guard = link
                .room
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        };
        link.wake_at.store(usize::MAX, Ordering::SeqCst);
        drop(guard);
        go_on
    }
}

impl<R> Drop for Feeder<R> {
    /// A feeder that ends before the input does (the stream was dropped, or a bug)
    /// still tells the consumer, which would otherwise wait for ever.
    fn drop(&mut self) {
        if !self.told && !self.link.stop.load(Ordering::Relaxed) {
            self.inbox.put(Msg::Ended {
                read: self.read,
                error: Some(Error::protocol("the input feeder of imap stopped early")),
            });
        }
    }
}

/// The error that ends a stream whose input panicked with `payload`.
#[cold]
fn input_panicked(payload: Box<dyn Any + Send>) -> Error {
    let message = crate::error::panic_message(payload.as_ref());
    // A payload whose destructor panics would otherwise end the feeder unheard.
    drop(panic::catch_unwind(AssertUnwindSafe(move || drop(payload))));
    Error::InvalidArgument(format!("the input iterator of imap panicked: {message}"))
}

impl<R> std::fmt::Debug for Imap<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("task", &self.task)
            .field("ordered", &self.ordered)
            .field("chunksize", &self.chunksize)
            .field("read", &self.items_read())
            .field("yielded", &self.yielded())
            .finish_non_exhaustive()
    }
}

impl<R: DeserializeOwned + Send + 'static> Imap<R> {
    /// Starts the stream: its feeder thread starts reading `source` now.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the feeder thread cannot be spawned; nothing has been read
    /// or sent then.
    pub(crate) fn new(
        shared: Arc<Engine>,
        task: &'static str,
        source: Source,
        total: Option<usize>,
        chunksize: usize,
        ordered: bool,
    ) -> Result<Self, Error> {
        let inbox = Arc::new(Inbox::new());
        let ahead = CHUNKS_PER_WORKER
            .saturating_mul(shared.config.processes)
            .saturating_mul(chunksize);
        let job = Arc::new(Call::of(&shared));
        let link = Arc::new(Link {
            consumed: AtomicUsize::new(0),
            wake_at: AtomicUsize::new(usize::MAX),
            stop: AtomicBool::new(false),
            in_input: AtomicBool::new(false),
            read: AtomicUsize::new(0),
            lock: Mutex::new(()),
            room: Condvar::new(),
        });
        let feeder = Feeder {
            shared,
            task,
            source,
            chunksize,
            ahead,
            job: Arc::clone(&job),
            sink: Arc::new(Decoder {
                task,
                inbox: Arc::clone(&inbox),
            }),
            inbox: Arc::clone(&inbox),
            link: Arc::clone(&link),
            read: 0,
            told: false,
        };
        let feeder = std::thread::Builder::new()
            .name(FEEDER_NAME.to_owned())
            .spawn(move || feeder.run())?;
        Ok(Imap {
            task,
            chunksize,
            ordered,
            job,
            link,
            feeder: Some(feeder),
            inbox,
            arrived: Vec::new(),
            yielded_before: 0,
            received: 0,
            end: None,
            early: BTreeMap::new(),
            next_expected: 0,
            current: Decoded::new(Vec::new(), VecDeque::new(), 0),
            ready: VecDeque::new(),
            last_error: None,
            total,
            started: Instant::now(),
            on_progress: None,
        })
    }

    /// Calls `f` on the consuming thread each time a chunk of results arrives.
    ///
    /// Its `done` counts the items handed out or waiting to be (received, in
    /// order or early), so it may run ahead of what you have consumed; `total` is
    /// known only for an input whose `size_hint` is exact. It runs inside
    /// [`next`](Iterator::next), between items: keep it short.
    pub fn with_progress(mut self, f: impl FnMut(Progress) + Send + 'static) -> Self {
        self.on_progress = Some(Box::new(f));
        self
    }

    /// Takes in one message: a chunk goes in line (ordered mode: after the chunks
    /// before it), the end of the input is noted; then the progress hook runs.
    fn receive(&mut self, msg: Msg<R>) {
        let (first, items) = match msg {
            Msg::Chunk(first, items) => (first, items),
            Msg::Ended { read, error } => {
                self.end = Some(read);
                self.last_error = error;
                return;
            }
        };
        self.received += items.total;
        if self.ordered {
            self.early.insert(first, items);
            while let Some(chunk) = self.early.remove(&self.next_expected) {
                self.next_expected += chunk.len();
                self.ready.push_back(chunk);
            }
        } else {
            self.ready.push_back(items);
        }
        if self.on_progress.is_some() {
            // Handed out, or here waiting to be.
            let done = self.yielded_before
                + self.current.total
                + self.ready.iter().map(ExactSizeIterator::len).sum::<usize>()
                + self
                    .early
                    .values()
                    .map(ExactSizeIterator::len)
                    .sum::<usize>();
            let Some(f) = self.on_progress.as_mut() else {
                return;
            };
            f(Progress {
                done,
                total: self.total,
                elapsed: self.started.elapsed(),
            });
        }
    }
}

impl<R: DeserializeOwned + Send + 'static> Iterator for Imap<R> {
    type Item = Result<R, Error>;

    /// The item at hand is taken inline, in the caller's loop; the rest (the next
    /// chunk, waiting) is out of line.
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(item) = self.current.next() {
            return Some(item);
        }
        self.next_chunk(None)
    }

    /// At least the results ready now, at most the items left of an input of known
    /// length (no upper bound otherwise).
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.total.map(|t| t.saturating_sub(self.yielded()));
        let ready =
            self.current.len() + self.ready.iter().map(ExactSizeIterator::len).sum::<usize>();
        (ready, left)
    }
}

impl<R: DeserializeOwned + Send + 'static> Imap<R> {
    /// Like [`Iterator::next`], but waits at most `timeout` for the next result
    /// (Python's `IMapIterator.next(timeout)`). Past it, this is an
    /// [`Error::Timeout`] (with no pid: no worker was killed) and the stream stays
    /// usable: the awaited item comes with a later call. `None` at the end.
    ///
    /// The time-out is not an item of the stream: it takes no place in the count.
    /// In input order it names the index of the awaited item; in completion order
    /// no index, as any item may come next.
    ///
    /// ```rust,ignore
    /// let mut results = pool.imap(fetch, urls)?;
    /// loop {
    ///     match results.next_timeout(Duration::from_secs(1)) {
    ///         None => break,
    ///         Some(Err(Error::Timeout { pid: None, .. })) => report_slow(),
    ///         Some(item) => handle(item),
    ///     }
    /// }
    /// ```
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R, Error>> {
        if let Some(item) = self.current.next() {
            return Some(item);
        }
        self.next_chunk(Instant::now().checked_add(timeout).map(|at| (at, timeout)))
    }

    /// [`Iterator::next`] once the chunk at hand is used up, waiting until
    /// `deadline` (and its timeout) if given.
    ///
    /// In this order: the next ready chunk (publishing the count, so the feeder may
    /// read on); the end, once every chunk the feeder submitted has come back (then
    /// the last error, if any, and `None`); else publish what was handed out and
    /// wait in the inbox for the chunk that comes next (any chunk, unordered). A
    /// time-out is reported only after what arrived meanwhile has been taken in.
    #[inline(never)]
    fn next_chunk(&mut self, deadline: Option<(Instant, Duration)>) -> Option<Result<R, Error>> {
        let mut timed_out = false;
        loop {
            if let Some(item) = self.current.next() {
                return Some(item);
            }
            if let Some(chunk) = self.ready.pop_front() {
                // A chunk's worth consumed: the feeder may read ahead again.
                self.yielded_before += self.current.total;
                self.current = chunk;
                self.link.publish(self.yielded_before);
                continue;
            }
            if self.end.is_some_and(|read| self.received >= read) {
                return self.last_error.take().map(Err);
            }
            // Everything received is handed out: the feeder must not wait for it.
            self.link.publish(self.yielded());
            if timed_out {
                return Some(Err(Error::Timeout {
                    task: Some(self.task.to_owned()),
                    index: self.ordered.then_some(self.yielded()),
                    pid: None,
                    after: deadline.map_or(Duration::ZERO, |(_, after)| after),
                }));
            }
            // Every submitted chunk answers exactly once (run, failed or dropped),
            // and the feeder says where the input ended: what is waited for comes.
            let want = if self.ordered {
                Want::Chunk(self.next_expected)
            } else {
                Want::Any
            };
            let mut arrived = std::mem::take(&mut self.arrived);
            timed_out = !self
                .inbox
                .take(want, deadline.map(|(at, _)| at), &mut arrived);
            for message in arrived.drain(..) {
                self.receive(message);
            }
            self.arrived = arrived;
        }
    }
}

impl<R> Imap<R> {
    /// Items taken from the input so far, by the feeder (for tests and
    /// diagnostics). It reads ahead while you consume, so this is a moment's count:
    /// at least what you have consumed, at most the read-ahead more.
    pub fn items_read(&self) -> usize {
        self.link.read.load(Ordering::Acquire)
    }

    /// Items handed to the consumer (counted per chunk, so that the consumer's loop
    /// touches one count per item).
    fn yielded(&self) -> usize {
        self.yielded_before + self.current.taken()
    }
}

impl<R> Drop for Imap<R> {
    /// Cancels the stream's queued chunks, closes the inbox (what comes later is
    /// dropped where it arrives), stops the feeder and joins it unless it is inside
    /// the input.
    fn drop(&mut self) {
        self.job.cancel();
        self.inbox.close();
        let link = &*self.link;
        link.stop.store(true, Ordering::SeqCst);
        {
            let _guard = lock(&link.lock);
            link.room.notify_one();
        }
        let Some(feeder) = self.feeder.take() else {
            return;
        };
        // In the input, the feeder may wait there for ever: it is left to end by
        // itself. Elsewhere it ends at once.
        if !link.in_input.load(Ordering::SeqCst) {
            let _ = feeder.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decoded_chunk_interleaves_errors_at_their_positions() {
        let chunk = Decoded::new(
            vec![10u32, 30, 50],
            VecDeque::from([(1, Error::PoolClosed), (3, Error::protocol("x"))]),
            5,
        );
        assert_eq!(chunk.len(), 5);
        let got: Vec<Result<u32, Error>> = chunk.collect();
        assert_eq!(got.len(), 5);
        assert!(matches!(got[0], Ok(10)));
        assert!(matches!(got[1], Err(Error::PoolClosed)));
        assert!(matches!(got[2], Ok(30)));
        assert!(matches!(got[3], Err(Error::Protocol(_))));
        assert!(matches!(got[4], Ok(50)));
    }

    #[test]
    fn errors_first_last_and_in_a_row_keep_their_places() {
        // Positions: E V E E V E (errors at 0, 2, 3, 5).
        let errors = VecDeque::from([
            (0, Error::PoolClosed),
            (2, Error::PoolClosed),
            (3, Error::PoolClosed),
            (5, Error::PoolClosed),
        ]);
        let mut chunk = Decoded::new(vec![1u8, 4], errors, 6);
        let mut shape = String::new();
        let mut values = Vec::new();
        let mut taken = Vec::new();
        while let Some(item) = chunk.next() {
            match item {
                Ok(v) => {
                    shape.push('V');
                    values.push(v);
                }
                Err(_) => shape.push('E'),
            }
            taken.push(chunk.taken());
        }
        assert_eq!(shape, "EVEEVE");
        assert_eq!(values, [1, 4]);
        assert_eq!(taken, [1, 2, 3, 4, 5, 6]);
        assert_eq!(chunk.len(), 0);

        let only_values = Decoded::new(vec![7u8, 8], VecDeque::new(), 2);
        assert_eq!(only_values.map(Result::unwrap).collect::<Vec<_>>(), [7, 8]);
        let only_errors: Decoded<u8> =
            Decoded::new(Vec::new(), VecDeque::from([(0, Error::PoolClosed)]), 1);
        assert_eq!(only_errors.filter(Result::is_err).count(), 1);
    }

    fn chunk(first: usize) -> Msg<u8> {
        Msg::Chunk(first, Decoded::new(vec![1], VecDeque::new(), 1))
    }

    fn firsts(messages: &[Msg<u8>]) -> Vec<Option<usize>> {
        messages
            .iter()
            .map(|m| match m {
                Msg::Chunk(first, _) => Some(*first),
                Msg::Ended { .. } => None,
            })
            .collect()
    }

    #[test]
    fn an_inbox_waits_for_the_wanted_chunk_and_hands_over_all_that_came() {
        let inbox = Arc::new(Inbox::new());
        let mut got = Vec::new();
        // An early chunk does not answer a wait for chunk 0: past the deadline,
        // what came is handed over anyway.
        inbox.put(chunk(3));
        assert!(!inbox.take(Want::Chunk(0), Some(Instant::now()), &mut got));
        assert_eq!(firsts(&got), [Some(3)]);
        got.clear();
        // From another thread: the early chunk first, then the wanted one, which
        // wakes the wait (a liveness bound of 60 s, not a timing claim).
        let other = Arc::clone(&inbox);
        let putter = std::thread::spawn(move || {
            other.put(chunk(1));
            other.put(chunk(0));
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        assert!(inbox.take(Want::Chunk(0), Some(deadline), &mut got));
        putter.join().unwrap();
        inbox.take(Want::Any, Some(Instant::now()), &mut got);
        assert_eq!(firsts(&got), [Some(1), Some(0)]);
        got.clear();
        // The end answers any wait; after `close`, what comes is dropped.
        inbox.put(Msg::Ended {
            read: 2,
            error: None,
        });
        assert!(inbox.take(Want::Chunk(2), None, &mut got));
        assert_eq!(firsts(&got), [None]);
        inbox.close();
        inbox.put(chunk(2));
        assert!(!inbox.take(Want::Any, Some(Instant::now()), &mut got));
        assert_eq!(got.len(), 1);
    }
}
