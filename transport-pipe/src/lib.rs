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
//! Use it through the `procpool` facade (feature `pipe`, on by default).
#![deny(unsafe_code)]

pub mod frame;
mod sys;

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::os::fd::OwnedFd;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use procpool_core::transport::{sigpipe_blocked, watch};
use procpool_core::{Error, FrameReceiver, FrameSender, Link, LinkConfig, Received, Transport};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::io::{Errno, fcntl_dupfd_cloexec};
use rustix::pipe::{PipeFlags, fcntl_getpipe_size, pipe_with};

/// Environment variable naming the worker's descriptors.
const FDS_ENV: &str = "PROCPOOL_PIPE_FDS";

/// Buffer size of each direction.
const BUFFER: usize = 64 * 1024;

/// The pipe transport. Use the [`PIPE`] instance.
#[derive(Debug, Clone, Copy, Default)]
pub struct PipeTransport;

/// The pipe transport, as a `&'static dyn Transport`.
pub static PIPE: PipeTransport = PipeTransport;

impl Transport for PipeTransport {
    fn name(&self) -> &'static str {
        "pipe"
    }

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
        sys::place_on_exec(&mut command, &child_read, &child_write);
        command.env(
            FDS_ENV,
            format!("{},{}", sys::WORKER_READ_FD, sys::WORKER_WRITE_FD),
        );
        let child = command.spawn()?;
        drop((child_read, child_write));
        Ok((child, link(from_worker_r, to_worker_w, config, false)))
    }

    fn connect(&self, config: LinkConfig) -> Result<Link, Error> {
        let expected = format!("{},{}", sys::WORKER_READ_FD, sys::WORKER_WRITE_FD);
        if std::env::var(FDS_ENV).ok().as_deref() != Some(expected.as_str()) {
            return Err(Error::Startup(format!(
                "{FDS_ENV} is not `{expected}`: not started by a pipe transport"
            )));
        }
        let (read, write) = sys::adopt_worker_fds()?;
        Ok(link(read, write, config, true))
    }
}

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
#[derive(Debug)]
struct PipeSender {
    /// Always `Some` until dropped (see `Drop`).
    writer: Option<BufWriter<File>>,
    max_frame: usize,
    /// The pipe's buffer, in bytes.
    capacity: usize,
    /// The worker's end of the link (writes need no `SIGPIPE` guard).
    in_worker: bool,
}

impl FrameSender for PipeSender {
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), Error> {
        // A dead reader is an error here, never a SIGPIPE that ends the program.
        let writer = self
            .writer
            .as_mut()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        let max_frame = self.max_frame;
        let mut write = || frame::write_frame(writer, parts, max_frame);
        // A worker's writes need no guard: if its pool is gone, it ends either way.
        // Nor do a pool's driver threads, which keep SIGPIPE blocked.
        if self.in_worker || sigpipe_blocked() {
            write()
        } else {
            sys::without_sigpipe(write)
        }
    }

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
#[derive(Debug)]
struct PipeReceiver {
    reader: BufReader<File>,
    max_frame: usize,
}

impl PipeReceiver {
    /// Waits until the pipe is readable or `deadline` passes; true if readable.
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
    fn recv(&mut self, buf: &mut Vec<u8>, deadline: Option<Instant>) -> Result<Received, Error> {
        if let Some(deadline) = deadline
            && self.reader.buffer().is_empty()
            && !self.wait_readable(deadline)?
        {
            return Ok(Received::TimedOut);
        }
        frame::read_frame(&mut self.reader, buf, self.max_frame)
    }

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
