//! How the descriptor behind a handle (a channel's socket, a shared-memory file)
//! travels with the handle's serialized form, to a process that may already be
//! running.
//!
//! A handle serializes as an [`FdToken`], by one of two routes:
//!
//! - **Passed**, inside a channel message: the descriptor goes along with the
//!   message itself (`SCM_RIGHTS` on the channel's Unix socket) and the token is its
//!   index among the message's descriptors. While in flight the kernel holds the
//!   file, so the sender may drop its handle, or exit, at once.
//! - **Held**, everywhere else (the arguments of a pool task or of
//!   `Process::spawn`, a task's result): the token names the descriptor in the
//!   serializing process (`pid`, `fd`) and the file's identity (`dev`, `ino`). The
//!   receiving process takes a duplicate with `pidfd_getfd(2)` (Linux 5.6; it needs
//!   the right to ptrace the sender: the same user, and Yama's `ptrace_scope` at 0,
//!   or `CAP_SYS_PTRACE`) or, if that is refused, opens `/proc/<pid>/fd/<fd>` (the
//!   same user; shared-memory files only, a socket cannot be opened so). The copy is
//!   checked to be the same file, so a reused descriptor number or process id gives
//!   an error, never another object.
//!
//! A held token is only good while the serializing process still holds the file:
//! each export leaves a *keep* (a clone of the handle's insides) in a thread-local
//! list, which whoever encoded takes with [`take_kept`] and holds until the other
//! side has surely decoded — a pool call until its results are in, a `Process`
//! until its task has returned, a worker's result for the worker's life. A handle
//! serialized by other code (your own `serde_json::to_string`, say) refers to its
//! object only while some handle lives in the process that serialized it.

use std::any::Any;
use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};

use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};
use serde::{Deserialize, Serialize};

/// What keeps an exported object alive in the exporting process: a clone of the
/// handle's shared insides.
pub(crate) type Keep = Arc<dyn Any + Send + Sync>;

/// A descriptor as it stands in the serialized form of a handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FdToken {
    /// The `n`-th descriptor that came with the channel message being decoded.
    Passed(u32),
    /// Descriptor `fd` of process `pid`, which is the file `(dev, ino)`.
    Held {
        /// The process that serialized the handle.
        pid: u32,
        /// Its descriptor of the file.
        fd: i32,
        /// The file's device, to check a copy against.
        dev: u64,
        /// The file's inode, to check a copy against.
        ino: u64,
    },
}

/// Where the exports of this thread go.
#[derive(Default)]
enum Exports {
    /// Held tokens; their keeps wait here for [`take_kept`].
    #[default]
    Hold,
    /// Passed tokens: duplicates of the descriptors, in token order.
    Pass(Vec<OwnedFd>),
}

