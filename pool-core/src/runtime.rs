//! Process start-up: `init()`, the worker marker, and the guards that keep a
//! re-executed program from running the user's `main` as a second parent.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Error;
use crate::transport::{LinkConfig, Transport};
use crate::worker::Worker;

/// The environment variable that makes a process a worker.
pub(crate) const MARKER_ENV: &str = "PROCPOOL_WORKER";

/// Exit code of a worker that failed outside any task (broken link, bad handshake).
pub(crate) const WORKER_FAILURE_EXIT: i32 = 70;

static TRANSPORTS: OnceLock<&'static [&'static dyn Transport]> = OnceLock::new();
static SERVING: AtomicBool = AtomicBool::new(false);

/// What the pool tells a worker through [`MARKER_ENV`]:
/// `1:<transport>:<parent pid>:<max frame>:<progress>:<secret>`, where `<progress>`
/// is `p` if the worker finds a progress page on its descriptor 5 and `-` if not. Its
/// `Debug` leaves the secret out.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Marker {
    pub(crate) transport: String,
    pub(crate) parent: u32,
    pub(crate) max_frame: usize,
    /// The pool's random secret, echoed in the handshake.
    pub(crate) secret: u128,
    /// A progress page was placed for the worker.
    pub(crate) progress: bool,
}

impl std::fmt::Debug for Marker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Marker")
            .field("transport", &self.transport)
            .field("parent", &self.parent)
            .field("max_frame", &self.max_frame)
            .field("progress", &self.progress)
            .finish_non_exhaustive()
    }
}

impl Marker {
    pub(crate) fn encode(&self) -> String {
        format!(
            "1:{}:{}:{}:{}:{:032x}",
            self.transport,
            self.parent,
            self.max_frame,
            if self.progress { "p" } else { "-" },
            self.secret,
        )
    }

    pub(crate) fn parse(s: &str) -> Option<Marker> {
        let mut parts = s.split(':');
        if parts.next()? != "1" {
            return None;
        }
        let transport = parts.next()?.to_owned();
        let parent = parts.next()?.parse().ok()?;
        let max_frame = parts.next()?.parse().ok()?;
        let progress = match parts.next()? {
            "p" => true,
            "-" => false,
            _ => return None,
        };
        let secret = u128::from_str_radix(parts.next()?, 16).ok()?;
        parts.next().is_none().then_some(Marker {
            transport,
            parent,
            max_frame,
            secret,
            progress,
        })
    }

    /// The marker meant for this very process: set, well formed, and naming our
    /// actual parent. A child of a worker inherits the variable but has another
    /// parent, so it runs as an ordinary program.
    fn for_this_process() -> Option<Marker> {
        let raw = std::env::var(MARKER_ENV).ok()?;
        let marker = Marker::parse(&raw)?;
        let parent = rustix::process::getppid()?;
        (parent.as_raw_nonzero().get() as u32 == marker.parent).then_some(marker)
    }
}

/// Starts procpool in this process with the compiled-in `transports` (the first is
/// the default).
///
/// In a process started as a worker this serves tasks until the pool lets go and then
/// exits the process: it never returns. Elsewhere it records the transports and
/// returns at once. Call it first thing in `main` (the facade's `procpool::init()`).
pub fn init(transports: &'static [&'static dyn Transport]) {
    if is_worker() {
        // Called again inside a task: this process already serves, and its link is
        // taken. A no-op, as a second call in the parent is.
        return;
    }
    let _ = TRANSPORTS.set(transports);
    let Some(marker) = Marker::for_this_process() else {
        return;
    };
    SERVING.store(true, Ordering::SeqCst);
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
    let worker = Worker::new(link, marker.secret);
    // Without its page a worker still serves; the pool then knows less about which
    // of a dead worker's batches had started (see `sys::ProgressPage`).
    match marker.progress.then(crate::sys::ProgressPage::adopt) {
        Some(Ok(page)) => worker.with_progress(page).serve(),
        _ => worker.serve(),
    }
}

/// True in a worker process (inside a task).
pub fn is_worker() -> bool {
    SERVING.load(Ordering::Relaxed)
}

/// The transports `init` recorded, or why a pool cannot start in this process.
pub(crate) fn transports() -> Result<&'static [&'static dyn Transport], Error> {
    if is_worker() {
        return Err(Error::InvalidArgument(
            "a pool cannot be created inside a worker process (from a task): \
             workers do not start pools of their own"
                .into(),
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trip() {
        let m = Marker {
            transport: "pipe".into(),
            parent: 42,
            max_frame: 1024,
            secret: 0xfeed_beef,
            progress: true,
        };
        assert_eq!(Marker::parse(&m.encode()), Some(m.clone()));
        let plain = Marker {
            progress: false,
            ..m.clone()
        };
        assert_eq!(Marker::parse(&plain.encode()), Some(plain));
        assert_eq!(Marker::parse("2:pipe:1:1:p:0"), None);
        assert_eq!(Marker::parse("1:pipe:x:1:p:0"), None);
        assert_eq!(Marker::parse("1:pipe:1:1:p"), None, "no secret");
        assert_eq!(Marker::parse("1:pipe:1:1:p:zz"), None);
        assert_eq!(Marker::parse("1:pipe:1:1:0"), None, "no progress field");
        assert_eq!(Marker::parse("1:pipe:1:1:x:0"), None);
        assert_eq!(Marker::parse("1:pipe:1:1:p:0:extra"), None);
        let shown = format!("{m:?}");
        assert!(
            !shown.contains("feedbeef") && !shown.contains("4276993775"),
            "{shown}"
        );
    }
}
