//! Length-prefixed frames: a little-endian `u32` length, then that many bytes.
//!
//! ```text
//! ┌──────────────────┬──────────────────────────────┐
//! │ len: u32, LE     │ len bytes (postcard message) │  ← one frame
//! └──────────────────┴──────────────────────────────┘
//!   PREFIX = 4 bytes   0 ..= max_frame bytes
//! ```
//!
//! A pipe is a byte stream without message boundaries: the prefix is what tells
//! where a frame ends, and an empty frame (`len` 0) is a valid one. The payload is
//! opaque here; procpool-core encodes it with postcard.
//!
//! The reader checks the announced length against the cap before reading, and grows
//! its buffer only as bytes actually arrive, so a hostile prefix (4 GiB, say) costs
//! nothing but an error.

use std::io::{self, BufRead, Write};

use procpool_core::transport::{check_incoming, check_outgoing};
use procpool_core::{Error, Received};

/// Bytes of the length prefix.
///
/// A `u32`, so no frame is longer than 4 GiB − 1, whatever the cap.
pub const PREFIX: usize = 4;

/// Most bytes reserved ahead of a frame's arrival; the rest grows as it comes.
///
/// [`read_frame`] first makes room for `min(len, RESERVE_AHEAD)` bytes, then, each
/// time that room is full, for as much again as it holds (never past `len`):
/// 1 MiB, 2 MiB, 4 MiB, ... for a large frame.
const RESERVE_AHEAD: usize = 1 << 20;

/// Writes one frame made of `parts` and flushes.
///
/// The parts are written one after the other behind a single prefix holding their
/// total length, so a caller can send a header and a payload without joining them.
/// The flush at the end makes the frame leave a buffered `w` at once: the reader
/// is waiting for it.
///
/// # Errors
///
/// - [`Error::Protocol`] if the parts add up to more than `max_frame` bytes, or to
///   more than a `u32` can announce; nothing is written then;
/// - [`Error::Io`] if writing or flushing fails (`EPIPE` when the reader is gone);
///   part of the frame may have been written.
pub fn write_frame<W: Write>(w: &mut W, parts: &[&[u8]], max_frame: usize) -> Result<(), Error> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    check_outgoing(len, max_frame)?;
    let prefix = u32::try_from(len)
        .map_err(|_| Error::Protocol(format!("frame of {len} bytes does not fit a u32 length")))?;
    w.write_all(&prefix.to_le_bytes())?;
    for part in parts {
        w.write_all(part)?;
    }
    w.flush()?;
    Ok(())
}

