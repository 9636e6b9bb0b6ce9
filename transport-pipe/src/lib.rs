//! procpool's default transport: two anonymous pipes per worker, carrying
//! length-prefixed postcard frames.
//!
//! The pool creates the pipes close-on-exec, and the child alone gets its ends, on
//! descriptors 3 (requests) and 4 (replies): the worker's stdin is `/dev/null`, and its
//! stdout and stderr stay the user's, so a task may `println!`. Frames are written
//! through a buffer and flushed once per frame; each starts with a little-endian
//! `u32` length checked against the frame cap before anything is allocated. A write
//! to a worker that died fails with `EPIPE` (the pool reports the worker's death),
//! whatever the program's disposition of `SIGPIPE`: the pool's driver threads keep
//! the signal blocked, and a write from another thread (`apply`'s direct path)
//! blocks it around the write.
//!
//! ```text
//!  pool process                                        worker process
//!  ────────────                                        ──────────────
//!  to_worker_w   ═══ requests pipe ═══▶ to_worker_r    fd 3 (read)
//!  from_worker_r ◀══ replies pipe  ═══  from_worker_w  fd 4 (write)
//! ```
//!
//! A worker is started in four steps:
//!
//! 1. [`PipeTransport::spawn`] makes both pipes close-on-exec, so no other process
//!    the program starts (another worker included) inherits an end, and copies the
//!    child's two ends to descriptors numbered 10 or more: clear of 3, 4 and 5, so
//!    no `dup2` in the child overwrites a descriptor still to be copied from.
//! 2. A pre-exec hook (`procpool_core::transport::place_on_exec`) `dup2`s those copies onto 3 and 4 in
//!    the forked child; the copies `dup2` makes lack close-on-exec, so of all the
//!    pipes' ends they are the only ones the new program finds. procpool-core's own
//!    hook runs earlier (it is registered first): it marks every inherited
//!    descriptor from 3 up close-on-exec and places the worker's progress page on 5.
//! 3. The parent drops its copies of the child's ends as soon as the child is
//!    spawned: each pipe then has one reader and one writer, so the death of either
//!    side is seen by the other as an end of stream (reading) or `EPIPE` (writing).
//! 4. In the worker, [`PipeTransport::connect`] checks `PROCPOOL_PIPE_FDS`, checks
//!    that 3 and 4 are pipes, takes ownership of them and makes them close-on-exec,
//!    so that programs a task starts do not inherit the pool's channel.
//!
//! Fixed descriptors need no negotiation: 3 and 4 are the first after the standard
//! streams, and the worker knows where to look before it has read anything. The
//! environment variable only tells a worker started by this transport from a
//! process that merely has descriptors 3 and 4 open.
//!
//! The wire format is in [`frame`].
//!
//! Use it through the `procpool` facade (feature `pipe`, on by default).
#![deny(unsafe_code)]

pub mod frame;
mod sys;

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::fd::OwnedFd;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use procpool_core::transport::{Placed, sigpipe_blocked, watch};
use procpool_core::{Error, FrameReceiver, FrameSender, Link, LinkConfig, Received, Transport};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::{Errno, fcntl_dupfd_cloexec};
use rustix::pipe::{PipeFlags, fcntl_getpipe_size, pipe_with};

/// Environment variable naming the worker's descriptors.
///
/// [`PipeTransport::spawn`] sets it to `3,4` (read, then write); a worker's
/// [`PipeTransport::connect`] refuses to start unless it finds exactly that.
const FDS_ENV: &str = "PROCPOOL_PIPE_FDS";

/// Buffer size of each direction.
///
/// Each side reads through a [`BufReader`] and writes through a [`BufWriter`] of
/// this size, so a frame that fits is one `write` system call (the flush at its
/// end), and several small frames that arrive together are one `read`.
const BUFFER: usize = 64 * 1024;

/// The pipe transport. Use the [`PIPE`] instance.
///
/// It holds no state: everything about a worker's channel lives in the [`Link`] that
/// [`spawn`](PipeTransport::spawn) or [`connect`](PipeTransport::connect) returns.
#[derive(Debug, Clone, Copy, Default)]
pub struct PipeTransport;

/// The pipe transport, as a `&'static dyn Transport`.
pub static PIPE: PipeTransport = PipeTransport;

