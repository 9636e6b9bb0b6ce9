//! The unsafe half of shared memory: a `memfd` mapped `MAP_SHARED`, its header, the
//! robust process-shared mutex inside it, and the typed views of its data.
//!
//! A segment is one page-aligned [`Header`] page followed by the data, at the
//! offset of one page, so any `Pod` alignment up to a page fits. Two kinds:
//!
//! - [`Locked`]: read and write, the data reachable only through a
//!   [`MutexGuard`] of the header's robust mutex. Sealed against growing and
//!   shrinking, so no process can make a mapping fault (`SIGBUS`) by truncating it.
//! - [`Frozen`]: written once at creation, then sealed (`F_SEAL_WRITE`, grow,
//!   shrink, seal) and mapped read-only everywhere: no process can change the
//!   bytes behind a `&[T]`, which is what makes handing that slice out sound.
//!
//! `attach` checks the seals and the size of a descriptor that came from another
//! process before mapping it; what the header says is checked by the caller
//! (`share::memory`). Every process sharing a segment is trusted as much as this
//! one: it can write the data and the mutex (as with any shared memory).

use std::cell::UnsafeCell;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant, SystemTime};

use bytemuck::Pod;
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// The first bytes of every segment. Every field but the mutex is an atomic, so
/// that reading it is never a data race, whatever another process does.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct Header {
    /// Tells a procpool segment from any other file.
    pub(crate) magic: AtomicU64,
    /// The object's random 128-bit id, low half first.
    pub(crate) id: [AtomicU64; 2],
    /// Which handle type made it.
    pub(crate) kind: AtomicU32,
    /// `size_of` the element type.
    pub(crate) elem_size: AtomicU32,
    /// Number of elements, or the count a sync object was made with.
    pub(crate) len: AtomicU64,
    /// Futex words of the sync objects.
    pub(crate) words: [AtomicU32; 4],
    /// The robust process-shared mutex (initialised in [`Locked`] segments only).
    mutex: UnsafeCell<libc::pthread_mutex_t>,
}

/// One `MAP_SHARED` mapping, unmapped on drop.
#[derive(Debug)]
struct Raw {
    /// Start of the mapping (page-aligned).
    base: NonNull<u8>,
    /// Its length in bytes.
    len: usize,
}

// SAFETY: the mapping is shared memory whose header is only accessed atomically or
// through the mutex, and whose data is reached under the mutex (`Locked`) or is
// immutable (`Frozen`); the pointer stays valid until `Drop` unmaps it.
unsafe impl Send for Raw {}
// SAFETY: as above.
unsafe impl Sync for Raw {}

