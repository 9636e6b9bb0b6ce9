//! A procpool transport over shared memory: two single-producer single-consumer
//! rings in a `memfd` that the pool and its worker both map, with `eventfd`
//! wake-ups.
//!
//! # Mechanism
//!
//! Each worker gets one `memfd` holding two rings (pool → worker, worker → pool),
//! each a header page (write position, read position, who sleeps, who closed) and
//! [`RING`] bytes of data. A frame is its length (`u32`, little-endian) and its
//! bytes, written into the ring as space allows: a frame larger than the ring
//! streams through it while the reader copies it out, so nothing is ever bounded
//! by the ring but the time. Both positions only grow; indices are taken modulo
//! the ring, and every copy is bounds-checked, so hostile positions or lengths are
//! protocol errors, never reads outside the mapping.
//!
//! A side that finds nothing to read (or no room to write) spins for [`SPIN`]
//! (a round trip in progress is caught without a system call), then sets its
//! *sleeping* flag, checks once more, and waits in `poll` on its own `eventfd` and
//! on the peer's pidfd; the other side rings the `eventfd` only when the flag is
//! set. An idle pool costs no CPU. The peer's death wakes the waiter through the
//! pidfd (the pool's side) or ends the worker with its parent (`PR_SET_PDEATHSIG`,
//! and the parent's pidfd): a frame cut short is the end of the stream, which the
//! pool reports as `WorkerDied`. A side that drops its end marks the ring closed
//! and rings the other.
//!
//! The child gets the `memfd` on descriptor 3 and the two `eventfd`s on 4 (its
//! own) and 6 (the pool's); `PROCPOOL_SHM_FDS` says so.
//!
//! # Memory order
//!
//! The writer copies bytes into the ring, then stores the new write position
//! (`SeqCst`); the reader loads the write position (`Acquire`) before it copies
//! the bytes out, and stores its read position (`SeqCst`) after, which the writer
//! loads (`Acquire`) before it reuses the space. A sleeper stores its flag
//! (`SeqCst`) and checks the positions once more before it sleeps; the other side
//! stores its position (`SeqCst`) and then loads the flag (`SeqCst`): of the two,
//! one always sees the other, so a wake-up is never lost (the usual Dekker pair).
//!
//! # What it costs
//!
//! Two 1 MiB rings and a header page each per worker (a little over 2 MiB of
//! memory, touched only as far as frames reach), three descriptors in the pool and
//! three in the worker, and a pidfd on each side.

mod sys;

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use procpool_core::transport::{Placed, adopt, check_incoming, check_outgoing};
use procpool_core::{Error, FrameReceiver, FrameSender, Link, LinkConfig, Received, Transport};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, eventfd, poll};

use sys::Mapping;

/// Bytes of data in each ring.
pub const RING: usize = 1 << 20;
/// How long a side spins before it sleeps (10 µs: long enough to catch the answer
/// of a quick round trip, short enough not to starve the other threads of a
/// 2-core machine; 50 µs cost `map_tiny` a quarter there).
pub const SPIN: Duration = Duration::from_micros(10);

/// The header page before each ring's data.
const HEADER: usize = 4096;
/// Offset of the write position (bytes ever written) in a ring's header.
const HEAD: usize = 0;
/// Offset of the read position (bytes ever read).
const TAIL: usize = 64;
/// Offset of the reader's sleeping flag.
const READER_SLEEPS: usize = 128;
/// Offset of the writer's sleeping flag.
const WRITER_SLEEPS: usize = 132;
/// Offset of the writer's closed flag.
const WRITER_CLOSED: usize = 136;
/// Offset of the reader's closed flag.
const READER_CLOSED: usize = 140;
/// One ring: header and data.
const RING_BYTES: usize = HEADER + RING;
/// Where the pool → worker ring starts.
const TO_WORKER: usize = 0;
/// Where the worker → pool ring starts.
const FROM_WORKER: usize = RING_BYTES;
/// Descriptors of the worker: the memfd, its own eventfd, the pool's eventfd.
const WORKER_FDS: [RawFd; 3] = [3, 4, 6];
/// Environment variable naming them.
const FDS_ENV: &str = "PROCPOOL_SHM_FDS";

