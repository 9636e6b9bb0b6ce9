//! procpool across the hosts of an MPI job (rsmpi, Open MPI or MPICH).
//!
//! Launched by `mpirun`/`mpiexec`/`srun`, the same program becomes a job: rank 0
//! runs `main` and owns the pools, every other rank is a *node agent* that starts
//! local worker processes for rank 0's pools (see `procpool_core::cluster`). This
//! crate is the [`Fabric`] under it: whole messages between ranks, over MPI.
//!
//! # Mechanism
//!
//! One *pump* thread per rank makes every MPI call (initialised
//! `MPI_THREAD_SERIALIZED`, which only one thread ever uses): it sends what the
//! pool's threads queued, with `MPI_Isend`, receiving all the while until the send
//! completes (two ranks sending big messages to each other at once would deadlock
//! with blocking sends), and receives whatever `MPI_Improbe` finds. For 500 µs
//! after it last moved a message it keeps polling (yielding between polls), so a
//! conversation in progress is answered in microseconds; then it sleeps on the
//! queue with a timeout that doubles from 20 µs to 1 ms, so an idle rank does not
//! burn a core (Open MPI's blocking receive busy-polls). A queued message wakes it
//! at once.
//!
//! # Detection
//!
//! [`detect`] joins a job when `PROCPOOL_MPI=1`, or when the launcher's variables
//! are set (Open MPI's `OMPI_COMM_WORLD_SIZE`, PMIx's `PMIX_RANK`, MPICH's
//! `PMI_SIZE`) **and** this process's parent is a launcher (`mpirun`, `mpiexec`,
//! `orterun`, `prterun`, `orted`, `prted`, `hydra_pmi_proxy`, `slurmstepd`): a
//! program that a rank starts inherits the variables but is not a rank.
//! `PROCPOOL_MPI=0` turns detection off.
//!
//! # Use
//!
//! Nothing to call: build with procpool's `mpi` feature and start the program
//! under the launcher. `procpool::init()` detects the job and joins it.
//!
//! ```sh
//! cargo build --release --features mpi --example square
//! mpirun -np 3 target/release/examples/square         # one host: rank 0 + 2 agents
//! mpirun --hostfile hosts -np 9 target/release/app    # rank 0 + 8 agents on the hosts
//! srun -N 4 -n 4 target/release/app                   # Slurm: one agent per node
//! ```
//!
//! # What MPI decides
//!
//! A rank that dies ends the job: the launcher kills every rank within about a
//! second (Open MPI: SIGTERM to the others after 1.0 s; MPICH: SIGKILL within
//! 25–45 ms). Tasks never run in a rank — agents run them in local worker
//! processes — so what kills a task (a segfault, `abort`, the OOM killer, a time
//! limit) kills a worker, never a rank. An agent that panics aborts the job at
//! once rather than unwind into `MPI_Finalize`, which would hang every rank.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::topology::Communicator;
use procpool_core::cluster::Fabric;

/// The launchers whose children are ranks (the `comm` of the parent process).
///
/// Open MPI's `mpirun` is the parent of the ranks on its own host and `orted`
/// (`prted` with PRRTE) on the others; MPICH's hydra starts ranks from
/// `hydra_pmi_proxy`; Slurm's `srun` from `slurmstepd`.
const LAUNCHERS: [&str; 8] = [
    "mpirun",
    "mpiexec",
    "orterun",
    "prterun",
    "orted",
    "prted",
    "hydra_pmi_proxy",
    "slurmstepd",
];

/// The longest sleep of an idle pump: what an idle rank adds to the latency of the
/// first message after a pause, and what keeps its CPU use near zero (a wake-up
/// per millisecond).
const IDLE_MAX: Duration = Duration::from_millis(1);
/// How long a pump keeps polling (yielding the CPU between polls) after it last
/// moved a message, before it starts to sleep: a conversation in progress — an
/// `apply` after an `apply` — is answered in microseconds, not after a sleep.
const HOT: Duration = Duration::from_micros(500);
/// The first sleep of a pump that found nothing to do; each empty round doubles
/// it up to [`IDLE_MAX`], and any message moved resets it.
const IDLE_MIN: Duration = Duration::from_micros(20);

