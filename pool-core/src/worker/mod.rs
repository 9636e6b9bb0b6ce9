//! The worker side: what runs in a worker process once `procpool::init()` found the
//! marker — the serve loop over the link ([`serve`]), and the batch runner with its
//! panic hook ([`batch`]). It imports the wire and nothing of the pool's side.

pub(crate) mod batch;
pub(crate) mod init;
pub(crate) mod serve;