impl Raw {
    /// Maps `len` bytes of `fd` from offset 0, shared, read-only unless `writable`.
    fn map(fd: BorrowedFd<'_>, len: usize, writable: bool) -> io::Result<Raw> {
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a fresh mapping at an address the kernel chooses overlaps nothing
        // of ours; the file is at least `len` bytes (checked or set by the callers).
        let base =
            unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) }?;
        let base = NonNull::new(base.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(Raw { base, len })
    }

    /// The header at the start of the mapping.
    fn header(&self) -> &Header {
        // SAFETY: every mapping is at least `data_offset` bytes, a page or more,
        // which holds a `Header` (asserted below); page-aligned, so aligned; all its
        // fields are atomics or an `UnsafeCell`, valid for any bytes, and shared
        // access to them is what they are for. It lives as long as `self`.
        unsafe { &*self.base.as_ptr().cast::<Header>() }
    }

    /// The start of the data.
    fn data(&self) -> *mut u8 {
        // SAFETY: `data_offset() <= len` for every mapping made here.
        unsafe { self.base.as_ptr().add(data_offset()) }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` is the mapping made in `map`, not unmapped before; no
        // reference into it outlives `self` (guards and slices borrow it).
        let _ = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

const _: () = assert!(std::mem::size_of::<Header>() <= 4096);

/// Where the data starts: one page in (the header page).
pub(crate) fn data_offset() -> usize {
    rustix::param::page_size().max(4096)
}

/// The byte size of a segment of `len` elements of `T`: the header page and room
/// for `max(len, 1)` elements (so a guard's first element always lies inside).
///
/// # Errors
///
/// `InvalidInput` for a zero-sized `T`, an alignment over a page, or a size that
/// overflows.
pub(crate) fn segment_size<T: Pod>(len: usize) -> io::Result<usize> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let size = std::mem::size_of::<T>();
    if size == 0 {
        return Err(bad("shared memory of a zero-sized type".into()));
    }
    if std::mem::align_of::<T>() > data_offset() {
        return Err(bad("an element type aligned to more than a page".into()));
    }
    len.max(1)
        .checked_mul(size)
        .and_then(|bytes| bytes.checked_add(data_offset()))
        .filter(|&total| total <= isize::MAX as usize)
        .ok_or_else(|| {
            bad(format!(
                "{len} elements of {size} bytes overflow the address space"
            ))
        })
}

/// A new memfd of `total` bytes, close-on-exec, sealable.
fn new_memfd(name: &str, total: usize) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, total as u64)?;
    Ok(fd)
}

/// Writes `values` to the data of `fd`, a memfd made by this process that no
/// other has seen yet, with `pwrite` before it is mapped: the kernel fills the
/// file's pages directly, where a copy into a fresh mapping takes a page fault per
/// page (1 GiB: 3.2 s copied into a fresh mapping, 0.65 s written, on a 2-core VM).
fn fill<T: Pod>(fd: BorrowedFd<'_>, values: &[T]) -> io::Result<()> {
    let mut bytes: &[u8] = bytemuck::cast_slice(values);
    let mut offset = data_offset() as u64;
    while !bytes.is_empty() {
        match rustix::io::pwrite(fd, bytes, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                bytes = &bytes[n..];
                offset += n as u64;
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Checks that `fd` carries at least `seals` and is `total` bytes.
fn check_file(fd: BorrowedFd<'_>, seals: SealFlags, total: usize) -> io::Result<()> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let have =
        rustix::fs::fcntl_get_seals(fd).map_err(|_| bad("not a sealed shared-memory file"))?;
    if !have.contains(seals) {
        return Err(bad("a shared-memory file without its seals"));
    }
    if rustix::fs::fstat(fd)?.st_size != total as i64 {
        return Err(bad("a shared-memory file of the wrong size"));
    }
    Ok(())
}

/// A read-write segment of `len` elements of `T` behind the header's robust mutex.
#[derive(Debug)]
pub(crate) struct Locked<T> {
    /// The mapping.
    raw: Raw,
    /// Number of elements.
    len: usize,
    /// The element type: `fn() -> T` keeps the segment `Send + Sync` for any `T`,
    /// as a `Pod` is plain bytes that may be read and written from any thread.
    _elements: PhantomData<fn() -> T>,
}

impl<T: Pod> Locked<T> {
    /// A new segment of `len` elements, copied from `values` if given (else
    /// zeroed), its header set by `header` and its mutex initialised, sealed
    /// against growing and shrinking. The descriptor is the segment's memfd.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for sizes [`segment_size`] refuses; what `memfd_create`,
    /// `ftruncate`, `mmap`, the mutex initialisation or the seals report.
    pub(crate) fn create(
        name: &str,
        len: usize,
        values: Option<&[T]>,
        header: impl FnOnce(&Header),
    ) -> io::Result<(OwnedFd, Locked<T>)> {
        let total = segment_size::<T>(len)?;
        let fd = new_memfd(name, total)?;
        if let Some(values) = values {
            fill(fd.as_fd(), &values[..len.min(values.len())])?;
        }
        let raw = Raw::map(fd.as_fd(), total, true)?;
        header(raw.header());
        init_robust_mutex(raw.header().mutex.get())?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL)?;
        let segment = Locked {
            raw,
            len,
            _elements: PhantomData,
        };
        Ok((fd, segment))
    }

    /// Maps the segment of `len` elements that `fd` holds, after checking its seals
    /// and size.
    ///
    /// # Errors
    ///
    /// `InvalidData` if the file is not sealed against resizing or not of the size
    /// `len` elements take; `InvalidInput` as [`segment_size`]; what `mmap` reports.
    pub(crate) fn attach(fd: BorrowedFd<'_>, len: usize) -> io::Result<Locked<T>> {
        let total = segment_size::<T>(len)?;
        check_file(fd, SealFlags::GROW | SealFlags::SHRINK, total)?;
        Ok(Locked {
            raw: Raw::map(fd, total, true)?,
            len,
            _elements: PhantomData,
        })
    }

    /// The header.
    pub(crate) fn header(&self) -> &Header {
        self.raw.header()
    }

    /// The number of elements.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Takes the mutex, blocking. If it can never be taken again (see
    /// [`Acquire::Lost`]), blocks for good, as a mutex held forever would.
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        match self.acquire(None, false) {
            Acquire::Got(guard) => guard,
            // A blocking lock is never busy: as lost.
            Acquire::Busy | Acquire::Lost => loop {
                std::thread::park();
            },
        }
    }

    /// Takes the mutex if it is free now.
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        match self.acquire(None, true) {
            Acquire::Got(guard) => Some(guard),
            Acquire::Busy | Acquire::Lost => None,
        }
    }

    /// Takes the mutex, waiting until `deadline` at most.
    pub(crate) fn lock_until(&self, deadline: Instant) -> Option<MutexGuard<'_, T>> {
        match self.acquire(Some(deadline), false) {
            Acquire::Got(guard) => Some(guard),
            Acquire::Busy | Acquire::Lost => None,
        }
    }

    /// One attempt: blocking (no deadline), until `deadline`, or `try_only`.
    ///
    /// The returns of `pthread_mutex_*lock` on a robust, normal, process-shared
    /// mutex initialised by [`Locked::create`]: 0; `EOWNERDEAD` (the holder died:
    /// made consistent, and we hold it); `EBUSY` (try) and `ETIMEDOUT` (timed).
    /// `ENOTRECOVERABLE` only follows an unlock without `pthread_mutex_consistent`
    /// after `EOWNERDEAD`, which this code never does; `EINVAL` (not initialised),
    /// `EAGAIN` (recursion count) and `EDEADLK` (error-checking type) do not apply
    /// to such a mutex. They can only come from a process that overwrote the
    /// mutex, and all mean the same here: the lock is gone ([`Acquire::Lost`]).
    fn acquire(&self, deadline: Option<Instant>, try_only: bool) -> Acquire<'_, T> {
        let mutex = self.raw.header().mutex.get();
        let code = loop {
            let code = if try_only {
                // SAFETY: `mutex` points into our live mapping, initialised by the
                // segment's creator before any descriptor of it left that process.
                unsafe { libc::pthread_mutex_trylock(mutex) }
            } else if let Some(deadline) = deadline {
                let abs = realtime_deadline(deadline);
                // SAFETY: as above; `abs` is a live timespec.
                let code = unsafe { libc::pthread_mutex_timedlock(mutex, &abs) };
                if code == libc::ETIMEDOUT && Instant::now() < deadline {
                    // The wall clock moved: wait out the rest.
                    continue;
                }
                code
            } else {
                // SAFETY: as above.
                unsafe { libc::pthread_mutex_lock(mutex) }
            };
            break code;
        };
        let owner_died = match code {
            0 => false,
            libc::EOWNERDEAD => {
                // SAFETY: we hold the mutex, inconsistent since its owner died; marking
                // it consistent is what lets it be used again.
                unsafe { libc::pthread_mutex_consistent(mutex) };
                true
            }
            libc::EBUSY | libc::ETIMEDOUT => return Acquire::Busy,
            _ => return Acquire::Lost,
        };
        Acquire::Got(MutexGuard {
            segment: self,
            owner_died,
            _not_send: PhantomData,
        })
    }
}

/// What one attempt to take the mutex gave.
enum Acquire<'a, T> {
    /// The mutex is ours.
    Got(MutexGuard<'a, T>),
    /// Held by another (try, or timed out).
    Busy,
    /// The mutex can never be taken again (overwritten or not recoverable).
    Lost,
}

/// The wall-clock time (`CLOCK_REALTIME`, as `pthread_mutex_timedlock` takes)
/// at which `deadline` falls, as far as it can be told now.
fn realtime_deadline(deadline: Instant) -> libc::timespec {
    let left = deadline.saturating_duration_since(Instant::now());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let at = now
        .checked_add(left)
        .unwrap_or(Duration::from_secs(i64::MAX as u64 / 2));
    libc::timespec {
        tv_sec: at.as_secs().min(i64::MAX as u64 / 2) as libc::time_t,
        tv_nsec: at.subsec_nanos() as libc::c_long,
    }
}

/// Initialises the robust process-shared mutex at `mutex`.
fn init_robust_mutex(mutex: *mut libc::pthread_mutex_t) -> io::Result<()> {
    let check = |code: libc::c_int| {
        if code == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(code))
        }
    };
    // SAFETY: an all-zero pthread_mutexattr_t is valid storage for init to fill.
    let mut attr: libc::pthread_mutexattr_t = unsafe { std::mem::zeroed() };
    // SAFETY: `attr` is live for these calls and destroyed after; `mutex` points into
    // a fresh writable mapping that no other thread or process can see yet.
    unsafe {
        check(libc::pthread_mutexattr_init(&mut attr))?;
        let result = check(libc::pthread_mutexattr_setpshared(
            &mut attr,
            libc::PTHREAD_PROCESS_SHARED,
        ))
        .and_then(|()| {
            check(libc::pthread_mutexattr_setrobust(
                &mut attr,
                libc::PTHREAD_MUTEX_ROBUST,
            ))
        })
        .and_then(|()| check(libc::pthread_mutex_init(mutex, &attr)));
        libc::pthread_mutexattr_destroy(&mut attr);
        result
    }
}

/// The mutex of a [`Locked`] segment, held by this thread; unlocked on drop.
///
/// `!Send`: a robust mutex must be unlocked by the thread that locked it.
#[derive(Debug)]
pub(crate) struct MutexGuard<'a, T> {
    /// The segment whose mutex is held.
    segment: &'a Locked<T>,
    /// The previous holder died holding it.
    owner_died: bool,
    /// Not `Send` (see the type).
    _not_send: PhantomData<*mut ()>,
}

impl<T: Pod> MutexGuard<'_, T> {
    /// Whether the previous holder died holding the mutex (its data may be half
    /// written).
    pub(crate) fn owner_died(&self) -> bool {
        self.owner_died
    }

    /// The data.
    pub(crate) fn as_slice(&self) -> &[T] {
        // SAFETY: the data holds `len` elements of `T` (the mapping was made or
        // checked for `segment_size::<T>(len)`), at a page offset aligned for `T`
        // (checked there); `T: Pod` is valid for any bytes; the mutex, held by us,
        // excludes every writer in every process, for as long as `self` borrows it.
        unsafe { std::slice::from_raw_parts(self.segment.raw.data().cast::<T>(), self.segment.len) }
    }

    /// The data, mutably.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only reference made
        // through the guard, and the mutex excludes all others.
        unsafe {
            std::slice::from_raw_parts_mut(self.segment.raw.data().cast::<T>(), self.segment.len)
        }
    }

    /// The first element (the value of a `SharedValue`).
    pub(crate) fn first(&self) -> &T {
        // SAFETY: a segment always has room for at least one element (see
        // `segment_size`), aligned, in the mapping; `Pod`; the mutex is ours.
        unsafe { &*self.segment.raw.data().cast::<T>() }
    }

    /// The first element, mutably.
    pub(crate) fn first_mut(&mut self) -> &mut T {
        // SAFETY: as in `first`; `&mut self` makes this reference unique.
        unsafe { &mut *self.segment.raw.data().cast::<T>() }
    }
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this thread holds the mutex (the guard is not Send), made
        // consistent if its owner had died; the mapping outlives the guard.
        unsafe { libc::pthread_mutex_unlock(self.segment.raw.header().mutex.get()) };
    }
}

/// A read-only segment of `len` elements of `T`, sealed against every change.
#[derive(Debug)]
pub(crate) struct Frozen<T> {
    /// The read-only mapping.
    raw: Raw,
    /// Number of elements.
    len: usize,
    /// The element type: `fn() -> T` keeps the segment `Send + Sync` for any `T`,
    /// as a `Pod` is plain bytes that may be read and written from any thread.
    _elements: PhantomData<fn() -> T>,
}

impl<T: Pod> Frozen<T> {
    /// A new segment holding `values`, its header set by `header`: written
    /// through a writable mapping that is then unmapped, sealed (write, grow,
    /// shrink, seal) and mapped read-only.
    ///
    /// # Errors
    ///
    /// As [`Locked::create`].
    pub(crate) fn create(
        name: &str,
        values: &[T],
        header: impl FnOnce(&Header),
    ) -> io::Result<(OwnedFd, Frozen<T>)> {
        let total = segment_size::<T>(values.len())?;
        let fd = new_memfd(name, total)?;
        fill(fd.as_fd(), values)?;
        let raw = Raw::map(fd.as_fd(), total, true)?;
        header(raw.header());
        // F_SEAL_WRITE is refused while a writable shared mapping exists.
        drop(raw);
        rustix::fs::fcntl_add_seals(
            &fd,
            SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
        )?;
        let segment = Frozen {
            raw: Raw::map(fd.as_fd(), total, false)?,
            len: values.len(),
            _elements: PhantomData,
        };
        Ok((fd, segment))
    }

    /// Maps the segment of `len` elements that `fd` holds, read-only, after
    /// checking that it is sealed against writes and resizing and of the size.
    ///
    /// # Errors
    ///
    /// As [`Locked::attach`].
    pub(crate) fn attach(fd: BorrowedFd<'_>, len: usize) -> io::Result<Frozen<T>> {
        let total = segment_size::<T>(len)?;
        check_file(
            fd,
            SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK,
            total,
        )?;
        Ok(Frozen {
            raw: Raw::map(fd, total, false)?,
            len,
            _elements: PhantomData,
        })
    }

    /// The header.
    pub(crate) fn header(&self) -> &Header {
        self.raw.header()
    }

    /// The data.
    pub(crate) fn as_slice(&self) -> &[T] {
        // SAFETY: `len` elements of `T` at an aligned page offset inside the mapping
        // (made or checked for `segment_size::<T>(len)`); `Pod`; the file is sealed
        // against writes (set or checked above), so no process can change the bytes
        // while the slice lives; the mapping lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.raw.data().cast::<T>(), self.len) }
    }
}
