//! The segment behind every shared-memory and sync handle: a `memfd` mapped in
//! this process, its header, its serialized form, and the per-process cache of
//! live mappings.
//!
//! A [`Segment`] is created by a handle's constructor, and shared by all clones of
//! the handle in this process through an `Arc`; dropping the last one unmaps the
//! memory and closes the descriptor. The kernel frees the file once no process has
//! a descriptor or a mapping of it left, also after `kill -9`; nothing is ever
//! named in the file system.
//!
//! A handle serializes as its object id, its length, its element size and the
//! token of its descriptor (`handoff` tells how that descriptor reaches another
//! process, running or not). Deserializing takes the descriptor, checks its seals
//! and size, maps it and checks that the header matches — magic, kind, element
//! size, length and id — so a truncated, hostile or mistyped message is a serde
//! error, never a panic or a wrong mapping. A handle decoded again in a process
//! that already maps the object reuses that mapping.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::handoff::{self, Keep};
use crate::sys::shm::Header;

/// The magic of a segment's header: `procpool` in ASCII.
const MAGIC: u64 = u64::from_le_bytes(*b"procpool");

/// Which handle type a segment belongs to (stored in its header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Kind {
    /// `SharedValue`.
    Value = 1,
    /// `SharedArray`.
    Array = 2,
    /// `SharedSlice`.
    Slice = 3,
    /// `Lock`.
    Lock = 4,
    /// `Event`.
    Event = 5,
    /// `Barrier`.
    Barrier = 6,
    /// `Semaphore`.
    Semaphore = 7,
}

impl Kind {
    /// The memfd's name (seen in `/proc/<pid>/maps` as `/memfd:<name>`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Value => "procpool-value",
            Kind::Array => "procpool-array",
            Kind::Slice => "procpool-slice",
            Kind::Lock => "procpool-lock",
            Kind::Event => "procpool-event",
            Kind::Barrier => "procpool-barrier",
            Kind::Semaphore => "procpool-semaphore",
        }
    }

    /// How many elements of data a segment of this kind with header length `len`
    /// holds: the sync objects keep only their count there.
    fn data_len(self, len: usize) -> usize {
        match self {
            Kind::Value | Kind::Array | Kind::Slice => len,
            Kind::Lock | Kind::Event | Kind::Barrier | Kind::Semaphore => 0,
        }
    }
}

/// A mapping type of `sys::shm` (read-write behind a mutex, or frozen).
pub(crate) trait Map: Send + Sync + Sized + 'static {
    /// Maps the file `fd` of `len` data elements (see `sys::shm`).
    fn attach(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self>;
    /// The header.
    fn header(&self) -> &Header;
}

impl<T: bytemuck::Pod> Map for crate::sys::shm::Locked<T> {
    fn attach(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        Self::attach(fd, len)
    }
    fn header(&self) -> &Header {
        self.header()
    }
}

impl<T: bytemuck::Pod> Map for crate::sys::shm::Frozen<T> {
    fn attach(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        Self::attach(fd, len)
    }
    fn header(&self) -> &Header {
        self.header()
    }
}

/// One shared object as mapped in this process.
pub(crate) struct Segment<M> {
    /// The memfd, kept open to pass on when a handle is serialized.
    fd: OwnedFd,
    /// The mapping.
    map: M,
    /// The object's id.
    id: u128,
    /// Its kind.
    kind: Kind,
    /// The header's length (elements, or a sync object's count).
    len: u64,
    /// `size_of` the element type.
    elem: u32,
}

/// Live segments of this process by object id, for [`Segment::deserialize`].
static CACHE: Mutex<BTreeMap<u128, Weak<dyn Any + Send + Sync>>> = Mutex::new(BTreeMap::new());

/// A new random object id.
///
/// # Errors
///
/// [`Error::Io`] if the kernel's random source cannot be read.
pub(crate) fn new_id() -> Result<u128, Error> {
    crate::transport::random_secret()
}

/// `size_of::<T>()` as stored in a header.
///
/// # Errors
///
/// [`Error::InvalidArgument`] for a type of 4 GiB or more.
pub(crate) fn elem_size<T>() -> Result<u32, Error> {
    u32::try_from(std::mem::size_of::<T>())
        .map_err(|_| Error::InvalidArgument("a shared element type of 4 GiB or more".into()))
}

/// Writes the header of a new segment (before any descriptor of it leaves).
pub(crate) fn stamp(id: u128, kind: Kind, elem: u32, len: u64) -> impl FnOnce(&Header) {
    move |header: &Header| {
        header.id[0].store(id as u64, Ordering::Relaxed);
        header.id[1].store((id >> 64) as u64, Ordering::Relaxed);
        header.kind.store(kind as u32, Ordering::Relaxed);
        header.elem_size.store(elem, Ordering::Relaxed);
        header.len.store(len, Ordering::Relaxed);
        header.magic.store(MAGIC, Ordering::Release);
    }
}

