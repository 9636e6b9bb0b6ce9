//! A fake launch for the engine's unit tests: each worker is a thread of the test
//! process running the real serve loop (`worker::serve::Server`) over an in-memory
//! link, with a real progress page. A worker "dies" when its link is cut: by the
//! test ([`ThreadLaunch::kill_newest`]) or by the task [`die`] at item 7, which cuts
//! it and then never returns, as a process killed in the middle of an item. The
//! task [`nap`] is the slow one, for guided scheduling.
//!
//! The handshake checks the worker's pid, so every fake worker names this process.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Config;
use super::worker::{Launch, Worker};
use crate::error::{Error, WorkerExit};
use crate::sys::ProgressPage;
use crate::transport::{FrameReceiver, FrameSender, Link, LinkConfig, Received, Transport};
use crate::wire::registry::{TASKS, TaskEntry, type_id_of_val};
use crate::worker::serve::Server;

thread_local! {
    /// On a fake worker's thread: its link's switch.
    static CUT: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Squares its item.
pub(super) fn square(n: u32) -> u32 {
    n * n
}

/// Returns `n` after 3 ms: a task slow enough for guided scheduling to cut its
/// batches (see `Engine::next`).
pub(super) fn nap(n: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(3));
    n
}

/// Returns `n`, but at 7 cuts its worker's link and never returns: the worker is
/// dead at that item.
pub(super) fn die(n: u32) -> u32 {
    if n != 7 {
        return n;
    }
    CUT.with(|cut| {
        if let Some(cut) = cut.borrow().as_ref() {
            cut.store(true, Ordering::SeqCst);
        }
    });
    loop {
        std::thread::park();
        std::hint::black_box(n);
    }
}

/// The registry entry of [`square`], as `#[pool_task]` would make it: the fake
/// workers serve from this test binary's registry.
#[allow(unsafe_code)] // linkme places the entries with #[link_section]
#[linkme::distributed_slice(TASKS)]
static SQUARE: TaskEntry = TaskEntry::new(
    concat!(module_path!(), "::square"),
    || type_id_of_val(&square),
    |batch| crate::worker::batch::run_batch::<(u32,), _>(square, batch),
);

/// The registry entry of [`die`], as [`SQUARE`]'s.
#[allow(unsafe_code)] // as above
#[linkme::distributed_slice(TASKS)]
static DIE: TaskEntry = TaskEntry::new(
    concat!(module_path!(), "::die"),
    || type_id_of_val(&die),
    |batch| crate::worker::batch::run_batch::<(u32,), _>(die, batch),
);

/// The registry entry of [`nap`], as [`SQUARE`]'s.
#[allow(unsafe_code)] // as above
#[linkme::distributed_slice(TASKS)]
static NAP: TaskEntry = TaskEntry::new(
    concat!(module_path!(), "::nap"),
    || type_id_of_val(&nap),
    |batch| crate::worker::batch::run_batch::<(u32,), _>(nap, batch),
);

/// Frames out, until the link is cut.
struct MemSender {
    /// To the other end's [`MemReceiver`].
    tx: mpsc::Sender<Vec<u8>>,
    /// The link's switch, shared by both ends and the [`ThreadWorker`].
    cut: Arc<AtomicBool>,
}

impl FrameSender for MemSender {
    /// Fails as a write to a dead process's pipe would (an I/O error,
    /// `BrokenPipe`) once the link is cut or the other end is gone.
    fn send(&mut self, parts: &[&[u8]]) -> Result<(), Error> {
        let gone = || Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        if self.cut.load(Ordering::SeqCst) {
            return Err(gone());
        }
        self.tx.send(parts.concat()).map_err(|_| gone())
    }
}

/// Frames in: what was sent before the cut still arrives, then the end.
struct MemReceiver {
    /// From the other end's [`MemSender`].
    rx: mpsc::Receiver<Vec<u8>>,
    /// The link's switch, as [`MemSender::cut`].
    cut: Arc<AtomicBool>,
}