impl Transport for PipeTransport {
    /// `"pipe"`: the name procpool-core writes into the worker's environment marker,
    /// by which the worker finds this transport again.
    fn name(&self) -> &'static str {
        "pipe"
    }

    /// Creates the two pipes, places the child's ends on descriptors 3 and 4 of the
    /// program `command` starts, and spawns it; returns the child with the pool's
    /// ends (it writes requests and reads replies).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if a pipe or a descriptor copy cannot be made (out of
    /// descriptors, say), or if the child cannot be spawned, placing the descriptors
    /// included.
    fn spawn(&self, mut command: Command, config: LinkConfig) -> Result<(Child, Link), Error> {
        let (to_worker_r, to_worker_w) =
            pipe_with(PipeFlags::CLOEXEC).map_err(std::io::Error::from)?;
        let (from_worker_r, from_worker_w) =
            pipe_with(PipeFlags::CLOEXEC).map_err(std::io::Error::from)?;
        // The child's ends go above the fixed targets, so placing one cannot
        // overwrite the other.
        let child_read = fcntl_dupfd_cloexec(&to_worker_r, 10).map_err(std::io::Error::from)?;
        let child_write = fcntl_dupfd_cloexec(&from_worker_w, 10).map_err(std::io::Error::from)?;
        drop((to_worker_r, from_worker_w));
        procpool_core::transport::place_on_exec(
            &mut command,
            &[
                (&child_read, sys::WORKER_READ_FD),
                (&child_write, sys::WORKER_WRITE_FD),
            ],
        );
        command.env(
            FDS_ENV,
            format!("{},{}", sys::WORKER_READ_FD, sys::WORKER_WRITE_FD),
        );
        let child = command.spawn()?;
        drop((child_read, child_write));
        Ok((child, link(from_worker_r, to_worker_w, config, false)))
    }

    /// In a worker: adopts descriptors 3 (requests in) and 4 (replies out).
    ///
    /// # Errors
    ///
    /// - [`Error::Startup`] if `PROCPOOL_PIPE_FDS` is missing or is not `3,4`: this
    ///   process was not started by [`PipeTransport::spawn`];
    /// - [`Error::Io`] if descriptor 3 or 4 is not open (`EBADF`) or is not a pipe
    ///   (`InvalidInput`), or cannot be made close-on-exec.
    fn connect(&self, config: LinkConfig) -> Result<Link, Error> {
        let expected = format!("{},{}", sys::WORKER_READ_FD, sys::WORKER_WRITE_FD);
        if std::env::var(FDS_ENV).ok().as_deref() != Some(expected.as_str()) {
            return Err(Error::Startup(format!(
                "{FDS_ENV} is not `{expected}`: not started by a pipe transport"
            )));
        }
        let read = procpool_core::transport::adopt(sys::WORKER_READ_FD, Placed::Pipe)?;
        let write = procpool_core::transport::adopt(sys::WORKER_WRITE_FD, Placed::Pipe)?;
        Ok(link(read, write, config, true))
    }
}

/// Wraps a pair of pipe ends into a [`Link`]: frames are read from `read` and
/// written to `write`, both through [`BUFFER`]-sized buffers, with the cap of
/// `config`. `in_worker` says which side of the channel this is (see
/// [`PipeSender::in_worker`]).
///
/// The sender's [`capacity`](FrameSender::capacity) is the buffer of the pipe it
/// writes to, as the kernel reports it (`F_GETPIPE_SZ`), or 4096 bytes (one page)
/// if the kernel does not say.
fn link(read: OwnedFd, write: OwnedFd, config: LinkConfig, in_worker: bool) -> Link {
    // A pipe holds 64 KiB, unless the user has more pipe pages than
    // `pipe-user-pages-soft` allows: then new pipes get one or two pages.
    let capacity = fcntl_getpipe_size(&write).unwrap_or(4096);
    Link {
        sender: Box::new(PipeSender {
            writer: Some(BufWriter::with_capacity(BUFFER, File::from(write))),
            max_frame: config.max_frame,
            capacity,
            in_worker,
        }),
        receiver: Box::new(PipeReceiver {
            reader: BufReader::with_capacity(BUFFER, File::from(read)),
            max_frame: config.max_frame,
        }),
    }
}

/// The writing end of a pipe link.
///
/// Requests from the pool, or replies from a worker, each written as one frame of
/// [`frame::write_frame`] and flushed at once.
#[derive(Debug)]
struct PipeSender {
    /// Always `Some` until dropped (see `Drop`).
    writer: Option<BufWriter<File>>,
    /// The link's frame cap: a longer frame is refused before any byte is written.
    max_frame: usize,
    /// The pipe's buffer, in bytes.
    capacity: usize,
    /// The worker's end of the link (writes need no `SIGPIPE` guard).
    in_worker: bool,
}

impl FrameSender for PipeSender {
    /// Writes one frame with [`frame::write_frame`]; on the pool's side, from a
    /// thread that does not keep `SIGPIPE` blocked, inside [`sys::without_sigpipe`].
    ///
    /// # Errors
    ///
    /// [`Error::Protocol`] for a frame over the cap (nothing is written);
    /// [`Error::Io`] if the write fails, `EPIPE` when the reader is gone.
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), Error> {
        // A dead reader is an error here, never a SIGPIPE that ends the program.
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        let max_frame = self.max_frame;
        let mut write = || frame::write_frame(writer, parts, max_frame);
        // A worker's writes need no guard: if its pool is gone, it ends either way.
        // Nor do a pool's driver threads, which keep SIGPIPE blocked, nor a program that
        // ignores SIGPIPE (Rust's default): the write then fails with EPIPE.
        if self.in_worker || sigpipe_blocked() || sys::sigpipe_ignored() {
            write()
        } else {
            sys::without_sigpipe(write)
        }
    }

    /// [`PipeSender::capacity`], measured when the link was made.
    fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Drop for PipeSender {
    /// Every frame is flushed as it is sent, so bytes are left in the buffer only
    /// after a failed write (the reader is gone): they are dropped, not written again
    /// by `BufWriter`'s own drop, a write that would raise `SIGPIPE` unguarded.
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            drop(writer.into_parts());
        }
    }
}

