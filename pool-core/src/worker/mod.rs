//! The worker side: what runs in a worker process once `procpool::init()` found the
//! marker — the serve loop over the link ([`serve`]), and the batch runner with its
//! panic hook ([`batch`]). It imports the wire and nothing of the pool's side.
//!
//! A worker's life: [`init`](init::init) finds the marker, connects the transport
//! named in it and adopts the progress page; [`Server::run`](serve::Server::run)
//! sends the handshake and answers one batch after another; the process exits when
//! the pool sends `Shutdown` or closes the link (code 0), or when the link breaks
//! (code 70). It is also killed when the pool's thread that started it ends: the
//! parent-death signal is armed before `exec`.

pub(crate) mod batch;
pub(crate) mod init;
pub(crate) mod serve;
