//! The system calls procpool-core needs that std does not wrap safely: preparing a
//! worker between `fork` and `exec` (parent-death signal, limits, descriptors), the
//! scheduling policy of driver threads, the progress page shared with a worker, and
//! the shared-memory segments and robust mutexes of `share` (`shm`).
#![allow(unsafe_code)]

use std::cell::Cell;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub(crate) mod shm;

use rustix::process::{
    Pid, Resource, Rlimit, Signal, getppid, set_parent_process_death_signal, setrlimit,
};

/// Prepares the child started by `command`: it receives `SIGKILL` when the thread
/// that spawned it dies, refuses to start if `parent` is already gone, gets an
/// address-space limit of `memory_limit` bytes if one is set, inherits no descriptor
/// of the parent but its standard streams, `progress` (placed on [`PROGRESS_FD`]) and
/// what the transport places after this hook, as Python's `spawn` does.
///
/// The death signal is armed before `exec` and survives it, so there is no window in
/// which a worker whose parent died keeps running the user's program.
///
/// The steps run in the child in this order: scheduling policy back to
/// `SCHED_OTHER` (when spawned by a batch-scheduled driver), death signal, parent
/// check, address-space limit, close-on-exec of every inherited descriptor, then
/// the progress page on its descriptor. A failing step fails the `spawn` with its
/// error (`NotConnected` when the parent is gone), and the program is never run.
pub(crate) fn prepare_worker(
    command: &mut Command,
    parent: Pid,
    memory_limit: Option<u64>,
    progress: Option<&ProgressPage>,
) {
    let progress = progress.map(|page| page.fd.as_raw_fd());
    // A worker started by a driver thread is scheduled as the pool's creator was,
    // not as the driver is (see `schedule_as_batch`).
    let restore_other = BATCH_THREAD.with(Cell::get);
    let hook = move || -> io::Result<()> {
        if restore_other {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: sched_setscheduler on the calling process with a valid param
            // (priority 0 is the only one SCHED_OTHER takes); a raw system call,
            // async-signal-safe, as this hook between fork and exec requires. Best
            // effort, like the switch it undoes: a worker left batch is only slower
            // to react on a busy machine.
            let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
        }
        set_parent_process_death_signal(Some(Signal::KILL))?;
        if getppid() != Some(parent) {
            // The parent died between fork and prctl: do not run at all.
            return Err(io::Error::from(io::ErrorKind::NotConnected));
        }
        if let Some(bytes) = memory_limit {
            let limit = Rlimit {
                current: Some(bytes),
                maximum: Some(bytes),
            };
            setrlimit(Resource::As, limit)?;
        }
        // Descriptors the parent opened without close-on-exec (a `libc::pipe` made
        // before the pool, say) would otherwise live on in every worker: a reader of
        // such a pipe would never see its end while a worker runs.
        close_on_exec_from(3);
        if let Some(fd) = progress {
            place(fd, PROGRESS_FD)?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the child between fork and exec, where only
    // async-signal-safe work is allowed; it makes raw system calls (prctl, getppid,
    // setrlimit, close_range, fcntl, dup2), takes no lock and allocates nothing (the
    // error is built from a kind).
    unsafe {
        command.pre_exec(hook);
    }
}

thread_local! {
    /// This thread is a driver switched to `SCHED_BATCH` for a caller scheduled as
    /// `SCHED_OTHER`.
    static BATCH_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread, building a pool, is scheduled normally
/// (`SCHED_OTHER`), or is a driver of another pool switched from that (a pool built
/// in a callback).
pub(crate) fn builds_batch_drivers() -> bool {
    // SAFETY: sched_getscheduler(0) reads the calling thread's policy; no pointers.
    BATCH_THREAD.with(Cell::get) || unsafe { libc::sched_getscheduler(0) } == libc::SCHED_OTHER
}

/// Schedules the calling thread, a driver of a pool built by a normally scheduled
/// thread, as `SCHED_BATCH`: same share of CPU and nice value, but its wake-ups do
/// not preempt a running thread. A driver wakes for every reply and every batch;
/// on a busy machine, preempting the worker or the caller's thread for each wake-up
/// costs more than it gains (on two cores: half the context switches, +10% `imap`
/// throughput). Workers it starts get `SCHED_OTHER` back (see `prepare_worker`).
/// Callbacks run on drivers, so threads and processes they start inherit
/// `SCHED_BATCH` (documented on `Callbacks`). Best effort: a thread left as it was
/// is only slower.
pub(crate) fn schedule_as_batch() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread (0) with a valid, live param
    // (priority 0 is the only one SCHED_BATCH takes).
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } == 0 {
        BATCH_THREAD.with(|flag| flag.set(true));
    }
}

thread_local! {
    /// This thread keeps `SIGPIPE` blocked (a pool's driver): see [`block_sigpipe`].
    static SIGPIPE_BLOCKED: Cell<bool> = const { Cell::new(false) };
}

/// Blocks `SIGPIPE` in the calling thread for good: a pool's driver threads write
/// to workers that may have died, and a write to a closed pipe must be an `EPIPE`
/// error there, never a signal that ends a program whose disposition is the default.
/// A signal such a write raises stays pending on the thread, blocked, and is
/// discarded with the thread. Transports skip their own guard on such threads
/// ([`sigpipe_blocked`]).
pub(crate) fn block_sigpipe() {
    // SAFETY: an all-zero sigset_t is valid storage for sigemptyset to initialise.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live sigset_t; SIGPIPE is a valid signal; blocking a signal
    // in the calling thread touches no memory of ours but the sets passed.
    let blocked = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    } == 0;
    SIGPIPE_BLOCKED.with(|flag| flag.set(blocked));
}

