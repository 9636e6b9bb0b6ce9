//! Channels between processes: [`channel`], [`Sender`], [`Receiver`] — Python's
//! `Pipe()` and `Queue()` in one typed, multi-producer multi-consumer type.
//!
//! # Mechanism
//!
//! A channel is one `SOCK_SEQPACKET` Unix socket pair: every `Sender`, in every
//! process, holds a descriptor of one end, every `Receiver` one of the other.
//! A message is one packet, so it arrives whole and to exactly one receiver, however
//! many processes send and receive at once, without a lock. The kernel tells the
//! ends apart when a side is gone: a receive finds the end of the stream once every
//! sender's descriptor is closed — dropped, or its process dead, killed or not — and
//! the queue is empty; a send finds `EPIPE` once no receiver is left anywhere.
//!
//! A message is its value's postcard encoding behind one kind byte. Up to
//! [`INLINE_MAX`] bytes it travels in the packet; a bigger one is written to a
//! `memfd` whose descriptor goes with a small packet (`SCM_RIGHTS`), so a message
//! of any size is one packet too (64 MiB and more: what memory allows). Handles
//! inside a message (another channel's ends, shared memory, locks) go along as
//! descriptors of the same packet (see `handoff`): the sender may drop them, or
//! exit, the moment `send` returns.
//!
//! # From Python
//!
//! | Python | procpool |
//! |---|---|
//! | `a, b = Pipe()`; `a.send(x)`; `b.recv()` | `let (tx, rx) = channel()?`; `tx.send(x)?`; `rx.recv()?` |
//! | `Pipe(duplex=True)` | two channels, one each way |
//! | `q = Queue()`; `q.put(x)`; `q.get()` | the same channel: `tx.send(x)?`, `rx.recv()?` (both ends `Clone`) |
//! | `q.get(timeout=1)` / `q.get_nowait()` | `rx.recv_timeout(d)?` / `rx.try_recv()?` |
//! | `EOFError`, or a `get()` that hangs when the producer died | `Err(Error::Disconnected)` |
//! | a `Queue` for a `Pool` worker through a `Manager` | pass the `Sender` or `Receiver` itself as an argument |
//!
//! Unlike a Python `Queue` there is no feeder thread: `send` writes the packet
//! itself, and may block while the socket's buffer is full (as `Pipe.send`), so a
//! process that exits after sending loses nothing.

use std::fmt;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg,
    sendmsg, socketpair,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;
use crate::handoff::{self, FdToken, Keep};

/// Largest encoded message sent in the packet itself; bigger ones go in a `memfd`.
///
/// Well under the socket's default send buffer (`wmem_default`, 208 KiB), which
/// bounds a packet.
pub(crate) const INLINE_MAX: usize = 64 * 1024;

/// Most handles one message may carry (the kernel's `SCM_MAX_FD` is 253; one more
/// descriptor is kept for a big message's `memfd`).
pub(crate) const MAX_HANDLES: usize = 252;

/// Kind byte of a message whose encoding follows in the packet.
const INLINE: u8 = 1;
/// Kind byte of a message in a `memfd`: the packet holds its length (`u64` LE), and
/// the `memfd` is the last descriptor.
const SPILLED: u8 = 2;
/// Role byte of a serialized sender.
const SENDER: u8 = 1;
/// Role byte of a serialized receiver.
const RECEIVER: u8 = 2;

/// Creates a channel: a [`Sender`] and a [`Receiver`] of `T` messages.
///
/// Both are `Clone` (many producers, many consumers) and travel to other
/// processes as arguments of `Process::spawn` and of pool tasks, or inside
/// messages of a channel.
///
/// ```rust,ignore
/// let (tx, rx) = procpool::channel::<String>()?;
/// tx.send("hello".to_owned())?;
/// assert_eq!(rx.recv()?, "hello");
/// drop(tx);
/// assert!(matches!(rx.recv(), Err(procpool::Error::Disconnected)));
/// ```
///
/// # Errors
///
/// [`Error::Io`] if the system refuses a socket pair (out of descriptors).
pub fn channel<T>() -> Result<(Sender<T>, Receiver<T>), Error> {
    let (send_end, recv_end) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    Ok((
        Sender {
            end: Arc::new(End { fd: send_end }),
            _message: PhantomData,
        },
        Receiver {
            end: Arc::new(End { fd: recv_end }),
            _message: PhantomData,
        },
    ))
}

