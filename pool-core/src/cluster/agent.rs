//! A node agent: what every rank but 0 runs inside `procpool::init()`, for ever.
//!
//! It greets rank 0 with its parallelism, then serves: a `Launch` starts a local
//! worker process (the usual re-executed worker, through this build's first
//! transport, with the pool's secret) and answers with its pid; frames for a worker
//! go to its *writer* thread, which writes them to the worker's link in order;
//! its *reader* thread relays what the worker sends, and when the link ends it reaps
//! the worker and reports its exit and progress page. A `Kill` kills one worker;
//! `Stop` kills them all, says goodbye, finishes and exits.
//!
//! The agent never runs a task, so nothing a task does ends it. A panic in the agent
//! itself aborts the job at once (a rank that unwinds into MPI's `Finalize` would
//! hang the job instead).

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Fabric;
use super::wire::{self, Control, Message, Spec};
use crate::engine::{Config, Launch, LocalLaunch, Worker, lock};
use crate::error::{Error, WorkerExit};
use crate::transport::{FrameReceiver, LinkConfig, Received};

/// Exit code of an agent that aborts the job (`EX_SOFTWARE`, as a failed worker).
const ABORT_CODE: i32 = 70;

/// A local worker of this agent.
struct Local {
    /// Frames for the worker, to its writer thread.
    frames: mpsc::Sender<Vec<u8>>,
    /// The worker process, shared with its reader thread (which reaps it).
    worker: Arc<Mutex<Box<dyn Worker>>>,
}

/// Runs the agent; never returns.
pub(super) fn run(fabric: Arc<dyn Fabric>) -> ! {
    let on_panic = Arc::clone(&fabric);
    std::panic::set_hook(Box::new(move |info| {
        eprintln!(
            "procpool agent (rank {}) panicked: {info}; ending the job",
            on_panic.rank()
        );
        on_panic.abort(ABORT_CODE);
    }));
    let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    fabric.send(0, wire::control(&Control::Hello { parallelism }));
    let workers: Arc<Mutex<HashMap<u64, Local>>> = Arc::default();
    loop {
        let Some((_, message)) = fabric.recv(Duration::from_secs(3600)) else {
            continue;
        };
        match wire::read(&message) {
            Ok(Message::Frame { handle, bytes }) => {
                if let Some(local) = lock(&workers).get(&handle) {
                    // A worker that is gone drops its frames: its exit is reported.
                    let _ = local.frames.send(bytes.to_vec());
                }
            }
            Ok(Message::Control(Control::Launch { handle, spec })) => {
                let reply = match launch(&fabric, &workers, handle, &spec) {
                    Ok(pid) => Control::Launched { handle, pid },
                    Err(e) => Control::LaunchFailed {
                        handle,
                        reason: e.to_string(),
                    },
                };
                fabric.send(0, wire::control(&reply));
            }
            Ok(Message::Control(Control::Kill { handle })) => {
                if let Some(local) = lock(&workers).get(&handle) {
                    lock(&local.worker).kill();
                }
            }
            Ok(Message::Control(Control::Stop)) => stop(&fabric, &workers),
            Ok(Message::Control(other)) => {
                eprintln!("procpool agent: unexpected message {other:?}");
            }
            Err(e) => eprintln!("procpool agent: {e}"),
        }
    }
}

/// Ends the agent: kills and reaps every worker, says goodbye, finishes, exits 0.
fn stop(fabric: &Arc<dyn Fabric>, workers: &Mutex<HashMap<u64, Local>>) -> ! {
    let all: Vec<Local> = lock(workers).drain().map(|(_, local)| local).collect();
    for local in &all {
        lock(&local.worker).kill();
    }
    fabric.send(0, wire::control(&Control::Bye));
    fabric.finish();
    std::process::exit(0)
}

/// Starts worker `handle` as `spec` says, with its writer and reader threads; its
/// pid.
///
/// # Errors
///
/// What the local launch, or a thread start, fails with.
fn launch(
    fabric: &Arc<dyn Fabric>,
    workers: &Arc<Mutex<HashMap<u64, Local>>>,
    handle: u64,
    spec: &Spec,
) -> Result<u32, Error> {
    let transport = *crate::process::transports()?
        .first()
        .ok_or_else(|| Error::Startup("this build has no local transport".into()))?;
    let link = LinkConfig {
        max_frame: usize::try_from(spec.max_frame).unwrap_or(usize::MAX),
        startup_timeout: Duration::from_millis(spec.startup_ms.max(1)),
    };
    let config = Config {
        memory_limit: spec.memory_limit,
        max_memory_per_child: spec.max_memory_per_child,
        ..Config::local(transport, link, spec.secret)
    };
    let (worker, link) = LocalLaunch.launch(&config)?;
    let pid = worker.pid();
    let worker = Arc::new(Mutex::new(worker));
    let (frames, queued) = mpsc::channel::<Vec<u8>>();
    let mut sender = link.sender;
    std::thread::Builder::new()
        .name(format!("procpool-agent-write-{handle}"))
        .spawn(move || {
            for frame in queued {
                if sender.send(&[&frame]).is_err() {
                    return; // the worker is gone; its reader reports it
                }
            }
        })?;
    let reader = Arc::clone(&worker);
    let relay = Arc::clone(fabric);
    let table = Arc::clone(workers);
    let mut receiver = link.receiver;
    std::thread::Builder::new()
        .name(format!("procpool-agent-read-{handle}"))
        .spawn(move || {
            relay_frames(&*relay, handle, &mut *receiver, &reader);
            let (exit, progress) = reap(&reader);
            table.lock().map(|mut t| t.remove(&handle)).ok();
            let exited = Control::Exited {
                handle,
                exit: exit.into(),
                progress,
            };
            relay.send(0, wire::control(&exited));
        })?;
    lock(workers).insert(handle, Local { frames, worker });
    Ok(pid)
}

/// Relays the worker's frames to rank 0 until its link ends, each after the
/// worker's resident size when it can be read (the pool has a soft memory limit).
fn relay_frames(
    fabric: &dyn Fabric,
    handle: u64,
    receiver: &mut dyn FrameReceiver,
    worker: &Mutex<Box<dyn Worker>>,
) {
    let mut frame = Vec::new();
    loop {
        match receiver.recv(&mut frame, None) {
            Ok(Received::Frame) => {
                if let Some(bytes) = lock(worker).resident_bytes() {
                    fabric.send(0, wire::control(&Control::Resident { handle, bytes }));
                }
                fabric.send(0, wire::frame(handle, &[&frame]));
            }
            Ok(Received::TimedOut) => {}
            Ok(Received::Closed) | Err(_) => return,
        }
    }
}

/// Reaps a worker whose link ended: up to 100 ms to exit by itself, then killed.
/// How it ended and what its progress page said.
fn reap(worker: &Mutex<Box<dyn Worker>>) -> (WorkerExit, Option<(u64, u32)>) {
    let until = Instant::now() + Duration::from_millis(100);
    loop {
        let mut w = lock(worker);
        if let Some(exit) = w.try_exit() {
            return (exit, w.progress());
        }
        if Instant::now() >= until {
            w.kill();
            let exit = w.wait();
            return (exit, w.progress());
        }
        drop(w);
        std::thread::sleep(Duration::from_millis(1));
    }
}