/// Whether the calling thread is one of procpool's own that keep `SIGPIPE` blocked.
pub(crate) fn sigpipe_blocked() -> bool {
    SIGPIPE_BLOCKED.with(Cell::get)
}

/// The descriptor on which a worker finds its progress page.
pub(crate) const PROGRESS_FD: RawFd = 5;

/// Marks every descriptor from `first` on close-on-exec, so `exec` closes them; the
/// descriptors placed afterwards with `dup2` (which clears the flag) survive.
/// `close_range(CLOSE_RANGE_CLOEXEC)` (Linux 5.11) in one call; on older kernels, a
/// loop of `fcntl` up to the descriptor limit (at most 65 536). Async-signal-safe.
fn close_on_exec_from(first: u32) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags of this (forked) process; the
    // arguments are plain integers.
    let done = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if done {
        return;
    }
    // SAFETY: an all-zero rlimit is valid storage for getrlimit to fill.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `limit` is a live rlimit the kernel writes into.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.min(65_536) as i32
    } else {
        1024
    };
    for fd in first as i32..max {
        // SAFETY: fcntl on a descriptor number that may or may not be open: if not,
        // it fails with EBADF and changes nothing.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// `dup2(from, to)`: the copy has no close-on-exec flag, so it survives `exec`.
fn place(from: RawFd, to: RawFd) -> io::Result<()> {
    if from == to {
        rustix::io::fcntl_setfd(
            // SAFETY: `from` is open in this (forked) process for the whole call: the
            // parent keeps it open until `spawn` returns.
            unsafe { BorrowedFd::borrow_raw(from) },
            rustix::io::FdFlags::empty(),
        )?;
        return Ok(());
    }
    // SAFETY: as above, `from` is open for the whole call.
    let from = unsafe { BorrowedFd::borrow_raw(from) };
    // SAFETY: `to` is only a dup2 target and is never closed through this handle
    // (ManuallyDrop), so no descriptor is owned twice.
    let mut to = ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(to) });
    rustix::io::dup2(from, &mut to)?;
    Ok(())
}

/// Bytes of a progress page. Its layout: the frame id, a `u64` at offset 0; the
/// item, a `u32` at offset 8; the rest unused.
const PAGE: usize = 4096;

/// A page of memory shared by the pool and one worker, in which the worker notes
/// the frame it is running and the item of that frame it is at: when a worker dies,
/// the pool reads there which batches had started (see the engine's notes on a dead
/// worker's work). A `memfd` mapped by both: nothing in the file system, freed with
/// the last mapping and descriptor.
#[derive(Debug)]
pub(crate) struct ProgressPage {
    /// The memfd. In the parent it stays open so that [`prepare_worker`] can place it
    /// on [`PROGRESS_FD`] in the worker it is made for; in the worker it is the
    /// adopted descriptor.
    fd: OwnedFd,
    /// The start of the shared mapping, [`PAGE`] bytes, page-aligned.
    base: NonNull<u8>,
}