/// One end's descriptor in this process, shared by the handles cloned from it.
#[derive(Debug)]
struct End {
    /// The socket.
    fd: OwnedFd,
}

impl End {
    /// Serializes this end as `(role, token)`; a held token keeps this end alive.
    fn serialize<S: Serializer>(
        self: &Arc<Self>,
        role: u8,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let keep = Arc::clone(self);
        let token = handoff::export(self.fd.as_fd(), move || keep as Keep)
            .map_err(serde::ser::Error::custom)?;
        (role, token).serialize(serializer)
    }

    /// Reads a `(role, token)` of `role` and takes the socket it names.
    ///
    /// # Errors
    ///
    /// A custom error for another role (a receiver where a sender is expected), a
    /// descriptor that cannot be taken, or one that is not a packet socket.
    fn deserialize<'de, D: Deserializer<'de>>(
        role: u8,
        deserializer: D,
    ) -> Result<Arc<Self>, D::Error> {
        use serde::de::Error as _;
        let (got, token) = <(u8, FdToken)>::deserialize(deserializer)?;
        if got != role {
            return Err(D::Error::custom(format!(
                "expected a channel's {}, found its {}",
                role_name(role),
                role_name(got)
            )));
        }
        let fd = handoff::import(token).map_err(D::Error::custom)?;
        match rustix::net::sockopt::socket_type(&fd) {
            Ok(SocketType::SEQPACKET) => Ok(Arc::new(End { fd })),
            _ => Err(D::Error::custom(
                "a channel handle names a descriptor that is no channel",
            )),
        }
    }
}

/// The name of a role byte, for errors.
fn role_name(role: u8) -> &'static str {
    match role {
        SENDER => "sender",
        RECEIVER => "receiver",
        _ => "unknown end",
    }
}

/// The sending end of a channel: `Clone`, `Send`, `Sync`, serializable; every
/// clone, in any process, sends into the same channel.
///
/// Messages from one handle (in one process) arrive in the order sent; there is no
/// order across handles.
pub struct Sender<T> {
    /// This process's descriptor of the sending end.
    end: Arc<End>,
    /// The message type (a `fn` so that the handle is `Send + Sync` for any `T`).
    _message: PhantomData<fn(T)>,
}

/// The receiving end of a channel: `Clone`, `Send`, `Sync`, serializable; each
/// message goes to exactly one receiver, in whatever process.
pub struct Receiver<T> {
    /// This process's descriptor of the receiving end.
    end: Arc<End>,
    /// The message type.
    _message: PhantomData<fn() -> T>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            end: Arc::clone(&self.end),
            _message: PhantomData,
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Receiver {
            end: Arc::clone(&self.end),
            _message: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").field("fd", &self.end.fd).finish()
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("fd", &self.end.fd)
            .finish()
    }
}

impl<T> Serialize for Sender<T> {
    /// As a token of its descriptor (see the module): inside a channel message the
    /// descriptor goes with the message; elsewhere the receiving process takes a copy
    /// from this one.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.end.serialize(SENDER, serializer)
    }
}

impl<'de, T> Deserialize<'de> for Sender<T> {
    /// Takes the descriptor the token names; a receiver's token, or a descriptor
    /// that is not a channel, is an error.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Sender {
            end: End::deserialize(SENDER, deserializer)?,
            _message: PhantomData,
        })
    }
}

impl<T> Serialize for Receiver<T> {
    /// As [`Sender`]'s.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.end.serialize(RECEIVER, serializer)
    }
}

impl<'de, T> Deserialize<'de> for Receiver<T> {
    /// As [`Sender`]'s.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Receiver {
            end: End::deserialize(RECEIVER, deserializer)?,
            _message: PhantomData,
        })
    }
}

