//! Python's `multiprocessing.Pool`, done right, in Rust.
//!
//! procpool runs plain Rust functions in a pool of worker processes: real
//! parallelism with process isolation (a crashing task cannot take your program
//! down, each worker has its own memory and statics, non-thread-safe C libraries are
//! fine), and typed errors instead of hangs.
//!
//! The seed example of Python's tutorial, `Pool(processes=4).map(square, [1..10])`:
//!
//! ```rust,standalone_crate
//! use procpool::{pool_task, Pool};
//!
//! #[pool_task]
//! fn square(number: u64) -> u64 {
//!     number * number
//! }
//!
//! fn main() -> Result<(), procpool::Error> {
//!     procpool::init(); // first line of main: in a worker process it serves tasks and exits
//!     let pool = Pool::new(4)?;
//!     let squared = pool.map(square, vec![1u64, 2, 3, 4, 5, 6, 7, 8, 9, 10])?;
//!     assert_eq!(squared, [1, 4, 9, 16, 25, 36, 49, 64, 81, 100]);
//!     println!("{squared:?}");
//!     Ok(())
//! }
//! ```
//!
//! # How it works
//!
//! - `#[pool_task]` registers a function under its path (`my_crate::square`) in a
//!   link-time registry; the function stays an ordinary function (`square(3) == 9`).
//!   Closures and unmarked functions are refused with [`Error::NotRegistered`].
//! - Workers are this very program, re-executed with a marker in the environment.
//!   [`init()`], the first line of `main` (or [`#[procpool::main]`](main)), is
//!   where a worker starts serving instead of running your `main`. Without it,
//!   [`Pool::new`] returns [`Error::NotInitialized`] rather than starting workers that
//!   would run `main` again.
//! - Arguments and results travel as postcard, so they must be
//!   `Serialize + DeserializeOwned + Send + 'static` (structs, enums, tuples,
//!   collections, `String`, `Vec<u8>`, `Option`, `Result`). The crate defining tasks
//!   needs no direct `serde` dependency for `#[pool_task]` itself.
//! - A worker dies with its parent (`PR_SET_PDEATHSIG` plus end-of-file on its pipe);
//!   dropping a [`Pool`] kills and reaps its workers.
//!
//! # Processes, channels and shared memory
//!
//! The rest of Python's `multiprocessing`: [`Process`] runs one task in a child of
//! its own and [`join`](Process::join) returns its value; [`channel`] gives typed
//! [`Sender`]s and [`Receiver`]s (Python's `Pipe` and `Queue`); [`SharedValue`],
//! [`SharedArray`] and [`SharedSlice`] are shared memory; [`Lock`], [`Event`],
//! [`Barrier`] and [`Semaphore`] work across processes. Every handle is an ordinary
//! argument of `Process::spawn` and of pool tasks, and every copy is the same object:
//!
//! ```rust,standalone_crate
//! use procpool::{pool_task, channel, Process, Sender, SharedValue};
//!
//! /// Adds `n` to `total` under its lock, then reports on `done`.
//! #[pool_task]
//! fn add(total: SharedValue<u64>, n: u64, done: Sender<u64>) -> u64 {
//!     *total.lock() += n;
//!     done.send(n).expect("the parent listens");
//!     n * 10
//! }
//!
//! fn main() -> Result<(), procpool::Error> {
//!     procpool::init();
//!     let total = SharedValue::new(0u64)?;
//!     let (done, reports) = channel::<u64>()?;
//!     let children = (1..=3)
//!         .map(|n| Process::spawn(add, (total.clone(), n, done.clone())))
//!         .collect::<Result<Vec<_>, _>>()?;
//!     drop(done); // the reports end when the children's senders are gone
//!     let mut reported: Vec<u64> = reports.iter().collect();
//!     reported.sort();
//!     assert_eq!(reported, [1, 2, 3]);
//!     let values = children.into_iter().map(Process::join).collect::<Result<Vec<_>, _>>()?;
//!     assert_eq!(values, [10, 20, 30]);
//!     assert_eq!(total.get(), 6);
//!     Ok(())
//! }
//! ```
//!
//! # Errors are values
//!
//! A task that panics gives [`Error::TaskPanicked`] with the message, the item index
//! and the worker's pid, and the pool goes on. A worker that dies gives
//! [`Error::WorkerDied`] and is replaced.
//!
//! # Tests
//!
//! Integration tests of a crate using procpool need one line,
//! `procpool::test_support!();`, at the top of the test file: workers then start from
//! the test binary under both `cargo test` and `cargo nextest run`.
//!
//! # Feature flags
//!
//! - `pipe` (default): anonymous pipes with length-prefixed postcard frames
//!   ([`pipe`] module, [`Transport::Pipe`]).
//! - `ipc`: servo's ipc-channel ([`ipc`] module, `Transport::Ipc`). With both
//!   features, pipe is the default and `Pool::builder().transport(Transport::Ipc)`
//!   picks ipc; `default-features = false, features = ["ipc"]` compiles no pipe code.
//! - `shm`: shared-memory rings (`shm` module, `Transport::Shm`): a memfd mapped by
//!   the pool and the worker, a short spin then an eventfd wait.
//! - `progress`: progress bars drawn with indicatif (`Pool::map_progress`,
//!   `Imap::progress_bar`).
//! - `mpi`: the same program across the hosts of an MPI job. Started by `mpirun`,
//!   rank 0 runs `main` and the other ranks become node agents inside [`init()`],
//!   running the pools' workers as local processes ([`cluster`];
//!   `procpool_transport_mpi`). Needs an MPI installation to build.
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The unit tests below use `#[pool_task]`, whose expansion names `::procpool`.
#[cfg(test)]
extern crate self as procpool;