/// The shared-memory transport. Use the [`SHM`] instance.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShmTransport;

/// The shared-memory transport, as a `&'static dyn Transport`.
pub static SHM: ShmTransport = ShmTransport;

impl Transport for ShmTransport {
    /// `"shm"`.
    fn name(&self) -> &'static str {
        "shm"
    }

    /// Makes the memfd of the two rings and the two eventfds, places the child's
    /// copies on descriptors 3, 4 and 6 and spawns it; the pool's end (it writes
    /// the first ring and reads the second).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if a descriptor, the mapping or the process cannot be made.
    fn spawn(&self, mut command: Command, config: LinkConfig) -> Result<(Child, Link), Error> {
        let memfd = rustix::fs::memfd_create("procpool-shm", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(std::io::Error::from)?;
        rustix::fs::ftruncate(&memfd, (2 * RING_BYTES) as u64).map_err(std::io::Error::from)?;
        let map = Arc::new(Mapping::new(memfd.as_fd(), 2 * RING_BYTES)?);
        let worker_bell = new_bell()?;
        let pool_bell = new_bell()?;
        let above = |fd: &OwnedFd| -> Result<OwnedFd, Error> {
            Ok(rustix::io::fcntl_dupfd_cloexec(fd, 10).map_err(std::io::Error::from)?)
        };
        let copies = [above(&memfd)?, above(&worker_bell)?, above(&pool_bell)?];
        procpool_core::transport::place_on_exec(
            &mut command,
            &[
                (&copies[0], WORKER_FDS[0]),
                (&copies[1], WORKER_FDS[1]),
                (&copies[2], WORKER_FDS[2]),
            ],
        );
        command.env(FDS_ENV, "3,4,6");
        let child = command.spawn()?;
        drop(copies);
        drop(memfd);
        let peer = pidfd(child.id());
        let side = Arc::new(Side {
            map,
            outbound: TO_WORKER,
            inbound: FROM_WORKER,
            bell: pool_bell,
            peer_bell: worker_bell,
            peer,
        });
        Ok((child, link(side, config)))
    }

    /// In a worker: adopts the memfd and the eventfds, and maps the rings.
    ///
    /// # Errors
    ///
    /// [`Error::Startup`] without `PROCPOOL_SHM_FDS=3,4,6`; [`Error::Io`] if a
    /// descriptor is missing or of the wrong kind, or the memfd is not the size of
    /// two rings.
    fn connect(&self, config: LinkConfig) -> Result<Link, Error> {
        if std::env::var(FDS_ENV).ok().as_deref() != Some("3,4,6") {
            return Err(Error::Startup(format!(
                "{FDS_ENV} is not `3,4,6`: not started by a shm transport"
            )));
        }
        let memfd = adopt(WORKER_FDS[0], Placed::File)?;
        let bell = adopt(WORKER_FDS[1], Placed::Other)?;
        let peer_bell = adopt(WORKER_FDS[2], Placed::Other)?;
        let size = rustix::fs::fstat(&memfd)
            .map_err(std::io::Error::from)?
            .st_size;
        if size != (2 * RING_BYTES) as i64 {
            return Err(Error::Startup(format!(
                "the shm transport's rings are {size} bytes, not {}",
                2 * RING_BYTES
            )));
        }
        let map = Arc::new(Mapping::new(memfd.as_fd(), 2 * RING_BYTES)?);
        let side = Arc::new(Side {
            map,
            outbound: FROM_WORKER,
            inbound: TO_WORKER,
            bell,
            peer_bell,
            peer: pidfd(std::os::unix::process::parent_id()),
        });
        Ok(link(side, config))
    }
}

/// A non-blocking, close-on-exec eventfd.
fn new_bell() -> Result<OwnedFd, Error> {
    Ok(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(std::io::Error::from)?)
}

