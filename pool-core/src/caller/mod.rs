//! The caller side: what the user holds — [`Pool`](pool::Pool) and its builder, the
//! calls (`map`, `starmap`, `apply`, their `_async` forms, `imap`), the results that
//! come later ([`AsyncResult`](result::AsyncResult), [`Imap`](imap::Imap)) and the
//! collector that turns batch replies into them. It encodes a call's items into
//! batches and hands them to the engine; it never talks to a worker itself.

#[cfg(feature = "progress")]
mod bar;
pub(crate) mod encode;
pub(crate) mod imap;
pub(crate) mod inputs;
pub(crate) mod pool;
pub(crate) mod result;
