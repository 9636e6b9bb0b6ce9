//! The system calls procpool-core needs that std does not wrap safely.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::process::{
    Pid, Resource, Rlimit, Signal, getppid, set_parent_process_death_signal, setrlimit,
};

/// Prepares the child started by `command`: it receives `SIGKILL` when the thread
/// that spawned it dies, refuses to start if `parent` is already gone, and gets an
/// address-space limit of `memory_limit` bytes if one is set.
///
/// The death signal is armed before `exec` and survives it, so there is no window in
/// which a worker whose parent died keeps running the user's program.
pub(crate) fn prepare_worker(command: &mut Command, parent: Pid, memory_limit: Option<u64>) {
    // A worker started by a driver thread is scheduled as the pool's creator was,
    // not as the driver is (see `schedule_as_batch`).
    let restore_other = BATCH_THREAD.with(Cell::get);
    let hook = move || -> io::Result<()> {
        if restore_other {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: sched_setscheduler on the calling process with a valid param
            // (priority 0 is the only one SCHED_OTHER takes); a raw system call,
            // async-signal-safe, as this hook between fork and exec requires. Best
            // effort, like the switch it undoes: a worker left batch is only slower
            // to react on a busy machine.
            let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
        }
        set_parent_process_death_signal(Some(Signal::KILL))?;
        if getppid() != Some(parent) {
            // The parent died between fork and prctl: do not run at all.
            return Err(io::Error::from(io::ErrorKind::NotConnected));
        }
        if let Some(bytes) = memory_limit {
            let limit = Rlimit {
                current: Some(bytes),
                maximum: Some(bytes),
            };
            setrlimit(Resource::As, limit)?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the child between fork and exec, where only
    // async-signal-safe work is allowed; it makes raw system calls (prctl, getppid,
    // setrlimit), takes no lock and allocates nothing (the error is built from a kind).
    unsafe {
        command.pre_exec(hook);
    }
}

thread_local! {
    /// This thread is a driver switched to `SCHED_BATCH` for a caller scheduled as
    /// `SCHED_OTHER`.
    static BATCH_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread, building a pool, is scheduled normally
/// (`SCHED_OTHER`), or is a driver of another pool switched from that (a pool built
/// in a callback).
pub(crate) fn caller_scheduled_normally() -> bool {
    // SAFETY: sched_getscheduler(0) reads the calling thread's policy; no pointers.
    BATCH_THREAD.with(Cell::get) || unsafe { libc::sched_getscheduler(0) } == libc::SCHED_OTHER
}

/// Schedules the calling thread, a driver of a pool built by a normally scheduled
/// thread, as `SCHED_BATCH`: same share of CPU and nice value, but its wake-ups do
/// not preempt a running thread. A driver wakes for every reply and every batch;
/// on a busy machine, preempting the worker or the caller's thread for each wake-up
/// costs more than it gains (on two cores: half the context switches, +10% `imap`
/// throughput). Workers it starts get `SCHED_OTHER` back (see `prepare_worker`).
/// Callbacks run on drivers, so threads and processes they start inherit
/// `SCHED_BATCH` (documented on `Callbacks`). Best effort: a thread left as it was
/// is only slower.
pub(crate) fn schedule_as_batch() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread (0) with a valid, live param
    // (priority 0 is the only one SCHED_BATCH takes).
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } == 0 {
        BATCH_THREAD.with(|flag| flag.set(true));
    }
}