/// A pidfd of process `pid` (readable once it has exited), if the kernel has them.
fn pidfd(pid: u32) -> Option<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// One side's view of the rings.
#[derive(Debug)]
struct Side {
    /// Both rings.
    map: Arc<Mapping>,
    /// Where the ring this side writes starts.
    outbound: usize,
    /// Where the ring this side reads starts.
    inbound: usize,
    /// This side's eventfd, rung when it may go on.
    bell: OwnedFd,
    /// The other side's eventfd.
    peer_bell: OwnedFd,
    /// A pidfd of the other side, readable once it is gone.
    peer: Option<OwnedFd>,
}

/// What a wait came to.
enum Waited {
    /// The condition holds.
    Ready,
    /// The deadline passed.
    TimedOut,
    /// The other side is gone (or closed its end).
    Gone,
}

impl Side {
    /// The `AtomicU64` at `offset` of the ring at `ring`.
    fn word64(&self, ring: usize, offset: usize) -> &AtomicU64 {
        self.map
            .u64_at(ring + offset)
            .unwrap_or_else(|| unreachable_layout())
    }

    /// The `AtomicU32` at `offset` of the ring at `ring`.
    fn word32(&self, ring: usize, offset: usize) -> &AtomicU32 {
        self.map
            .u32_at(ring + offset)
            .unwrap_or_else(|| unreachable_layout())
    }

    /// Rings the other side's bell if it sleeps on `flag`.
    fn wake(&self, ring: usize, flag: usize) {
        if self.word32(ring, flag).load(Ordering::SeqCst) != 0 {
            let _ = rustix::io::write(&self.peer_bell, &1u64.to_ne_bytes());
        }
    }

    /// Whether the other side has exited (its pidfd is readable).
    fn peer_gone(&self) -> bool {
        let Some(peer) = &self.peer else {
            return false;
        };
        let mut fds = [PollFd::new(peer, PollFlags::IN)];
        matches!(poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(n) if n > 0)
    }