impl FrameReceiver for MemReceiver {
    /// Frames already in the channel come first; then, once the link is cut or the
    /// sender gone, [`Received::Closed`]. Waits in steps of 2 ms, so that a cut and
    /// the deadline are noticed while it waits.
    fn recv(&mut self, buf: &mut Vec<u8>, deadline: Option<Instant>) -> Result<Received, Error> {
        loop {
            match self.rx.try_recv() {
                Ok(frame) => {
                    *buf = frame;
                    return Ok(Received::Frame);
                }
                Err(TryRecvError::Disconnected) => return Ok(Received::Closed),
                Err(TryRecvError::Empty) if self.cut.load(Ordering::SeqCst) => {
                    return Ok(Received::Closed);
                }
                Err(TryRecvError::Empty) => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Received::TimedOut);
            }
            match self.rx.recv_timeout(Duration::from_millis(2)) {
                Ok(frame) => {
                    *buf = frame;
                    return Ok(Received::Frame);
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(Received::Closed),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

/// A fake worker: a thread serving over an in-memory link.
#[derive(Debug)]
struct ThreadWorker {
    /// The link's switch: [`kill`](Worker::kill) sets it.
    cut: Arc<AtomicBool>,
    /// The serving thread; `None` once joined.
    thread: Option<JoinHandle<()>>,
    /// The pool's mapping of the progress page the thread's [`Server`] notes its
    /// frames in.
    page: ProgressPage,
}

impl Worker for ThreadWorker {
    fn pid(&self) -> u32 {
        // The handshake names the serving process: this one.
        std::process::id()
    }

    /// Cuts the link, as `SIGKILL` ends a process: the serve loop sees the end and
    /// returns; a thread in [`die`] stays parked.
    fn kill(&mut self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Ended once the serving thread has returned.
    fn try_exit(&mut self) -> Option<WorkerExit> {
        let done = self.thread.as_ref().is_none_or(JoinHandle::is_finished);
        done.then(|| self.exit())
    }

    fn wait(&mut self) -> WorkerExit {
        // A thread stuck in `die` is never joined (it stays parked): a killed
        // process does not come back either.
        if self.thread.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(thread) = self.thread.take()
        {
            let _ = thread.join();
        }
        self.exit()
    }

    /// From the real progress page, as a `LocalWorker` reads it.
    fn started(&self, id: u64) -> Option<u32> {
        let (frame, item) = self.page.last_started();
        (frame == id).then_some(item)
    }
}

impl ThreadWorker {
    /// How the fake worker ended: `Signal(9)` if its link was cut (by the test, the
    /// pool or [`die`]), else `Code(0)` (it stopped on `Shutdown`, or at the end of
    /// its link).
    fn exit(&self) -> WorkerExit {
        if self.cut.load(Ordering::SeqCst) {
            WorkerExit::Signal(9)
        } else {
            WorkerExit::Code(0)
        }
    }
}

/// Starts [`ThreadWorker`]s and keeps their switches, so a test can count and kill
/// them.
#[derive(Debug, Default)]
pub(super) struct ThreadLaunch {
    /// Workers started so far.
    launched: AtomicUsize,
    /// The switch of every worker started, oldest first.
    cuts: Mutex<Vec<Arc<AtomicBool>>>,
}

impl ThreadLaunch {
    /// Workers started so far.
    pub(super) fn launched(&self) -> usize {
        self.launched.load(Ordering::SeqCst)
    }

    /// Cuts the link of the newest worker, as a `kill -9` would; returns at once.
    pub(super) fn kill_newest(&self) {
        if let Some(cut) = crate::sync::lock(&self.cuts).last() {
            cut.store(true, Ordering::SeqCst);
        }
    }
}

impl Launch for ThreadLaunch {
    /// Two channels make the link. The worker's end goes to a new thread running
    /// the real [`Server`] with the pool's secret and a second mapping of a new
    /// progress page; the pool's end comes back with the [`ThreadWorker`].
    ///
    /// # Errors
    ///
    /// The progress page could not be made.
    fn launch(&self, config: &Config) -> Result<(Box<dyn Worker>, Link), Error> {
        let cut = Arc::new(AtomicBool::new(false));
        let (to_worker, from_pool) = mpsc::channel();
        let (to_pool, from_worker) = mpsc::channel();
        let page = ProgressPage::create()?;
        let twin = page.twin()?;
        let theirs = Link {
            sender: Box::new(MemSender {
                tx: to_pool,
                cut: Arc::clone(&cut),
            }),
            receiver: Box::new(MemReceiver {
                rx: from_pool,
                cut: Arc::clone(&cut),
            }),
        };
        let ours = Link {
            sender: Box::new(MemSender {
                tx: to_worker,
                cut: Arc::clone(&cut),
            }),
            receiver: Box::new(MemReceiver {
                rx: from_worker,
                cut: Arc::clone(&cut),
            }),
        };
        let secret = config.secret;
        let switch = Arc::clone(&cut);
        let thread = std::thread::spawn(move || {
            CUT.with(|slot| *slot.borrow_mut() = Some(switch));
            let _ = Server::new(theirs, secret).with_progress(twin).run();
        });
        self.launched.fetch_add(1, Ordering::SeqCst);
        crate::sync::lock(&self.cuts).push(Arc::clone(&cut));
        let worker = ThreadWorker {
            cut,
            thread: Some(thread),
            page,
        };
        Ok((Box::new(worker), ours))
    }
}

/// A transport that is never used: the fake launch makes the links.
#[derive(Debug)]
pub(super) struct NoTransport;

impl Transport for NoTransport {
    fn name(&self) -> &'static str {
        "none"
    }

    fn spawn(
        &self,
        _: std::process::Command,
        _: LinkConfig,
    ) -> Result<(std::process::Child, Link), Error> {
        Err(Error::Startup("the fake launch spawns no process".into()))
    }

    fn connect(&self, _: LinkConfig) -> Result<Link, Error> {
        Err(Error::Startup("the fake launch connects no process".into()))
    }
}
