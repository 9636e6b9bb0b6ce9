//! The one public error type, [`Error`], and [`WorkerExit`], how a worker ended.
//!
//! Every fallible call of the crate returns an `Error`: a pool never panics at its
//! caller for something that went wrong in a worker, and never hangs on it. The
//! helpers at the bottom build the messages that several modules share.

use std::fmt;
use std::time::Duration;

/// How a worker process ended, as [`Error::WorkerDied`] reports it.
///
/// `Signal(9)` is `SIGKILL`: the kernel's out-of-memory killer, a `kill -9`, or the
/// pool itself, which kills a worker whose link failed if it has not exited within
/// 100 ms. A worker that failed outside any task exits with code 70.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerExit {
    /// The process exited with this code.
    Code(i32),
    /// The process was killed by this signal number (9 is `SIGKILL`).
    Signal(i32),
    /// The exit status could not be read.
    Unknown,
}

impl fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerExit::Code(code) => write!(f, "exited with code {code}"),
            WorkerExit::Signal(sig) => write!(f, "killed by signal {sig}"),
            WorkerExit::Unknown => f.write_str("exited with an unknown status"),
        }
    }
}

impl From<std::process::ExitStatus> for WorkerExit {
    fn from(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => WorkerExit::Code(code),
            (None, Some(sig)) => WorkerExit::Signal(sig),
            (None, None) => WorkerExit::Unknown,
        }
    }
}

