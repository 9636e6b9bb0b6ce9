//! What a transport crate supplies: starting a worker process with a duplex frame
//! channel, and the worker's end of that channel.
//!
//! Worker processes are always the current program, re-executed (never a `fork` of a
//! threaded parent). procpool-core builds the [`Command`] (program, arguments,
//! environment marker, parent-death signal) and hands it to [`Transport::spawn`],
//! which adds its channel and starts it. In the worker, `procpool::init()` reads the
//! marker and calls [`Transport::connect`] of the transport named in it.

use std::fmt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::error::Error;

/// Sends whole frames. Implementations buffer and flush once per frame.
pub trait FrameSender: Send {
    /// Sends one frame made of the concatenation of `parts`.
    ///
    /// A frame longer than the link's cap is refused with [`Error::Protocol`]
    /// before anything is written.
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), Error>;

    /// Bytes the channel holds for a reader that is not reading: how much a sender
    /// may write ahead of the reader without blocking. The pool keeps its frames
    /// sent ahead of a busy worker within this, so that it never blocks writing
    /// while the worker blocks writing back. The default is 64 KiB, a Linux pipe's.
    fn capacity(&self) -> usize {
        64 * 1024
    }
}

/// The loop behind [`FrameReceiver::arriving_within`] for a transport that can look
/// for a frame without waiting: calls `look` until it sees one (`Ok(true)`) or `spin`
/// (at most a second) has passed, yielding the CPU between looks.
pub fn watch(spin: Duration, mut look: impl FnMut() -> Result<bool, Error>) -> Result<bool, Error> {
    let until = Instant::now() + spin.min(Duration::from_secs(1));
    loop {
        if look()? {
            return Ok(true);
        }
        if Instant::now() >= until {
            return Ok(false);
        }
        std::thread::yield_now();
    }
}

/// Refuses a frame of `len` bytes that a sender is about to send over a link whose
/// cap is `max_frame`, before anything is written.
///
/// # Errors
///
/// [`Error::Protocol`] if `len` is over the cap. Nothing was written, so the link
/// is still in step (a worker answers a reply refused this way with `Refused` and
/// goes on).
pub fn check_outgoing(len: usize, max_frame: usize) -> Result<(), Error> {
    if len > max_frame {
        return Err(Error::Protocol(format!(
            "refusing to send a frame of {len} bytes: the limit is {max_frame}"
        )));
    }
    Ok(())
}

/// Refuses a frame announced (or found) to be `len` bytes long on a link whose cap
/// is `max_frame`, before anything is allocated for it.
///
/// # Errors
///
/// [`Error::Protocol`] if `len` is over the cap.
pub fn check_incoming(len: usize, max_frame: usize) -> Result<(), Error> {
    if len > max_frame {
        return Err(Error::Protocol(format!(
            "frame announces {len} bytes, over the limit of {max_frame}"
        )));
    }
    Ok(())
}

/// 128 random bits from the kernel: the per-pool secret of the handshake, and what
/// a transport's bootstrap needs to tell its workers from strangers.
///
/// # Errors
///
/// [`Error::Io`] if `/dev/urandom` cannot be opened or read.
pub fn random_secret() -> Result<u128, Error> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(u128::from_le_bytes(bytes))
}

/// Whether the calling thread keeps `SIGPIPE` blocked for good: true on a pool's
/// driver threads, which block it when they start. A transport whose writes can
/// raise `SIGPIPE` (a pipe whose reader died) must block it around writes made on
/// any other thread — an `apply` writes from the caller's own thread — so that a
/// program with the default disposition is never killed by a dead worker.
pub fn sigpipe_blocked() -> bool {
    crate::sys::sigpipe_blocked()
}

/// What [`FrameReceiver::recv`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A whole frame is in the buffer.
    Frame,
    /// The other side closed the channel cleanly, between frames.
    Closed,
    /// The deadline passed before a frame started to arrive.
    TimedOut,
}

