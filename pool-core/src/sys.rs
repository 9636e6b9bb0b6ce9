//! The system calls procpool-core needs that std does not wrap safely.
#![allow(unsafe_code)]

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
    let hook = move || -> io::Result<()> {
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
