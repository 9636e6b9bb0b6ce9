//! Turning a call's items into chunks of length-prefixed, postcard-encoded
//! argument tuples.

use std::borrow::Borrow;

use serde::Serialize;

use crate::error::Error;
use crate::protocol;
use crate::registry::TaskEntry;

/// Appends item `index` of a call to `entry` as one length-prefixed argument tuple.
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

pub(super) fn chunk_too_large(
    entry: &TaskEntry,
    first_index: usize,
    bytes: usize,
    max_chunk: usize,
) -> Error {
    Error::InvalidArgument(format!(
        "a chunk of task `{}` starting at item {first_index} needs {bytes} bytes, over the frame \
         limit of {max_chunk} bytes: use a smaller chunksize or raise max_frame_size",
        entry.name()
    ))
}

pub(super) fn check_chunksize(chunksize: Option<usize>) -> Result<Option<usize>, Error> {
    match chunksize {
        Some(0) => Err(Error::InvalidArgument(
            "chunksize must be at least 1, got 0".into(),
        )),
        Some(c) if c > u32::MAX as usize => Err(Error::InvalidArgument(format!(
            "chunksize must be at most {}, got {c}",
            u32::MAX
        ))),
        other => Ok(other),
    }
}

/// One chunk of encoded items.
#[derive(Debug)]
pub(super) struct Chunk {
    pub(super) first_index: usize,
    pub(super) count: u32,
    pub(super) bytes: std::ops::Range<usize>,
}

/// All items of a call, encoded into one buffer and cut into chunks.
#[derive(Debug)]
pub(super) struct Encoded {
    pub(super) buf: Vec<u8>,
    pub(super) chunks: Vec<Chunk>,
    pub(super) len: usize,
}

/// Python's default chunk size: `ceil(len / (4 * processes))`.
pub(super) fn default_chunksize(len: usize, processes: usize) -> usize {
    len.div_ceil(4 * processes).max(1)
}

pub(super) fn encode<A, B>(
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
        push_argument(&mut buf, entry, len, item.borrow())?;
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
