//! Encoding a call's items: length-prefixed, postcard-encoded argument tuples, and
//! the chunk-size rules.
//!
//! Every item is encoded on its own, behind its length, straight into the batch's
//! buffer: a worker finds each item without decoding the ones before it, an
//! argument that fails to decode in the worker fails that item alone, and the
//! pool can cut a chunk into pieces, or share a reply out, at any item boundary.
//! One tuple per item, whatever the call: `map` sends `(item,)`, `starmap` and
//! `apply` the caller's tuple, so the worker's runner decodes the same `Args`.

use serde::Serialize;

use crate::error::Error;

use crate::wire::protocol;
use crate::wire::registry::TaskEntry;

/// Appends item `index` of a call to `entry` as one length-prefixed argument tuple.
///
/// Inlined: it is the body of every encoding loop (a call per item costs as much as
/// the encoding of a small item).
///
/// # Errors
///
/// [`Error::Serialization`] naming the task and the item's `index` if the value
/// does not serialize; `buf` is then as it was before the call.
#[inline]
pub(super) fn push_argument<A: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    entry: &TaskEntry,
    index: usize,
    value: &A,
) -> Result<(), Error> {
    protocol::push_item(buf, |b| protocol::encode_into(value, b)).map_err(|e| {
        Error::Serialization {
            task: entry.name().to_owned(),
            index,
            what: "serialized as an argument",
            message: e.to_string(),
        }
    })
}

/// Checks a caller's chunk size: zero is refused; one larger than a frame can count
/// (`u32::MAX` items) is taken as `u32::MAX`, which for any real input means "one
/// chunk" (the API takes a `usize`, so `usize::MAX` must mean "as large as you like").
///
/// # Errors
///
/// [`Error::InvalidArgument`] for `Some(0)`.
pub(super) fn check_chunksize(chunksize: Option<usize>) -> Result<Option<usize>, Error> {
    match chunksize {
        Some(0) => Err(Error::InvalidArgument(
            "chunksize must be at least 1, got 0".into(),
        )),
        other => Ok(other.map(|c| c.min(u32::MAX as usize))),
    }
}

/// Python's default chunk size: `ceil(len / (4 * processes))`.
///
/// About four chunks per worker: few enough messages, and enough chunks that a
/// worker that finishes early takes another. At least 1, also for an empty input.
pub(super) fn default_chunksize(len: usize, processes: usize) -> usize {
    len.div_ceil(4 * processes).max(1)
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

    #[test]
    fn a_chunksize_past_a_frames_count_means_one_chunk() {
        assert!(matches!(
            check_chunksize(Some(0)),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(check_chunksize(None).unwrap(), None);
        assert_eq!(check_chunksize(Some(20)).unwrap(), Some(20));
        let max = Some(u32::MAX as usize);
        assert_eq!(check_chunksize(Some(usize::MAX)).unwrap(), max);
        assert_eq!(check_chunksize(Some(u32::MAX as usize + 1)).unwrap(), max);
    }
}
