//! `init()`: where a process started by a pool becomes a worker — it finds its
//! marker, connects its transport's link and serves until the pool lets go — and
//! where any other process records its transports and goes on.
//!
//! It must be the first thing `main` does: a worker is the whole program
//! re-executed, and whatever `main` runs before `init()` runs again in every worker.

use crate::process;
use crate::wire::marker::Marker;

use crate::error::Error;
use crate::transport::{LinkConfig, Transport};
use crate::worker::serve::Server;

/// Exit code of a worker that failed outside any task (broken link, bad handshake).
///
/// 70 is `EX_SOFTWARE` of `sysexits.h`. The pool reports it as the worker's exit
/// ("exited with code 70") in the error of the work it held, if any; the reason
/// itself is printed on the worker's stderr, which is the parent's.
pub(crate) const WORKER_FAILURE_EXIT: i32 = 70;

/// Starts procpool in this process with the compiled-in `transports` (the first is
/// the default).
///
/// In a process started as a worker this serves tasks until the pool lets go and then
/// exits the process: it never returns. Elsewhere it records the transports and
/// returns at once. Call it first thing in `main` (the facade's `procpool::init()`).
///
/// A process is a worker when the marker in its environment names its actual
/// parent; a child that inherited the variable from a worker is not. Calling it
/// again is a no-op: the first recorded transports stay, and inside a task (a
/// worker that already serves) it returns at once.
///
/// ```rust,ignore
/// fn main() {
///     procpool::init(); // the facade passes its compiled-in transports
///     // ... build pools, call them ...
/// }
/// ```
pub fn init(transports: &'static [&'static dyn Transport]) {
    if process::is_worker() {
        // Called again inside a task: this process already serves, and its link is
        // taken. A no-op, as a second call in the parent is.
        return;
    }
    process::record_transports(transports);
    let Some(marker) = Marker::for_this_process() else {
        return;
    };
    process::set_serving();
    let code = match serve(transports, &marker) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("procpool worker {}: {e}", std::process::id());
            WORKER_FAILURE_EXIT
        }
    };
    std::process::exit(code);
}

/// Connects the transport named in `marker` and serves over it, with the progress
/// page if the pool placed one.
///
/// The link gets the pool's frame cap and a fixed 20 s for the transport's own
/// connection step; the handshake that follows is timed by the pool.
///
/// # Errors
///
/// [`Error::Startup`] if this build has no transport of that name (parent and
/// worker are then not the same program), what the transport's `connect` reports,
/// and whatever ends [`Server::run`] with an error.
fn serve(transports: &[&'static dyn Transport], marker: &Marker) -> Result<(), Error> {
    let transport = transports
        .iter()
        .find(|t| t.name() == marker.transport)
        .ok_or_else(|| {
            Error::Startup(format!(
                "this build has no `{}` transport: parent and worker must be the same program",
                marker.transport
            ))
        })?;
    let link = transport.connect(LinkConfig {
        max_frame: marker.max_frame,
        startup_timeout: std::time::Duration::from_secs(20),
    })?;
    let worker = Server::new(link, marker.secret);
    // Without its page a worker still serves; the pool then knows less about which
    // of a dead worker's batches had started (see `sys::ProgressPage`).
    match marker.progress.then(crate::sys::ProgressPage::adopt) {
        Some(Ok(page)) => worker.with_progress(page).run(),
        _ => worker.run(),
    }
}