    /// Waits until `ready` holds: spins for [`SPIN`], then sleeps on this side's
    /// bell with `flag` (of the ring at `ring`) set, until `deadline`. `gone` says
    /// whether the other side closed its end; its death ends the wait too.
    fn wait(
        &self,
        ring: usize,
        flag: usize,
        deadline: Option<Instant>,
        ready: impl Fn() -> bool,
        gone: impl Fn() -> bool,
    ) -> Waited {
        let spin_until = Instant::now() + SPIN;
        let mut round = 0u32;
        while Instant::now() < spin_until {
            if ready() {
                return Waited::Ready;
            }
            // Spin a little, then let whatever else is runnable on this core run:
            // on a loaded machine the other side may be waiting for this very CPU.
            round += 1;
            if round.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        let sleeps = self.word32(ring, flag);
        sleeps.store(1, Ordering::SeqCst);
        let outcome = loop {
            if ready() {
                break Waited::Ready;
            }
            if gone() || self.peer_gone() {
                // Whatever the peer published before it went is still readable.
                break if ready() { Waited::Ready } else { Waited::Gone };
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                break Waited::TimedOut;
            }
            // Wake at least every second: a peer without a pidfd is checked then.
            let slice = left.map_or(Duration::from_secs(1), |l| l.min(Duration::from_secs(1)));
            let timeout = Timespec::try_from(slice).ok();
            let mut fds = vec![PollFd::new(&self.bell, PollFlags::IN)];
            if let Some(peer) = &self.peer {
                fds.push(PollFd::new(peer, PollFlags::IN));
            }
            let _ = poll(&mut fds, timeout.as_ref());
            let mut drained = [0u8; 8];
            let _ = rustix::io::read(&self.bell, &mut drained);
        };
        sleeps.store(0, Ordering::SeqCst);
        outcome
    }
}

/// The ring layout is fixed and in bounds: a word outside it cannot be asked for.
fn unreachable_layout() -> ! {
    // The offsets are constants inside the mapping made for exactly this layout.
    std::process::abort()
}

/// The link of `side`.
fn link(side: Arc<Side>, config: LinkConfig) -> Link {
    Link {
        sender: Box::new(ShmSender {
            side: Arc::clone(&side),
            max_frame: config.max_frame,
        }),
        receiver: Box::new(ShmReceiver {
            side,
            max_frame: config.max_frame,
        }),
    }
}

/// The writing end: frames into the outbound ring.
#[derive(Debug)]
struct ShmSender {
    /// The rings.
    side: Arc<Side>,
    /// The frame cap.
    max_frame: usize,
}

impl ShmSender {
    /// Writes `bytes` into the ring as room allows, publishing as it goes.
    ///
    /// Each copy is the largest piece that fits before the end of the ring and in
    /// the room the reader left; the new position is published after each, so a
    /// reader copies a big frame out while the rest is still being written, and a
    /// frame of any size needs no more than the ring.
    ///
    /// # Errors
    ///
    /// `BrokenPipe` if the reader is gone (closed its end or exited) while the ring
    /// is full; a protocol error if the reader's position is impossible.
    fn write_all(&self, mut bytes: &[u8]) -> Result<(), Error> {
        let side = &*self.side;
        let ring = side.outbound;
        let head = side.word64(ring, HEAD);
        let tail = side.word64(ring, TAIL);
        while !bytes.is_empty() {
            let h = head.load(Ordering::Relaxed);
            let used = h.wrapping_sub(tail.load(Ordering::Acquire));
            if used > RING as u64 {
                return Err(Error::Protocol(
                    "the shm reader's position is past the writer's".into(),
                ));
            }
            let room = RING - used as usize;
            if room == 0 {
                let waited = side.wait(
                    ring,
                    WRITER_SLEEPS,
                    None,
                    || h.wrapping_sub(tail.load(Ordering::Acquire)) < RING as u64,
                    || side.word32(ring, READER_CLOSED).load(Ordering::Acquire) != 0,
                );
                if let Waited::Gone | Waited::TimedOut = waited {
                    return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe).into());
                }
                continue;
            }
            let at = (h % RING as u64) as usize;
            let n = bytes.len().min(room).min(RING - at);
            if !side.map.write_at(ring + HEADER + at, &bytes[..n]) {
                return Err(Error::Protocol("a shm ring write out of bounds".into()));
            }
            head.store(h + n as u64, Ordering::SeqCst);
            side.wake(ring, READER_SLEEPS);
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

impl FrameSender for ShmSender {
    /// Writes the length and the parts of one frame.
    ///
    /// # Errors
    ///
    /// [`Error::Protocol`] over the cap (nothing written); `BrokenPipe` when the
    /// reader is gone.
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), Error> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        check_outgoing(len, self.max_frame)?;
        let len32 = u32::try_from(len)
            .map_err(|_| Error::Protocol(format!("a frame of {len} bytes is over 4 GiB")))?;
        if self.side.peer_gone() {
            return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe).into());
        }
        self.write_all(&len32.to_le_bytes())?;
        for part in parts {
            self.write_all(part)?;
        }
        Ok(())
    }

    /// The ring's size: what may be sent ahead without waiting for the reader.
    fn capacity(&self) -> usize {
        RING
    }
}

impl Drop for ShmSender {
    /// Marks the outbound ring closed and wakes the reader.
    fn drop(&mut self) {
        let ring = self.side.outbound;
        self.side
            .word32(ring, WRITER_CLOSED)
            .store(1, Ordering::SeqCst);
        let _ = rustix::io::write(&self.side.peer_bell, &1u64.to_ne_bytes());
    }
}

/// The reading end: frames from the inbound ring.
#[derive(Debug)]
struct ShmReceiver {
    /// The rings.
    side: Arc<Side>,
    /// The frame cap.
    max_frame: usize,
}

/// What reading a part of a frame came to.
enum Read {
    /// All of it.
    Done,
    /// Nothing came in time (only before a frame's first byte).
    TimedOut,
    /// The writer is gone.
    Closed,
}

impl ShmReceiver {
    /// The bytes readable now, checked against the ring's size.
    fn available(&self) -> Result<u64, Error> {
        let ring = self.side.inbound;
        let head = self.side.word64(ring, HEAD).load(Ordering::Acquire);
        let tail = self.side.word64(ring, TAIL).load(Ordering::Relaxed);
        let n = head.wrapping_sub(tail);
        if n > RING as u64 {
            return Err(Error::Protocol(
                "the shm writer's position is past the ring".into(),
            ));
        }
        Ok(n)
    }

