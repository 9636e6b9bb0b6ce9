//! The wire protocol between the pool and its workers.
//!
//! A transport moves opaque frames. Every frame starts with a postcard-encoded header
//! ([`ToWorker`] or [`FromWorker`]); a frame of work (one batch, or several small
//! batches of one task sent together) carries its items after the header: each item
//! is a LEB128 length followed by that many bytes, so a bad item fails alone and the
//! rest of the frame still decodes.
//!
//! ```text
//! parent -> worker   Run { id, task, first_index, count, report_starts, direct } | item | ...
//!                    item   = len  postcard(args tuple)
//!                    Shutdown
//! worker -> parent   Hello { magic, protocol, build_id, pid, secret }  (first frame)
//!                    Started { id, item }                      (only if asked)
//!                    Done { id, count } | item | item | ...
//!                    item   = len  status  postcard(output | ItemFailure)
//!                    Refused { id, reason }                  (instead of Done)
//! ```
//!
//! The conversation is strictly one batch at a time on the worker's side: it sends
//! its [`Hello`], then answers each `Batch` with one `Done` (or one `Refused`), in
//! the order the batches came, until `Shutdown` or the end of the stream. The pool
//! may write several batches before reading an answer (send-ahead, see the engine's
//! README); it matches answers to batches by `id`.
//!
//! "Fails alone" holds for an item's *contents*: arguments the worker cannot
//! deserialize, a panic, a result that does not serialize each become that item's
//! failed result, and the items after it run. A bad *length* cannot be stepped over:
//! [`Items`] reports it again at every later call, so nothing after it is read (a
//! worker gives up on such a batch and exits; the pool fails the reply's items from
//! there on).
//!
//! Headers borrow from the frame (`task: &str`, `reason: &str`), so decoding one
//! allocates nothing. Everything here is plain data and pure functions: the frames
//! are read by the fuzz targets and the benches through `__private::protocol`.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Version of this protocol; parent and worker must agree.
///
/// Sent in [`Hello::protocol`] and compared by the pool, which refuses a worker of
/// another version with [`Error::Protocol`]. Raise it whenever a header or the layout
/// of the items changes.
pub const PROTOCOL_VERSION: u32 = 2;

/// First bytes of every handshake, compared before anything else: something on the
/// other end of the link that is not a procpool worker at all is named as such ("bad
/// magic") rather than as a worker of another version.
pub const MAGIC: [u8; 4] = *b"PPL\x01";

/// Default cap on one frame: 1 GiB. Larger frames are refused before anything is
/// allocated for them.
///
/// The pool's `max_frame_size` replaces it; the cap travels to the worker in its
/// environment marker, so both ends refuse the same frames.
pub const DEFAULT_MAX_FRAME: usize = 1 << 30;

/// A message from the pool to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker<'a> {
    /// Run `task` on `count` items (they follow the header).
    Run {
        /// Identifies the reply. Unique within a pool and never 0 (the progress page
        /// uses 0 for "no frame started yet").
        id: u64,
        /// Registered name of the task, with its `#2` suffix if it has one (see the
        /// registry): the worker looks it up by name, and answers `Refused` if it
        /// does not know it.
        task: &'a str,
        /// Index in the caller's input of the first item. The worker does not read
        /// it: results are matched to items by their position in the frame.
        first_index: u64,
        /// Number of items. The worker checks it against the items it finds: more or
        /// fewer is a protocol error that ends the worker.
        count: u32,
        /// Send a [`FromWorker::Started`] as each item but the first starts, so the
        /// pool can time every item (used with a task time limit, for batches of more
        /// than one item; the first item is timed from the send).
        report_starts: bool,
        /// A call the caller waits on (`apply`): after answering, watch a moment for
        /// the next frame before sleeping, as such calls often come in a loop.
        direct: bool,
    },
    /// Exit cleanly: the worker returns from its serve loop and the process exits
    /// with code 0. Sent when the pool closes and to a worker replaced after
    /// `max_tasks_per_child` or `max_memory_per_child`; a terminating pool kills its
    /// workers instead.
    Shutdown,
}

