//! What `init()` recorded in this process: the compiled-in transports, and whether
//! the process serves as a worker. Read by the caller side (a pool or a `Process`
//! needs the transports) and set by the worker side.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Error;
use crate::transport::Transport;
use crate::wire::marker::Marker;

/// The transports `init()` was given, the default first; unset until it runs.
static TRANSPORTS: OnceLock<&'static [&'static dyn Transport]> = OnceLock::new();
/// Set once, when this process starts serving as a worker; never cleared (the
/// process exits when it stops serving).
static SERVING: AtomicBool = AtomicBool::new(false);

/// Records the transports of this build (the first is the default); the first call
/// wins.
pub(crate) fn record_transports(transports: &'static [&'static dyn Transport]) {
    let _ = TRANSPORTS.set(transports);
}

/// Marks this process as a worker that serves tasks.
pub(crate) fn set_serving() {
    SERVING.store(true, Ordering::SeqCst);
}

/// True in a worker process (inside a task).
///
/// For code shared by the parent and its tasks that must behave otherwise in a
/// worker. A task may start pools and processes of its own: they are its children.
pub fn is_worker() -> bool {
    SERVING.load(Ordering::Relaxed)
}

/// The transports `init` recorded, or why a pool cannot start in this process.
///
/// # Errors
///
/// [`Error::NotInitialized`] if `init()` has not run, with a message of its own
/// for a worker that is running `main` because `init()` is not its first line (the
/// guard against a fork bomb: such a worker must not start workers of its own).
pub(crate) fn transports() -> Result<&'static [&'static dyn Transport], Error> {
    if let Some(t) = TRANSPORTS.get() {
        return Ok(t);
    }
    if Marker::for_this_process().is_some() {
        return Err(Error::NotInitialized(
            "this process was started as a procpool worker, but procpool::init() did not run \
             first in main, so it ran main again instead of serving tasks: make procpool::init() \
             the first line of main (or mark main #[procpool::main])"
                .into(),
        ));
    }
    Err(Error::NotInitialized(
        "procpool::init() was not called: make it the first line of main (or mark main \
         #[procpool::main]; in an integration test, add procpool::test_support!()). Workers \
         re-execute this program, and init() is where they start serving"
            .into(),
    ))
}
