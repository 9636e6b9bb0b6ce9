//! [`SharedValue`] and [`SharedArray`]: plain data in shared memory behind a
//! robust process-shared mutex — Python's `multiprocessing.Value` and `Array`.
//!
//! The data sits in a `memfd` segment (see `memory`) after a header that holds a
//! glibc robust `PTHREAD_PROCESS_SHARED` mutex; every clone of a handle, in every
//! process, maps the same pages and locks the same mutex. A process (or thread)
//! that dies holding a guard does not leave it locked: the next `lock` gets it,
//! and its guard's `owner_died()` says the data may be half written. There is no
//! poisoning: a panic while a guard is held unlocks it, as Python's lock would.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::memory::{self, Kind, Segment};
use super::sync::deadline_after;
use crate::error::Error;
use crate::sys::shm::{Locked, MutexGuard};

/// One value of type `T` shared by processes, behind a process-shared lock: what
/// Python's `multiprocessing.Value` is.
///
/// ```rust,ignore
/// let hits = SharedValue::new(0u64)?;
/// pool.map(count, vec![hits.clone(); 100])?;   // each task: *hits.lock() += 1
/// assert_eq!(hits.get(), 100);
/// ```
///
/// A handle is `Clone + Send + Sync + Serialize + Deserialize`: pass it as an
/// argument of a pool task or of `Process::spawn`, in a channel message or a
/// result; every clone, in whatever process, is the same value (its descriptor
/// travels with it; see the crate's notes on handles). The memory is freed when
/// the last handle in any process is gone, also if processes were killed.
///
/// A process that dies holding the lock does not leave it locked: the next
/// [`lock`](Self::lock) gets it, and [`ValueGuard::owner_died`] is true.
pub struct SharedValue<T: Pod> {
    /// The segment, shared by the clones in this process.
    segment: Arc<Segment<Locked<T>>>,
    /// The value type (a `Pod` is plain bytes: sharing it is always sound).
    _value: PhantomData<fn() -> T>,
}

impl<T: Pod> SharedValue<T> {
    /// A new shared value holding `value`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the shared memory cannot be made (`memfd_create`, `mmap`,
    /// out of memory or descriptors); [`Error::InvalidArgument`] for a zero-sized
    /// `T` or one aligned to more than a page.
    pub fn new(value: T) -> Result<Self, Error> {
        let id = memory::new_id()?;
        let elem = memory::elem_size::<T>()?;
        let (fd, map) = Locked::create(
            Kind::Value.name(),
            1,
            Some(std::slice::from_ref(&value)),
            memory::stamp(id, Kind::Value, elem, 1),
        )
        .map_err(memory::create_error)?;
        Ok(SharedValue {
            segment: Segment::new(fd, map, id, Kind::Value, elem, 1),
            _value: PhantomData,
        })
    }

    /// Locks the value, blocking until no other thread or process holds it.
    ///
    /// Locking it again from the thread that holds it deadlocks, as with
    /// `std::sync::Mutex`.
    pub fn lock(&self) -> ValueGuard<'_, T> {
        ValueGuard {
            raw: self.segment.map().lock(),
        }
    }

    /// Locks the value if it is free right now.
    pub fn try_lock(&self) -> Option<ValueGuard<'_, T>> {
        self.segment.map().try_lock().map(|raw| ValueGuard { raw })
    }

    /// Locks the value, waiting `timeout` at most.
    pub fn lock_timeout(&self, timeout: Duration) -> Option<ValueGuard<'_, T>> {
        match deadline_after(timeout) {
            Some(deadline) => self
                .segment
                .map()
                .lock_until(deadline)
                .map(|raw| ValueGuard { raw }),
            None => Some(self.lock()),
        }
    }

    /// A copy of the value, taken under the lock.
    pub fn get(&self) -> T {
        *self.lock()
    }
}

/// The lock of a [`SharedValue`], held: derefs to the value; unlocks on drop.
///
/// Not `Send`: the thread that locked must unlock.
pub struct ValueGuard<'a, T: Pod> {
    /// The held mutex.
    raw: MutexGuard<'a, T>,
}

impl<T: Pod> ValueGuard<'_, T> {
    /// Whether the previous holder of the lock died holding it (a process killed
    /// or a thread that ended inside its critical section): the value may be half
    /// updated.
    pub fn owner_died(&self) -> bool {
        self.raw.owner_died()
    }
}

impl<T: Pod> Deref for ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.raw.first()
    }
}

impl<T: Pod> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.raw.first_mut()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ValueGuard").field(&**self).finish()
    }
}

impl<T: Pod> SharedValue<T> {
    /// The segment (for tests that follow its file).
    #[cfg(test)]
    pub(crate) fn segment(&self) -> &Segment<Locked<T>> {
        &self.segment
    }
}

impl<T: Pod> Clone for SharedValue<T> {
    fn clone(&self) -> Self {
        SharedValue {
            segment: self.segment.clone(),
            _value: PhantomData,
        }
    }
}