/// Reads one frame into `buf`. A clean end of stream before a frame is
/// [`Received::Closed`]; an end inside one, or a length over `max_frame`, is an
/// [`Error::Protocol`].
///
/// `buf` is cleared first and holds exactly the frame's payload on success; its
/// allocation is reused from one frame to the next. Reads interrupted by a signal
/// are retried. This never returns [`Received::TimedOut`]: waiting with a deadline
/// is the caller's business, before the frame starts.
///
/// # Errors
///
/// - [`Error::Protocol`] if the stream ends inside the prefix or the payload, or if
///   the prefix announces more than `max_frame` bytes (checked before anything is
///   allocated);
/// - [`Error::Io`] if a read fails.
///
/// After an error, `buf` holds no complete frame, and the stream is no longer at a
/// frame boundary: nothing more can be read from it as frames.
pub fn read_frame<R: BufRead>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max_frame: usize,
) -> Result<Received, Error> {
    buf.clear();
    let mut prefix = [0u8; PREFIX];
    let mut got = 0;
    while got < PREFIX {
        match r.read(&mut prefix[got..]) {
            Ok(0) if got == 0 => return Ok(Received::Closed),
            Ok(0) => {
                return Err(Error::Protocol(format!(
                    "stream ended inside a frame's length prefix ({got} of {PREFIX} bytes)"
                )));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(prefix) as usize;
    check_incoming(len, max_frame)?;
    // Grow geometrically as bytes arrive, never past the announced length: a lying
    // prefix costs at most twice what was actually sent, and never more than the cap.
    // (Zeroing the new room and reading into it beats `read_to_end`'s small probing
    // reads by ~10x for megabyte frames.)
    let mut filled = 0;
    while filled < len {
        if buf.len() == filled {
            let grow = filled.max(RESERVE_AHEAD).min(len - filled);
            buf.reserve_exact(grow);
            buf.resize(filled + grow, 0);
        }
        match r.read(&mut buf[filled..]) {
            Ok(0) => {
                buf.truncate(filled);
                return Err(Error::Protocol(format!(
                    "stream ended inside a frame: got {filled} of {len} bytes"
                )));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Received::Frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    #[test]
    fn round_trip_of_several_frames() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &[b"ab", b"cd"], 16).unwrap();
        write_frame(&mut wire, &[], 16).unwrap();
        let mut r = Cursor::new(wire);
        let mut buf = Vec::new();
        assert_eq!(read_frame(&mut r, &mut buf, 16).unwrap(), Received::Frame);
        assert_eq!(buf, b"abcd");
        assert_eq!(read_frame(&mut r, &mut buf, 16).unwrap(), Received::Frame);
        assert!(buf.is_empty());
        assert_eq!(read_frame(&mut r, &mut buf, 16).unwrap(), Received::Closed);
    }

    #[test]
    fn oversized_frames_are_refused_both_ways() {
        let mut wire = Vec::new();
        assert!(matches!(
            write_frame(&mut wire, &[&[0; 17]], 16),
            Err(Error::Protocol(_))
        ));
        assert!(wire.is_empty(), "nothing written for a refused frame");
        let mut r = Cursor::new(u32::MAX.to_le_bytes().to_vec());
        let mut buf = Vec::new();
        let err = read_frame(&mut r, &mut buf, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("over the limit"), "{err}");
        assert!(
            buf.capacity() < 1 << 20,
            "no allocation for a refused frame"
        );
    }

    #[test]
    fn truncated_frames_are_protocol_errors() {
        let mut buf = Vec::new();
        let mut r = Cursor::new(vec![5, 0]);
        assert!(matches!(
            read_frame(&mut r, &mut buf, 64),
            Err(Error::Protocol(_))
        ));
        let mut r = Cursor::new(vec![5, 0, 0, 0, 1, 2]);
        let err = read_frame(&mut r, &mut buf, 64).unwrap_err();
        assert!(err.to_string().contains("got 2 of 5"), "{err}");
    }

    #[test]
    fn lying_length_allocates_only_what_arrives() {
        // 1 GiB announced, under the cap, but only 3 bytes follow.
        let mut wire = (1u32 << 30).to_le_bytes().to_vec();
        wire.extend_from_slice(&[1, 2, 3]);
        let mut buf = Vec::new();
        assert!(read_frame(&mut Cursor::new(wire), &mut buf, usize::MAX).is_err());
        assert!(
            buf.capacity() <= RESERVE_AHEAD * 2,
            "capacity {}",
            buf.capacity()
        );
    }

    proptest! {
        // The hostile-bytes property: whatever arrives, the decoder returns frames
        // within the cap, a clean end, or a protocol error; it never panics and never
        // holds more than the cap. 100 000 cases (CI runs them all).
        #![proptest_config(ProptestConfig::with_cases(100_000))]
        #[test]
        fn arbitrary_bytes_never_panic_nor_overallocate(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let mut r = Cursor::new(bytes);
            let mut buf = Vec::new();
            loop {
                match read_frame(&mut r, &mut buf, 64) {
                    Ok(Received::Frame) => prop_assert!(buf.len() <= 64),
                    Ok(_) => break,
                    Err(e) => {
                        prop_assert!(matches!(e, Error::Protocol(_)), "{e:?}");
                        break;
                    }
                }
                prop_assert!(buf.capacity() <= 64, "capacity {}", buf.capacity());
            }
        }
    }

    proptest! {

        #[test]
        fn frames_round_trip(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..6)) {
            let mut wire = Vec::new();
            for f in &frames {
                write_frame(&mut wire, &[f], 256).unwrap();
            }
            let mut r = Cursor::new(wire);
            let mut buf = Vec::new();
            for f in &frames {
                prop_assert_eq!(read_frame(&mut r, &mut buf, 256).unwrap(), Received::Frame);
                prop_assert_eq!(&buf, f);
            }
            prop_assert_eq!(read_frame(&mut r, &mut buf, 256).unwrap(), Received::Closed);
        }
    }
}
