//! Lazy, streaming maps: [`Imap`], behind `Pool::imap` and `Pool::imap_unordered`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::result::{self, Progress};
use crate::scheduler::{Batch, Job, Reply, ReplySink, Shared};

/// A decoded chunk: its first index and its items.
type Chunk<R> = (usize, Decoded<R>);

/// The results of one chunk, in order: the values, and apart from them the few
/// errors with their positions, so each item costs only its value (the decoded
/// values cross from a pool thread to the consumer: smaller is faster).
struct Decoded<R> {
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

/// Decodes replies on the pool thread that received them, so the consumer only
/// moves finished values.
struct Decoder<R> {
    task: &'static str,
    chunks: Sender<Chunk<R>>,
}

impl<R: DeserializeOwned + Send> ReplySink for Decoder<R> {
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
        let _ = self.chunks.send((first, Decoded::new(values, errors, len)));
        read
    }
}

/// Encodes up to `max` more input items into the buffer (one loop per chunk, not a
/// call per item).
pub(crate) type Source = Box<dyn FnMut(&mut Vec<u8>, u32) -> Filled + Send>;

/// What a [`Source`] did.
pub(crate) struct Filled {
    /// Items encoded.
    pub(crate) count: u32,
    /// The input ended (or an item failed to encode: `error`); nothing more comes.
    pub(crate) ended: bool,
    /// The item after the `count` encoded could not be encoded.
    pub(crate) error: Option<Error>,
}

/// Chunks kept in flight per worker process.
const CHUNKS_PER_WORKER: usize = 8;

/// The results of `imap` (input order) or `imap_unordered` (completion order), one
/// `Result` per item.
///
/// The input is read lazily: at most `8 × processes × chunksize` items are taken from
/// it ahead of what you have consumed, so an endless or huge iterator streams in
/// constant memory (Python's `imap` reads its whole input into a queue). A failed
/// item yields its error and the stream goes on; if the pool is closed or dropped
/// the stream yields [`Error::PoolClosed`] and ends, never hangs. Dropping the
/// iterator cancels the chunks not yet started.
pub struct Imap<R> {
    shared: Arc<Shared>,
    task: &'static str,
    source: Option<Source>,
    chunksize: usize,
    /// Most items read ahead of the consumer.
    ahead: usize,
    ordered: bool,
    job: Arc<Job>,
    sink: Arc<dyn ReplySink>,
    replies: Receiver<Chunk<R>>,
    /// Items read from the input / handed to the consumer in the chunks before
    /// `current` (see [`Imap::yielded`]).
    read: usize,
    yielded_before: usize,
    in_flight: usize,
    /// Size of the last chunk sent, to size the next one's buffer.
    last_chunk_bytes: usize,
    /// Ordered mode: chunks that arrived early, by first index.
    early: BTreeMap<usize, Decoded<R>>,
    next_expected: usize,
    /// The chunk being handed out.
    current: Decoded<R>,
    /// Chunks ready to hand out after it, in order.
    ready: VecDeque<Decoded<R>>,
    /// An error to yield once everything before it has been yielded.
    last_error: Option<Error>,
    total: Option<usize>,
    started: Instant,
    on_progress: Option<Box<dyn FnMut(Progress) + Send>>,
}

impl<R> std::fmt::Debug for Imap<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("task", &self.task)
            .field("ordered", &self.ordered)
            .field("chunksize", &self.chunksize)
            .field("read", &self.read)
            .field("yielded", &self.yielded())
            .finish_non_exhaustive()
    }
}

