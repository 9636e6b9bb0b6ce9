//! [`SharedSlice`]: read-only data mapped into every process that gets a handle,
//! without a copy per task.
//!
//! The data is written once into a `memfd` (see `memory`), which is then sealed
//! (`F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL`) and mapped
//! read-only: no process, not even the creator, can change or truncate it any
//! more, so a plain `&[T]` into it needs no lock. A process that receives a handle
//! checks the seals before it maps the file.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::memory::{self, Kind, Segment};
use crate::error::Error;
use crate::sys::shm::Frozen;

/// Immutable data shared by processes: derefs to `[T]` in every process, from
/// pages mapped once per process, not copied into each task's arguments.
///
/// ```rust,ignore
/// let table = SharedSlice::from_slice(&big_table)?;      // one copy, into shared memory
/// pool.map(lookup, keys.iter().map(|&k| (table.clone(), k)).collect())?;
/// // in the task: table[k]
/// ```
///
/// The handle serializes as a few bytes and a descriptor (see the crate's notes
/// on handles); the memory is freed when the last handle in any process is gone,
/// also if processes were killed. Zero elements are allowed.
pub struct SharedSlice<T: Pod> {
    /// The segment, shared by the clones in this process.
    segment: Arc<Segment<Frozen<T>>>,
    /// The element type.
    _elements: PhantomData<fn() -> T>,
}

impl<T: Pod> SharedSlice<T> {
    /// A new shared slice holding a copy of `values`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a size that overflows, a zero-sized `T` or
    /// one aligned to more than a page; [`Error::Io`] if the memory cannot be had
    /// or sealed.
    pub fn from_slice(values: &[T]) -> Result<Self, Error> {
        let id = memory::new_id()?;
        let elem = memory::elem_size::<T>()?;
        let len = values.len() as u64;
        let (fd, map) = Frozen::create(
            Kind::Slice.name(),
            values,
            memory::stamp(id, Kind::Slice, elem, len),
        )
        .map_err(memory::create_error)?;
        Ok(SharedSlice {
            segment: Segment::new(fd, map, id, Kind::Slice, elem, len),
            _elements: PhantomData,
        })
    }
}

impl<T: Pod> Deref for SharedSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.segment.map().as_slice()
    }
}

impl<T: Pod> AsRef<[T]> for SharedSlice<T> {
    fn as_ref(&self) -> &[T] {
        self
    }
}

impl<T: Pod> SharedSlice<T> {
    /// The segment (for tests that follow its file).
    #[cfg(test)]
    pub(crate) fn segment(&self) -> &Segment<Frozen<T>> {
        &self.segment
    }
}

impl<T: Pod> Clone for SharedSlice<T> {
    fn clone(&self) -> Self {
        SharedSlice {
            segment: self.segment.clone(),
            _elements: PhantomData,
        }
    }
}

impl<T: Pod> fmt::Debug for SharedSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SharedSlice<{}>({:?})",
            std::any::type_name::<T>(),
            self.segment
        )
    }
}

impl<T: Pod> Serialize for SharedSlice<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.segment.serialize(serializer)
    }
}

impl<'de, T: Pod> Deserialize<'de> for SharedSlice<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let elem = memory::elem_size::<T>().map_err(serde::de::Error::custom)?;
        Ok(SharedSlice {
            segment: Segment::deserialize(deserializer, Kind::Slice, elem)?,
            _elements: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::SealFlags;

    #[test]
    fn a_slice_holds_its_data_sealed_and_read_only() {
        let data: Vec<u64> = (0..10_000).collect();
        let slice = SharedSlice::from_slice(&data).unwrap();
        assert_eq!(&*slice, &data[..]);
        let seals = rustix::fs::fcntl_get_seals(slice.segment().fd()).unwrap();
        let all = SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL;
        assert!(seals.contains(all), "{seals:?}");
        // Nobody can resize it; this process maps it read-only.
        let write = rustix::fs::ftruncate(slice.segment().fd(), 0);
        assert!(write.is_err(), "cannot shrink");
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let ino = crate::share::memory::testing::inode(slice.segment().fd()).to_string();
        let line = maps
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some(ino.as_str()))
            .unwrap();
        assert!(
            line.split_whitespace().nth(1).unwrap().starts_with("r--s"),
            "{line}"
        );
    }

    #[test]
    fn empty_slices_and_decoded_handles() {
        let empty = SharedSlice::<u32>::from_slice(&[]).unwrap();
        assert!(empty.is_empty());
        let slice = SharedSlice::from_slice(&[3u64, 1, 4, 1, 5]).unwrap();
        let bytes = postcard::to_allocvec(&slice).unwrap();
        let _ = crate::handoff::take_kept();
        let copy: SharedSlice<u64> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(
            copy.as_ptr(),
            slice.as_ptr(),
            "the same mapping, not a copy"
        );
        assert!(
            postcard::from_bytes::<SharedSlice<u32>>(&bytes).is_err(),
            "element size"
        );
        assert!(postcard::from_bytes::<SharedSlice<u64>>(&bytes[..bytes.len() - 1]).is_err());
        assert!(postcard::from_bytes::<SharedSlice<u64>>(&[0xff; 32]).is_err());
        let bytes = postcard::to_allocvec(&empty).unwrap();
        let _ = crate::handoff::take_kept();
        assert!(
            postcard::from_bytes::<SharedSlice<u32>>(&bytes)
                .unwrap()
                .is_empty()
        );
    }
}
