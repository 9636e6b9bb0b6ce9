//! Pools whose workers run on other machines: a job of several ranks (MPI), where
//! rank 0 runs the program and owns the pools and every other rank is a **node
//! agent** that starts local workers for it.
//!
//! A transport crate for a cluster (`procpool-transport-mpi`) supplies a
//! [`Fabric`]: numbered ranks that exchange whole messages. Everything else is here:
//!
//! ```text
//! rank 0                                   rank k (an agent)
//! Pool ─ drivers ─ RemoteLaunch ──LAUNCH──▶ agent: LocalLaunch of a local worker
//!          │  RemoteLink ◀──FRAME──────────▶ relay threads ◀─ pipe ─▶ worker process
//!          └─ RemoteWorker ◀─EXITED─────────  (the worker died: its exit and progress)
//! ```
//!
//! The engine sees a remote worker as any other (the `Worker` and `Launch` seam):
//! its frames, handshake included, are relayed unchanged between the pool's driver
//! and a worker process that the agent started with the pool's secret; a worker
//! that dies — a segfault, a kill, a time limit — is a local process of the agent,
//! which reports its exit and how far it got, and starts the next one when asked.
//! Only a task's own process dies: the agent, a rank of the job, never runs a task,
//! so the job survives what kills a task. An agent that dies itself takes the job
//! with it (that is MPI's rule: the launcher aborts every rank within about a
//! second, and rank 0 is ended by a signal).
//!
//! - `wire`: the messages between rank 0 and the agents.
//! - `remote`: rank 0's side — the cluster, `RemoteLaunch`,
//!   the remote worker and its link, the router thread.
//! - `agent`: the agent's loop.

use std::sync::Arc;
use std::time::Duration;

pub(crate) mod agent;
pub(crate) mod remote;
mod wire;

/// Whole messages between the ranks of a job: what a cluster transport supplies.
///
/// Rank 0 runs the program; ranks `1..size` are agents. `send` and `recv` are
/// called from several threads at once; a message from one rank to another
/// arrives whole and in order.
pub trait Fabric: Send + Sync + std::fmt::Debug {
    /// This process's rank.
    fn rank(&self) -> usize;

    /// The number of ranks in the job.
    fn size(&self) -> usize;

    /// Queues `message` for rank `to`; returns at once (the transport sends it in
    /// the background, never blocking the caller on the other side's progress).
    fn send(&self, to: usize, message: Vec<u8>);

    /// The next message from any rank and its sender, waiting up to `timeout`.
    fn recv(&self, timeout: Duration) -> Option<(usize, Vec<u8>)>;

    /// Sends what is queued, then ends this rank's part in the job (MPI's
    /// `Finalize`). Called once, as the process ends.
    fn finish(&self);

    /// Ends the whole job at once with `code` (MPI's `Abort`): for an agent that
    /// would otherwise unwind or exit while the job runs.
    fn abort(&self, code: i32) -> !;
}

/// Joins a job: called by `procpool::init()` when the program was started by a
/// cluster launcher, after the local `init` (so a pool worker never gets here).
///
/// On rank 0 it waits for every agent's greeting, records the cluster (pools made
/// after this start their workers on the agents) and arranges for the job to end
/// cleanly when the process exits; it returns. On any other rank it runs the
/// agent and never returns. A job of one rank is a local program.
pub fn join(fabric: Arc<dyn Fabric>) {
    if fabric.rank() == 0 {
        remote::start(fabric);
    } else {
        agent::run(fabric)
    }
}

/// The number of agents serving this process's pools: 0 outside a cluster job.
pub fn agents() -> usize {
    remote::cluster().map_or(0, |c| c.agents())
}
