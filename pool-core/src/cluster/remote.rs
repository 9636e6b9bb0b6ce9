//! Rank 0's side of a cluster: the [`Cluster`] of agents, the [`RemoteLaunch`]
//! that pools use while it is recorded, remote workers and their links, and the
//! router thread that hands every incoming message to its worker.
//!
//! Each remote worker has a *mailbox* ([`Remote`]): the frames relayed from it,
//! whether it was started, and how it ended. The router fills mailboxes; a
//! driver's [`RemoteReceiver`] and [`RemoteWorker`] read them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::Fabric;
use super::wire::{self, Control, Message, Spec};
use crate::engine::{Config, Launch, Worker, lock};
use crate::error::{Error, WorkerExit};
use crate::transport::{
    FrameReceiver, FrameSender, Link, Received, check_incoming, check_outgoing,
};

/// The cluster this process leads, once `join` has recorded it.
static CLUSTER: OnceLock<Arc<Cluster>> = OnceLock::new();

/// How long rank 0 waits for every agent's greeting, and for their goodbyes at the
/// end (liveness bounds: an agent that does not answer has hung).
const GREETING: Duration = Duration::from_secs(60);
/// How long rank 0 waits for the agents' goodbyes as the process ends.
const FAREWELL: Duration = Duration::from_secs(10);

/// The agents of the job and the workers started on them.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// The job's messages.
    fabric: Arc<dyn Fabric>,
    /// Each agent's rank and parallelism, from its greeting.
    agents: Vec<(usize, usize)>,
    /// Live workers per agent (same order as `agents`), to spread new ones.
    load: Mutex<Vec<usize>>,
    /// The next worker handle.
    next: AtomicU64,
    /// The mailbox of every live remote worker, by handle.
    mailboxes: Mutex<HashMap<u64, Arc<Remote>>>,
    /// Agents that said goodbye (after `Stop`).
    byes: Mutex<usize>,
    /// Signalled on a goodbye.
    bye: Condvar,
}

/// The cluster this process leads, if any.
pub(crate) fn cluster() -> Option<&'static Arc<Cluster>> {
    CLUSTER.get()
}

/// Rank 0 joins: greets the agents, records the cluster, starts the router and
/// arranges the end of the job at exit. A job without agents is a local program
/// (its fabric is still finished at exit).
pub(super) fn start(fabric: Arc<dyn Fabric>) {
    let wanted = fabric.size().saturating_sub(1);
    if wanted == 0 {
        // A job of one rank: a local program, whose MPI is finished at exit.
        if ALONE.set(fabric).is_ok() {
            crate::sys::at_exit(finish_alone);
        }
        return;
    }
    let mut agents = Vec::with_capacity(wanted);
    let until = Instant::now() + GREETING;
    while agents.len() < wanted {
        let left = until.saturating_duration_since(Instant::now());
        let Some((from, message)) = fabric.recv(left) else {
            eprintln!(
                "procpool: {} of {wanted} agents greeted rank 0 within {GREETING:?}: ending the job",
                agents.len()
            );
            fabric.abort(70);
        };
        if let Ok(Message::Control(Control::Hello { parallelism })) = wire::read(&message) {
            agents.push((from, parallelism.max(1) as usize));
        }
    }
    agents.sort_unstable();
    let cluster = Arc::new(Cluster {
        fabric: Arc::clone(&fabric),
        load: Mutex::new(vec![0; agents.len()]),
        agents,
        next: AtomicU64::new(1),
        mailboxes: Mutex::new(HashMap::new()),
        byes: Mutex::new(0),
        bye: Condvar::new(),
    });
    if CLUSTER.set(Arc::clone(&cluster)).is_err() {
        return; // joined before: the first stays
    }
    let router = Arc::clone(&cluster);
    if let Err(e) = std::thread::Builder::new()
        .name("procpool-cluster-router".into())
        .spawn(move || router.route())
    {
        eprintln!("procpool: the cluster's router thread cannot start ({e}): ending the job");
        fabric.abort(70);
    }
    crate::sys::at_exit(leave);
}

/// The fabric of a job of one rank (no agents), finished at exit.
static ALONE: OnceLock<Arc<dyn Fabric>> = OnceLock::new();

/// At exit, in a job of one rank: finishes its part.
extern "C" fn finish_alone() {
    if let Some(fabric) = ALONE.get() {
        fabric.finish();
    }
}

/// At exit: every agent is told to stop (its workers are killed), rank 0 waits
/// for their goodbyes, then finishes its part in the job.
extern "C" fn leave() {
    let Some(cluster) = CLUSTER.get() else {
        return;
    };
    for &(rank, _) in &cluster.agents {
        cluster.fabric.send(rank, wire::control(&Control::Stop));
    }
    let until = Instant::now() + FAREWELL;
    let mut byes = lock(&cluster.byes);
    while *byes < cluster.agents.len() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        byes = cluster
            .bye
            .wait_timeout(byes, left)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0;
    }
    drop(byes);
    cluster.fabric.finish();
}

impl Cluster {
    /// The number of agents.
    pub(crate) fn agents(&self) -> usize {
        self.agents.len()
    }