/// The reading end of a pipe link.
///
/// Bytes come through a [`BufReader`]: one `read` may bring in several frames, and
/// those left in its buffer are not in the pipe any more, so a pipe that `poll`s as
/// empty may still have a frame waiting here. [`recv`](FrameReceiver::recv) and
/// [`arriving_within`](FrameReceiver::arriving_within) look at the buffer first.
#[derive(Debug)]
struct PipeReceiver {
    /// The pipe's read end, buffered by [`BUFFER`] bytes.
    reader: BufReader<File>,
    /// The link's frame cap: a longer announced frame is refused before anything is
    /// allocated for it.
    max_frame: usize,
}

impl PipeReceiver {
    /// Waits until the pipe is readable or `deadline` passes; true if readable.
    ///
    /// "Readable" includes the writer having closed its end (`poll` returns with
    /// `POLLHUP`), so that [`frame::read_frame`] then sees the end of stream.
    /// A wait interrupted by a signal (`EINTR`) resumes for the time left.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if `poll` fails otherwise.
    fn wait_readable(&self, deadline: Instant) -> Result<bool, Error> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = Timespec {
                tv_sec: left.as_secs().try_into().unwrap_or(i64::MAX),
                tv_nsec: left.subsec_nanos().into(),
            };
            let mut fds = [PollFd::new(self.reader.get_ref(), PollFlags::IN)];
            match poll(&mut fds, Some(&timeout)) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(std::io::Error::from(e).into()),
            }
        }
    }
}

impl FrameReceiver for PipeReceiver {
    /// Reads the next frame into `buf`.
    ///
    /// The `deadline` bounds the wait for a frame to *begin*: once its first byte is
    /// there (in the pipe or already in the buffer), the rest is read without a
    /// deadline, as a frame is written whole and flushed at once.
    ///
    /// # Errors
    ///
    /// Those of [`frame::read_frame`] and of [`PipeReceiver::wait_readable`].
    fn recv(&mut self, buf: &mut Vec<u8>, deadline: Option<Instant>) -> Result<Received, Error> {
        if let Some(deadline) = deadline
            && self.reader.buffer().is_empty()
            && !self.wait_readable(deadline)?
        {
            return Ok(Received::TimedOut);
        }
        frame::read_frame(&mut self.reader, buf, self.max_frame)
    }

    /// True at once if bytes are buffered; otherwise `poll`s the pipe with a zero
    /// timeout, over and over for up to `spin` ([`watch`]). An interrupted `poll`
    /// counts as "not yet". Nothing is consumed: the next [`recv`] reads the frame.
    ///
    /// [`recv`]: FrameReceiver::recv
    fn arriving_within(&mut self, spin: Duration) -> Result<bool, Error> {
        if !self.reader.buffer().is_empty() {
            return Ok(true);
        }
        let now = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        watch(spin, || {
            let mut fds = [PollFd::new(self.reader.get_ref(), PollFlags::IN)];
            match poll(&mut fds, Some(&now)) {
                Ok(0) | Err(Errno::INTR) => Ok(false),
                Ok(_) => Ok(true),
                Err(e) => Err(std::io::Error::from(e).into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watching_sees_frames_and_the_end_without_consuming_them() {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC).unwrap();
        let mut sender = PipeSender {
            writer: Some(BufWriter::new(File::from(write))),
            max_frame: 1024,
            capacity: 4096,
            in_worker: false,
        };
        let mut receiver = PipeReceiver {
            reader: BufReader::new(File::from(read)),
            max_frame: 1024,
        };
        assert!(!receiver.arriving_within(Duration::from_millis(1)).unwrap());
        sender.send(&[b"one"]).unwrap();
        sender.send(&[b"two"]).unwrap();
        assert!(receiver.arriving_within(Duration::from_secs(5)).unwrap());
        let mut buf = Vec::new();
        assert_eq!(receiver.recv(&mut buf, None).unwrap(), Received::Frame);
        assert_eq!(buf, b"one");
        // The second frame is in the reader's buffer now.
        assert!(receiver.arriving_within(Duration::ZERO).unwrap());
        assert_eq!(receiver.recv(&mut buf, None).unwrap(), Received::Frame);
        assert_eq!(buf, b"two");
        drop(sender);
        assert!(receiver.arriving_within(Duration::from_secs(5)).unwrap());
        assert_eq!(receiver.recv(&mut buf, None).unwrap(), Received::Closed);
    }
}