impl<T: Serialize> Sender<T> {
    /// Sends `value` to one of the channel's receivers.
    ///
    /// Returns once the message is in the channel (it is then safe to exit); blocks
    /// while the channel's buffer is full, until a receiver makes room.
    ///
    /// # Errors
    ///
    /// - [`Error::Disconnected`] when no receiver is left, in any process;
    /// - [`Error::Serialization`] if the value does not serialize (a handle inside
    ///   it whose descriptor cannot be shared, say);
    /// - [`Error::InvalidArgument`] for a message with more than 252 (`MAX_HANDLES`)
    ///   handles in it;
    /// - [`Error::Io`] for what else the system refuses (no memory for a big message).
    pub fn send(&self, value: T) -> Result<(), Error> {
        let (encoded, fds) = handoff::passing(|| postcard::to_extend(&value, vec![INLINE]));
        // The value, and any handle inside it, may go now: what it shares travels as
        // the descriptors in `fds`.
        drop(value);
        let mut bytes = encoded.map_err(|e| Error::Serialization {
            task: format!("channel of {}", std::any::type_name::<T>()),
            index: 0,
            what: "serialized as a message",
            message: e.to_string(),
        })?;
        if fds.len() > MAX_HANDLES {
            return Err(Error::InvalidArgument(format!(
                "a channel message carries at most {MAX_HANDLES} handles, this one has {}",
                fds.len()
            )));
        }
        let mut fds = fds;
        if bytes.len() > INLINE_MAX + 1 {
            fds.push(spill(&bytes[1..])?);
            let len = (bytes.len() - 1) as u64;
            bytes.clear();
            bytes.push(SPILLED);
            bytes.extend_from_slice(&len.to_le_bytes());
        }
        self.send_packet(&bytes, &fds)
    }

