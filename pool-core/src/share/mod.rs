//! What processes share besides a pool: channels, shared memory and locks — the
//! rest of Python's `multiprocessing`.
//!
//! Every handle here is `Clone + Send + Sync + Serialize + DeserializeOwned`: it
//! travels as an argument of a pool task or of `Process::spawn`, inside a channel
//! message or a result, and every copy, in whatever process, is the same object.
//! Its descriptor goes with it as `handoff` describes; the object lives in the
//! kernel (a Unix socket, a `memfd`), so it is freed when the last descriptor and
//! mapping are gone — also when processes are killed — and nothing is ever left in
//! the file system.
//!
//! ```text
//! channel   Sender / Receiver: a SOCK_SEQPACKET socket pair, big messages in a memfd
//! memory    a memfd segment mapped in this process, with its header
//! value     SharedValue, SharedArray: data behind a robust process-shared mutex
//! slice     SharedSlice: sealed read-only data, mapped without a copy
//! sync      Lock, Event, Barrier, Semaphore
//! ```

//!
//! Handles reach a process that is already running (a pool's worker) with the
//! arguments of a task: the descriptor is held by the sender and taken by the
//! receiver, or passed along with a channel message, as the crate's private
//! `handoff` module documents. The memory of a shared object is freed when the
//! last handle to it, in any process, is gone.

pub(crate) mod channel;
pub(crate) mod memory;
pub(crate) mod slice;
pub(crate) mod sync;
pub(crate) mod value;