/// A message from a worker to the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromWorker<'a> {
    /// The handshake, sent once when the worker starts, before it reads anything.
    Hello(Hello),
    /// The results of batch `id` follow the header, one item each.
    Done {
        /// The batch this answers.
        id: u64,
        /// Number of result items: always the batch's `count` (the pool refuses any
        /// other as a protocol error).
        count: u32,
    },
    /// Item `item` (counted from 0 within the frame) of frame `id` has started: the
    /// items before it are done.
    Started {
        /// The frame.
        id: u64,
        /// The item that started.
        item: u32,
    },
    /// The worker could not run batch `id` at all, and goes on serving.
    ///
    /// Sent for a task name the worker does not know, and for results that would
    /// not fit the frame cap (the transport refuses such a frame before writing
    /// anything, so the link is still in step). The batch fails with
    /// [`Error::Protocol`] carrying `reason`; a group of batches refused this way is
    /// sent again one batch a frame.
    Refused {
        /// The batch this answers.
        id: u64,
        /// Why, in words, for the caller's error.
        reason: &'a str,
    },
}

/// The worker's handshake. Its `Debug` leaves the secret out, so that no error
/// message or log line shows it.
///
/// The pool checks every field in turn and refuses the worker, with
/// [`Error::Protocol`] naming the first mismatch, if any is wrong. (The pool prints an
/// unexpected header with `{:?}` in its protocol errors — a second `Hello` in place
/// of a reply, say: one reason the secret must not be in `Debug`.)
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: [u8; 4],
    /// The worker's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// Fingerprint of the worker's task registry (a hash of procpool-core's version
    /// and the sorted task paths): equal when parent and worker registered the same
    /// tasks, so that the names they exchange mean the same functions.
    pub build_id: u64,
    /// The worker's process id: must be the pid of the child the pool started on
    /// this link.
    pub pid: u32,
    /// The pool's per-pool secret, as the worker was given it in its environment
    /// marker: a handshake that does not echo it is refused, so a process that was
    /// not started by this pool is not taken for one of its workers.
    pub secret: u128,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("magic", &self.magic)
            .field("protocol", &self.protocol)
            .field("build_id", &self.build_id)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// Why one item failed inside the worker.
///
/// Travels postcard-encoded after `STATUS_FAILED` in the item's result; the pool
/// turns it into the caller's [`Error`] with `into_error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemFailure {
    /// The task panicked (while decoding its arguments, running, or encoding its
    /// result).
    Panicked {
        /// The panic message: the payload if it is a string, else a placeholder.
        message: String,
        /// `file:line:column`, when known: captured by the worker's panic hook.
        location: Option<String>,
    },
    /// The arguments could not be deserialized in the worker.
    ArgDecode(String),
    /// The result could not be serialized in the worker.
    OutputEncode(String),
}

