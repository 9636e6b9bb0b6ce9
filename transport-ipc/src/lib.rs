//! procpool transport over servo's [ipc-channel](https://docs.rs/ipc-channel).
//!
//! Each worker is bootstrapped through an `IpcOneShotServer`: the pool creates the
//! server (a socket in a fresh directory only this user can open) and passes its
//! name and a random per-worker secret in the environment; the worker connects,
//! creates one channel per direction and sends the pool its ends together with the
//! secret. A connection without the right secret is refused.
//!
//! ```text
//!  pool: IpcTransport::spawn                   worker: IpcTransport::connect
//!  ─────────────────────────                   ─────────────────────────────
//!  IpcOneShotServer::new() → <temp dir>/…/socket
//!  chmod 0700 the socket's directory
//!  env PROCPOOL_IPC_SERVER = socket path
//!      PROCPOOL_IPC_SECRET = 32 hex digits
//!  spawn the child ──────────────────────────▶ IpcSender::<Bootstrap>::connect(path)
//!  accept(), on a helper thread                ipc::channel() for requests,
//!    while watching the child and the clock    ipc::channel() for replies
//!                     ◀─────────────────────── Bootstrap { secret, requests, replies }
//!  secret matches: Link(requests, replies)     Link(replies_out, requests_in)
//! ```
//!
//! The server is one-shot: it accepts a single connection and reads a single
//! message from it, then goes away with its directory. The channels themselves
//! travel inside that message, as descriptors, so after the bootstrap the pool and
//! the worker share nothing that a third process could open. A stranger who
//! connects first (it would have to get into the directory) makes the spawn fail
//! (a wrong secret is an [`Error::Protocol`]) and the worker be killed; it never
//! gets a link.
//!
//! A worker that exits, or does not connect within [`LinkConfig::startup_timeout`],
//! does not make the spawn fail: the child comes back with a stub link whose every
//! receive is [`Received::Closed`] or [`Received::TimedOut`], so the pool's
//! handshake fails as it does on any transport, and the pool reaps the worker and
//! says why.
//!
//! Each frame is one ipc-channel message. Frames of [`SHARED_MEMORY_THRESHOLD`]
//! bytes or more travel in an `IpcSharedMemory` segment instead of through the socket.
//!
//! Use it through the `procpool` facade (feature `ipc`, `Transport::Ipc`).
#![deny(unsafe_code)]

use std::process::{Child, Command};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use ipc_channel::ipc::{self, IpcOneShotServer, IpcReceiver, IpcSender, IpcSharedMemory};
use ipc_channel::{IpcError, TryRecvError};
use procpool_core::transport::{check_incoming, check_outgoing, watch};
use procpool_core::{Error, FrameReceiver, FrameSender, Link, LinkConfig, Received, Transport};
use serde::{Deserialize, Serialize};

/// Environment variable with the one-shot server's name.
///
/// The name is the path of the server's Unix socket, as
/// [`IpcOneShotServer::new`] returns it.
const SERVER_ENV: &str = "PROCPOOL_IPC_SERVER";
/// Environment variable with the worker's secret.
///
/// 32 hex digits ([`random_secret`]), drawn anew for each worker; the worker sends
/// it back in its [`Bootstrap`].
const SECRET_ENV: &str = "PROCPOOL_IPC_SECRET";

/// Frames of this many bytes or more go through shared memory.
///
/// Such a frame is copied into a fresh shared-memory segment (a `memfd` on Linux),
/// whose descriptor is what goes through the socket; the receiver copies it
/// out of the mapping. A smaller frame travels in the socket message itself. The
/// cap ([`LinkConfig::max_frame`]) applies to both the same way.
pub const SHARED_MEMORY_THRESHOLD: usize = 64 * 1024;

/// The ipc-channel transport. Use the [`IPC`] instance.
///
/// It holds no state: the server, the secret and the channels of each worker live
/// in [`spawn`](IpcTransport::spawn) and in the [`Link`] it returns.
#[derive(Debug, Clone, Copy, Default)]
pub struct IpcTransport;

/// The ipc-channel transport, as a `&'static dyn Transport`.
pub static IPC: IpcTransport = IpcTransport;

/// One frame on the wire.
///
/// Which variant a frame takes depends on its length alone (see
/// [`SHARED_MEMORY_THRESHOLD`]); the receiver accepts either.
#[derive(Serialize, Deserialize)]
enum Wire {
    /// A frame below the threshold, in the message itself. `serde_bytes` encodes it
    /// as one byte string rather than a sequence of `u8` values.
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A frame at or above the threshold, in a shared-memory segment.
    Shared(IpcSharedMemory),
}

