//! procpool transport over servo's [ipc-channel](https://docs.rs/ipc-channel).
//!
//! Each worker is bootstrapped through an `IpcOneShotServer`: the pool creates the
//! server (a socket in a fresh directory only this user can open) and passes its
//! name and a random per-worker secret in the environment; the worker connects,
//! creates one channel per direction and sends the pool its ends together with the
//! secret. A connection without the right secret is refused.
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
const SERVER_ENV: &str = "PROCPOOL_IPC_SERVER";
/// Environment variable with the worker's secret.
const SECRET_ENV: &str = "PROCPOOL_IPC_SECRET";

/// Frames of this many bytes or more go through shared memory.
pub const SHARED_MEMORY_THRESHOLD: usize = 64 * 1024;

/// The ipc-channel transport. Use the [`IPC`] instance.
#[derive(Debug, Clone, Copy, Default)]
pub struct IpcTransport;

/// The ipc-channel transport, as a `&'static dyn Transport`.
pub static IPC: IpcTransport = IpcTransport;

/// One frame on the wire.
#[derive(Serialize, Deserialize)]
enum Wire {
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    Shared(IpcSharedMemory),
}

/// What a worker sends the pool through the one-shot server.
#[derive(Serialize, Deserialize)]
struct Bootstrap {
    secret: String,
    /// The pool sends requests here.
    requests: IpcSender<Wire>,
    /// The pool receives replies here.
    replies: IpcReceiver<Wire>,
}

impl Transport for IpcTransport {
    fn name(&self) -> &'static str {
        "ipc"
    }

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
    Link(IpcSender<Wire>, IpcReceiver<Wire>),
    Exited,
    TimedOut,
}

/// Waits for `child` to connect to `server` and present `secret`, until `deadline`.
///
/// `accept` blocks until someone connects, so it runs on its own thread while this
/// one watches the child and the clock; if either gives up, a connection that sends
/// nothing wakes the acceptor, so no thread is left behind.
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
fn random_secret() -> Result<String, Error> {
    Ok(format!(
        "{:032x}",
        procpool_core::transport::random_secret()?
    ))
}

fn ipc_error(e: IpcError) -> Error {
    match e {
        IpcError::Io(io) => Error::from(io),
        IpcError::Disconnected => Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
        IpcError::SerializationError(e) => Error::Protocol(format!("malformed ipc message: {e}")),
    }
}

/// The sending half of an ipc link.
struct IpcFrameSender {
    sender: IpcSender<Wire>,
    max_frame: usize,
}

impl FrameSender for IpcFrameSender {
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
    receiver: IpcReceiver<Wire>,
    max_frame: usize,
    /// What `arriving_within` saw arrive, for the next `recv`.
    early: Option<Result<Wire, TryRecvError>>,
}

impl FrameReceiver for IpcFrameReceiver {
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
fn dead_link(outcome: Received) -> Link {
    struct Nowhere;
    impl FrameSender for Nowhere {
        fn send(&mut self, _: &[&[u8]]) -> Result<(), Error> {
            Err(Error::from(std::io::Error::from(
                std::io::ErrorKind::BrokenPipe,
            )))
        }
    }
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