/// Receives whole frames.
pub trait FrameReceiver: Send {
    /// Receives the next frame into `buf` (replacing its contents).
    ///
    /// With a `deadline`, gives up with [`Received::TimedOut`] if no frame has begun
    /// to arrive by then. A frame cut short, or announced longer than the cap, is an
    /// [`Error::Protocol`]; nothing larger than the cap is ever allocated.
    fn recv(&mut self, buf: &mut Vec<u8>, deadline: Option<Instant>) -> Result<Received, Error>;

    /// Watches for up to `spin` (without sleeping, yielding the CPU between looks)
    /// for a frame to start arriving; true if one has. Called before a [`recv`]
    /// whose answer is expected within microseconds: a thread put to sleep and woken
    /// again costs tens of microseconds on a virtual machine. The default does not
    /// watch.
    ///
    /// [`recv`]: FrameReceiver::recv
    fn arriving_within(&mut self, spin: Duration) -> Result<bool, Error> {
        let _ = spin;
        Ok(false)
    }
}

/// Both directions of a channel between the pool and one worker.
pub struct Link {
    /// Frames out.
    pub sender: Box<dyn FrameSender>,
    /// Frames in.
    pub receiver: Box<dyn FrameReceiver>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

/// Limits a transport enforces on its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkConfig {
    /// Largest frame accepted or sent, in bytes.
    pub max_frame: usize,
    /// How long a transport may wait for a new worker to connect, when its
    /// bootstrap needs one (the handshake frame itself is timed by the pool).
    pub startup_timeout: std::time::Duration,
}

/// A way to talk to worker processes.
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// Short name, written into the worker's environment marker (`"pipe"`, `"ipc"`).
    fn name(&self) -> &'static str;

    /// Adds this transport's channel to `command`, starts it and returns the child
    /// with the pool's end of the channel.
    fn spawn(&self, command: Command, config: LinkConfig) -> Result<(Child, Link), Error>;

    /// In a worker process: the worker's end of the channel, from what
    /// [`Transport::spawn`] put in the environment.
    fn connect(&self, config: LinkConfig) -> Result<Link, Error>;
}

/// Something that names a transport, for `PoolBuilder::transport`.
///
/// Implemented by `procpool::Transport` (one variant per compiled-in transport) and
/// by `&'static dyn Transport`.
pub trait IntoTransport {
    /// The transport.
    fn into_transport(self) -> &'static dyn Transport;
}

impl IntoTransport for &'static dyn Transport {
    fn into_transport(self) -> &'static dyn Transport {
        self
    }
}

/// What a descriptor placed for a worker is, for [`adopt`]: checked with `fstat`
/// before the worker takes it, so that a process started otherwise, with something
/// else open on that number, refuses it instead of owning a descriptor of other code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// A pipe end.
    Pipe,
    /// A regular file (a `memfd`).
    File,
    /// Neither: an `eventfd`, a socket, ... (an anonymous inode).
    Other,
}

/// Makes the child that `command` starts find each descriptor `from` of this
/// process on its number `to` (`dup2` between `fork` and `exec`), for a transport's
/// [`spawn`](Transport::spawn). Keep the `from` descriptors open until the spawn
/// returns, and put them above every `to` (`fcntl(F_DUPFD_CLOEXEC, 10)`), so that
/// placing one cannot clobber another. Descriptors 3, 4 and 6 and up are the
/// transport's (5 is procpool's own progress page).
pub fn place_on_exec(command: &mut Command, pairs: &[(&std::os::fd::OwnedFd, std::os::fd::RawFd)]) {
    crate::sys::place_on_exec(command, pairs);
}

/// In a worker, in [`connect`](Transport::connect): takes descriptor `fd`, placed
/// by the transport's spawn, if it is what `kind` says, and makes it close-on-exec
/// (programs a task starts do not inherit it). Once per descriptor.
///
/// # Errors
///
/// `EBADF` if it is not open, `InvalidInput` if it is of another kind, or the
/// `fcntl` error.
pub fn adopt(fd: std::os::fd::RawFd, kind: Placed) -> std::io::Result<std::os::fd::OwnedFd> {
    let kind = match kind {
        Placed::Pipe => rustix::fs::FileType::Fifo,
        Placed::File => rustix::fs::FileType::RegularFile,
        Placed::Other => rustix::fs::FileType::Unknown,
    };
    crate::sys::adopt(fd, kind)
}