/// What a worker sends the pool through the one-shot server.
///
/// The worker makes both channels and keeps the other halves, so the pool learns
/// of the link only from this message.
#[derive(Serialize, Deserialize)]
struct Bootstrap {
    /// The worker's [`SECRET_ENV`], proving it is the child the pool started.
    secret: String,
    /// The pool sends requests here.
    requests: IpcSender<Wire>,
    /// The pool receives replies here.
    replies: IpcReceiver<Wire>,
}

impl Transport for IpcTransport {
    /// `"ipc"`: the name procpool-core writes into the worker's environment
    /// marker, by which the worker finds this transport again.
    fn name(&self) -> &'static str {
        "ipc"
    }

    /// Starts the child with the server's name and a fresh secret in its
    /// environment, then waits (up to [`LinkConfig::startup_timeout`]) for it to
    /// connect and present the secret, as the [module docs](crate) show.
    ///
    /// # Errors
    ///
    /// - [`Error::Io`] if the server, the secret or the child cannot be made;
    /// - [`Error::Protocol`] if the connection presents a wrong secret or a
    ///   malformed bootstrap, [`Error::Io`] if accepting fails (the helper thread
    ///   cannot start, the connection closes before its message): the child is
    ///   killed and reaped first.
    ///
    /// A child that exits or times out before connecting is no error here (see the
    /// module docs).
    fn spawn(&self, mut command: Command, config: LinkConfig) -> Result<(Child, Link), Error> {
        let (server, name) = new_server()?;
        let secret = random_secret()?;
        command.env(SERVER_ENV, &name).env(SECRET_ENV, &secret);
        let mut child = command.spawn()?;
        let deadline = Instant::now() + config.startup_timeout;
        let link = match accept(server, &name, &secret, &mut child, deadline) {
            Ok(Accepted::Link(requests, replies)) => link(requests, replies, config),
            // The worker died before connecting: the pool reaps it and reports how.
            Ok(Accepted::Exited) => dead_link(Received::Closed),
            Ok(Accepted::TimedOut) => dead_link(Received::TimedOut),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok((child, link))
    }

    /// In a worker: connects to the pool's one-shot server, makes the two channels
    /// and sends the pool its halves with the secret.
    ///
    /// # Errors
    ///
    /// - [`Error::Startup`] if `PROCPOOL_IPC_SERVER` or `PROCPOOL_IPC_SECRET` is not
    ///   set: this process was not started by [`IpcTransport::spawn`];
    /// - [`Error::Io`] if the server cannot be reached (it is gone once the pool
    ///   gave up on this worker), a channel cannot be made, or sending fails.
    fn connect(&self, config: LinkConfig) -> Result<Link, Error> {
        let (Ok(name), Ok(secret)) = (std::env::var(SERVER_ENV), std::env::var(SECRET_ENV)) else {
            return Err(Error::Startup(format!(
                "{SERVER_ENV} or {SECRET_ENV} is not set: not started by the ipc transport"
            )));
        };
        let server = IpcSender::<Bootstrap>::connect(name)?;
        let (requests, requests_in) = ipc::channel::<Wire>()?;
        let (replies_out, replies) = ipc::channel::<Wire>()?;
        server
            .send(Bootstrap {
                secret,
                requests,
                replies,
            })
            .map_err(ipc_error)?;
        Ok(link(replies_out, requests_in, config))
    }
}

/// How a worker's bootstrap ended.
enum Accepted {
    /// The worker connected with the right secret: the pool's sender of requests
    /// and receiver of replies.
    Link(IpcSender<Wire>, IpcReceiver<Wire>),
    /// The worker exited (or could not be waited for) before connecting, or the
    /// acceptor thread ended without an answer.
    Exited,
    /// The deadline passed with the worker alive and not connected.
    TimedOut,
}

