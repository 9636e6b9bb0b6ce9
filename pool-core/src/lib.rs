//! The core of [procpool](https://docs.rs/procpool): everything but the transports.
//!
//! - [`Task`]: a plain function a worker process can run, found through the
//!   link-time [registry] that `#[pool_task]` fills;
//! - [`Pool`] / [`PoolBuilder`]: the pool handle, its scheduler and driver threads;
//! - [`Worker`]: the loop a worker process runs;
//! - [`Transport`]: what a transport crate supplies (spawn a worker with a duplex
//!   frame channel; connect from inside the worker);
//! - [`protocol`]: the frames on the wire;
//! - [`Error`]: the one error type.
//!
//! Users depend on the `procpool` facade, which wires the transports in; this crate
//! is for transport implementers.
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "progress")]
mod bar;
mod bytes;
mod error;
mod imap;
mod pool;
pub mod protocol;
pub mod registry;
mod result;
pub mod runtime;
mod scheduler;
mod sys;
pub mod task;
pub mod transport;
mod worker;

pub use bytes::Bytes;
pub use error::{Error, WorkerExit};
pub use imap::Imap;
pub use pool::{Pool, PoolBuilder};
pub use registry::{task_name, task_names};
pub use result::{AsyncResult, Callbacks, Progress};
pub use runtime::{init, is_worker};
pub use task::Task;
pub use transport::{
    FrameReceiver, FrameSender, IntoTransport, Link, LinkConfig, Received, Transport,
};
pub use worker::Worker;

/// Items used by the code that `#[pool_task]` and `test_support!` generate.
#[doc(hidden)]
pub mod __private {
    pub use crate::registry::{RunFn, TASKS, TaskEntry, type_id_of_val};
    pub use crate::task::{BatchRun, run_batch};
    pub use linkme;
}