/// Everything that can go wrong in procpool.
///
/// Errors that concern one item of a `map` carry the task's registered name and the
/// item's index in the input, so a failure can be traced back to its input.
///
/// `Clone`, so that one failure can be handed to every waiter it concerns (the items
/// of a chunk, the calls queued on a pool that lost its last worker).
///
/// ```rust,ignore
/// match pool.map(parse, lines) {
///     Ok(values) => use_them(values),
///     Err(Error::TaskPanicked { index, message, .. }) => eprintln!("line {index}: {message}"),
///     Err(Error::WorkerDied { index, exit, .. }) => eprintln!("line {index}: worker {exit}"),
///     Err(other) => return Err(other.into()),
/// }
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The function was not marked `#[pool_task]`, or is a closure, or is a
    /// function pointer (`let f: fn(u64) -> u64 = square;`), which names no function
    /// a worker could look up: pass the function item (`square`) itself.
    ///
    /// Returned by the call before anything is sent (by `build` for an
    /// initializer); the message says which of the cases it is.
    #[error("{}", not_registered(.name))]
    NotRegistered {
        /// The Rust type name of the function or closure that was passed.
        name: String,
    },

    /// A task panicked. The worker survived and keeps serving.
    #[error("task `{task}` panicked on item {index} in worker {pid}: {message}{}", fmt_location(.location))]
    TaskPanicked {
        /// Registered name of the task.
        task: String,
        /// The panic message.
        message: String,
        /// Where the panic happened (`file:line:column`), when known.
        location: Option<String>,
        /// Index of the failing item in the input (0 for `apply`).
        index: usize,
        /// Process id of the worker that ran it.
        pid: u32,
    },

    /// A worker process exited or was killed while it was running a task.
    ///
    /// With `retry_lost_tasks`, the chunk first runs again; this is the error once
    /// its retries are spent.
    #[error("worker {pid} {exit} while running task `{task}` on item {index}")]
    WorkerDied {
        /// Registered name of the task it was running.
        task: String,
        /// Process id of the dead worker.
        pid: u32,
        /// Its exit code or the signal that killed it.
        exit: WorkerExit,
        /// Index of the item the worker was running when it died (read from the
        /// page in which a worker notes its progress). The other items of that
        /// chunk fail with the same error; chunks the worker had not started run on
        /// its successor instead.
        index: usize,
    },

    /// A task ran past its time limit (its worker was killed and replaced), or a
    /// wait for a result timed out (the work goes on).
    ///
    /// The fields tell the cases apart: a task over `task_timeout` has all three; a
    /// worker whose initializer ran over its limit has no `index`; a wait
    /// (`AsyncResult::get_timeout`, `Imap::next_timeout`) has no `pid`, as no worker
    /// was killed. Never retried.
    #[error("timed out after {after:?}{}", fmt_task(.task, .index, .pid))]
    Timeout {
        /// Registered name of the task, when one is concerned.
        task: Option<String>,
        /// Index of the item, when one is concerned.
        index: Option<usize>,
        /// The worker that was killed for running too long, if one was.
        pid: Option<u32>,
        /// The limit that was reached.
        after: Duration,
    },

    /// The pool's initializer failed in a new worker. The worker is not used, and
    /// the pool does not retry it in a loop.
    ///
    /// `build` returns it for the first workers; for a replacement worker, calls get
    /// it once no worker is left.
    #[error("initializer `{task}` failed in worker {pid}: {source}")]
    InitializerFailed {
        /// Registered name of the initializer.
        task: String,
        /// The worker it ran in.
        pid: u32,
        /// What went wrong (usually [`Error::TaskPanicked`]).
        #[source]
        source: Box<Error>,
    },

    /// A value of an item could not be serialized or deserialized.
    ///
    /// An argument that does not serialize fails the call at once (its chunks already
    /// sent are cancelled; an `imap` ends after the items before it). In the worker,
    /// or for a result the parent cannot decode, it is that item's error and the
    /// other items run.
    #[error("item {index} of task `{task}` could not be {what}: {message}")]
    Serialization {
        /// Registered name of the task.
        task: String,
        /// Index of the item.
        index: usize,
        /// What failed: "serialized as an argument", "deserialized in the worker", ...
        what: &'static str,
        /// The serializer's message.
        message: String,
    },

    /// A bad builder or call argument: a zero that must be positive, a chunk over
    /// the frame cap, an input whose exact `size_hint` lied, a blocking call from a
    /// callback of the same pool, a result asked
    /// for twice. The message says which.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Work was submitted after `close` or `terminate`, or the pool went away.
    ///
    /// Also what pending results and streams get when the pool is terminated or
    /// dropped under them: queued work is dropped, and its waiters are woken with
    /// this.
    #[error("the pool is closed: no new work is accepted")]
    PoolClosed,

    /// `Pool::new` was called in a process where `procpool::init()` did not run first.
    #[error("{0}")]
    NotInitialized(String),

    /// A worker could not be started or did not complete the handshake: it exited
    /// first (the usual sign that `procpool::init()` is not the first line of
    /// `main`), or did not answer within `startup_timeout`.
    #[error("worker failed to start: {0}")]
    Startup(String),

    /// The other end of a channel is gone: a `recv` found every sender, in every
    /// process, dropped (or its process dead) and nothing left to read, or a `send`
    /// found no receiver left anywhere.
    #[error("the other end of the channel is gone")]
    Disconnected,

    /// A malformed, oversized or mismatched frame from the other side.
    ///
    /// Includes a handshake that does not match (another build, another protocol
    /// version, a wrong secret) and a batch the worker refused (a task it does not
    /// know, results over the frame cap). A worker that sent a bad frame is killed
    /// and replaced; protocol errors are never retried.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// An operating-system error (shared, so that the error can be cloned).
    #[error("i/o error: {0}")]
    Io(std::sync::Arc<std::io::Error>),
}

/// For `?` on system calls; the error is shared, so `Error` stays `Clone`.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(std::sync::Arc::new(e))
    }
}

/// The message of [`Error::NotRegistered`] for the type name `name`.
fn not_registered(name: &str) -> String {
    if is_fn_pointer(name) {
        format!(
            "a function pointer (`{name}`) cannot be sent to a worker process: pass the \
             #[pool_task] function itself (`pool.map(square, ..)`, not a `fn` pointer \
             variable), or match on your choice and call the pool with each function"
        )
    } else {
        format!(
            "function `{name}` is not registered as a pool task: mark it #[pool_task] \
             (closures and methods cannot be sent to a worker process)"
        )
    }
}