/// Whether this process is a rank of an MPI job (see the crate docs).
pub fn launched_by_mpi() -> bool {
    match std::env::var("PROCPOOL_MPI").as_deref() {
        Ok("1") => return true,
        Ok("0") => return false,
        _ => {}
    }
    let has = |name: &str| std::env::var_os(name).is_some();
    if !(has("OMPI_COMM_WORLD_SIZE") || has("PMIX_RANK") || has("PMI_SIZE")) {
        return false;
    }
    let parent = std::os::unix::process::parent_id();
    std::fs::read_to_string(format!("/proc/{parent}/comm"))
        .map(|comm| LAUNCHERS.contains(&comm.trim()))
        .unwrap_or(false)
}

/// Joins the MPI job this process is a rank of, if it is one: the fabric for
/// `procpool_core::cluster::join`. `None` outside a job.
///
/// A job whose MPI cannot start is ended (`abort` is not possible yet, so the
/// process exits with code 70 and a message): a rank that runs on alone would
/// leave the others waiting.
pub fn detect() -> Option<Arc<dyn Fabric>> {
    if !launched_by_mpi() {
        return None;
    }
    match MpiFabric::start() {
        Ok(fabric) => Some(fabric),
        Err(reason) => {
            eprintln!("procpool: cannot join the MPI job: {reason}");
            std::process::exit(70);
        }
    }
}

/// What the pool's threads and the pump share.
#[derive(Debug, Default)]
struct Queues {
    /// Messages to send, oldest first, with their destination.
    outgoing: Mutex<Outgoing>,
    /// Signalled when something is queued to send, or `finish` is asked.
    wake: Condvar,
    /// Messages received, oldest first, with their source.
    incoming: Mutex<VecDeque<(usize, Vec<u8>)>>,
    /// Signalled when something arrived.
    arrived: Condvar,
}

/// The send queue and the end request.
#[derive(Debug, Default)]
struct Outgoing {
    /// Destination and bytes.
    queue: VecDeque<(usize, Vec<u8>)>,
    /// `finish` asked: send what is queued, then finalize.
    finishing: bool,
}