/// Waits for `child` to connect to `server` and present `secret`, until `deadline`.
///
/// `accept` blocks until someone connects, so it runs on its own thread while this
/// one watches the child and the clock; if either gives up, a connection that sends
/// nothing wakes the acceptor, so no thread is left behind.
///
/// The child and the clock are looked at every 5 ms while no connection has come.
/// A connection that came is judged by its secret alone. The [`IpcReceiver`] that
/// `accept` also returns, for further messages on the server's connection, is
/// dropped: the bootstrap is the only one.
///
/// # Errors
///
/// - [`Error::Io`] if the acceptor thread cannot be started, or if accepting or
///   reading the bootstrap fails at the socket level;
/// - [`Error::Protocol`] for a malformed bootstrap or a wrong secret.
fn accept(
    server: IpcOneShotServer<Bootstrap>,
    name: &str,
    secret: &str,
    child: &mut Child,
    deadline: Instant,
) -> Result<Accepted, Error> {
    let (accepted_tx, accepted) = mpsc::channel();
    let acceptor = std::thread::Builder::new()
        .name("procpool-ipc-accept".into())
        .spawn(move || {
            let _ = accepted_tx.send(server.accept());
        })?;
    let outcome = loop {
        match accepted.recv_timeout(Duration::from_millis(5)) {
            Ok(result) => break Some(result),
            Err(RecvTimeoutError::Disconnected) => break None,
            Err(RecvTimeoutError::Timeout) => {
                let exited = !matches!(child.try_wait(), Ok(None));
                if exited || Instant::now() >= deadline {
                    drop(IpcSender::<Bootstrap>::connect(name.to_owned()));
                    let _ = acceptor.join();
                    return Ok(if exited {
                        Accepted::Exited
                    } else {
                        Accepted::TimedOut
                    });
                }
            }
        }
    };
    let _ = acceptor.join();
    match outcome {
        None => Ok(Accepted::Exited),
        Some(Err(e)) => Err(ipc_error(e)),
        Some(Ok((_, bootstrap))) if bootstrap.secret == secret => {
            Ok(Accepted::Link(bootstrap.requests, bootstrap.replies))
        }
        Some(Ok(_)) => Err(Error::Protocol(
            "ipc bootstrap with a wrong secret: connection refused".into(),
        )),
    }
}

/// Wraps the two channel ends into a [`Link`] with the cap of `config`, for either
/// side: the pool passes its request sender and reply receiver, a worker its reply
/// sender and request receiver.
fn link(sender: IpcSender<Wire>, receiver: IpcReceiver<Wire>, config: LinkConfig) -> Link {
    Link {
        sender: Box::new(IpcFrameSender {
            sender,
            max_frame: config.max_frame,
        }),
        receiver: Box::new(IpcFrameReceiver {
            receiver,
            max_frame: config.max_frame,
            early: None,
        }),
    }
}

/// A one-shot server whose socket directory only this user can open.
///
/// ipc-channel creates the directory with the process umask (often 0755); it is
/// closed to other users before any worker learns the name. Even in the instant
/// before that, a stranger gains nothing: the worker must present its secret.
///
/// Returns the server with its name, the socket's path.
///
/// # Errors
///
/// [`Error::Io`] if the socket cannot be made or its directory's mode cannot be
/// set; [`Error::Startup`] if the path has no parent directory, which ipc-channel
/// never returns.
fn new_server() -> Result<(IpcOneShotServer<Bootstrap>, String), Error> {
    use std::os::unix::fs::PermissionsExt;
    let (server, name) = IpcOneShotServer::<Bootstrap>::new()?;
    let dir = std::path::Path::new(&name)
        .parent()
        .ok_or_else(|| Error::Startup(format!("ipc socket `{name}` has no directory")))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok((server, name))
}

/// A random worker secret, as hex.
///
/// 128 bits from [`procpool_core::transport::random_secret`], as 32 lowercase hex
/// digits, zero-padded: text, so that it fits in an environment variable.
///
/// # Errors
///
/// [`Error::Io`] if `/dev/urandom` cannot be read.
fn random_secret() -> Result<String, Error> {
    Ok(format!(
        "{:032x}",
        procpool_core::transport::random_secret()?
    ))
}

/// procpool's error for an ipc-channel one.
///
/// A closed channel becomes an I/O error of kind `BrokenPipe`, as a write to a dead
/// worker is with the pipe transport; a message that does not decode is a
/// [`Error::Protocol`]. (Receivers turn a closed channel into [`Received::Closed`]
/// before they get here.)
fn ipc_error(e: IpcError) -> Error {
    match e {
        IpcError::Io(io) => Error::from(io),
        IpcError::Disconnected => Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
        IpcError::SerializationError(e) => Error::Protocol(format!("malformed ipc message: {e}")),
    }
}