impl ItemFailure {
    /// The error a caller sees for this failure of item `index` of `task` in worker
    /// `pid`: [`Error::TaskPanicked`] for a panic, [`Error::Serialization`] for the
    /// rest, whose `what` says on which side and in which direction it failed.
    pub(crate) fn into_error(self, task: &str, index: usize, pid: u32) -> Error {
        let task = task.to_owned();
        match self {
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
}

/// Status byte of a result item: the postcard encoding of the task's output follows.
pub(crate) const STATUS_OK: u8 = 0;
/// Status byte of a failed result item: an encoded [`ItemFailure`] follows.
pub(crate) const STATUS_FAILED: u8 = 1;

/// A postcard flavor that appends to an existing `Vec`: one `push` or one
/// `extend_from_slice` per write, without the per-byte `io::Write` calls of `to_io`.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        // postcard hands every varint over as a slice of 1 to 10 bytes. A copy of a
        // length known at compile time is a few moves; one of a length known only at
        // run time is a call to `memcpy`, which cost a third of the encoding time.
        macro_rules! fixed {
            ($($n:literal)*) => {
                match bytes.len() {
                    $($n => {
                        if let Ok(array) = <&[u8; $n]>::try_from(bytes) {
                            self.0.extend_from_slice(array);
                        }
                    })*
                    _ => self.0.extend_from_slice(bytes),
                }
            };
        }
        fixed!(1 2 3 4 5 6 7 8 9 10);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Appends the postcard encoding of `value` to `out`.
///
/// # Errors
///
/// What the value's `Serialize` reports, or postcard's refusals (a sequence of
/// unknown length, say). `out` may then hold part of the encoding: callers cut it
/// back ([`push_item`] does).
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> postcard::Result<()> {
    postcard::serialize_with_flavor(value, Append(out))
}

/// Encodes a header into `buf` (cleared first).
///
/// # Errors
///
/// [`Error::Protocol`] if postcard refuses the header, which none of ours can cause.
pub(crate) fn encode_header<T: Serialize>(header: &T, buf: &mut Vec<u8>) -> Result<(), Error> {
    buf.clear();
    encode_into(header, buf)
        .map_err(|e| Error::protocol(format!("cannot encode a frame header: {e}")))
}

/// Splits a frame into its header and the bytes after it.
///
/// # Errors
///
/// [`Error::Protocol`] for an empty frame or one whose header does not decode as a
/// `T` (unknown variant, string running past the end, ...). Hostile bytes never
/// panic it (a proptest runs it on random input).
pub fn decode_header<'a, T: Deserialize<'a>>(frame: &'a [u8]) -> Result<(T, &'a [u8]), Error> {
    if frame.is_empty() {
        return Err(Error::protocol("empty frame"));
    }
    postcard::take_from_bytes(frame)
        .map_err(|e| Error::protocol(format!("malformed frame header: {e}")))
}

/// Appends one length-prefixed item to `buf`; `write` appends the item's bytes.
///
/// A one-byte length is reserved and widened afterwards only for items of 128 bytes
/// or more, so small items are written once, with no scratch buffer.
///
/// # Errors
///
/// `write`'s error, with `buf` cut back to what it held before: a failed item leaves
/// no trace, and the caller may go on appending.
#[inline]
pub(crate) fn push_item<E>(
    buf: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let mark = buf.len();
    buf.push(0);
    if let Err(e) = write(buf) {
        buf.truncate(mark);
        return Err(e);
    }
    let len = buf.len() - mark - 1;
    match buf.get_mut(mark) {
        Some(prefix) if len < 0x80 => *prefix = len as u8,
        _ => widen_length(buf, mark, len),
    }
    Ok(())
}

/// Replaces the one-byte length reserved at `mark` with the varint of `len`.
///
/// The splice moves the item's bytes up by the extra length bytes: one copy, for
/// items large enough that it costs little next to encoding them.
#[cold]
fn widen_length(buf: &mut Vec<u8>, mark: usize, len: usize) {
    let mut prefix = [0u8; 10];
    let n = encode_varint(len as u64, &mut prefix);
    buf.splice(mark..mark + 1, prefix[..n].iter().copied());
}

/// Writes `v` as an unsigned LEB128 varint (7 bits a byte, low bits first, the high
/// bit set on all bytes but the last) into `out`; returns the bytes used, 1 to 10.
fn encode_varint(mut v: u64, out: &mut [u8; 10]) -> usize {
    let mut i = 0;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out[i] = byte;
            return i + 1;
        }
        out[i] = byte | 0x80;
        i += 1;
    }
}

/// Reads length-prefixed items out of a batch payload.
///
/// Used on both sides: the worker walks a batch's arguments, the pool a reply's
/// results. It never panics and never reads past its slice, whatever the bytes.
#[derive(Debug)]
pub struct Items<'a> {
    /// The items not read yet.
    rest: &'a [u8],
}

impl<'a> Items<'a> {
    /// Items over `payload`.
    pub fn new(payload: &'a [u8]) -> Self {
        Items { rest: payload }
    }

