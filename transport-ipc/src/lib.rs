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

use std::fmt::Write as _;
use std::io::Read;
use std::process::{Child, Command};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use ipc_channel::ipc::{self, IpcOneShotServer, IpcReceiver, IpcSender, IpcSharedMemory};
use ipc_channel::{IpcError, TryRecvError};
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
        let (server, name) = IpcOneShotServer::<Bootstrap>::new()?;
        let secret = random_secret()?;
        command.env(SERVER_ENV, &name).env(SECRET_ENV, &secret);
        let mut child = command.spawn()?;

        // `accept` blocks until someone connects, so it runs on its own thread while
        // this one watches the child and the clock.
        let (accepted_tx, accepted) = mpsc::channel();
        let acceptor = std::thread::Builder::new()
            .name("procpool-ipc-accept".into())
            .spawn(move || {
                let _ = accepted_tx.send(server.accept());
            })?;
        let deadline = Instant::now() + config.startup_timeout;
        let outcome = loop {
            match accepted.recv_timeout(Duration::from_millis(5)) {
                Ok(result) => break Some(result),
                Err(RecvTimeoutError::Disconnected) => break None,
                Err(RecvTimeoutError::Timeout) => {
                    let exited = !matches!(child.try_wait(), Ok(None));
                    if exited || Instant::now() >= deadline {
                        // Wake the acceptor with a connection that sends nothing.
                        drop(IpcSender::<Bootstrap>::connect(name.clone()));
                        break if exited {
                            None
                        } else {
                            Some(Err(IpcError::Disconnected))
                        };
                    }
                }
            }
        };
        let _ = acceptor.join();
        let link = match outcome {
            // The worker died before connecting: the pool reaps it and reports how.
            None => dead_link(Received::Closed),
            Some(Err(IpcError::Disconnected)) => dead_link(Received::TimedOut),
            Some(Err(e)) => return Err(ipc_error(e)),
            Some(Ok((_, bootstrap))) => {
                if bootstrap.secret != secret {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Protocol(
                        "ipc bootstrap with a wrong secret: connection refused".into(),
                    ));
                }
                link(bootstrap.requests, bootstrap.replies, config)
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

fn link(sender: IpcSender<Wire>, receiver: IpcReceiver<Wire>, config: LinkConfig) -> Link {
    Link {
        sender: Box::new(IpcFrameSender {
            sender,
            max_frame: config.max_frame,
        }),
        receiver: Box::new(IpcFrameReceiver {
            receiver,
            max_frame: config.max_frame,
        }),
    }
}

/// 16 random bytes from the kernel, as hex.
fn random_secret() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let mut hex = String::with_capacity(32);
    for b in bytes {
        let _ = write!(hex, "{b:02x}");
    }
    Ok(hex)
}

fn ipc_error(e: IpcError) -> Error {
    match e {
        IpcError::Io(io) => Error::Io(io),
        IpcError::Disconnected => Error::Io(std::io::ErrorKind::BrokenPipe.into()),
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
        if len > self.max_frame {
            return Err(Error::Protocol(format!(
                "refusing to send a frame of {len} bytes: the limit is {}",
                self.max_frame
            )));
        }
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
}

impl FrameReceiver for IpcFrameReceiver {
    fn recv(&mut self, buf: &mut Vec<u8>, deadline: Option<Instant>) -> Result<Received, Error> {
        let message = match deadline {
            None => self.receiver.recv().map_err(TryRecvError::IpcError),
            Some(d) => self
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
        if len > self.max_frame {
            return Err(Error::Protocol(format!(
                "frame of {len} bytes, over the limit of {}",
                self.max_frame
            )));
        }
        match wire {
            Wire::Inline(v) => *buf = v,
            Wire::Shared(m) => {
                buf.clear();
                buf.extend_from_slice(&m);
            }
        }
        Ok(Received::Frame)
    }
}

/// A link to a worker that never connected: the pool sees `outcome` on its first
/// receive (the handshake), then reaps the worker.
fn dead_link(outcome: Received) -> Link {
    struct Nowhere;
    impl FrameSender for Nowhere {
        fn send(&mut self, _: &[&[u8]]) -> Result<(), Error> {
            Err(Error::Io(std::io::ErrorKind::BrokenPipe.into()))
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