/// The sending half of an ipc link.
///
/// It keeps [`FrameSender::capacity`]'s default of 64 KiB: the pool sends ahead of
/// a busy worker as much as a pipe would hold.
struct IpcFrameSender {
    /// The channel to the other process.
    sender: IpcSender<Wire>,
    /// The link's frame cap: a longer frame is refused before anything is sent.
    max_frame: usize,
}

impl FrameSender for IpcFrameSender {
    /// Sends the parts as one [`Wire`] message.
    ///
    /// A large frame made of a single part goes into shared memory straight from
    /// that part; a frame of several parts is joined into one buffer first (and then
    /// copied into shared memory if it is large).
    ///
    /// # Errors
    ///
    /// [`Error::Protocol`] for a frame over the cap (nothing is sent);
    /// [`Error::Io`] if sending fails, `BrokenPipe` when the receiver is gone.
    ///
    /// # Panics
    ///
    /// For a large frame, if ipc-channel cannot create the shared-memory segment
    /// (`memfd_create` or `ftruncate` fails: out of descriptors or memory); it
    /// asserts rather than returning an error.
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), Error> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        check_outgoing(len, self.max_frame)?;
        let wire = if len >= SHARED_MEMORY_THRESHOLD && parts.len() == 1 {
            Wire::Shared(IpcSharedMemory::from_bytes(parts[0]))
        } else {
            let frame = parts.concat();
            if len >= SHARED_MEMORY_THRESHOLD {
                Wire::Shared(IpcSharedMemory::from_bytes(&frame))
            } else {
                Wire::Inline(frame)
            }
        };
        self.sender.send(wire).map_err(ipc_error)
    }
}

/// The receiving half of an ipc link.
struct IpcFrameReceiver {
    /// The channel from the other process.
    receiver: IpcReceiver<Wire>,
    /// The link's frame cap, checked on each message received.
    max_frame: usize,
    /// What `arriving_within` saw arrive, for the next `recv`.
    ///
    /// ipc-channel cannot look at a message without taking it, so a message (or an
    /// error, such as the channel's end) found while watching is kept here and
    /// handed out first.
    early: Option<Result<Wire, TryRecvError>>,
}

impl FrameReceiver for IpcFrameReceiver {
    /// Takes the next message, [`early`](IpcFrameReceiver::early) first, and puts
    /// its frame in `buf`: an inline frame replaces `buf`, a shared one is copied
    /// into it.
    ///
    /// With a `deadline`, waits until then for a message; a message kept in `early`
    /// is returned whatever the deadline. A closed channel is [`Received::Closed`].
    ///
    /// # Errors
    ///
    /// - [`Error::Protocol`] for a frame over the cap, or a message that does not
    ///   decode;
    /// - [`Error::Io`] if receiving fails otherwise.
    ///
    /// The cap is checked once the message is in: ipc-channel has received (and, for
    /// an inline frame, allocated) it by then, but it goes no further.
    fn recv(&mut self, buf: &mut Vec<u8>, deadline: Option<Instant>) -> Result<Received, Error> {
        let message = match (self.early.take(), deadline) {
            (Some(early), _) => early,
            (None, None) => self.receiver.recv().map_err(TryRecvError::IpcError),
            (None, Some(d)) => self
                .receiver
                .try_recv_timeout(d.saturating_duration_since(Instant::now())),
        };
        let wire = match message {
            Ok(wire) => wire,
            Err(TryRecvError::Empty) => return Ok(Received::TimedOut),
            Err(TryRecvError::IpcError(IpcError::Disconnected)) => return Ok(Received::Closed),
            Err(TryRecvError::IpcError(e)) => return Err(ipc_error(e)),
        };
        let len = match &wire {
            Wire::Inline(v) => v.len(),
            Wire::Shared(m) => m.len(),
        };
        check_incoming(len, self.max_frame)?;
        match wire {
            Wire::Inline(v) => *buf = v,
            Wire::Shared(m) => {
                buf.clear();
                buf.extend_from_slice(&m);
            }
        }
        Ok(Received::Frame)
    }

    /// Calls `try_recv` over and over for up to `spin` ([`watch`]); whatever it
    /// gets but "empty" (a message, the end, an error) goes into
    /// [`early`](IpcFrameReceiver::early) and counts as arrived.
    fn arriving_within(&mut self, spin: Duration) -> Result<bool, Error> {
        if self.early.is_some() {
            return Ok(true);
        }
        watch(spin, || match self.receiver.try_recv() {
            Err(TryRecvError::Empty) => Ok(false),
            other => {
                self.early = Some(other);
                Ok(true)
            }
        })
    }
}