thread_local! {
    /// How handles serialized on this thread export their descriptors.
    static EXPORTS: RefCell<Exports> = const { RefCell::new(Exports::Hold) };
    /// The keeps of held exports made on this thread since the last [`take_kept`].
    static KEPT: RefCell<Vec<Keep>> = const { RefCell::new(Vec::new()) };
    /// The descriptors of the channel message being decoded on this thread, taken
    /// by index; `None` when no message is being decoded.
    static INCOMING: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// Keeps of results a worker sent: held until the worker exits, since nothing tells
/// it when the parent has decoded them.
static RETAINED: Mutex<Vec<Keep>> = Mutex::new(Vec::new());

/// The token of `fd` for the serialized form of a handle; `keep` is called (and its
/// value held, see the module) only for a held export.
///
/// # Errors
///
/// What `fstat` or `dup` report.
pub(crate) fn export(fd: BorrowedFd<'_>, keep: impl FnOnce() -> Keep) -> io::Result<FdToken> {
    let passed = EXPORTS.with(|exports| -> io::Result<Option<u32>> {
        match &mut *exports.borrow_mut() {
            Exports::Hold => Ok(None),
            Exports::Pass(fds) => {
                fds.push(fd.try_clone_to_owned()?);
                Ok(Some(fds.len() as u32 - 1))
            }
        }
    })?;
    if let Some(n) = passed {
        return Ok(FdToken::Passed(n));
    }
    let (dev, ino) = identity(fd)?;
    KEPT.with(|kept| kept.borrow_mut().push(keep()));
    Ok(FdToken::Held {
        pid: std::process::id(),
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
        dev,
        ino,
    })
}

/// The descriptor a token names, as a new descriptor of this process
/// (close-on-exec).
///
/// # Errors
///
/// `InvalidData` for a passed token outside a channel message or with no such
/// descriptor, and for a held one whose descriptor is now another file; what
/// `pidfd_open`, `pidfd_getfd` and the `/proc` fallback report (`ESRCH`: the
/// process is gone; `EPERM`: not allowed to take its descriptors, see the module).
pub(crate) fn import(token: FdToken) -> io::Result<OwnedFd> {
    match token {
        FdToken::Passed(n) => INCOMING.with(|incoming| {
            incoming
                .borrow_mut()
                .as_mut()
                .and_then(|fds| fds.get_mut(n as usize))
                .and_then(Option::take)
                .ok_or_else(|| {
                    invalid(format!(
                        "a handle names descriptor {n} of its message, which did not come with it"
                    ))
                })
        }),
        FdToken::Held { pid, fd, dev, ino } => {
            let copy = if pid == std::process::id() {
                own_copy(fd)?
            } else {
                copy_from(pid, fd)?
            };
            if identity(copy.as_fd())? != (dev, ino) {
                return Err(invalid(format!(
                    "process {pid} no longer holds the object this handle names (its descriptor \
                     {fd} is another file now): a handle must stay alive in the process that sent \
                     it until the receiver has it"
                )));
            }
            Ok(copy)
        }
    }
}

/// A duplicate of this process's descriptor `fd`, if it is open.
fn own_copy(fd: i32) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(invalid(format!("descriptor {fd} is not one")));
    }
    crate::sys::duplicate_raw(fd)
}

/// Descriptor `fd` of process `pid`, by `pidfd_getfd` or else through `/proc`.
fn copy_from(pid: u32, fd: i32) -> io::Result<OwnedFd> {
    let target = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| invalid(format!("{pid} is not a process id")))?;
    let pidfd = pidfd_open(target, PidfdFlags::empty()).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("process {pid}, which sent this handle, is gone ({e})"),
        )
    })?;
    match pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty()) {
        Ok(copy) => Ok(copy),
        Err(first) => OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(format!("/proc/{pid}/fd/{fd}"))
            .map(OwnedFd::from)
            .map_err(|second| {
                io::Error::new(
                    io::Error::from(first).kind(),
                    format!(
                        "cannot take descriptor {fd} of process {pid}: pidfd_getfd: {first}; \
                         /proc/{pid}/fd/{fd}: {second} (taking a handle from a running process \
                         needs the right to ptrace it: the same user and Yama ptrace_scope 0, or \
                         CAP_SYS_PTRACE; send it through a channel instead)"
                    ),
                )
            }),
    }
}

/// The device and inode of the file `fd` refers to.
fn identity(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let stat = rustix::fs::fstat(fd)?;
    Ok((stat.st_dev, stat.st_ino))
}

/// An `InvalidData` error with `message`.
fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The keeps of the held exports made on this thread since the last call.
pub(crate) fn take_kept() -> Vec<Keep> {
    KEPT.with(|kept| std::mem::take(&mut *kept.borrow_mut()))
}

/// Holds `kept` until this process exits (a worker's results: see the module).
pub(crate) fn retain(kept: Vec<Keep>) {
    if !kept.is_empty() {
        crate::sync::lock(&RETAINED).extend(kept);
    }
}