impl<T: Pod> fmt::Debug for SharedValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Without the value: reading it would need the lock, which may be held.
        write!(
            f,
            "SharedValue<{}>({:?})",
            std::any::type_name::<T>(),
            self.segment
        )
    }
}

impl<T: Pod> Serialize for SharedValue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.segment.serialize(serializer)
    }
}

impl<'de, T: Pod> Deserialize<'de> for SharedValue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let elem = memory::elem_size::<T>().map_err(serde::de::Error::custom)?;
        Ok(SharedValue {
            segment: Segment::deserialize(deserializer, Kind::Value, elem)?,
            _value: PhantomData,
        })
    }
}

/// A fixed-length array of `T` shared by processes, behind one process-shared
/// lock: what Python's `multiprocessing.Array` is.
///
/// ```rust,ignore
/// let a = SharedArray::<f64>::zeroed(1_000_000)?;
/// a.lock()[7] = 1.5;
/// assert_eq!(a.to_vec()[7], 1.5);
/// ```
///
/// Handles travel and are freed as [`SharedValue`]'s do; a process that dies
/// holding the lock leaves it to the next [`lock`](Self::lock) in the same way.
/// Zero elements are allowed.
pub struct SharedArray<T: Pod> {
    /// The segment, shared by the clones in this process.
    segment: Arc<Segment<Locked<T>>>,
    /// The element type.
    _elements: PhantomData<fn() -> T>,
}

impl<T: Pod> SharedArray<T> {
    /// A new array of `len` zeroed elements.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `len` elements overflow the address space, or
    /// for a zero-sized `T` or one aligned to more than a page; [`Error::Io`] if
    /// the memory cannot be had.
    pub fn zeroed(len: usize) -> Result<Self, Error> {
        Self::make(len, None)
    }

    /// A new array holding a copy of `values`.
    ///
    /// # Errors
    ///
    /// As [`zeroed`](Self::zeroed).
    pub fn from_slice(values: &[T]) -> Result<Self, Error> {
        Self::make(values.len(), Some(values))
    }

    /// A new array of `len` elements, copied from `values` if given.
    fn make(len: usize, values: Option<&[T]>) -> Result<Self, Error> {
        let id = memory::new_id()?;
        let elem = memory::elem_size::<T>()?;
        let (fd, map) = Locked::create(
            Kind::Array.name(),
            len,
            values,
            memory::stamp(id, Kind::Array, elem, len as u64),
        )
        .map_err(memory::create_error)?;
        Ok(SharedArray {
            segment: Segment::new(fd, map, id, Kind::Array, elem, len as u64),
            _elements: PhantomData,
        })
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.segment.map().len()
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Locks the array, blocking until no other thread or process holds it.
    ///
    /// Locking it again from the thread that holds it deadlocks.
    pub fn lock(&self) -> ArrayGuard<'_, T> {
        ArrayGuard {
            raw: self.segment.map().lock(),
        }
    }

    /// Locks the array if it is free right now.
    pub fn try_lock(&self) -> Option<ArrayGuard<'_, T>> {
        self.segment.map().try_lock().map(|raw| ArrayGuard { raw })
    }

    /// Locks the array, waiting `timeout` at most.
    pub fn lock_timeout(&self, timeout: Duration) -> Option<ArrayGuard<'_, T>> {
        match deadline_after(timeout) {
            Some(deadline) => self
                .segment
                .map()
                .lock_until(deadline)
                .map(|raw| ArrayGuard { raw }),
            None => Some(self.lock()),
        }
    }

    /// A copy of the elements, taken under the lock.
    pub fn to_vec(&self) -> Vec<T> {
        self.lock().to_vec()
    }
}

/// The lock of a [`SharedArray`], held: derefs to the elements; unlocks on drop.
///
/// Not `Send`: the thread that locked must unlock.
pub struct ArrayGuard<'a, T: Pod> {
    /// The held mutex.
    raw: MutexGuard<'a, T>,
}

impl<T: Pod> ArrayGuard<'_, T> {
    /// Whether the previous holder of the lock died holding it: the elements may
    /// be half updated.
    pub fn owner_died(&self) -> bool {
        self.raw.owner_died()
    }
}

impl<T: Pod> Deref for ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.raw.as_slice()
    }
}

impl<T: Pod> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.raw.as_mut_slice()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ArrayGuard").field(&&**self).finish()
    }
}

impl<T: Pod> SharedArray<T> {
    /// The segment (for tests that follow its file).
    #[cfg(test)]
    pub(crate) fn segment(&self) -> &Segment<Locked<T>> {
        &self.segment
    }
}

impl<T: Pod> Clone for SharedArray<T> {
    fn clone(&self) -> Self {
        SharedArray {
            segment: self.segment.clone(),
            _elements: PhantomData,
        }
    }
}

impl<T: Pod> fmt::Debug for SharedArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SharedArray<{}>({:?})",
            std::any::type_name::<T>(),
            self.segment
        )
    }
}