/// The error of a system call made creating a segment: a size the system refuses
/// as such is the caller's [`Error::InvalidArgument`].
pub(crate) fn create_error(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::InvalidInput {
        Error::InvalidArgument(e.to_string())
    } else {
        Error::from(e)
    }
}

/// The serialized form of a handle, as written: the descriptor goes through
/// `handoff::serialize_fd`.
#[derive(Serialize)]
#[serde(bound = "M: Map")]
struct WireOut<'a, M> {
    /// The object's id.
    id: u128,
    /// The header's length.
    len: u64,
    /// `size_of` the element type.
    elem: u32,
    /// The memfd's token (see `handoff`).
    fd: FdOut<'a, M>,
}

/// The descriptor of a segment, serialized as its token.
struct FdOut<'a, M>(&'a Arc<Segment<M>>);

impl<M: Map> Serialize for FdOut<'_, M> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let segment = self.0;
        handoff::serialize_fd(
            segment.fd.as_fd(),
            || -> Keep { segment.clone() },
            serializer,
        )
    }
}

/// The serialized form of a handle, as read: [`WireOut`]'s fields, the
/// descriptor taken by `handoff::deserialize_fd`.
#[derive(Deserialize)]
struct WireIn {
    /// The object's id.
    id: u128,
    /// The header's length.
    len: u64,
    /// `size_of` the element type.
    elem: u32,
    /// The descriptor the token named, now this process's.
    fd: FdIn,
}

/// A descriptor read from its token.
struct FdIn(OwnedFd);

impl<'de> Deserialize<'de> for FdIn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        handoff::deserialize_fd(deserializer).map(FdIn)
    }
}

impl<M: Map> Segment<M> {
    /// The segment of a new object, just created by `sys::shm` with the header
    /// [`stamp`] wrote; registered in this process's cache.
    pub(crate) fn new(fd: OwnedFd, map: M, id: u128, kind: Kind, elem: u32, len: u64) -> Arc<Self> {
        let segment = Arc::new(Segment {
            fd,
            map,
            id,
            kind,
            len,
            elem,
        });
        segment.register();
        segment
    }

    /// The mapping.
    pub(crate) fn map(&self) -> &M {
        &self.map
    }

    /// The header's length: elements, or the count of a sync object.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The memfd (for tests that follow the file).
    #[cfg(test)]
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Notes this segment in the cache of live mappings.
    fn register(self: &Arc<Self>) {
        let weak: Weak<dyn Any + Send + Sync> = Arc::downgrade(self) as Weak<dyn Any + Send + Sync>;
        // The entry replaced, if any, is a dead one: dropping a `Weak` runs no
        // `Drop` of a segment, so holding the lock meanwhile is fine.
        crate::sync::lock(&CACHE).insert(self.id, weak);
    }

    /// Serializes the handle of this segment (see the module): the descriptor's
    /// token keeps a clone of the segment alive for a held export.
    ///
    /// # Errors
    ///
    /// The serializer's, or its custom error if the descriptor cannot be exported.
    pub(crate) fn serialize<S: serde::Serializer>(
        self: &Arc<Self>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        WireOut {
            id: self.id,
            len: self.len,
            elem: self.elem,
            fd: FdOut(self),
        }
        .serialize(serializer)
    }