/// Runs `encode` with handles exporting their descriptors as passed tokens; returns
/// its value and the descriptors to send with the message, in token order.
pub(crate) fn passing<T>(encode: impl FnOnce() -> T) -> (T, Vec<OwnedFd>) {
    let previous =
        EXPORTS.with(|e| std::mem::replace(&mut *e.borrow_mut(), Exports::Pass(Vec::new())));
    let value = encode();
    let fds = EXPORTS.with(
        |e| match std::mem::replace(&mut *e.borrow_mut(), previous) {
            Exports::Pass(fds) => fds,
            Exports::Hold => Vec::new(),
        },
    );
    (value, fds)
}

/// Runs `decode` with `fds`, the descriptors that came with a channel message, for
/// its passed tokens; those no token took are closed after.
pub(crate) fn receiving<T>(fds: Vec<OwnedFd>, decode: impl FnOnce() -> T) -> T {
    let fds = fds.into_iter().map(Some).collect();
    let previous = INCOMING.with(|i| i.borrow_mut().replace(fds));
    let value = decode();
    INCOMING.with(|i| *i.borrow_mut() = previous);
    value
}

/// Serializes `fd` as a token (see [`export`]), for a handle's `Serialize`.
///
/// # Errors
///
/// The serializer's custom error with the system's message, if the token cannot be
/// made.
pub(crate) fn serialize_fd<S: serde::Serializer>(
    fd: BorrowedFd<'_>,
    keep: impl FnOnce() -> Keep,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let token = export(fd, keep).map_err(serde::ser::Error::custom)?;
    token.serialize(serializer)
}

/// Reads a token and takes the descriptor it names (see [`import`]), for a handle's
/// `Deserialize`.
///
/// # Errors
///
/// The deserializer's error for a token that does not decode, its custom error with
/// the system's message for one that names no descriptor this process can have.
pub(crate) fn deserialize_fd<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<OwnedFd, D::Error> {
    let token = FdToken::deserialize(deserializer)?;
    import(token).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    fn memfd() -> std::fs::File {
        let fd = rustix::fs::memfd_create("handoff-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        std::fs::File::from(fd)
    }

    #[test]
    fn a_held_token_of_this_process_gives_the_same_file() {
        let mut file = memfd();
        file.write_all(b"hello").unwrap();
        let token = export(file.as_fd(), || Arc::new(())).unwrap();
        assert!(matches!(token, FdToken::Held { .. }));
        assert_eq!(take_kept().len(), 1);
        let mut copy = std::fs::File::from(import(token).unwrap());
        copy.rewind().unwrap();
        let mut text = String::new();
        copy.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello");
    }

    #[test]
    fn a_held_token_whose_descriptor_is_another_file_now_is_refused() {
        let file = memfd();
        let token = export(file.as_fd(), || Arc::new(())).unwrap();
        let _ = take_kept();
        let FdToken::Held { fd, .. } = token else {
            panic!("held expected")
        };
        drop(file);
        // Another file takes the number, or nothing does: either way, refused.
        let other = memfd();
        let e = import(token).unwrap_err();
        assert!(
            e.kind() == io::ErrorKind::InvalidData || e.raw_os_error() == Some(libc::EBADF),
            "{e} (descriptor {fd}, other {other:?})"
        );
    }

    #[test]
    fn passed_tokens_index_the_descriptors_of_their_message() {
        let (a, b) = (memfd(), memfd());
        let ((ta, tb), fds) = passing(|| {
            (
                export(a.as_fd(), || unreachable!("a passed export keeps nothing")).unwrap(),
                export(b.as_fd(), || unreachable!("a passed export keeps nothing")).unwrap(),
            )
        });
        assert_eq!((ta, tb), (FdToken::Passed(0), FdToken::Passed(1)));
        let ino_b = identity(b.as_fd()).unwrap();
        let got = receiving(fds, || import(tb).unwrap());
        assert_eq!(identity(got.as_fd()).unwrap(), ino_b);
        // Outside a message, a passed token names nothing.
        assert_eq!(import(ta).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
