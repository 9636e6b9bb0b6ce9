//! The wire protocol between the pool and its workers.
//!
//! A transport moves opaque frames. Every frame starts with a postcard-encoded header
//! ([`ToWorker`] or [`FromWorker`]); a frame of work (one batch, or several small
//! batches of one task sent together) carries its items after the header: each item
//! is a LEB128 length followed by that many bytes, so a bad item fails alone and the
//! rest of the frame still decodes.
//!
//! ```text
//! parent -> worker   Run { id, task, first_index, count, .. } | item | item | ...
//!                    item   = len  postcard(args tuple)
//! worker -> parent   Hello { magic, protocol, build_id, pid, secret }   (first frame)
//!                    Started { id, item }                      (only if asked)
//!                    Done { id, count } | item | item | ...
//!                    item   = len  status  postcard(output | ItemFailure)
//! ```

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Version of this protocol; parent and worker must agree.
pub const PROTOCOL_VERSION: u32 = 2;

/// First bytes of every handshake.
pub const MAGIC: [u8; 4] = *b"PPL\x01";

/// Default cap on one frame: 1 GiB. Larger frames are refused before anything is
/// allocated for them.
pub const DEFAULT_MAX_FRAME: usize = 1 << 30;

/// A message from the pool to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker<'a> {
    /// Run `task` on `count` items (they follow the header).
    Run {
        /// Identifies the reply.
        id: u64,
        /// Registered name of the task.
        task: &'a str,
        /// Index in the caller's input of the first item.
        first_index: u64,
        /// Number of items.
        count: u32,
        /// Send a [`FromWorker::Started`] as each item but the first starts, so the
        /// pool can time every item (used with a task time limit).
        report_starts: bool,
        /// A direct call, which the caller waits on (`apply`): after answering,
        /// watch a moment for the next frame before sleeping, as such calls often
        /// come in a loop.
        direct: bool,
    },
    /// Exit cleanly.
    Shutdown,
}

/// A message from a worker to the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromWorker<'a> {
    /// The handshake, sent once when the worker starts.
    Hello(Hello),
    /// The results of batch `id` follow the header, one item each.
    Done {
        /// The batch this answers.
        id: u64,
        /// Number of result items.
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
    /// The worker could not run batch `id` at all.
    Refused {
        /// The batch this answers.
        id: u64,
        /// Why.
        reason: &'a str,
    },
}

/// The worker's handshake. Its `Debug` leaves the secret out, so that no error
/// message or log line shows it.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`MAGIC`].
    pub magic: [u8; 4],
    /// The worker's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// Fingerprint of the worker's task registry.
    pub build_id: u64,
    /// The worker's process id.
    pub pid: u32,
    /// The pool's per-pool secret, as the worker was given it.
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ItemFailure {
    /// The task panicked.
    Panicked {
        /// The panic message.
        message: String,
        /// `file:line:column`, when known.
        location: Option<String>,
    },
    /// The arguments could not be deserialized in the worker.
    ArgDecode(String),
    /// The result could not be serialized in the worker.
    OutputEncode(String),
}

impl ItemFailure {
    /// The error a caller sees for this failure of item `index` of `task` in worker `pid`.
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

/// Status byte of a result item.
pub(crate) const STATUS_OK: u8 = 0;
/// Status byte of a failed result item.
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
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> postcard::Result<()> {
    postcard::serialize_with_flavor(value, Append(out))
}

/// Encodes a header into `buf` (cleared first).
pub(crate) fn encode_header<T: Serialize>(header: &T, buf: &mut Vec<u8>) -> Result<(), Error> {
    buf.clear();
    encode_into(header, buf)
        .map_err(|e| Error::protocol(format!("cannot encode a frame header: {e}")))
}

/// Splits a frame into its header and the bytes after it.
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
#[cold]
fn widen_length(buf: &mut Vec<u8>, mark: usize, len: usize) {
    let mut prefix = [0u8; 10];
    let n = encode_varint(len as u64, &mut prefix);
    buf.splice(mark..mark + 1, prefix[..n].iter().copied());
}

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
#[derive(Debug)]
pub struct Items<'a> {
    rest: &'a [u8],
}

impl<'a> Items<'a> {
    /// Items over `payload`.
    pub fn new(payload: &'a [u8]) -> Self {
        Items { rest: payload }
    }

    /// The next item, `None` at the end, or an error for a bad length.
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

    /// Bytes not read yet.
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
