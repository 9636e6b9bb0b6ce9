//! The system calls of the shared-memory transport that need `unsafe`: the shared
//! mapping of the rings. (The descriptors placed in and adopted by the worker go
//! through `procpool_core::transport::{place_on_exec, adopt}`.)
//!
//! The mapping is the only memory both processes write. Its accessors check every
//! offset and length against the mapping's size, so that nothing the other process
//! writes into the rings (positions, lengths) can make this one read or write
//! outside it; the values read may be anything, and the callers treat them as
//! untrusted.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

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
