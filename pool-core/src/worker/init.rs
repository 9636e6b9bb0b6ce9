//! `init()`: where a process started by a pool becomes a worker — it finds its
//! marker, connects its transport's link and serves until the pool lets go — and
//! where any other process records its transports and goes on.

use crate::process;
use crate::wire::marker::Marker;

use crate::error::Error;
use crate::transport::{LinkConfig, Transport};
use crate::worker::serve::Server;

/// Exit code of a worker that failed outside any task (broken link, bad handshake).
pub(crate) const WORKER_FAILURE_EXIT: i32 = 70;

/// Starts procpool in this process with the compiled-in `transports` (the first is
/// the default).
///
/// In a process started as a worker this serves tasks until the pool lets go and then
/// exits the process: it never returns. Elsewhere it records the transports and
/// returns at once. Call it first thing in `main` (the facade's `procpool::init()`).
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
