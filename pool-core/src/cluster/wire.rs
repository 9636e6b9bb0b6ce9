//! The messages between rank 0 and its agents.
//!
//! A frame relayed to or from a worker is the hot path: `FRAME`, the handle (8
//! bytes little-endian) and the frame's bytes as they are. Every other message is
//! one postcard-encoded [`Control`] behind its own tag.

use serde::{Deserialize, Serialize};

use crate::error::{Error, WorkerExit};

/// Tag of a relayed frame: `[FRAME][handle: u64 LE][frame bytes]`.
pub(crate) const FRAME: u8 = 1;
/// Tag of a [`Control`] message: `[CONTROL][postcard]`.
pub(crate) const CONTROL: u8 = 2;

/// How to start a worker on an agent: what the pool's configuration says of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Spec {
    /// The pool's secret, for the worker's handshake.
    pub(crate) secret: u128,
    /// The pool's frame cap.
    pub(crate) max_frame: u64,
    /// The handshake's time limit, in milliseconds.
    pub(crate) startup_ms: u64,
    /// The worker's address-space limit.
    pub(crate) memory_limit: Option<u64>,
    /// The pool's soft memory limit: the agent then reports the worker's resident
    /// size before each frame it relays.
    pub(crate) max_memory_per_child: Option<u64>,
}

/// Everything but frames.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Control {
    /// Agent → rank 0, once at start: how many workers it runs well (its
    /// available parallelism).
    Hello { parallelism: u32 },
    /// Rank 0 → agent: start worker `handle`.
    Launch { handle: u64, spec: Spec },
    /// Agent → rank 0: worker `handle` runs as process `pid`.
    Launched { handle: u64, pid: u32 },
    /// Agent → rank 0: worker `handle` could not be started.
    LaunchFailed { handle: u64, reason: String },
    /// Agent → rank 0: worker `handle` has ended (after its last frame), how, and
    /// the frame and item its progress page named.
    Exited {
        handle: u64,
        exit: Exit,
        progress: Option<(u64, u32)>,
    },
    /// Agent → rank 0, before a frame it relays when the pool has a soft memory
    /// limit: the worker's resident bytes.
    Resident { handle: u64, bytes: u64 },
    /// Rank 0 → agent: kill worker `handle`.
    Kill { handle: u64 },
    /// Rank 0 → agent: the job ends; kill every worker, answer `Bye`, finish.
    Stop,
    /// Agent → rank 0: stopped.
    Bye,
}

/// [`WorkerExit`] on the wire.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum Exit {
    /// `WorkerExit::Code`.
    Code(i32),
    /// `WorkerExit::Signal`.
    Signal(i32),
    /// `WorkerExit::Unknown`.
    Unknown,
}

impl From<WorkerExit> for Exit {
    fn from(exit: WorkerExit) -> Self {
        match exit {
            WorkerExit::Code(c) => Exit::Code(c),
            WorkerExit::Signal(s) => Exit::Signal(s),
            WorkerExit::Unknown => Exit::Unknown,
        }
    }
}

impl From<Exit> for WorkerExit {
    fn from(exit: Exit) -> Self {
        match exit {
            Exit::Code(c) => WorkerExit::Code(c),
            Exit::Signal(s) => WorkerExit::Signal(s),
            Exit::Unknown => WorkerExit::Unknown,
        }
    }
}

/// A message as read: a frame of a worker, or a control message.
#[derive(Debug)]
pub(crate) enum Message<'a> {
    /// A frame to or from worker `handle`.
    Frame { handle: u64, bytes: &'a [u8] },
    /// Anything else.
    Control(Control),
}

/// Encodes a control message.
pub(crate) fn control(message: &Control) -> Vec<u8> {
    // A `Control` holds nothing that fails to serialize.
    postcard::to_extend(message, vec![CONTROL]).unwrap_or_else(|_| vec![CONTROL])
}

/// Encodes the frame of `parts` for worker `handle`.
pub(crate) fn frame(handle: u64, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(9 + len);
    out.push(FRAME);
    out.extend_from_slice(&handle.to_le_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

/// Decodes a message.
///
/// # Errors
///
/// [`Error::Protocol`] for an empty message, an unknown tag, a frame without its
/// handle or a control message that does not decode.
pub(crate) fn read(message: &[u8]) -> Result<Message<'_>, Error> {
    match message.split_first() {
        Some((&FRAME, rest)) if rest.len() >= 8 => {
            let (handle, bytes) = rest.split_at(8);
            let handle = u64::from_le_bytes(handle.try_into().unwrap_or([0; 8]));
            Ok(Message::Frame { handle, bytes })
        }
        Some((&CONTROL, rest)) => postcard::from_bytes(rest)
            .map(Message::Control)
            .map_err(|e| Error::protocol(format!("a cluster message that does not decode: {e}"))),
        _ => Err(Error::protocol("a cluster message of no known kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_controls_round_trip() {
        let m = frame(7, &[b"ab", b"cd"]);
        match read(&m).unwrap() {
            Message::Frame { handle, bytes } => {
                assert_eq!(handle, 7);
                assert_eq!(bytes, b"abcd");
            }
            other => panic!("{other:?}"),
        }
        let c = control(&Control::Launched { handle: 3, pid: 99 });
        assert!(matches!(
            read(&c).unwrap(),
            Message::Control(Control::Launched { handle: 3, pid: 99 })
        ));
        assert!(read(&[]).is_err());
        assert!(read(&[FRAME, 1, 2]).is_err());
        assert!(read(&[CONTROL, 0xff, 0xff]).is_err());
    }
}