pub use procpool_core::{
    ArrayGuard, AsyncResult, BARRIER_MAX_PARTIES, Barrier, Bytes, Callbacks, Error, Event, Imap,
    Inputs, Lock, LockGuard, Pool, PoolBuilder, Process, Progress, Receiver, RecvIter, Semaphore,
    SemaphoreGuard, Sender, SharedArray, SharedSlice, SharedValue, StreamInputs, Task, ValueGuard,
    WorkerExit, channel, is_worker, task_name, task_names,
};
pub use procpool_macros::{main, pool_task};

/// Pools across the hosts of an MPI job (feature `mpi`): [`cluster::agents`] tells
/// whether this process leads one; [`cluster::Fabric`] is for cluster transports.
pub use procpool_core::cluster;

/// The pipe transport crate.
#[cfg(feature = "pipe")]
#[cfg_attr(docsrs, doc(cfg(feature = "pipe")))]
pub use procpool_transport_pipe as pipe;

/// The ipc-channel transport crate.
#[cfg(feature = "ipc")]
#[cfg_attr(docsrs, doc(cfg(feature = "ipc")))]
pub use procpool_transport_ipc as ipc;

/// The shared-memory transport crate.
#[cfg(feature = "shm")]
#[cfg_attr(docsrs, doc(cfg(feature = "shm")))]
pub use procpool_transport_shm as shm;

/// The transports compiled into this build, the default first.
static TRANSPORTS: &[&dyn procpool_core::Transport] = &[
    #[cfg(feature = "pipe")]
    &procpool_transport_pipe::PIPE,
    #[cfg(feature = "ipc")]
    &procpool_transport_ipc::IPC,
    #[cfg(feature = "shm")]
    &procpool_transport_shm::SHM,
];

/// Which transport a pool uses: one variant per compiled-in transport.
///
/// ```rust,no_run
/// # #[cfg(feature = "ipc")]
/// # fn main() -> Result<(), procpool::Error> {
/// let pool = procpool::Pool::builder().transport(procpool::Transport::Ipc).build()?;
/// # Ok(()) }
/// # #[cfg(not(feature = "ipc"))]
/// # fn main() {}
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// Anonymous pipes with length-prefixed postcard frames (the default).
    #[cfg(feature = "pipe")]
    #[cfg_attr(docsrs, doc(cfg(feature = "pipe")))]
    Pipe,
    /// servo's ipc-channel (the default only when `pipe` is not compiled in).
    #[cfg(feature = "ipc")]
    #[cfg_attr(docsrs, doc(cfg(feature = "ipc")))]
    Ipc,
    /// Shared-memory rings in a memfd with eventfd wake-ups (the default only
    /// when neither `pipe` nor `ipc` is compiled in).
    #[cfg(feature = "shm")]
    #[cfg_attr(docsrs, doc(cfg(feature = "shm")))]
    Shm,
}

impl procpool_core::IntoTransport for Transport {
    fn into_transport(self) -> &'static dyn procpool_core::Transport {
        match self {
            #[cfg(feature = "pipe")]
            Transport::Pipe => &procpool_transport_pipe::PIPE,
            #[cfg(feature = "ipc")]
            Transport::Ipc => &procpool_transport_ipc::IPC,
            #[cfg(feature = "shm")]
            Transport::Shm => &procpool_transport_shm::SHM,
        }
    }
}

/// Starts procpool in this process. Call it first thing in `main`.
///
/// In a worker process (this program re-executed by a pool) it serves tasks until
/// the pool lets go, then exits the process: it does not return. In any other process
/// it returns at once. `#[procpool::main]` calls it for you.
pub fn init() {
    procpool_core::init(TRANSPORTS);
    // A rank of an MPI job: rank 0 goes on as the program, the others become node
    // agents here and never return.
    #[cfg(feature = "mpi")]
    if let Some(fabric) = procpool_transport_mpi::detect() {
        procpool_core::cluster::join(fabric);
    }
}

/// Lets the integration tests of this file create pools.
///
/// Put `procpool::test_support!();` once at the top level of an integration test
/// file (or a crate's `#[cfg(test)]` module). It registers a constructor that runs
/// [`init()`] before the test harness starts, so that a worker re-executed from the
/// test binary serves tasks instead of running the tests. Works with `cargo test`
/// and `cargo nextest run`, in `#[test]` functions and `proptest!` blocks.
///
/// The task registry is assembled by the linker, so the constructor sees every
/// `#[pool_task]` whatever order constructors run in.
#[macro_export]
macro_rules! test_support {
    () => {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        const _: () = {
            // SAFETY: `.init_array` holds `extern "C" fn()` constructors that the
            // dynamic loader calls once, before `main`; this is one such function.
            #[allow(unsafe_code)]
            #[used]
            #[unsafe(link_section = ".init_array")]
            static __PROCPOOL_TEST_SUPPORT: extern "C" fn() = {
                extern "C" fn __procpool_test_support() {
                    $crate::init();
                }
                __procpool_test_support
            };
        };
    };
}

/// Items used by the code that `#[pool_task]` generates.
#[doc(hidden)]
pub mod __private {
    pub use procpool_core::__private::*;
}

#[cfg(test)]
mod tests {
    crate::test_support!();

    #[crate::pool_task]
    fn triple(n: i64) -> i64 {
        n * 3
    }

    #[test]
    fn facade_runs_a_task_of_its_own_crate() {
        let pool = crate::Pool::new(2).unwrap();
        assert_eq!(pool.map(triple, [-1i64, 0, 5]).unwrap(), [-3, 0, 15]);
        assert_eq!(crate::task_name(&triple), Some("procpool::tests::triple"));
    }
}