// SAFETY: the mapping is only ever accessed through the atomics below, which may be
// shared and sent between threads; the pointer stays valid until `Drop` unmaps it.
unsafe impl Send for ProgressPage {}
// SAFETY: as above: all access is atomic.
unsafe impl Sync for ProgressPage {}

impl ProgressPage {
    /// A new page, zeroed (no frame started), in the parent.
    ///
    /// # Errors
    ///
    /// What `memfd_create`, `ftruncate` or `mmap` report. The caller goes on without
    /// a page: the worker's frames then all count as started.
    pub(crate) fn create() -> io::Result<ProgressPage> {
        let fd = rustix::fs::memfd_create("procpool-progress", rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, PAGE as u64)?;
        Self::map(fd)
    }

    /// In a worker: the page the pool placed on [`PROGRESS_FD`], if it is one.
    ///
    /// The descriptor is made close-on-exec again, so that a program a task starts
    /// does not inherit it.
    ///
    /// # Errors
    ///
    /// `EBADF` if nothing is open there, `InvalidInput` if it is smaller than a
    /// page, or what `fcntl` or `mmap` report. The worker then serves without a page.
    pub(crate) fn adopt() -> io::Result<ProgressPage> {
        // SAFETY: a borrow for the duration of fstat only; if the descriptor is not
        // open, fstat fails with EBADF and nothing else happens.
        let stat = rustix::fs::fstat(unsafe { BorrowedFd::borrow_raw(PROGRESS_FD) })?;
        if stat.st_size < PAGE as i64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "descriptor 5 is not a procpool progress page",
            ));
        }
        // SAFETY: the descriptor is open (fstat succeeded) and was placed by the pool
        // for this process alone; it is adopted once, at start-up.
        let fd = unsafe { OwnedFd::from_raw_fd(PROGRESS_FD) };
        rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
        Self::map(fd)
    }

    /// A second mapping of the same page, as a worker makes (for in-process fakes).
    #[cfg(test)]
    pub(crate) fn twin(&self) -> io::Result<ProgressPage> {
        Self::map(self.fd.try_clone()?)
    }

    /// Maps the first [`PAGE`] bytes of `fd`, shared, read and write.
    ///
    /// # Errors
    ///
    /// What `mmap` reports.
    fn map(fd: OwnedFd) -> io::Result<ProgressPage> {
        use rustix::mm::{MapFlags, ProtFlags, mmap};
        // SAFETY: a fresh shared mapping of PAGE bytes of a memfd at least that long,
        // at an address the kernel chooses: it overlaps nothing of ours.
        let base = unsafe {
            mmap(
                std::ptr::null_mut(),
                PAGE,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }?;
        let base = NonNull::new(base.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(ProgressPage { fd, base })
    }

    /// The id of the frame the worker is running (0: none yet).
    pub(crate) fn frame(&self) -> &AtomicU64 {
        // SAFETY: the mapping is PAGE bytes, page-aligned (so aligned for u64), and
        // lives as long as `self`; both processes only access it atomically.
        unsafe { &*self.base.as_ptr().cast::<AtomicU64>() }
    }

    /// The item of that frame the worker is at (counted from 0).
    pub(crate) fn item(&self) -> &AtomicU32 {
        // SAFETY: offset 8 of the page-aligned PAGE-byte mapping is aligned for u32
        // and inside it; it lives as long as `self`; access is atomic only.
        unsafe { &*self.base.as_ptr().add(8).cast::<AtomicU32>() }
    }

    /// In a worker: notes that frame `id` starts, at its item 0.
    ///
    /// The item is reset before the id is published (`Release`), so a pool that
    /// reads the new id never pairs it with the last frame's item.
    pub(crate) fn begin(&self, id: u64) {
        self.item().store(0, Ordering::Relaxed);
        self.frame().store(id, Ordering::Release);
    }

    /// In the pool, once the worker is dead: the frame it had started last and the
    /// item of it that was running.
    pub(crate) fn last_started(&self) -> (u64, u32) {
        let frame = self.frame().load(Ordering::Acquire);
        (frame, self.item().load(Ordering::Relaxed))
    }
}

impl Drop for ProgressPage {
    fn drop(&mut self) {
        // SAFETY: `base` is the PAGE-byte mapping made in `map`, not unmapped before,
        // and no reference into it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), PAGE) };
    }
}

/// Makes the child that `command` starts find each `from` descriptor of the parent
/// on its `to` number (`dup2` between `fork` and `exec`, not close-on-exec), for a
/// transport's descriptors. The parent keeps its copies open until the spawn
/// returns; every `from` must be above every `to` (so placing one cannot clobber
/// another); only the numbers move into the hook, which allocates nothing.
pub(crate) fn place_on_exec(command: &mut Command, pairs: &[(&OwnedFd, RawFd)]) {
    let pairs: Vec<(RawFd, RawFd)> = pairs.iter().map(|(f, t)| (f.as_raw_fd(), *t)).collect();
    let hook = move || -> io::Result<()> {
        for &(from, to) in &pairs {
            place(from, to)?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the child between fork and exec; it only makes
    // dup2/fcntl system calls on descriptors the parent keeps open across the
    // spawn, reads a vector made before the fork, takes no lock, allocates nothing.
    unsafe {
        command.pre_exec(hook);
    }
}

/// In a worker: takes ownership of descriptor `fd`, placed by the transport's
/// spawn, if `fstat` says it is of the expected kind (`fifo`: a pipe; `regular`: a
/// file such as a memfd; neither: anything else, an eventfd say), and makes it
/// close-on-exec. Call it once per descriptor and process.
///
/// # Errors
///
/// `EBADF` if `fd` is not open; `InvalidInput` if it is of another kind; the
/// `fcntl` error (the adopted descriptor is then closed).
pub(crate) fn adopt(fd: RawFd, kind: rustix::fs::FileType) -> io::Result<OwnedFd> {
    // SAFETY: a borrow for the duration of `fstat` only; if `fd` is not open, fstat
    // fails with EBADF and nothing else happens.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let found = rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(borrowed)?.st_mode);
    if found != kind {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "descriptor {fd} is a {found:?}, not the {kind:?} a procpool transport placed there"
            ),
        ));
    }
    // SAFETY: `fd` was placed for this process alone by the transport's spawn;
    // nothing else in the program owns it, and it is adopted once (at init).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)?;
    Ok(owned)
}