    /// Deserializes a handle of `kind` with elements of `elem` bytes: the segment
    /// this process maps already, or the descriptor's file, checked and mapped.
    ///
    /// # Errors
    ///
    /// The deserializer's error for a form that does not decode; its custom error
    /// for a descriptor that cannot be had (see `handoff`), or a file that is not
    /// this object: wrong seals or size, or a header whose magic, kind, element
    /// size, length or id differ.
    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
        kind: Kind,
        elem: u32,
    ) -> Result<Arc<Self>, D::Error> {
        let wire = WireIn::deserialize(deserializer)?;
        Self::open(wire, kind, elem).map_err(serde::de::Error::custom)
    }

    /// The segment a decoded [`WireIn`] names (see [`Segment::deserialize`]), or
    /// what is wrong with it. A mapping this process has already is used (the
    /// descriptor just taken is then closed again).
    fn open(wire: WireIn, kind: Kind, elem: u32) -> Result<Arc<Self>, String> {
        let refuse = |what: &str| {
            format!("the handle does not name a shared {kind:?} of {elem}-byte elements: {what}")
        };
        if wire.elem != elem {
            return Err(refuse(&format!("its elements are {} bytes", wire.elem)));
        }
        let len = usize::try_from(wire.len).map_err(|_| refuse("its length overflows"))?;
        let hit = crate::sync::lock(&CACHE)
            .get(&wire.id)
            .and_then(Weak::upgrade);
        // A mapping of the object with another element type of the same size (a
        // `[u8; 8]` view of `u64`s) is no hit: the file is mapped again for this one.
        if let Some(Ok(segment)) = hit.map(|live| live.downcast::<Self>()) {
            if segment.kind != kind || segment.len != wire.len {
                return Err(refuse("it is another kind of object"));
            }
            return Ok(segment);
        }
        let fd = wire.fd.0;
        let map = M::attach(fd.as_fd(), kind.data_len(len)).map_err(|e| refuse(&e.to_string()))?;
        let header = map.header();
        let id = u128::from(header.id[0].load(Ordering::Relaxed))
            | (u128::from(header.id[1].load(Ordering::Relaxed)) << 64);
        if header.magic.load(Ordering::Acquire) != MAGIC {
            return Err(refuse("not a procpool shared-memory file"));
        }
        if header.kind.load(Ordering::Relaxed) != kind as u32 {
            return Err(refuse("it is another kind of object"));
        }
        if header.elem_size.load(Ordering::Relaxed) != elem
            || header.len.load(Ordering::Relaxed) != wire.len
        {
            return Err(refuse("its header says another element size or length"));
        }
        if id != wire.id {
            return Err(refuse("its header has another object id"));
        }
        let segment = Arc::new(Segment {
            fd,
            map,
            id,
            kind,
            len: wire.len,
            elem,
        });
        segment.register();
        Ok(segment)
    }
}

impl<M> fmt::Debug for Segment<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {:032x} (len {})", self.kind, self.id, self.len)
    }
}

impl<M> Drop for Segment<M> {
    fn drop(&mut self) {
        // Forget the entry unless it is already another live mapping of the object.
        let mut cache = crate::sync::lock(&CACHE);
        if cache
            .get(&self.id)
            .is_some_and(|weak| weak.strong_count() == 0)
        {
            cache.remove(&self.id);
        }
    }
}

/// Test helpers: where a segment's file shows up in this process.
#[cfg(test)]
pub(crate) mod testing {
    use std::os::fd::BorrowedFd;
    use std::os::unix::fs::MetadataExt;

    /// The inode of the file `fd`.
    pub(crate) fn inode(fd: BorrowedFd<'_>) -> u64 {
        rustix::fs::fstat(fd).unwrap().st_ino
    }