impl<R: DeserializeOwned + Send + 'static> Imap<R> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        task: &'static str,
        source: Source,
        total: Option<usize>,
        chunksize: usize,
        ordered: bool,
    ) -> Self {
        let (tx, replies) = mpsc::channel();
        let ahead = CHUNKS_PER_WORKER
            .saturating_mul(shared.config.processes)
            .saturating_mul(chunksize);
        Imap {
            shared,
            task,
            source: Some(source),
            chunksize,
            ahead,
            ordered,
            job: Arc::new(Job::default()),
            sink: Arc::new(Decoder { task, chunks: tx }),
            replies,
            read: 0,
            yielded_before: 0,
            in_flight: 0,
            last_chunk_bytes: 0,
            early: BTreeMap::new(),
            next_expected: 0,
            current: Decoded::new(Vec::new(), VecDeque::new(), 0),
            ready: VecDeque::new(),
            last_error: None,
            total,
            started: Instant::now(),
            on_progress: None,
        }
    }

    /// Calls `f` on the consuming thread each time a chunk of results arrives.
    pub fn with_progress(mut self, f: impl FnMut(Progress) + Send + 'static) -> Self {
        self.on_progress = Some(Box::new(f));
        self
    }

    /// Items taken from the input so far (for tests and diagnostics).
    pub fn items_read(&self) -> usize {
        self.read
    }

    /// Reads and submits chunks while the read-ahead allows.
    fn fill(&mut self) {
        while self.read - self.yielded() + self.chunksize <= self.ahead.max(self.chunksize) {
            let Some(source) = self.source.as_mut() else {
                return;
            };
            let mut buf = Vec::with_capacity(self.last_chunk_bytes + 16);
            let Filled {
                count,
                ended,
                error,
            } = source(&mut buf, self.chunksize as u32);
            if ended {
                self.source = None;
                self.last_error = error;
            }
            if count == 0 {
                return;
            }
            self.last_chunk_bytes = buf.len();
            let batch = Batch {
                task: self.task,
                first_index: self.read,
                count,
                payload: buf,
                job: Arc::clone(&self.job),
                retries: 0,
                restarts: 0,
                solo: false,
                sink: Some(Arc::clone(&self.sink)),
            };
            self.read += count as usize;
            match self.shared.submit(std::iter::once(batch)) {
                Ok(()) => self.in_flight += 1,
                Err(e) => {
                    self.last_error = Some(e);
                    self.source = None;
                    return;
                }
            }
        }
    }

    fn receive(&mut self, (first, items): Chunk<R>) {
        self.in_flight -= 1;
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
    /// chunk, reading ahead, waiting) is out of line.
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(item) = self.current.next() {
            return Some(item);
        }
        self.next_chunk(None)
    }

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
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R, Error>> {
        if let Some(item) = self.current.next() {
            return Some(item);
        }
        self.next_chunk(Instant::now().checked_add(timeout).map(|at| (at, timeout)))
    }

    /// [`Iterator::next`] once the chunk at hand is used up, waiting until
    /// `deadline` (and its timeout) if given.
    #[inline(never)]
    fn next_chunk(&mut self, deadline: Option<(Instant, Duration)>) -> Option<Result<R, Error>> {
        loop {
            if let Some(item) = self.current.next() {
                return Some(item);
            }
            if let Some(chunk) = self.ready.pop_front() {
                // A chunk's worth consumed: read ahead again.
                self.yielded_before += self.current.total;
                self.current = chunk;
                self.fill();
                continue;
            }
            self.fill();
            if self.in_flight == 0 {
                return self.last_error.take().map(Err);
            }
            // Every submitted chunk answers exactly once (run, failed or dropped),
            // and this iterator holds a sender, so this cannot disconnect.
            let chunk = match deadline {
                None => self.replies.recv().ok()?,
                Some((at, after)) => {
                    match self
                        .replies
                        .recv_timeout(at.saturating_duration_since(Instant::now()))
                    {
                        Ok(chunk) => chunk,
                        Err(RecvTimeoutError::Timeout) => {
                            return Some(Err(Error::Timeout {
                                task: Some(self.task.to_owned()),
                                index: self.ordered.then_some(self.yielded()),
                                pid: None,
                                after,
                            }));
                        }
                        Err(RecvTimeoutError::Disconnected) => return None,
                    }
                }
            };
            self.receive(chunk);
        }
    }
}

impl<R> Imap<R> {
    /// Items handed to the consumer (counted per chunk, so that the consumer's loop
    /// touches one count per item).
    fn yielded(&self) -> usize {
        self.yielded_before + self.current.taken()
    }
}

impl<R> Drop for Imap<R> {
    fn drop(&mut self) {
        self.job.cancel();
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
}