    /// The default size of a pool: the agents' parallelism summed.
    pub(crate) fn parallelism(&self) -> usize {
        self.agents.iter().map(|&(_, p)| p).sum::<usize>().max(1)
    }

    /// The router: every incoming message to its mailbox, until the process ends.
    fn route(&self) {
        loop {
            let Some((from, message)) = self.fabric.recv(Duration::from_secs(3600)) else {
                continue;
            };
            match wire::read(&message) {
                Ok(Message::Frame { handle, bytes }) => {
                    if let Some(remote) = self.mailbox(handle) {
                        remote.update(|state| state.frames.push_back(bytes.to_vec()));
                    }
                }
                Ok(Message::Control(control)) => self.control(from, control),
                Err(e) => eprintln!("procpool: from rank {from}: {e}"),
            }
        }
    }

    /// A control message from agent `from`.
    fn control(&self, from: usize, control: Control) {
        match control {
            Control::Launched { handle, pid } => {
                if let Some(remote) = self.mailbox(handle) {
                    remote.update(|state| state.launched = Some(Ok(pid)));
                }
            }
            Control::LaunchFailed { handle, reason } => {
                if let Some(remote) = self.mailbox(handle) {
                    remote.update(|state| state.launched = Some(Err(reason)));
                }
            }
            Control::Exited {
                handle,
                exit,
                progress,
            } => {
                if let Some(remote) = self.mailbox(handle) {
                    remote.update(|state| state.exit = Some((exit.into(), progress)));
                }
            }
            Control::Resident { handle, bytes } => {
                if let Some(remote) = self.mailbox(handle) {
                    remote.update(|state| state.resident = Some(bytes));
                }
            }
            Control::Bye => {
                *lock(&self.byes) += 1;
                self.bye.notify_all();
            }
            other => eprintln!("procpool: unexpected message from rank {from}: {other:?}"),
        }
    }

    /// The mailbox of worker `handle`, if it is live.
    fn mailbox(&self, handle: u64) -> Option<Arc<Remote>> {
        lock(&self.mailboxes).get(&handle).cloned()
    }
}

/// The mailbox of one remote worker.
#[derive(Debug, Default)]
struct Remote {
    /// What arrived.
    state: Mutex<State>,
    /// Signalled on every change.
    changed: Condvar,
}

/// What arrived for one remote worker.
#[derive(Debug, Default)]
struct State {
    /// The agent's answer to the launch: the pid, or why not.
    launched: Option<Result<u32, String>>,
    /// Frames relayed from the worker, oldest first.
    frames: VecDeque<Vec<u8>>,
    /// How it ended, and its progress page then.
    exit: Option<(WorkerExit, Option<(u64, u32)>)>,
    /// Its resident bytes, as its agent last reported (with a soft memory limit).
    resident: Option<u64>,
}

impl Remote {
    /// Changes the state and wakes the waiters.
    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut lock(&self.state));
        self.changed.notify_all();
    }

    /// Waits until `ready` says the state is ready, or `deadline`; the guard.
    fn wait_for(
        &self,
        deadline: Option<Instant>,
        ready: impl Fn(&State) -> bool,
    ) -> std::sync::MutexGuard<'_, State> {
        crate::sync::wait_until(&self.changed, lock(&self.state), deadline, |s| ready(s)).0
    }
}

/// Starts workers on the agents, for pools made on rank 0 of a cluster.
#[derive(Debug)]
pub(crate) struct RemoteLaunch;

impl Launch for RemoteLaunch {
    /// Asks the least loaded agent for a worker with the pool's secret, frame cap,
    /// start-up limit and memory limit, and waits (up to the start-up limit) for
    /// its pid. The handshake is then the engine's, over the relayed link.
    fn launch(&self, config: &Config) -> Result<(Box<dyn Worker>, Link), Error> {
        let cluster = cluster().ok_or_else(|| Error::Startup("no cluster to launch on".into()))?;
        let index = {
            let mut load = lock(&cluster.load);
            let index = (0..load.len())
                .min_by_key(|&i| (load[i] * 1000) / cluster.agents[i].1)
                .ok_or_else(|| Error::Startup("the cluster has no agent".into()))?;
            load[index] += 1;
            index
        };
        let rank = cluster.agents[index].0;
        let handle = cluster.next.fetch_add(1, Ordering::Relaxed);
        let remote = Arc::new(Remote::default());
        lock(&cluster.mailboxes).insert(handle, Arc::clone(&remote));
        let mut worker = RemoteWorker {
            cluster: Arc::clone(cluster),
            index,
            rank,
            handle,
            pid: 0,
            remote: Arc::clone(&remote),
        };
        let spec = Spec {
            secret: config.secret,
            max_frame: config.link.max_frame as u64,
            startup_ms: config.link.startup_timeout.as_millis() as u64,
            memory_limit: config.memory_limit,
            max_memory_per_child: config.max_memory_per_child,
        };
        cluster
            .fabric
            .send(rank, wire::control(&Control::Launch { handle, spec }));
        let deadline = Instant::now() + config.link.startup_timeout;
        let launched = remote
            .wait_for(Some(deadline), |s| s.launched.is_some())
            .launched
            .clone();
        let pid = match launched {
            Some(Ok(pid)) => pid,
            Some(Err(reason)) => {
                return Err(Error::Startup(format!(
                    "rank {rank} could not start a worker: {reason}"
                )));
            }
            None => {
                return Err(Error::Startup(format!(
                    "rank {rank} did not start a worker within {:?}",
                    config.link.startup_timeout
                )));
            }
        };
        let max_frame = config.link.max_frame;
        let link = Link {
            sender: Box::new(RemoteSender {
                fabric: Arc::clone(&cluster.fabric),
                rank,
                handle,
                remote: Arc::clone(&remote),
                max_frame,
            }),
            receiver: Box::new(RemoteReceiver { remote, max_frame }),
        };
        worker.pid = pid;
        Ok((Box::new(worker), link))
    }
}