impl<T: Pod> Serialize for SharedArray<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.segment.serialize(serializer)
    }
}

impl<'de, T: Pod> Deserialize<'de> for SharedArray<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let elem = memory::elem_size::<T>().map_err(serde::de::Error::custom)?;
        Ok(SharedArray {
            segment: Segment::deserialize(deserializer, Kind::Array, elem)?,
            _elements: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn a_value_is_shared_by_threads_under_its_lock() {
        let value = SharedValue::new(0u64).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let value = value.clone();
                thread::spawn(move || {
                    for _ in 0..1000 {
                        let mut guard = value.lock();
                        let seen = *guard;
                        thread::yield_now();
                        *guard = seen + 1;
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(value.get(), 4000, "no increment lost");
    }

    #[test]
    fn a_held_lock_is_busy_for_others_until_dropped() {
        let value = SharedValue::new([1u32, 2]).unwrap();
        let guard = value.lock();
        let other = value.clone();
        let busy = thread::spawn(move || {
            let start = std::time::Instant::now();
            let timed = other.lock_timeout(Duration::from_millis(50)).is_none();
            (other.try_lock().is_none(), timed, start.elapsed())
        })
        .join()
        .unwrap();
        assert!(busy.0 && busy.1, "busy while held");
        assert!(
            busy.2 >= Duration::from_millis(50),
            "waited out the timeout"
        );
        drop(guard);
        assert_eq!(value.try_lock().map(|g| *g), Some([1, 2]));
    }

    #[test]
    fn a_thread_that_dies_holding_the_lock_leaves_it_to_the_next() {
        let value = SharedValue::new(1u8).unwrap();
        let dying = value.clone();
        thread::spawn(move || {
            let mut guard = dying.lock();
            *guard = 2;
            // Ends holding it, as a killed process would.
            std::mem::forget(guard);
        })
        .join()
        .unwrap();
        let guard = value
            .lock_timeout(Duration::from_secs(5))
            .expect("recovered");
        assert!(guard.owner_died(), "told that the holder died");
        assert_eq!(*guard, 2);
        drop(guard);
        let guard = value.lock();
        assert!(!guard.owner_died(), "consistent again");
    }

    #[test]
    fn arrays_copy_in_and_out_and_may_be_empty() {
        let array = SharedArray::from_slice(&[1.5f64, 2.5, 3.5]).unwrap();
        assert_eq!((array.len(), array.is_empty()), (3, false));
        array.lock()[1] = 9.0;
        assert_eq!(array.to_vec(), [1.5, 9.0, 3.5]);
        let zeroed = SharedArray::<u16>::zeroed(100_000).unwrap();
        assert!(zeroed.to_vec().iter().all(|&x| x == 0));
        let empty = SharedArray::<u64>::zeroed(0).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.lock().len(), 0);
        assert!(
            SharedArray::<u8>::from_slice(&[])
                .unwrap()
                .to_vec()
                .is_empty()
        );
    }

    #[test]
    fn sizes_that_cannot_be_are_invalid_arguments() {
        let e = SharedArray::<u64>::zeroed(usize::MAX).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        let e = SharedArray::<()>::zeroed(4).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        assert!(matches!(
            SharedValue::new(()),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_decoded_handle_is_the_same_object() {
        let value = SharedValue::new(7i32).unwrap();
        let bytes = postcard::to_allocvec(&value).unwrap();
        assert_eq!(
            crate::handoff::take_kept().len(),
            1,
            "a held export keeps the segment"
        );
        let copy: SharedValue<i32> = postcard::from_bytes(&bytes).unwrap();
        *copy.lock() = -1;
        assert_eq!(value.get(), -1);

        let array = SharedArray::from_slice(&[0u8; 16]).unwrap();
        let bytes = postcard::to_allocvec(&array).unwrap();
        let _ = crate::handoff::take_kept();
        let copy: SharedArray<u8> = postcard::from_bytes(&bytes).unwrap();
        array.lock()[15] = 42;
        assert_eq!(copy.to_vec()[15], 42);
        // Same bytes, another element type of the same size: a view of its own.
        let longs = SharedArray::from_slice(&[1u64, 2]).unwrap();
        let bytes = postcard::to_allocvec(&longs).unwrap();
        let _ = crate::handoff::take_kept();
        let view: SharedArray<[u32; 2]> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(view.to_vec(), [[1, 0], [2, 0]]);
    }

    #[test]
    fn handles_are_what_the_api_promises() {
        fn handle<H>()
        where
            H: Clone + Send + Sync + Serialize + serde::de::DeserializeOwned + fmt::Debug + 'static,
        {
        }
        handle::<SharedValue<u64>>();
        handle::<SharedArray<f64>>();
        let value = SharedValue::new(3u16).unwrap();
        assert!(format!("{value:?}").starts_with("SharedValue<u16>(Value "));
        assert_eq!(format!("{:?}", value.lock()), "ValueGuard(3)");
    }
}
