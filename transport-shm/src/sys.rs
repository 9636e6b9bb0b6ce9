//! The system calls of the shared-memory transport that need `unsafe`: the shared
//! mapping of the rings, and the descriptors placed in and adopted by the worker.
//!
//! The mapping is the only memory both processes write. Its accessors check every
//! offset and length against the mapping's size, so that nothing the other process
//! writes into the rings (positions, lengths) can make this one read or write
//! outside it; the values read may be anything, and the callers treat them as
//! untrusted.
#![allow(unsafe_code)]

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use rustix::fs::{FileType, fstat};
use rustix::io::{FdFlags, dup2, fcntl_setfd};
use rustix::mm::{MapFlags, ProtFlags, mmap, munmap};

/// A shared, writable mapping of a whole memfd, unmapped on drop.
///
/// Every access is bounds-checked against its length: the other process may write
/// anything into the mapping, but no offset can leave it.
#[derive(Debug)]
pub(crate) struct Mapping {
    /// The first byte.
    base: NonNull<u8>,
    /// Its length in bytes.
    len: usize,
}

// SAFETY: the mapping is plain shared memory: it may be used from any thread, and
// every access goes through atomics or bounds-checked copies.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only hands out atomics and copies.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` shared and writable.
    ///
    /// # Errors
    ///
    /// What `mmap` reports; `InvalidInput` for a zero length.
    pub(crate) fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // SAFETY: a fresh mapping chosen by the kernel (null hint), of a file we
        // hold; it overlaps no Rust object.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }?;
        let base = NonNull::new(ptr.cast::<u8>()).ok_or(io::ErrorKind::Other)?;
        Ok(Mapping { base, len })
    }

    /// The `AtomicU64` at `offset` (8-aligned, inside the mapping), or `None`.
    pub(crate) fn u64_at(&self, offset: usize) -> Option<&AtomicU64> {
        (offset.is_multiple_of(8) && offset.checked_add(8)? <= self.len).then(|| {
            // SAFETY: in bounds and aligned (the mapping is page-aligned); an
            // `AtomicU64` may alias memory another process writes atomically; it
            // lives as long as `&self`.
            unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU64>() }
        })
    }

    /// The `AtomicU32` at `offset` (4-aligned, inside the mapping), or `None`.
    pub(crate) fn u32_at(&self, offset: usize) -> Option<&AtomicU32> {
        (offset.is_multiple_of(4) && offset.checked_add(4)? <= self.len).then(|| {
            // SAFETY: as `u64_at`.
            unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU32>() }
        })
    }

    /// Copies `bytes` to `offset`; false (nothing copied) if it would leave the
    /// mapping.
    pub(crate) fn write_at(&self, offset: usize, bytes: &[u8]) -> bool {
        let Some(end) = offset.checked_add(bytes.len()) else {
            return false;
        };
        if end > self.len {
            return false;
        }
        // SAFETY: in bounds; the ring protocol gives this range to the writer alone
        // until it publishes it, and `bytes` is ours, so the two do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.base.as_ptr().add(offset),
                bytes.len(),
            );
        }
        true
    }

    /// Copies `out.len()` bytes from `offset`; false if it would leave the mapping.
    pub(crate) fn read_at(&self, offset: usize, out: &mut [u8]) -> bool {
        let Some(end) = offset.checked_add(out.len()) else {
            return false;
        };
        if end > self.len {
            return false;
        }
        // SAFETY: in bounds; the range was published by the writer and is not
        // written again until this side releases it (a hostile writer can change
        // bytes under the copy, which only changes the values read); `out` is ours.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            );
        }
        true
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once; no reference into it
        // outlives `self` (every accessor borrows `self`).
        let _ = unsafe { munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Places `fds` (the parent's copies, all above the targets) on descriptors
/// `targets` of the child `command` starts, between `fork` and `exec`.
pub(crate) fn place_on_exec(command: &mut Command, fds: [&OwnedFd; 3], targets: [RawFd; 3]) {
    let from = fds.map(AsRawFd::as_raw_fd);
    let hook = move || -> io::Result<()> {
        for (f, t) in from.into_iter().zip(targets) {
            place(f, t)?;
        }
        Ok(())
    };
    // SAFETY: the hook runs in the child between fork and exec; it only makes dup2
    // system calls on descriptors the parent keeps open across the spawn.
    unsafe {
        command.pre_exec(hook);
    }
}

/// `dup2(from, to)` in the forked child.
fn place(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: `from` is open in the child: the parent holds it across the spawn.
    let from = unsafe { BorrowedFd::borrow_raw(from) };
    // SAFETY: `to` is only a dup2 target, never closed through this handle.
    let mut to = ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(to) });
    dup2(from, &mut to)?;
    Ok(())
}

/// In a worker: takes descriptor `fd` if it is open and of `kind` (the memfd is a
/// regular file, an eventfd is not), and makes it close-on-exec.
///
/// # Errors
///
/// `EBADF` if it is not open, `InvalidInput` if it is of another kind.
pub(crate) fn adopt(fd: RawFd, regular: bool) -> io::Result<OwnedFd> {
    // SAFETY: a borrow for `fstat` only; a closed number fails with EBADF.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let is_regular = FileType::from_raw_mode(fstat(borrowed)?.st_mode) == FileType::RegularFile;
    if is_regular != regular {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} is not what a procpool shm transport placed there"),
        ));
    }
    // SAFETY: placed for this process by the transport's spawn; adopted once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl_setfd(owned.as_fd(), FdFlags::CLOEXEC)?;
    Ok(owned)
}