    /// The next item, `None` at the end, or an error for a bad length.
    ///
    /// # Errors
    ///
    /// [`Error::Protocol`] if the length is cut off, overflows 64 bits, or announces
    /// more bytes than are left. The items after a bad length cannot be found.
    #[inline]
    pub fn next_item(&mut self) -> Result<Option<&'a [u8]>, Error> {
        // Fast path: a one-byte length (items under 128 bytes) that fits.
        if let Some((&len, body)) = self.rest.split_first()
            && len < 0x80
            && let Some((item, rest)) = body.split_at_checked(usize::from(len))
        {
            self.rest = rest;
            return Ok(Some(item));
        }
        self.next_item_slow()
    }

    /// The general case of [`next_item`](Self::next_item): the end, a multi-byte
    /// length, or a length that does not fit.
    #[cold]
    fn next_item_slow(&mut self) -> Result<Option<&'a [u8]>, Error> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let mut len: u64 = 0;
        let mut shift = 0u32;
        let mut used = 0usize;
        loop {
            let Some(&byte) = self.rest.get(used) else {
                return Err(Error::protocol("truncated item length"));
            };
            used += 1;
            if shift >= 63 && byte > 1 {
                return Err(Error::protocol("item length overflows 64 bits"));
            }
            len |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let body = &self.rest[used..];
        let len = usize::try_from(len).map_err(|_| Error::protocol("item length too large"))?;
        if len > body.len() {
            return Err(Error::protocol(format!(
                "item of {len} bytes but only {} bytes left in the frame",
                body.len()
            )));
        }
        let (item, rest) = body.split_at(len);
        self.rest = rest;
        Ok(Some(item))
    }

    /// Bytes not read yet: what a reader subtracts from the payload's length to know
    /// how many bytes its items took (see the engine's `ResultFrame::share_out`).
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// True when every item has been read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_handshake_never_shows_its_secret() {
        let hello = Hello {
            magic: MAGIC,
            protocol: PROTOCOL_VERSION,
            build_id: 7,
            pid: 42,
            secret: 0x5ec2_e7ab_cdef_0123_4567_89ab_cdef_0123,
        };
        let shown = format!("{:?} {:?}", hello, FromWorker::Hello(hello));
        assert!(shown.contains("pid: 42"), "{shown}");
        for secret in [format!("{}", hello.secret), format!("{:x}", hello.secret)] {
            assert!(!shown.contains(&secret), "{shown}");
        }
    }

    #[test]
    fn header_round_trip() {
        let mut buf = Vec::new();
        let msg = ToWorker::Run {
            id: 7,
            task: "a::b",
            first_index: 10,
            count: 3,
            report_starts: true,
            direct: false,
        };
        encode_header(&msg, &mut buf).unwrap();
        buf.extend_from_slice(b"rest");
        let (back, rest) = decode_header::<ToWorker<'_>>(&buf).unwrap();
        assert_eq!(back, msg);
        assert_eq!(rest, b"rest");
    }

    #[test]
    fn bad_headers_are_protocol_errors() {
        assert!(matches!(
            decode_header::<FromWorker<'_>>(&[]),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            decode_header::<FromWorker<'_>>(&[9, 9, 9]),
            Err(Error::Protocol(_))
        ));
        // A Refused whose string length runs past the end.
        assert!(matches!(
            decode_header::<FromWorker<'_>>(&[2, 1, 200]),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn items_round_trip_small_and_large() {
        let mut buf = Vec::new();
        let big = vec![7u8; 300];
        push_item::<()>(&mut buf, |b| {
            b.extend_from_slice(b"hi");
            Ok(())
        })
        .unwrap();
        push_item::<()>(&mut buf, |b| {
            b.extend_from_slice(&big);
            Ok(())
        })
        .unwrap();
        push_item::<()>(&mut buf, |_| Ok(())).unwrap();
        assert_eq!(
            push_item(&mut buf, |b| {
                b.push(1);
                Err("no")
            }),
            Err("no")
        );
        let mut items = Items::new(&buf);
        assert_eq!(items.next_item().unwrap(), Some(&b"hi"[..]));
        assert_eq!(items.next_item().unwrap(), Some(&big[..]));
        assert_eq!(items.next_item().unwrap(), Some(&b""[..]));
        assert_eq!(items.next_item().unwrap(), None);
    }

    #[test]
    fn items_reject_lies() {
        assert!(Items::new(&[5, 1, 2]).next_item().is_err());
        assert!(Items::new(&[0x80]).next_item().is_err());
        assert!(Items::new(&[0xff; 11]).next_item().is_err());
    }

    proptest! {
        // Hostile bytes never panic the header or item decoders (100 000 cases).
        #![proptest_config(ProptestConfig::with_cases(100_000))]
        #[test]
        fn items_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut items = Items::new(&bytes);
            let mut consumed = 0;
            while let Ok(Some(item)) = items.next_item() {
                consumed += item.len();
                prop_assert!(consumed <= bytes.len());
            }
            for result in [
                decode_header::<ToWorker<'_>>(&bytes).map(|_| ()),
                decode_header::<FromWorker<'_>>(&bytes).map(|_| ()),
            ] {
                prop_assert!(matches!(result, Ok(()) | Err(Error::Protocol(_))));
            }
        }
    }

    proptest! {

        #[test]
        fn items_round_trip(parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)) {
            let mut buf = Vec::new();
            for p in &parts {
                push_item::<()>(&mut buf, |b| {
                    b.extend_from_slice(p);
                    Ok(())
                })
                .unwrap();
            }
            let mut items = Items::new(&buf);
            for p in &parts {
                prop_assert_eq!(items.next_item().unwrap(), Some(&p[..]));
            }
            prop_assert!(items.is_empty());
        }
    }
}
