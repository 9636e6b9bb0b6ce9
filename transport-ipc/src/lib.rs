//! The ipc-channel transport for procpool — **not implemented yet**.
//!
//! This crate will carry procpool's frames over servo's `ipc-channel`, each worker
//! bootstrapped through an `IpcOneShotServer` whose name travels in the environment.
//! Until it does, it provides no [`Transport`](procpool_core::Transport), and the
//! `ipc` feature of `procpool` adds no `Transport::Ipc` variant: nothing can select
//! it, so nothing can half-work.

/// The name this transport will register under, in the worker marker.
pub const NAME: &str = "ipc";

/// Whether this build can start workers over ipc-channel (not yet).
pub const AVAILABLE: bool = false;