/// A worker on an agent, as the engine sees it.
#[derive(Debug)]
struct RemoteWorker {
    /// The cluster, to send kills and to give the slot back.
    cluster: Arc<Cluster>,
    /// Its agent's place in `Cluster::agents`.
    index: usize,
    /// Its agent's rank.
    rank: usize,
    /// Its handle.
    handle: u64,
    /// Its pid on the agent's machine.
    pid: u32,
    /// Its mailbox.
    remote: Arc<Remote>,
}

impl Worker for RemoteWorker {
    fn pid(&self) -> u32 {
        self.pid
    }

    /// Asks the agent to kill it; does not wait.
    fn kill(&mut self) {
        let kill = Control::Kill {
            handle: self.handle,
        };
        self.cluster.fabric.send(self.rank, wire::control(&kill));
    }

    fn try_exit(&mut self) -> Option<WorkerExit> {
        lock(&self.remote.state).exit.map(|(exit, _)| exit)
    }

    /// Waits for the agent's report of its end (an agent always sends one: it
    /// reaps its workers itself).
    fn wait(&mut self) -> WorkerExit {
        self.remote
            .wait_for(None, |s| s.exit.is_some())
            .exit
            .map_or(WorkerExit::Unknown, |(exit, _)| exit)
    }

    /// As its agent last reported, before the frame just received.
    fn resident_bytes(&self) -> Option<u64> {
        lock(&self.remote.state).resident
    }

    /// From the progress page as the agent read it when the worker ended.
    fn started(&self, id: u64) -> Option<u32> {
        match lock(&self.remote.state).exit {
            Some((_, Some((frame, item)))) => (frame == id).then_some(item),
            _ => Some(0),
        }
    }
}

impl Drop for RemoteWorker {
    /// Gives its agent's slot back and forgets its mailbox.
    fn drop(&mut self) {
        if let Some(load) = lock(&self.cluster.load).get_mut(self.index) {
            *load = load.saturating_sub(1);
        }
        lock(&self.cluster.mailboxes).remove(&self.handle);
    }
}

/// Rank 0's end of a remote worker's link, sending.
struct RemoteSender {
    /// The job's messages.
    fabric: Arc<dyn Fabric>,
    /// The worker's agent.
    rank: usize,
    /// The worker.
    handle: u64,
    /// Its mailbox, to refuse frames to a worker known to be dead.
    remote: Arc<Remote>,
    /// The pool's frame cap.
    max_frame: usize,
}

impl FrameSender for RemoteSender {
    /// Queues the frame for the agent, which writes it to the worker's pipe.
    ///
    /// # Errors
    ///
    /// [`Error::Protocol`] over the cap; `BrokenPipe` once the worker is known to
    /// have ended (the frame never reached it).
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), Error> {
        check_outgoing(parts.iter().map(|p| p.len()).sum(), self.max_frame)?;
        if lock(&self.remote.state).exit.is_some() {
            return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe).into());
        }
        self.fabric.send(self.rank, wire::frame(self.handle, parts));
        Ok(())
    }
}

/// Rank 0's end of a remote worker's link, receiving.
struct RemoteReceiver {
    /// The worker's mailbox.
    remote: Arc<Remote>,
    /// The pool's frame cap.
    max_frame: usize,
}

impl FrameReceiver for RemoteReceiver {
    /// The next relayed frame; `Closed` once the worker has ended and every frame
    /// it sent before is read.
    fn recv(&mut self, buf: &mut Vec<u8>, deadline: Option<Instant>) -> Result<Received, Error> {
        let mut state = self
            .remote
            .wait_for(deadline, |s| !s.frames.is_empty() || s.exit.is_some());
        match state.frames.pop_front() {
            Some(frame) => {
                check_incoming(frame.len(), self.max_frame)?;
                *buf = frame;
                Ok(Received::Frame)
            }
            None if state.exit.is_some() => Ok(Received::Closed),
            None => Ok(Received::TimedOut),
        }
    }
}

impl std::fmt::Debug for RemoteSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSender")
            .field("rank", &self.rank)
            .field("handle", &self.handle)
            .finish()
    }
}