    /// Fills `out` from the ring, waiting for bytes until `deadline` (`None` once a
    /// frame has begun: the rest comes, or the writer is gone).
    ///
    /// Mirror of [`ShmSender::write_all`]: the largest piece readable before the end
    /// of the ring, then the read position published and the writer woken if it
    /// sleeps for room. A position the writer left past the ring's size is a
    /// protocol error, not a read.
    fn read_exact(&self, out: &mut [u8], mut deadline: Option<Instant>) -> Result<Read, Error> {
        let side = &*self.side;
        let ring = side.inbound;
        let tail = side.word64(ring, TAIL);
        let mut done = 0;
        while done < out.len() {
            let avail = self.available()? as usize;
            if avail == 0 {
                let head = side.word64(ring, HEAD);
                let t = tail.load(Ordering::Relaxed);
                match side.wait(
                    ring,
                    READER_SLEEPS,
                    deadline,
                    || head.load(Ordering::Acquire) != t,
                    || side.word32(ring, WRITER_CLOSED).load(Ordering::Acquire) != 0,
                ) {
                    Waited::Ready => continue,
                    Waited::TimedOut => return Ok(Read::TimedOut),
                    Waited::Gone => return Ok(Read::Closed),
                }
            }
            let t = tail.load(Ordering::Relaxed);
            let at = (t % RING as u64) as usize;
            let n = (out.len() - done).min(avail).min(RING - at);
            if !side
                .map
                .read_at(ring + HEADER + at, &mut out[done..done + n])
            {
                return Err(Error::Protocol("a shm ring read out of bounds".into()));
            }
            tail.store(t + n as u64, Ordering::SeqCst);
            side.wake(ring, WRITER_SLEEPS);
            done += n;
            deadline = None;
        }
        Ok(Read::Done)
    }
}

impl FrameReceiver for ShmReceiver {
    /// Reads one frame into `buf`: its length, checked against the cap, then its
    /// bytes. A writer gone before the frame's first byte is `Closed`; one gone in
    /// the middle of a frame is `Closed` too (the frame is dropped: the pool reports
    /// the worker's death).
    fn recv(&mut self, buf: &mut Vec<u8>, deadline: Option<Instant>) -> Result<Received, Error> {
        let mut len = [0u8; 4];
        match self.read_exact(&mut len, deadline)? {
            Read::Done => {}
            Read::TimedOut => return Ok(Received::TimedOut),
            Read::Closed => return Ok(Received::Closed),
        }
        let len = u32::from_le_bytes(len) as usize;
        check_incoming(len, self.max_frame)?;
        buf.clear();
        buf.resize(len, 0);
        match self.read_exact(buf, None)? {
            Read::Done => Ok(Received::Frame),
            Read::TimedOut | Read::Closed => Ok(Received::Closed),
        }
    }

    /// Spins up to `spin` for the first byte of a frame.
    fn arriving_within(&mut self, spin: Duration) -> Result<bool, Error> {
        procpool_core::transport::watch(spin, || Ok(self.available()? > 0))
    }
}