    /// The descriptors and mappings of this process that refer to the memfd with
    /// inode `ino` (exact, whatever other tests do meanwhile).
    pub(crate) fn traces(ino: u64) -> (usize, usize) {
        let fds = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|entry| {
                let link = std::fs::read_link(entry.path()).unwrap_or_default();
                link.to_string_lossy().contains("memfd:procpool-")
                    && std::fs::metadata(entry.path()).is_ok_and(|m| m.ino() == ino)
            })
            .count();
        let maps = std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter(|line| {
                line.contains("memfd:procpool-")
                    && line.split_whitespace().nth(4) == Some(ino.to_string().as_str())
            })
            .count();
        (fds, maps)
    }

    /// Forgets the cached mapping of object `id`, as if this were another process.
    pub(crate) fn forget(id: u128) {
        crate::sync::lock(&super::CACHE).remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{forget, inode, traces};
    use super::*;
    use crate::share::slice::SharedSlice;
    use crate::share::sync::Event;
    use crate::share::value::{SharedArray, SharedValue};

    /// The serialized form of a handle, with its token as is (to forge forms).
    #[derive(Serialize, Deserialize)]
    struct Wire {
        id: u128,
        len: u64,
        elem: u32,
        fd: handoff::FdToken,
    }

    /// The id of a serialized handle.
    fn id_of(bytes: &[u8]) -> u128 {
        postcard::from_bytes::<Wire>(bytes).unwrap().id
    }

    #[test]
    fn every_descriptor_and_mapping_goes_with_the_last_handle() {
        let array = SharedArray::<u32>::from_slice(&[1, 2, 3]).unwrap();
        let ino = inode(array.segment().fd());
        assert_eq!(traces(ino), (1, 1), "one memfd, one mapping");
        let clone = array.clone();
        let bytes = postcard::to_allocvec(&array).unwrap();
        let _ = handoff::take_kept();
        let decoded: SharedArray<u32> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(
            traces(ino),
            (1, 1),
            "clones and decoded copies share the mapping"
        );
        drop((array, clone));
        assert_eq!(decoded.to_vec(), [1, 2, 3]);
        drop(decoded);
        assert_eq!(
            traces(ino),
            (0, 0),
            "nothing left once the last handle is gone"
        );

        let slice = SharedSlice::from_slice(&[7u8; 10_000]).unwrap();
        let event = Event::new().unwrap();
        let (s, e) = (inode(slice.segment().fd()), inode(event.segment().fd()));
        assert_eq!((traces(s), traces(e)), ((1, 1), (1, 1)));
        drop((slice, event));
        assert_eq!((traces(s), traces(e)), ((0, 0), (0, 0)));
    }

    #[test]
    fn a_second_mapping_of_the_file_is_the_same_object() {
        // What another process does: import the descriptor and map it again.
        let value = SharedValue::new(5u64).unwrap();
        let ino = inode(value.segment().fd());
        let bytes = postcard::to_allocvec(&value).unwrap();
        let _ = handoff::take_kept();
        forget(id_of(&bytes));
        let twin: SharedValue<u64> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(traces(ino), (2, 2), "a mapping of its own");
        *twin.lock() += 1;
        assert_eq!(value.get(), 6);
        let held = value.lock();
        assert!(
            twin.try_lock().is_none(),
            "one mutex, seen through both mappings"
        );
        drop(held);
        assert!(twin.try_lock().is_some());
        drop((value, twin));
        assert_eq!(traces(ino), (0, 0));
    }

    #[test]
    fn a_form_that_does_not_name_the_object_is_an_error() {
        type Values = Segment<crate::sys::shm::Locked<u64>>;
        let value = SharedValue::new(5u64).unwrap();
        let bytes = postcard::to_allocvec(&value).unwrap();
        let _ = handoff::take_kept();
        let forged = |change: &dyn Fn(&mut Wire)| {
            let mut copy = postcard::from_bytes::<Wire>(&bytes).unwrap();
            change(&mut copy);
            copy
        };
        #[track_caller]
        fn refused(wire: Wire, kind: Kind, elem: u32) -> String {
            let bytes = postcard::to_allocvec(&wire).unwrap();
            let wire: WireIn = postcard::from_bytes(&bytes).unwrap();
            Values::open(wire, kind, elem).unwrap_err()
        }
        // Another id than the header's (so no cached mapping answers).
        let e = refused(forged(&|w| w.id ^= 1), Kind::Value, 8);
        assert!(e.contains("another object id"), "{e}");
        // A length the file's size does not fit.
        let e = refused(
            forged(&|w| {
                w.id ^= 1;
                w.len = 2;
            }),
            Kind::Array,
            8,
        );
        assert!(e.contains("wrong size"), "{e}");
        // Another kind, through the cache and without it.
        let e = refused(forged(&|_| ()), Kind::Array, 8);
        assert!(e.contains("another kind"), "{e}");
        let e = refused(forged(&|w| w.id ^= 1), Kind::Array, 8);
        assert!(e.contains("another kind"), "{e}");
        // Another element size.
        let e = refused(forged(&|_| ()), Kind::Value, 4);
        assert!(e.contains("elements are 8 bytes"), "{e}");
        // A descriptor that is no segment: a plain, unsealed memfd.
        let plain =
            rustix::fs::memfd_create("procpool-fake", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&plain, 8192).unwrap();
        let fake = forged(&|w| {
            w.id ^= 1;
            w.fd = handoff::export(plain.as_fd(), || Arc::new(())).unwrap();
        });
        let _ = handoff::take_kept();
        let e = refused(fake, Kind::Value, 8);
        assert!(e.contains("seals"), "{e}");
        // And through serde: errors, never a panic.
        assert!(postcard::from_bytes::<SharedArray<u64>>(&bytes).is_err());
        assert!(postcard::from_bytes::<SharedValue<u32>>(&bytes).is_err());
        assert!(postcard::from_bytes::<SharedSlice<u64>>(&bytes).is_err());
        // Truncated forms and random bytes.
        for cut in 0..bytes.len() {
            assert!(postcard::from_bytes::<SharedValue<u64>>(&bytes[..cut]).is_err());
        }
        let mut noise = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            let junk: Vec<u8> = (0..40)
                .map(|_| {
                    noise ^= noise << 13;
                    noise ^= noise >> 7;
                    noise ^= noise << 17;
                    noise as u8
                })
                .collect();
            let _ = postcard::from_bytes::<SharedValue<u64>>(&junk);
            let _ = postcard::from_bytes::<SharedSlice<u8>>(&junk);
        }
        assert_eq!(value.get(), 5, "the object is untouched");
    }
}
