//! The core of [procpool](https://docs.rs/procpool): everything but the transports.
//!
//! Users depend on the `procpool` facade, which wires the transports in and
//! re-exports what they need ([`Pool`], [`Error`], [`Task`], ...). This crate's own
//! public surface is for **transport authors**: the [`transport`] module (the
//! [`Transport`] trait, the [`Link`] of frame sender and receiver, the frame-cap
//! checks) and the [`Error`] type.
//!
//! # Layout
//!
//! The folders are the design; imports run one way, caller → engine → wire,
//! caller → share, caller → cluster → engine, and worker → wire (checked in CI by
//! `.ci/layers.py`):
//!
//! ```text
//! caller/   what the user holds: Pool, PoolBuilder, map/starmap/apply, AsyncResult,
//!           Callbacks, Imap; encodes a call's items into batches, collects replies
//! engine/   the queue of batches, one driver thread per worker, the connection to
//!           a worker process (start, handshake, frames, death) — see its README
//! wire/     what both processes agree on: the frames, the task registry, the
//!           environment marker
//! worker/   what runs in a worker process: init(), the serve loop, the batch
//!           runner and its panic hook
//! share/    what processes share besides a pool: channels, shared memory, locks
//! cluster/  a job of several ranks: rank 0's remote workers, the node agent
//! ```
//!
//! At the root sit the pieces every side shares: [`Error`] (`error`), the [`Task`]
//! trait (`task`), the transport traits ([`transport`]), [`Bytes`], what `init()`
//! recorded in this process (`process`), a lock helper (`sync`) and the system
//! calls (`sys`, the only module with `unsafe`).
//!
//! # The path of one call
//!
//! `pool.map(square, items)`: the caller side cuts the items into **chunks** (the
//! user's `chunksize`), encodes each into one or more **batches** (a chunk, or a
//! 128 KiB part of a big one) and queues them on the engine. A driver writes one
//! batch, or several small ones of a quick task, as one **frame** to its worker; the
//! worker runs the frame's items and answers with one frame of results; the driver
//! hands each batch its part of the reply, and the collector puts the results in
//! input order.
#![deny(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bytes;
mod caller;
pub mod cluster;
mod engine;
mod error;
mod handoff;
mod process;
mod share;
mod sync;
mod sys;
mod task;
pub mod transport;
mod wire;
mod worker;

pub use bytes::Bytes;
pub use caller::imap::Imap;
pub use caller::inputs::{Inputs, StreamInputs};
pub use caller::pool::{Pool, PoolBuilder};
pub use caller::process::Process;
pub use caller::result::{AsyncResult, Callbacks, Progress};
pub use error::{Error, WorkerExit};
pub use process::is_worker;
pub use share::channel::{Receiver, RecvIter, Sender, channel};
pub use share::slice::SharedSlice;
pub use share::sync::{
    BARRIER_MAX_PARTIES, Barrier, Event, Lock, LockGuard, Semaphore, SemaphoreGuard,
};
pub use share::value::{ArrayGuard, SharedArray, SharedValue, ValueGuard};
pub use task::Task;
pub use transport::{
    FrameReceiver, FrameSender, IntoTransport, Link, LinkConfig, Received, Transport,
};
pub use wire::registry::{task_name, task_names};
pub use worker::init::init;

/// Items used by the code that `#[pool_task]` and `test_support!` generate.
#[doc(hidden)]
pub mod __private {
    pub use crate::wire::registry::{BatchRun, RunFn, TASKS, TaskEntry, type_id_of_val};
    pub use crate::worker::batch::run_batch;
    pub use linkme;

    /// The wire protocol, for the fuzz targets and the benches of the frame decoders.
    pub mod protocol {
        pub use crate::wire::protocol::*;
    }
}
