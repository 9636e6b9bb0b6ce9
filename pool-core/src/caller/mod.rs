//! The caller side: what the user holds — [`Pool`](pool::Pool) and its builder, the
//! calls (`map`, `starmap`, `apply`, their `_async` forms, `imap`), the results that
//! come later ([`AsyncResult`](result::AsyncResult), [`Imap`](imap::Imap)) and the
//! collector that turns batch replies into them. It encodes a call's items into
//! batches and hands them to the engine; it never talks to a worker itself.
//!
//! - `pool`: the handle, the builder, and every call's path to the queue.
//! - `encode`: one item into its length-prefixed tuple, and the chunk sizes.
//! - `result`: [`AsyncResult`](result::AsyncResult), [`Callbacks`](result::Callbacks)
//!   and the collector of `map`, `starmap` and `apply`.
//! - `process`: [`Process`](process::Process), one task in a child of its own.
//! - `imap`: the stream, its feeder thread, its inbox and decoder.
//! - `bar`: indicatif progress bars over the progress hooks (feature `progress`).

#[cfg(feature = "progress")]
mod bar;
pub(crate) mod encode;
pub(crate) mod imap;
pub(crate) mod inputs;
pub(crate) mod pool;
pub(crate) mod process;
pub(crate) mod result;