    /// Writes one packet with its descriptors.
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`] on `EPIPE` or `ECONNRESET`; [`Error::Io`] otherwise.
    fn send_packet(&self, bytes: &[u8], fds: &[OwnedFd]) -> Result<(), Error> {
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(borrowed.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
            return Err(Error::InvalidArgument(
                "too many handles for one channel message".into(),
            ));
        }
        let iov = [IoSlice::new(bytes)];
        loop {
            match sendmsg(&self.end.fd, &iov, &mut control, SendFlags::NOSIGNAL) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::PIPE | rustix::io::Errno::CONNRESET) => {
                    return Err(Error::Disconnected);
                }
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
    }
}

/// Writes a big message's bytes to a new `memfd`.
///
/// # Errors
///
/// What `memfd_create` or the write report (`ENOSPC`/`ENOMEM`).
fn spill(bytes: &[u8]) -> Result<OwnedFd, Error> {
    let fd = rustix::fs::memfd_create("procpool-message", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(io::Error::from)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    Ok(file.into())
}

/// How long a receive may wait.
#[derive(Clone, Copy)]
enum Wait {
    /// As long as it takes.
    Forever,
    /// Until this instant.
    Until(Instant),
    /// Not at all.
    Never,
}

thread_local! {
    /// The packet buffer of this thread's receives: one allocation per thread, not
    /// per message.
    static PACKET: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; INLINE_MAX + 16]);
}

impl<T: DeserializeOwned> Receiver<T> {
    /// Waits for the next message.
    ///
    /// # Errors
    ///
    /// - [`Error::Disconnected`] once every sender, in every process, is gone
    ///   (dropped, or its process dead) and nothing is left to read;
    /// - [`Error::Serialization`] for a message that does not decode as `T` (it is
    ///   consumed; the next `recv` reads the next one);
    /// - [`Error::Protocol`] for a packet that is not a procpool message (cut short,
    ///   an unknown kind, a big message whose file does not match);
    /// - [`Error::Io`] for what else the system reports.
    pub fn recv(&self) -> Result<T, Error> {
        self.receive(Wait::Forever)?.ok_or(Error::Disconnected)
    }

    /// As [`recv`](Self::recv), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] (no task, no pid) if nothing came in time; otherwise as
    /// [`recv`](Self::recv).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, Error> {
        let wait = Instant::now()
            .checked_add(timeout)
            .map_or(Wait::Forever, Wait::Until);
        match self.receive(wait) {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(Error::Timeout {
                task: None,
                index: None,
                pid: None,
                after: timeout,
            }),
            Err(e) => Err(e),
        }
    }

    /// The next message if one is there now; `Ok(None)` when the channel is empty.
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`] when it is empty and every sender is gone; otherwise
    /// as [`recv`](Self::recv).
    pub fn try_recv(&self) -> Result<Option<T>, Error> {
        self.receive(Wait::Never)
    }

    /// The messages as they come, until the channel is disconnected.
    ///
    /// The iteration also ends at the first message that fails to decode (use
    /// [`recv`](Self::recv) to see such errors).
    pub fn iter(&self) -> RecvIter<'_, T> {
        RecvIter { receiver: self }
    }

    /// Receives one message within `wait`: `Ok(None)` when none came in time
    /// (`Never`: none was there), `Err(Disconnected)` at the end of the stream.
    fn receive(&self, wait: Wait) -> Result<Option<T>, Error> {
        loop {
            let flags = match wait {
                Wait::Forever => RecvFlags::CMSG_CLOEXEC,
                Wait::Never => RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
                Wait::Until(deadline) => {
                    if !self.readable_by(deadline)? {
                        return Ok(None);
                    }
                    // Another receiver may take it first: then wait again.
                    RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT
                }
            };
            match PACKET.with(|packet| self.receive_packet(&mut packet.borrow_mut(), flags)) {
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    if matches!(wait, Wait::Never) {
                        return Ok(None);
                    }
                }
                Err(Error::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other.map(Some),
            }
        }
    }

    /// Waits until the socket is readable or `deadline` passes; whether it is.
    fn readable_by(&self, deadline: Instant) -> Result<bool, Error> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = rustix::event::Timespec::try_from(left).ok();
            let mut fds = [PollFd::new(&self.end.fd, PollFlags::IN)];
            match poll(&mut fds, timeout.as_ref()) {
                Ok(0) if left.is_zero() => return Ok(false),
                Ok(0) => {}
                Ok(_) => return Ok(true),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
    }

    /// Reads one packet into `packet` and decodes it.
    ///
    /// # Errors
    ///
    /// `Io(WouldBlock)` with `DONTWAIT` and nothing there, `Io(Interrupted)`,
    /// [`Error::Disconnected`] at the end of the stream, and the decoding errors of
    /// [`recv`](Self::recv).
    fn receive_packet(&self, packet: &mut [u8], flags: RecvFlags) -> Result<T, Error> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_HANDLES + 1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(packet)];
        let got = recvmsg(&self.end.fd, &mut iov, &mut control, flags).map_err(io::Error::from)?;
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if got.bytes == 0 && fds.is_empty() {
            return Err(Error::Disconnected);
        }
        if got
            .flags
            .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
        {
            return Err(Error::protocol(
                "a channel packet was cut short (too big, or too many descriptors): it was dropped",
            ));
        }
        let bytes = &packet[..got.bytes];
        match bytes.split_first() {
            Some((&INLINE, body)) => decode(body, fds),
            Some((&SPILLED, len)) => {
                let len = <[u8; 8]>::try_from(len)
                    .map(u64::from_le_bytes)
                    .map_err(|_| Error::protocol("a big channel message without its length"))?;
                let file = fds
                    .pop()
                    .map(std::fs::File::from)
                    .ok_or_else(|| Error::protocol("a big channel message without its file"))?;
                let size = file.metadata()?.len();
                if size != len {
                    return Err(Error::protocol(format!(
                        "a big channel message announced {len} bytes, its file holds {size}"
                    )));
                }
                let len = usize::try_from(len)
                    .map_err(|_| Error::protocol("a channel message too big for this process"))?;
                let mut body = Vec::new();
                body.try_reserve_exact(len)
                    .map_err(|_| Error::protocol(format!("no memory for a {len}-byte message")))?;
                body.resize(len, 0);
                file.read_exact_at(&mut body, 0)?;
                decode(&body, fds)
            }
            _ => Err(Error::protocol("a channel packet of an unknown kind")),
        }
    }
}

/// Decodes a message's encoding with the descriptors that came with it.
///
/// # Errors
///
/// [`Error::Serialization`] if it is not a `T` (or a handle in it cannot be taken).
fn decode<T: DeserializeOwned>(body: &[u8], fds: Vec<OwnedFd>) -> Result<T, Error> {
    handoff::receiving(fds, || postcard::from_bytes(body)).map_err(|e| Error::Serialization {
        task: format!("channel of {}", std::any::type_name::<T>()),
        index: 0,
        what: "deserialized from a message",
        message: e.to_string(),
    })
}

/// The messages of a [`Receiver`] until it is disconnected: [`Receiver::iter`].
pub struct RecvIter<'a, T> {
    /// The receiver read.
    receiver: &'a Receiver<T>,
}

impl<T> fmt::Debug for RecvIter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvIter")
            .field("receiver", self.receiver)
            .finish()
    }
}