/// A close-on-exec duplicate of this process's descriptor `fd`, if it is open
/// (a handle that names a descriptor of this very process, see `handoff`).
///
/// # Errors
///
/// `EBADF` if `fd` is not open.
pub(crate) fn duplicate_raw(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: `F_DUPFD_CLOEXEC` reads no memory; on a number that is not open it fails
    // with `EBADF`, and an open one, whoever owns it, is only duplicated.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a descriptor the call just made; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Runs `handler` when the process exits normally (`exit`, a return from `main`),
/// after the program's own exit handlers registered later: rank 0 of a cluster job
/// ends the job there. A handler that cannot be registered is reported on stderr.
pub(crate) fn at_exit(handler: extern "C" fn()) {
    // SAFETY: `atexit` stores a function pointer to call at exit; `handler` is a
    // plain `extern "C" fn()` with no captured state, valid for the whole process.
    if unsafe { libc::atexit(handler) } != 0 {
        eprintln!("procpool: could not register an exit handler");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_page_is_shared_through_its_descriptor() {
        let page = ProgressPage::create().unwrap();
        assert_eq!(page.last_started(), (0, 0), "a new page is zeroed");
        // A second mapping of the same memfd, as the worker makes.
        let twin = ProgressPage::map(page.fd.try_clone().unwrap()).unwrap();
        twin.begin(42);
        twin.item().store(7, Ordering::Relaxed);
        assert_eq!(page.last_started(), (42, 7));
        drop(twin);
        assert_eq!(page.last_started(), (42, 7), "the page outlives a mapping");
    }
}
