//! The system calls the pipe transport needs that std does not wrap safely: writing
//! with `SIGPIPE` blocked ([`without_sigpipe`], with [`sigpipe_set`] and
//! [`discard_pending_sigpipe`]), and the descriptor numbers of the worker's pipe
//! ends (placed and adopted through `procpool_core::transport::{place_on_exec,
//! adopt}`, which hold that `unsafe` once for every transport).
//!
//! The crate denies `unsafe` code everywhere else; this module allows it, and each
//! block says why it is sound.
#![allow(unsafe_code)]

use std::os::fd::RawFd;

/// Descriptor on which a worker reads requests.
///
/// The first after stdin, stdout and stderr, which the worker keeps as the
/// program's own.
pub(crate) const WORKER_READ_FD: RawFd = 3;
/// Descriptor on which a worker writes replies.
pub(crate) const WORKER_WRITE_FD: RawFd = 4;

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
