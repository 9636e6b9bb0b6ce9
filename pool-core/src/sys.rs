//! The system calls procpool-core needs that std does not wrap safely.
#![allow(unsafe_code)]

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::process::{Pid, Signal, getppid, set_parent_process_death_signal};

/// Makes the child started by `command` receive `SIGKILL` when the thread that
/// spawned it dies, and refuse to start if `parent` is already gone.
///
/// The death signal is armed before `exec` and survives it, so there is no window in
/// which a worker whose parent died keeps running the user's program.
pub(crate) fn die_with_parent(command: &mut Command, parent: Pid) {
    let hook = move || -> io::Result<()> {
        set_parent_process_death_signal(Some(Signal::KILL))?;
        if getppid() != Some(parent) {
            // The parent died between fork and prctl: do not run at all.
            return Err(io::Error::from(io::ErrorKind::NotConnected));
        }
        Ok(())
    };
    // SAFETY: the hook runs in the child between fork and exec, where only
    // async-signal-safe work is allowed; it makes two raw system calls (prctl,
    // getppid), takes no lock and allocates nothing (the error is built from a kind).
    unsafe {
        command.pre_exec(hook);
    }
}