/// A link to a worker that never connected: the pool sees `outcome` on its first
/// receive (the handshake), then reaps the worker.
///
/// No channel exists, so nothing is held open: both halves are stubs.
fn dead_link(outcome: Received) -> Link {
    /// A sender whose every frame fails with `BrokenPipe`, as a write to a dead
    /// worker does.
    struct Nowhere;
    impl FrameSender for Nowhere {
        fn send(&mut self, _: &[&[u8]]) -> Result<(), Error> {
            Err(Error::from(std::io::Error::from(
                std::io::ErrorKind::BrokenPipe,
            )))
        }
    }
    /// A receiver that answers every [`recv`](FrameReceiver::recv) with the
    /// outcome it holds, at once, whatever the deadline.
    struct Dead(Received);
    impl FrameReceiver for Dead {
        fn recv(&mut self, _: &mut Vec<u8>, _: Option<Instant>) -> Result<Received, Error> {
            Ok(self.0)
        }
    }
    Link {
        sender: Box::new(Nowhere),
        receiver: Box::new(Dead(outcome)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_frame_seen_while_watching_is_the_next_one_received() {
        let (tx, rx) = ipc::channel::<Wire>().unwrap();
        let mut sender = IpcFrameSender {
            sender: tx,
            max_frame: 1024,
        };
        let mut receiver = IpcFrameReceiver {
            receiver: rx,
            max_frame: 1024,
            early: None,
        };
        assert!(!receiver.arriving_within(Duration::from_millis(1)).unwrap());
        sender.send(&[b"one"]).unwrap();
        sender.send(&[b"two"]).unwrap();
        assert!(receiver.arriving_within(Duration::from_secs(5)).unwrap());
        assert!(
            receiver.arriving_within(Duration::ZERO).unwrap(),
            "still there"
        );
        let mut buf = Vec::new();
        assert_eq!(receiver.recv(&mut buf, None).unwrap(), Received::Frame);
        assert_eq!(buf, b"one");
        assert_eq!(receiver.recv(&mut buf, None).unwrap(), Received::Frame);
        assert_eq!(buf, b"two");
        drop(sender);
        assert!(receiver.arriving_within(Duration::from_secs(5)).unwrap());
        assert_eq!(receiver.recv(&mut buf, None).unwrap(), Received::Closed);
    }

    #[test]
    fn the_bootstrap_socket_lives_in_a_directory_only_this_user_can_open() {
        let (_server, name) = new_server().unwrap();
        let dir = std::path::Path::new(&name).parent().unwrap();
        let mode = std::fs::metadata(dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
    }

    #[test]
    fn a_connection_without_the_secret_is_refused() {
        let (server, name) = IpcOneShotServer::<Bootstrap>::new().unwrap();
        let mut child = Command::new("sleep").arg("10").spawn().unwrap();
        let intruder = std::thread::spawn(move || {
            let to_pool = IpcSender::<Bootstrap>::connect(name).unwrap();
            let (requests, _keep_requests) = ipc::channel::<Wire>().unwrap();
            let (_keep_replies, replies) = ipc::channel::<Wire>().unwrap();
            to_pool
                .send(Bootstrap {
                    secret: "guess".into(),
                    requests,
                    replies,
                })
                .unwrap();
        });
        let result = accept(
            server,
            "unused",
            "the-real-secret",
            &mut child,
            Instant::now() + Duration::from_secs(20),
        );
        intruder.join().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            matches!(&result, Err(Error::Protocol(m)) if m.contains("wrong secret")),
            "{}",
            result.is_ok()
        );
    }

    #[test]
    fn a_worker_that_never_connects_is_noticed() {
        let (server, name) = IpcOneShotServer::<Bootstrap>::new().unwrap();
        let mut child = Command::new("true").spawn().unwrap();
        let result = accept(
            server,
            &name,
            "s",
            &mut child,
            Instant::now() + Duration::from_secs(20),
        );
        assert!(matches!(result, Ok(Accepted::Exited)));
        let mut child = Command::new("sleep").arg("10").spawn().unwrap();
        let (server, name) = IpcOneShotServer::<Bootstrap>::new().unwrap();
        let result = accept(
            server,
            &name,
            "s",
            &mut child,
            Instant::now() + Duration::from_millis(50),
        );
        let _ = child.kill();
        let _ = child.wait();
        assert!(matches!(result, Ok(Accepted::TimedOut)));
    }
}