impl Drop for ShmReceiver {
    /// Marks the inbound ring closed and wakes the writer.
    fn drop(&mut self) {
        let ring = self.side.inbound;
        self.side
            .word32(ring, READER_CLOSED)
            .store(1, Ordering::SeqCst);
        let _ = rustix::io::write(&self.side.peer_bell, &1u64.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Both ends of one ring pair inside this process: `(pool, worker)` links.
    fn pair(max_frame: usize) -> (Link, Link, Arc<Mapping>) {
        let memfd = rustix::fs::memfd_create("shm-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&memfd, (2 * RING_BYTES) as u64).unwrap();
        let map = Arc::new(Mapping::new(memfd.as_fd(), 2 * RING_BYTES).unwrap());
        let (a, b) = (new_bell().unwrap(), new_bell().unwrap());
        let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
        let config = LinkConfig {
            max_frame,
            startup_timeout: Duration::from_secs(5),
        };
        let pool = Arc::new(Side {
            map: Arc::clone(&map),
            outbound: TO_WORKER,
            inbound: FROM_WORKER,
            bell: a,
            peer_bell: b,
            peer: None,
        });
        let worker = Arc::new(Side {
            map: Arc::clone(&map),
            outbound: FROM_WORKER,
            inbound: TO_WORKER,
            bell: b2,
            peer_bell: a2,
            peer: None,
        });
        (link(pool, config), link(worker, config), map)
    }

    #[test]
    fn frames_of_every_size_arrive_whole_and_in_order() {
        let (pool, worker, _map) = pair(16 * RING);
        let sizes = [0usize, 1, 3, 4095, RING - 4, RING, 3 * RING + 17];
        let mut sender = pool.sender;
        let writer = std::thread::spawn(move || {
            for (k, &n) in sizes.iter().enumerate() {
                let frame: Vec<u8> = (0..n).map(|i| (i * 31 + k) as u8).collect();
                sender.send(&[&frame[..n / 2], &frame[n / 2..]]).unwrap();
            }
        });
        let mut receiver = worker.receiver;
        let mut buf = Vec::new();
        for (k, &n) in sizes.iter().enumerate() {
            assert_eq!(receiver.recv(&mut buf, None).unwrap(), Received::Frame);
            assert_eq!(buf.len(), n);
            assert!(
                buf.iter()
                    .enumerate()
                    .all(|(i, &b)| b == (i * 31 + k) as u8)
            );
        }
        writer.join().unwrap();
    }

    #[test]
    fn the_end_of_the_stream_and_time_limits() {
        let (pool, worker, _map) = pair(1 << 20);
        let (mut sender, mut receiver) = (pool.sender, worker.receiver);
        let mut buf = Vec::new();
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(
            receiver.recv(&mut buf, Some(soon)).unwrap(),
            Received::TimedOut
        );
        sender.send(&[b"last"]).unwrap();
        drop(sender);
        assert_eq!(receiver.recv(&mut buf, None).unwrap(), Received::Frame);
        assert_eq!(buf, b"last");
        assert_eq!(receiver.recv(&mut buf, None).unwrap(), Received::Closed);
        // A writer whose reader is gone fails once the ring is full.
        let (pool, worker, _map) = pair(4 * RING);
        drop(worker.receiver);
        let mut sender = pool.sender;
        let big = vec![0u8; 2 * RING];
        assert!(matches!(sender.send(&[&big]), Err(Error::Io(_))));
    }

    #[test]
    fn a_frame_over_the_cap_is_refused_both_ways() {
        let (pool, worker, map) = pair(100);
        let mut sender = pool.sender;
        assert!(matches!(
            sender.send(&[&[0u8; 101]]),
            Err(Error::Protocol(_))
        ));
        // A length over the cap written by a hostile writer.
        assert!(map.write_at(TO_WORKER + HEADER, &1000u32.to_le_bytes()));
        map.u64_at(TO_WORKER + HEAD)
            .unwrap()
            .store(4, Ordering::SeqCst);
        let mut receiver = worker.receiver;
        let mut buf = Vec::new();
        assert!(matches!(
            receiver.recv(&mut buf, None),
            Err(Error::Protocol(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever positions and bytes a hostile writer leaves in the ring, a read
        /// ends — a frame, the end of the stream, a time-out or a protocol error —
        /// without a panic or a read outside the mapping.
        #[test]
        fn hostile_rings_never_panic(
            head in any::<u64>(),
            tail in any::<u64>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            closed in any::<bool>(),
        ) {
            let (_pool, worker, map) = pair(1 << 16);
            prop_assert!(map.write_at(TO_WORKER + HEADER + (tail % RING as u64) as usize % (RING - 64), &bytes));
            map.u64_at(TO_WORKER + HEAD).unwrap().store(head, Ordering::SeqCst);
            map.u64_at(TO_WORKER + TAIL).unwrap().store(tail, Ordering::SeqCst);
            map.u32_at(TO_WORKER + WRITER_CLOSED).unwrap().store(u32::from(closed), Ordering::SeqCst);
            let mut receiver = worker.receiver;
            let mut buf = Vec::new();
            let deadline = Instant::now() + Duration::from_millis(5);
            let _ = receiver.recv(&mut buf, Some(deadline));
        }
    }
}