/// Whether a type name is a function pointer's (`fn(u64) -> u64`, `unsafe fn()`,
/// `extern "C" fn(..)`), not a function item's (`my_crate::square`).
fn is_fn_pointer(name: &str) -> bool {
    let rest = name.strip_prefix("unsafe ").unwrap_or(name);
    let rest = match rest.strip_prefix("extern \"") {
        Some(abi) => abi.split_once("\" ").map_or(rest, |(_, after)| after),
        None => rest,
    };
    rest.starts_with("fn(") || rest.starts_with("for<")
}

/// The ` (at file:line:column)` tail of [`Error::TaskPanicked`]'s message, if the
/// location is known.
fn fmt_location(location: &Option<String>) -> String {
    location
        .as_ref()
        .map(|l| format!(" (at {l})"))
        .unwrap_or_default()
}

/// The tail of [`Error::Timeout`]'s message: each of task, item and killed worker
/// that is known.
fn fmt_task(task: &Option<String>, index: &Option<usize>, pid: &Option<u32>) -> String {
    let mut s = String::new();
    if let Some(t) = task {
        s.push_str(&format!(" running task `{t}`"));
    }
    if let Some(i) = index {
        s.push_str(&format!(" on item {i}"));
    }
    if let Some(p) = pid {
        s.push_str(&format!(" (worker {p} was killed)"));
    }
    s
}

impl Error {
    /// An [`Error::Protocol`] with `msg`.
    pub(crate) fn protocol(msg: impl Into<String>) -> Self {
        Error::Protocol(msg.into())
    }
}

/// The error of a chunk of `task` whose encoded arguments do not fit a frame.
pub(crate) fn chunk_too_large(
    task: &str,
    first_index: usize,
    bytes: usize,
    max_chunk: usize,
) -> Error {
    Error::InvalidArgument(format!(
        "a chunk of task `{task}` starting at item {first_index} needs {bytes} bytes, over the \
         frame limit of {max_chunk} bytes: use a smaller chunksize or raise max_frame_size"
    ))
}

/// The error of a reply that holds fewer than the `count` items announced.
#[cold]
pub(crate) fn fewer_items(count: usize) -> Error {
    Error::protocol(format!(
        "reply holds fewer than the {count} items announced"
    ))
}

/// The message of a panic's `payload`: the `&str` or `String` that `panic!` makes,
/// or a placeholder for any other payload. Used for a task's panic (worker side) and
/// for a panic of an `imap` input (caller side).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_task_item_and_pid() {
        let e = Error::TaskPanicked {
            task: "demo::square".into(),
            message: "boom".into(),
            location: Some("src/lib.rs:3:5".into()),
            index: 7,
            pid: 42,
        };
        assert_eq!(
            e.to_string(),
            "task `demo::square` panicked on item 7 in worker 42: boom (at src/lib.rs:3:5)"
        );
        let d = Error::WorkerDied {
            task: "demo::square".into(),
            pid: 42,
            exit: WorkerExit::Signal(9),
            index: 3,
        };
        assert_eq!(
            d.to_string(),
            "worker 42 killed by signal 9 while running task `demo::square` on item 3"
        );
    }

    #[test]
    fn a_function_pointer_is_told_apart_from_an_unmarked_function() {
        let pointer = Error::NotRegistered {
            name: std::any::type_name::<fn(u64) -> u64>().into(),
        };
        assert!(
            pointer.to_string().contains("function pointer"),
            "{pointer}"
        );
        let unmarked = Error::NotRegistered {
            name: "my_crate::square".into(),
        };
        assert!(unmarked.to_string().contains("mark it #[pool_task]"));
        assert!(is_fn_pointer("unsafe extern \"C\" fn(i32)"));
        assert!(is_fn_pointer("for<'a> fn(&'a u8)"));
        assert!(!is_fn_pointer("demo::fn_helper"));
    }

    #[test]
    fn a_clone_keeps_variant_and_text() {
        let e = Error::from(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "gone"));
        let d = e.clone();
        assert!(matches!(&d, Error::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe));
        assert_eq!(e.to_string(), d.to_string());
    }
}
