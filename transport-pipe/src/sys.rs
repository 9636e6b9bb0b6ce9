//! The system calls the pipe transport needs that std does not wrap safely: placing
//! the worker's pipe ends on fixed descriptors across `exec`, adopting them in
//! the worker, and writing with `SIGPIPE` blocked.
//!
//! The crate denies `unsafe` code everywhere else; this module allows it, and each
//! block says why it is sound. Three groups:
//!
//! - in the parent, between `fork` and `exec`: [`place_on_exec`] registers a hook
//!   that [`place`]s the child's ends on [`WORKER_READ_FD`] and [`WORKER_WRITE_FD`];
//!   only async-signal-safe system calls are allowed there, so the hook allocates
//!   nothing and takes no lock;
//! - in the worker, once: [`adopt_worker_fds`] turns the raw descriptors 3 and 4
//!   into [`OwnedFd`]s, after checking that they are pipes;
//! - around a write from a thread that does not keep `SIGPIPE` blocked:
//!   [`without_sigpipe`], with [`sigpipe_set`] and [`discard_pending_sigpipe`].
#![allow(unsafe_code)]

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::fs::{FileType, fstat};
use rustix::io::{FdFlags, dup2, fcntl_setfd};

/// Descriptor on which a worker reads requests.
///
/// The first after stdin, stdout and stderr, which the worker keeps as the
/// program's own.
pub(crate) const WORKER_READ_FD: RawFd = 3;
/// Descriptor on which a worker writes replies.
pub(crate) const WORKER_WRITE_FD: RawFd = 4;

/// Makes the child started by `command` find `read` on [`WORKER_READ_FD`] and
/// `write` on [`WORKER_WRITE_FD`]. Both must be above 4 (so placing one cannot
/// clobber the other) and stay open until the child is spawned.
///
/// Only the raw numbers are moved into the hook: the parent keeps ownership, and
/// the forked child sees the same descriptors under the same numbers. A failing
/// `dup2` fails the hook, and with it `Command::spawn`, with that error.
///
/// # Panics
///
/// In debug builds, if `read` or `write` is 4 or below (a `debug_assert!`).
pub(crate) fn place_on_exec(command: &mut Command, read: &OwnedFd, write: &OwnedFd) {
    let (read, write) = (read.as_raw_fd(), write.as_raw_fd());
    debug_assert!(read > WORKER_WRITE_FD && write > WORKER_WRITE_FD);
    let hook = move || -> io::Result<()> {
        place(read, WORKER_READ_FD)?;
        place(write, WORKER_WRITE_FD)
    };
    // SAFETY: the hook runs in the child between fork and exec; it only makes dup2
    // system calls on descriptors the parent keeps open across the spawn, takes no
    // lock and allocates nothing.
    unsafe {
        command.pre_exec(hook);
    }
}

/// `dup2(from, to)`; the copy does not have close-on-exec, so it survives `exec`.
///
/// Whatever `to` was before (an inherited descriptor, say) is closed by `dup2`
/// atomically. Runs in the forked child, so it must stay async-signal-safe.
///
/// # Errors
///
/// The `dup2` error (`EBADF` if `from` is not open, `EINTR`, ...).
fn place(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: `from` is open in this (forked) process for the whole call: the parent
    // holds it open until `spawn` returns.
    let from = unsafe { BorrowedFd::borrow_raw(from) };
    // SAFETY: `to` is only a dup2 target and is never closed through this handle
    // (ManuallyDrop), so no descriptor is owned twice.
    let mut to = ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(to) });
    dup2(from, &mut to)?;
    Ok(())
}

/// In a worker: takes ownership of the pipe ends placed by [`place_on_exec`],
/// after checking they are pipes, and marks them close-on-exec so that programs a
/// task starts do not inherit them.
///
/// Returns `(read, write)`: descriptors [`WORKER_READ_FD`] and [`WORKER_WRITE_FD`].
/// Call it once per process: a second call would own the same descriptors twice.
///
/// # Errors
///
/// Those of [`adopt`], for 3 first, then for 4.
pub(crate) fn adopt_worker_fds() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok((adopt(WORKER_READ_FD)?, adopt(WORKER_WRITE_FD)?))
}