/// The MPI fabric: this rank's pump thread and its queues.
#[derive(Debug)]
pub struct MpiFabric {
    /// This rank.
    rank: usize,
    /// Ranks in the job.
    size: usize,
    /// Shared with the pump.
    queues: Arc<Queues>,
    /// The pump, joined by `finish`.
    pump: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl MpiFabric {
    /// Starts the pump thread, which initialises MPI; this rank and the job's size.
    ///
    /// # Errors
    ///
    /// A message if MPI does not initialise or the thread cannot start.
    pub fn start() -> Result<Arc<dyn Fabric>, String> {
        let queues = Arc::new(Queues::default());
        let (ready_tx, ready_rx) = mpsc::channel();
        let pumped = Arc::clone(&queues);
        let pump = std::thread::Builder::new()
            .name("procpool-mpi-pump".into())
            .spawn(move || pump(&pumped, &ready_tx))
            .map_err(|e| format!("no pump thread: {e}"))?;
        let (rank, size) = ready_rx
            .recv()
            .map_err(|_| "MPI did not initialise".to_owned())??;
        Ok(Arc::new(MpiFabric {
            rank,
            size,
            queues,
            pump: Mutex::new(Some(pump)),
        }))
    }
}

/// A poisoned lock is taken anyway: every state here stays consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Fabric for MpiFabric {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn send(&self, to: usize, message: Vec<u8>) {
        lock(&self.queues.outgoing).queue.push_back((to, message));
        self.queues.wake.notify_one();
    }

    fn recv(&self, timeout: Duration) -> Option<(usize, Vec<u8>)> {
        let until = Instant::now().checked_add(timeout);
        let mut incoming = lock(&self.queues.incoming);
        loop {
            if let Some(message) = incoming.pop_front() {
                return Some(message);
            }
            let left = until.map_or(Duration::from_secs(3600), |u| {
                u.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return None;
            }
            incoming = self
                .queues
                .arrived
                .wait_timeout(incoming, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Asks the pump to send what is queued and finalize, and waits for it.
    fn finish(&self) {
        lock(&self.queues.outgoing).finishing = true;
        self.queues.wake.notify_one();
        if let Some(pump) = lock(&self.pump).take() {
            let _ = pump.join();
        }
    }

    fn abort(&self, code: i32) -> ! {
        mpi::topology::SimpleCommunicator::world().abort(code)
    }
}

/// The pump: initialises MPI, reports `(rank, size)` on `ready`, then moves
/// messages until `finish`; finalizes as it returns (the universe is dropped).
fn pump(queues: &Queues, ready: &mpsc::Sender<Result<(usize, usize), String>>) {
    let Some((universe, _threading)) = mpi::initialize_with_threading(mpi::Threading::Serialized)
    else {
        let _ = ready.send(Err(
            "MPI_Init_thread failed (or MPI was initialised before)".into(),
        ));
        return;
    };
    let world = universe.world();
    let _ = ready.send(Ok((world.rank() as usize, world.size() as usize)));
    let mut idle = IDLE_MIN;
    let mut active = Instant::now();
    loop {
        let mut moved = receive_all(&world, queues);
        let next = {
            let mut outgoing = lock(&queues.outgoing);
            match outgoing.queue.pop_front() {
                Some(message) => Some(message),
                None if outgoing.finishing => break,
                None if !moved && active.elapsed() < HOT => {
                    drop(outgoing);
                    std::thread::yield_now();
                    None
                }
                None => {
                    if !moved {
                        outgoing = queues
                            .wake
                            .wait_timeout(outgoing, idle)
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .0;
                        idle = (idle * 2).min(IDLE_MAX);
                    }
                    outgoing.queue.pop_front()
                }
            }
        };
        if let Some((to, bytes)) = next {
            send_one(&world, queues, to, &bytes);
            moved = true;
        }
        if moved {
            idle = IDLE_MIN;
            active = Instant::now();
        }
    }
    drop(world);
    drop(universe); // MPI_Finalize
}

/// Sends one message with `MPI_Isend`, receiving what comes in until it is out.
///
/// One send in flight per rank: the queue keeps the order of a rank's messages,
/// and receiving while the send is pending is what keeps two ranks that send big
/// messages to each other at once from waiting on each other for ever.
fn send_one(world: &mpi::topology::SimpleCommunicator, queues: &Queues, to: usize, bytes: &[u8]) {
    let Ok(rank) = i32::try_from(to) else {
        return;
    };
    mpi::request::scope(|scope| {
        let mut request = world.process_at_rank(rank).immediate_send(scope, bytes);
        loop {
            match request.test() {
                Ok(_) => return,
                Err(pending) => request = pending,
            }
            if !receive_all(world, queues) {
                std::thread::yield_now();
            }
        }
    });
}

/// Receives every message that has arrived; whether there was one.
///
/// `MPI_Improbe` then `MPI_Mrecv` of the probed message: the size is known
/// before the buffer is made, and no other receive can take the message between.
fn receive_all(world: &mpi::topology::SimpleCommunicator, queues: &Queues) -> bool {
    let mut any = false;
    while let Some(probed) = world.any_process().immediate_matched_probe() {
        let (bytes, status) = probed.matched_receive_vec::<u8>();
        let from = status.source_rank() as usize;
        lock(&queues.incoming).push_back((from, bytes));
        queues.arrived.notify_all();
        any = true;
    }
    any
}