impl<T: DeserializeOwned> Iterator for RecvIter<'_, T> {
    type Item = T;

    /// The next message; `None` once disconnected (or at an error).
    fn next(&mut self) -> Option<T> {
        self.receiver.recv().ok()
    }
}

impl<'a, T: DeserializeOwned> IntoIterator for &'a Receiver<T> {
    type Item = T;
    type IntoIter = RecvIter<'a, T>;

    fn into_iter(self) -> RecvIter<'a, T> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_in_order_and_the_end_is_disconnected() {
        let (tx, rx) = channel::<(u32, String)>().unwrap();
        for i in 0..100 {
            tx.send((i, format!("m{i}"))).unwrap();
        }
        drop(tx);
        let got: Vec<_> = rx.iter().collect();
        assert_eq!(got.len(), 100);
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, (n, s))| *n as usize == i && *s == format!("m{i}"))
        );
        assert!(matches!(rx.try_recv(), Err(Error::Disconnected)));
        assert!(matches!(rx.recv(), Err(Error::Disconnected)));
    }

    #[test]
    fn an_empty_channel_times_out_and_try_recv_is_none() {
        let (tx, rx) = channel::<u8>().unwrap();
        assert!(matches!(rx.try_recv(), Ok(None)));
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(20)),
            Err(Error::Timeout { pid: None, .. })
        ));
        tx.send(7).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 7);
    }

    #[test]
    fn a_send_with_no_receiver_left_is_disconnected() {
        let (tx, rx) = channel::<u8>().unwrap();
        drop(rx);
        assert!(matches!(tx.send(1), Err(Error::Disconnected)));
    }

    #[test]
    fn a_big_message_goes_whole() {
        let (tx, rx) = channel::<Vec<u8>>().unwrap();
        let big: Vec<u8> = (0..3 * INLINE_MAX + 5).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let t = std::thread::spawn(move || tx.send(sent));
        assert_eq!(rx.recv().unwrap(), big);
        t.join().unwrap().unwrap();
    }

    #[test]
    fn a_channel_end_travels_inside_a_message_of_another() {
        let (tx, rx) = channel::<Sender<u32>>().unwrap();
        let (inner_tx, inner_rx) = channel::<u32>().unwrap();
        tx.send(inner_tx).unwrap(); // the only sender of `inner` is now in flight
        let got = rx.recv().unwrap();
        got.send(5).unwrap();
        assert_eq!(inner_rx.recv().unwrap(), 5);
        drop(got);
        assert!(matches!(inner_rx.recv(), Err(Error::Disconnected)));
    }

    #[test]
    fn a_serialized_end_outside_a_message_is_the_same_channel() {
        let (tx, rx) = channel::<u32>().unwrap();
        let bytes = postcard::to_allocvec(&tx).unwrap();
        let _ = handoff::take_kept();
        let copy: Sender<u32> = postcard::from_bytes(&bytes).unwrap();
        copy.send(9).unwrap();
        assert_eq!(rx.recv().unwrap(), 9);
        // A sender's token is not a receiver.
        assert!(postcard::from_bytes::<Receiver<u32>>(&bytes).is_err());
        // Garbage is an error, not a panic.
        assert!(postcard::from_bytes::<Sender<u32>>(&[1, 1, 0xff, 0xff]).is_err());
    }

    #[test]
    fn a_message_that_is_not_a_t_is_a_serialization_error_and_the_next_one_reads() {
        let (tx, rx) = channel::<String>().unwrap();
        // Same channel seen with another type: a `u8` 200 is no string's length
        // followed by its bytes.
        let raw: Sender<Vec<u8>> = Sender {
            end: Arc::clone(&tx.end),
            _message: PhantomData,
        };
        raw.send(vec![200]).unwrap();
        tx.send("ok".into()).unwrap();
        assert!(matches!(rx.recv(), Err(Error::Serialization { .. })));
        assert_eq!(rx.recv().unwrap(), "ok");
    }

    #[test]
    fn many_producers_and_consumers_deliver_every_message_once() {
        let (tx, rx) = channel::<u32>().unwrap();
        let producers: Vec<_> = (0..3)
            .map(|p| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        tx.send(p * 1000 + i).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || rx.iter().collect::<Vec<_>>())
            })
            .collect();
        producers.into_iter().for_each(|p| p.join().unwrap());
        let mut all: Vec<u32> = consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..3000).collect::<Vec<_>>());
    }
}