/// Takes ownership of descriptor `fd` if it is a pipe (a FIFO, to `fstat`), and
/// makes it close-on-exec.
///
/// The check keeps a process that was not started by the transport, but has `fd`
/// open as something else, from adopting it: the [`OwnedFd`] would close a
/// descriptor that belongs to other code.
///
/// # Errors
///
/// - `EBADF` (from `fstat`) if `fd` is not open;
/// - [`io::ErrorKind::InvalidInput`] if it is open but not a pipe;
/// - the `fcntl` error if close-on-exec cannot be set (the descriptor, adopted by
///   then, is closed).
fn adopt(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: a borrow for the duration of `fstat` only; if `fd` is not open, fstat
    // fails with EBADF and nothing else happens.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = fstat(borrowed)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Fifo {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "descriptor {fd} is not a pipe: this process was not started by a procpool pipe transport"
            ),
        ));
    }
    // SAFETY: `fd` is an open pipe that the parent placed for this process alone;
    // nothing else in the program owns it, and it is adopted once (at init).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl_setfd(&owned, FdFlags::CLOEXEC)?;
    Ok(owned)
}

/// Runs `write` with `SIGPIPE` blocked in the calling thread, so that writing to a
/// pipe whose reader is gone (a dead worker) fails with `EPIPE` instead of killing
/// the whole program — also in a program that restored the default disposition
/// (`SIG_DFL`, as command-line tools do so that `| head` ends them quietly).
///
/// The signal the failed write raised stays pending on this thread while it is
/// blocked; it is taken off before the old mask is restored, so it is never
/// delivered. Two `rt_sigprocmask` calls per frame, plus two more after a failure.
///
/// If the signal cannot be blocked (`pthread_sigmask` fails, which it does not for
/// a valid set), `write` still runs, unguarded, and the mask is left alone.
///
/// # Errors
///
/// None of its own: the result of `write`, unchanged.
pub(crate) fn without_sigpipe<T, E>(write: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let pipe = sigpipe_set();
    // SAFETY: an all-zero sigset_t is a valid (empty) set for the kernel to overwrite.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live sigset_t values of this frame; blocking a
    // signal in the calling thread has no other effect on memory.
    let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &pipe, &mut old) } == 0;
    let result = write();
    if blocked {
        if result.is_err() {
            discard_pending_sigpipe(&pipe);
        }
        // SAFETY: `old` is the mask read above; restoring it is what we blocked from.
        // If SIGPIPE was already blocked there, this changes nothing.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    }
    result
}

/// The set holding `SIGPIPE` alone.
///
/// Built with `sigemptyset` and `sigaddset`, the portable way to fill a
/// `sigset_t`, whose layout is the C library's.
fn sigpipe_set() -> libc::sigset_t {
    // SAFETY: an all-zero sigset_t is valid storage for sigemptyset to initialise.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live, writable sigset_t; SIGPIPE is a valid signal number.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
    }
    set
}

/// Takes a pending `SIGPIPE` off the calling thread (with `SIGPIPE` blocked), if
/// there is one; never waits.
///
/// `sigpending` says whether one is pending; `sigtimedwait` with a zero timeout
/// then accepts it, which removes it without running any handler. Without this,
/// restoring a mask that does not block `SIGPIPE` would deliver it at once. Failures
/// are ignored: at worst, the signal is delivered as it would have been unguarded.
fn discard_pending_sigpipe(pipe: &libc::sigset_t) {
    // SAFETY: an all-zero sigset_t is valid storage for sigpending to fill.
    let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `pending` is a live sigset_t the kernel writes into.
    let ok = unsafe { libc::sigpending(&mut pending) } == 0;
    // SAFETY: `pending` was initialised by sigpending.
    if ok && unsafe { libc::sigismember(&pending, libc::SIGPIPE) } == 1 {
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `pipe` and `zero` are live; a null siginfo pointer is allowed. With
        // a zero timeout this returns at once, taking the pending SIGPIPE.
        unsafe { libc::sigtimedwait(pipe, std::ptr::null_mut(), &zero) };
    }
}

/// Whether this process ignores `SIGPIPE` (`SIG_IGN`, what Rust's runtime sets before
/// `main` unless told otherwise): then a write to a dead reader is an `EPIPE` error
/// anyway, and no guard is needed. One `rt_sigaction` query. A program that changes
/// the disposition while one of its threads is writing to a worker that just died
/// could still be caught between the look and the write; programs set it once, at
/// start-up.
pub(crate) fn sigpipe_ignored() -> bool {
    // SAFETY: an all-zero sigaction is valid storage for the kernel to fill.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only reads the current one into `old`, a live value.
    let read = unsafe { libc::sigaction(libc::SIGPIPE, std::ptr::null(), &mut old) } == 0;
    read && old.sa_sigaction == libc::SIG_IGN
}
