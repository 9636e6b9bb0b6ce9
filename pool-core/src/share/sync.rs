//! [`Lock`], [`Event`], [`Barrier`] and [`Semaphore`] across processes — Python's
//! `multiprocessing` synchronisation primitives — and the futex waits they share.
//!
//! Each is a small `memfd` segment (see `memory`). `Lock` is the header's robust
//! process-shared mutex, as `SharedValue`'s. The others are atomic words in the
//! header, waited on with shared futexes (`FUTEX_WAIT` without the private flag:
//! the kernel keys them on the file and offset, so they work across processes and
//! mappings). A waiter sleeps in the kernel, never spins; timeouts are futex
//! timeouts, and a wake-up that changes nothing (spurious, `EINTR`, `EAGAIN`) waits
//! again for the time that is left.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::thread::futex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::memory::{self, Kind, Segment};
use crate::error::Error;
use crate::sys::shm::{Header, Locked, MutexGuard};

/// The segment of a sync object: a header, no data.
type SyncSegment = Arc<Segment<Locked<u8>>>;

/// The instant `timeout` from now, or `None` if that is too far to tell (wait
/// without a limit).
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Sleeps while `word` holds `expected`, until woken or `deadline`. Returns false
/// if the deadline has passed (checked before sleeping), true otherwise — woken,
/// interrupted, or the word had changed already: the caller looks again.
fn futex_wait(word: &AtomicU32, expected: u32, deadline: Option<Instant>) -> bool {
    let timeout = match deadline {
        None => None,
        Some(deadline) => {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            Some(futex::Timespec {
                tv_sec: left.as_secs().min(i64::MAX as u64) as _,
                tv_nsec: left.subsec_nanos() as _,
            })
        }
    };
    match futex::wait(word, futex::Flags::empty(), expected, timeout.as_ref()) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::INTR => {}
        Err(e) if e == rustix::io::Errno::TIMEDOUT => {}
        // EFAULT, EINVAL or ENOSYS cannot come for a live, aligned word; should one
        // come, pause rather than spin.
        Err(_) => std::thread::sleep(Duration::from_millis(1)),
    }
    true
}

/// Wakes up to `count` waiters on `word`, in any process.
fn futex_wake(word: &AtomicU32, count: u32) {
    // Nothing to do about a failure: it cannot happen for a live word.
    let _ = futex::wake(word, futex::Flags::empty(), count);
}

/// A new segment for a sync object of `kind` with count `len`, its words set by
/// `words`.
fn new_sync(kind: Kind, len: u64, words: impl FnOnce(&Header)) -> Result<SyncSegment, Error> {
    let id = memory::new_id()?;
    let stamp = memory::stamp(id, kind, 1, len);
    let (fd, map) = Locked::<u8>::create(kind.name(), 0, None, |header| {
        words(header);
        stamp(header);
    })
    .map_err(memory::create_error)?;
    Ok(Segment::new(fd, map, id, kind, 1, len))
}

/// Implements `Clone`, `Debug`, `Serialize` and `Deserialize` for a sync handle.
macro_rules! sync_handle {
    ($name:ident, $kind:expr) => {
        impl $name {
            /// The segment (for tests that follow its file).
            #[cfg(test)]
            #[allow(dead_code, reason = "only some of the types' tests follow their file")]
            pub(crate) fn segment(&self) -> &Segment<Locked<u8>> {
                &self.segment
            }
        }

        impl Clone for $name {
            fn clone(&self) -> Self {
                $name {
                    segment: self.segment.clone(),
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.segment)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                self.segment.serialize(serializer)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                Ok($name {
                    segment: Segment::deserialize(deserializer, $kind, 1)?,
                })
            }
        }
    };
}

/// A lock shared by processes: Python's `multiprocessing.Lock`.
///
/// A glibc robust, process-shared mutex in shared memory. A process (or thread)
/// that dies holding it does not leave it locked: the next [`lock`](Self::lock)
/// gets it and [`LockGuard::owner_died`] is true. Handles travel as arguments of
/// pool tasks and `Process::spawn` and in channel messages (see the crate's notes
/// on handles); every clone is the same lock, and its memory is freed when the
/// last handle in any process is gone.
pub struct Lock {
    /// The segment, shared by the clones in this process.
    segment: SyncSegment,
}

impl Lock {
    /// A new lock, unlocked.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the shared memory cannot be made.
    pub fn new() -> Result<Self, Error> {
        Ok(Lock {
            segment: new_sync(Kind::Lock, 0, |_| ())?,
        })
    }

    /// Takes the lock, blocking until no other thread or process holds it.
    ///
    /// Taking it again from the thread that holds it deadlocks.
    pub fn lock(&self) -> LockGuard<'_> {
        LockGuard {
            raw: self.segment.map().lock(),
        }
    }

    /// Takes the lock if it is free right now.
    pub fn try_lock(&self) -> Option<LockGuard<'_>> {
        self.segment.map().try_lock().map(|raw| LockGuard { raw })
    }

    /// Takes the lock, waiting `timeout` at most.
    pub fn lock_timeout(&self, timeout: Duration) -> Option<LockGuard<'_>> {
        match deadline_after(timeout) {
            Some(deadline) => self
                .segment
                .map()
                .lock_until(deadline)
                .map(|raw| LockGuard { raw }),
            None => Some(self.lock()),
        }
    }
}

sync_handle!(Lock, Kind::Lock);

/// A held [`Lock`]; dropping it unlocks.
///
/// Not `Send`: the thread that locked must unlock.
#[derive(Debug)]
pub struct LockGuard<'a> {
    /// The held mutex.
    raw: MutexGuard<'a, u8>,
}

impl LockGuard<'_> {
    /// Whether the previous holder died holding the lock.
    pub fn owner_died(&self) -> bool {
        self.raw.owner_died()
    }
}

/// A flag processes can wait for: Python's `multiprocessing.Event`.
///
/// One futex word: bit 0 is the flag, the bits above count the times it was
/// set. A waiter returns once the flag is set, even if it was cleared again
/// before the waiter ran (as in Python: [`set`](Self::set) wakes every waiter).
/// Handles travel and are freed as [`Lock`]'s.
pub struct Event {
    /// The segment, shared by the clones in this process.
    segment: SyncSegment,
}

impl Event {
    /// A new event, not set.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the shared memory cannot be made.
    pub fn new() -> Result<Self, Error> {
        Ok(Event {
            segment: new_sync(Kind::Event, 0, |_| ())?,
        })
    }

    /// The futex word.
    fn word(&self) -> &AtomicU32 {
        &self.segment.map().header().words[0]
    }

    /// Sets the flag and wakes every waiter, in every process.
    pub fn set(&self) {
        let set = self
            .word()
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                (word & 1 == 0).then(|| (word | 1).wrapping_add(2))
            })
            .is_ok();
        if set {
            futex_wake(self.word(), i32::MAX as u32);
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.word().fetch_and(!1, Ordering::AcqRel);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.word().load(Ordering::Acquire) & 1 == 1
    }

    /// Waits until the flag is set.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits until the flag is set, `timeout` at most; whether it was set.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(deadline_after(timeout))
    }

    /// Waits until the flag is set or has been set since the call, or `deadline`.
    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let start = self.word().load(Ordering::Acquire);
        if start & 1 == 1 {
            return true;
        }
        loop {
            if !futex_wait(self.word(), start, deadline) {
                return self.is_set();
            }
            // Any change from a clear word is a `set` (possibly cleared since).
            if self.word().load(Ordering::Acquire) != start {
                return true;
            }
        }
    }
}

sync_handle!(Event, Kind::Event);

/// The most parties a [`Barrier`] takes: their count shares one 32-bit futex word
/// with the pass number.
pub const BARRIER_MAX_PARTIES: usize = 0xFFFF;

/// A rendezvous of `n` parties, reusable pass after pass: Python's
/// `multiprocessing.Barrier`.
///
/// One futex word: the pass number in the high 16 bits, the parties arrived in
/// the low 16. The `n`-th to arrive starts the next pass and wakes the others. A
/// [`wait_timeout`](Self::wait_timeout) that gives up takes its arrival back, so
/// the barrier stays usable (unlike Python's, which breaks). A process killed
/// while waiting stays counted as arrived for that pass. Handles travel and are
/// freed as [`Lock`]'s.
pub struct Barrier {
    /// The segment, shared by the clones in this process; its header's length is
    /// the number of parties.
    segment: SyncSegment,
}

impl Barrier {
    /// A new barrier for `parties` parties.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for 0 parties or more than
    /// [`BARRIER_MAX_PARTIES`]; [`Error::Io`] if the shared memory cannot be made.
    pub fn new(parties: usize) -> Result<Self, Error> {
        if parties == 0 || parties > BARRIER_MAX_PARTIES {
            return Err(Error::InvalidArgument(format!(
                "a barrier for {parties} parties (1 to {BARRIER_MAX_PARTIES})"
            )));
        }
        Ok(Barrier {
            segment: new_sync(Kind::Barrier, parties as u64, |_| ())?,
        })
    }

    /// The number of parties.
    pub fn parties(&self) -> usize {
        self.segment.len() as usize
    }

    /// The futex word.
    fn word(&self) -> &AtomicU32 {
        &self.segment.map().header().words[0]
    }

    /// Waits until all parties have arrived.
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Waits until all parties have arrived, `timeout` at most. False if they did
    /// not all arrive in time: this arrival is then taken back.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(deadline_after(timeout))
    }

    /// Arrives and waits for the pass to end, or `deadline`.
    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        const COUNT: u32 = 0xFFFF;
        let parties = self.parties().min(BARRIER_MAX_PARTIES) as u32;
        let word = self.word();
        let mut current = word.load(Ordering::Acquire);
        let pass = loop {
            let (next, last) = if (current & COUNT) + 1 >= parties {
                // The last to arrive: next pass, nobody arrived.
                ((current & !COUNT).wrapping_add(COUNT + 1), true)
            } else {
                (current + 1, false)
            };
            match word.compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) if last => {
                    futex_wake(word, i32::MAX as u32);
                    return true;
                }
                Ok(_) => break current >> 16,
                Err(now) => current = now,
            }
        };
        loop {
            let now = word.load(Ordering::Acquire);
            if now >> 16 != pass {
                return true;
            }
            if !futex_wait(word, now, deadline) {
                // Time is up: take the arrival back, unless the pass just ended.
                let mut now = word.load(Ordering::Acquire);
                loop {
                    if now >> 16 != pass || now & COUNT == 0 {
                        return now >> 16 != pass;
                    }
                    match word.compare_exchange(now, now - 1, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => return false,
                        Err(changed) => now = changed,
                    }
                }
            }
        }
    }
}

sync_handle!(Barrier, Kind::Barrier);

/// A counter of permits shared by processes: Python's
/// `multiprocessing.Semaphore`.
///
/// Two futex words: the permits left and the number of sleeping acquirers (so a
/// release wakes only when someone sleeps). A permit is given back when its
/// [`SemaphoreGuard`] is dropped; a permit held by a process that is killed is
/// **not** given back, so the semaphore then has one permit less for good. At
/// most `u32::MAX` permits. Handles travel and are freed as [`Lock`]'s.
pub struct Semaphore {
    /// The segment, shared by the clones in this process; its header's length is
    /// the initial count.
    segment: SyncSegment,
}

impl Semaphore {
    /// A new semaphore with `permits` permits. 0 is allowed, but permits only come
    /// back through dropped guards, so every acquire of such a semaphore waits
    /// (for its timeout, or for good).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for more than `u32::MAX` permits; [`Error::Io`]
    /// if the shared memory cannot be made.
    pub fn new(permits: usize) -> Result<Self, Error> {
        let count = u32::try_from(permits).map_err(|_| {
            Error::InvalidArgument(format!(
                "a semaphore of {permits} permits (at most {})",
                u32::MAX
            ))
        })?;
        Ok(Semaphore {
            segment: new_sync(Kind::Semaphore, permits as u64, |header| {
                header.words[0].store(count, Ordering::Relaxed);
            })?,
        })
    }

    /// The permits word.
    fn permits(&self) -> &AtomicU32 {
        &self.segment.map().header().words[0]
    }

    /// The sleepers word.
    fn sleepers(&self) -> &AtomicU32 {
        &self.segment.map().header().words[1]
    }

    /// The permits free right now (changes at once under other processes).
    pub fn available(&self) -> usize {
        self.permits().load(Ordering::Acquire) as usize
    }

    /// Takes a permit, waiting for one.
    pub fn acquire(&self) -> SemaphoreGuard<'_> {
        loop {
            if let Some(guard) = self.acquire_until(None) {
                return guard;
            }
        }
    }

    /// Takes a permit if one is free now.
    pub fn try_acquire(&self) -> Option<SemaphoreGuard<'_>> {
        let mut current = self.permits().load(Ordering::Acquire);
        while current > 0 {
            match self.permits().compare_exchange(
                current,
                current - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(SemaphoreGuard { semaphore: self }),
                Err(now) => current = now,
            }
        }
        None
    }

    /// Takes a permit, waiting `timeout` at most.
    pub fn acquire_timeout(&self, timeout: Duration) -> Option<SemaphoreGuard<'_>> {
        match deadline_after(timeout) {
            Some(deadline) => self.acquire_until(Some(deadline)),
            None => Some(self.acquire()),
        }
    }

    /// Takes a permit, waiting until `deadline` at most.
    fn acquire_until(&self, deadline: Option<Instant>) -> Option<SemaphoreGuard<'_>> {
        loop {
            if let Some(guard) = self.try_acquire() {
                return Some(guard);
            }
            // Announce the sleep before the last look (both SeqCst, against
            // `release`'s add-then-look): one of the two sees the other.
            self.sleepers().fetch_add(1, Ordering::SeqCst);
            let in_time = self.permits().load(Ordering::SeqCst) != 0
                || futex_wait(self.permits(), 0, deadline);
            self.sleepers().fetch_sub(1, Ordering::SeqCst);
            if !in_time {
                // A release that woke this sleeper just as it timed out is not
                // lost: its permit is taken here or left for the next acquirer.
                return self.try_acquire();
            }
        }
    }

    /// Gives a permit back and wakes one sleeper, if any.
    fn release(&self) {
        self.permits().fetch_add(1, Ordering::SeqCst);
        if self.sleepers().load(Ordering::SeqCst) > 0 {
            futex_wake(self.permits(), 1);
        }
    }
}

sync_handle!(Semaphore, Kind::Semaphore);

/// A permit of a [`Semaphore`]; dropping it gives the permit back.
#[derive(Debug)]
pub struct SemaphoreGuard<'a> {
    /// The semaphore the permit came from.
    semaphore: &'a Semaphore,
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        self.semaphore.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::thread;

    const SHORT: Duration = Duration::from_millis(30);

    #[test]
    fn a_lock_excludes_and_recovers_from_a_dead_holder() {
        let lock = Lock::new().unwrap();
        let guard = lock.lock();
        let other = lock.clone();
        let (tried, timed) = thread::spawn(move || {
            (
                other.try_lock().is_none(),
                other.lock_timeout(SHORT).is_none(),
            )
        })
        .join()
        .unwrap();
        assert!(tried && timed, "held by this thread");
        drop(guard);
        let dying = lock.clone();
        thread::spawn(move || std::mem::forget(dying.lock()))
            .join()
            .unwrap();
        let guard = lock.try_lock().expect("the dead holder's lock is free");
        assert!(guard.owner_died());
        drop(guard);
        assert!(!lock.lock().owner_died());
    }

    #[test]
    fn a_lock_guards_a_counter_across_threads() {
        let lock = Lock::new().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (lock, count) = (lock.clone(), count.clone());
                thread::spawn(move || {
                    for _ in 0..500 {
                        let _held = lock.lock();
                        // A non-atomic read-modify-write: only safe under the lock.
                        let seen = count.load(Ordering::Relaxed);
                        thread::yield_now();
                        count.store(seen + 1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(count.load(Ordering::Relaxed), 1500);
    }

    #[test]
    fn an_event_wakes_its_waiters_and_times_out_when_not_set() {
        let event = Event::new().unwrap();
        assert!(!event.is_set());
        let start = Instant::now();
        assert!(!event.wait_timeout(SHORT));
        assert!(start.elapsed() >= SHORT, "waited the whole timeout");
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let event = event.clone();
                thread::spawn(move || event.wait_timeout(Duration::from_secs(10)))
            })
            .collect();
        thread::sleep(SHORT);
        event.set();
        assert!(waiters.into_iter().all(|w| w.join().unwrap()));
        assert!(event.is_set() && event.wait_timeout(Duration::ZERO));
        event.wait();
        event.clear();
        assert!(!event.is_set() && !event.wait_timeout(Duration::ZERO));
        // A set that is cleared at once still releases a waiter that was there.
        let waiter = {
            let event = event.clone();
            thread::spawn(move || event.wait_timeout(Duration::from_secs(10)))
        };
        thread::sleep(SHORT);
        event.set();
        event.clear();
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn a_barrier_of_three_holds_for_a_hundred_passes() {
        let barrier = Barrier::new(3).unwrap();
        assert_eq!(barrier.parties(), 3);
        let arrived = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (barrier, arrived) = (barrier.clone(), arrived.clone());
                thread::spawn(move || {
                    for pass in 0..100 {
                        arrived.fetch_add(1, Ordering::SeqCst);
                        barrier.wait();
                        // Everyone arrived for this pass, nobody for the next yet.
                        assert!(arrived.load(Ordering::SeqCst) >= 3 * (pass + 1));
                        barrier.wait();
                        assert!(arrived.load(Ordering::SeqCst) <= 3 * (pass + 2));
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(arrived.load(Ordering::SeqCst), 300);
    }

    #[test]
    fn a_barrier_wait_that_times_out_takes_its_arrival_back() {
        let barrier = Barrier::new(2).unwrap();
        let start = Instant::now();
        assert!(!barrier.wait_timeout(SHORT), "alone: times out");
        assert!(start.elapsed() >= SHORT);
        assert!(
            !barrier.wait_timeout(SHORT),
            "still alone: the first arrival was taken back"
        );
        let other = barrier.clone();
        let partner = thread::spawn(move || other.wait_timeout(Duration::from_secs(10)));
        assert!(barrier.wait_timeout(Duration::from_secs(10)));
        assert!(partner.join().unwrap());
        let single = Barrier::new(1).unwrap();
        single.wait();
        assert!(single.wait_timeout(Duration::ZERO));
    }

    #[test]
    fn barrier_sizes_are_checked() {
        assert!(matches!(Barrier::new(0), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            Barrier::new(BARRIER_MAX_PARTIES + 1),
            Err(Error::InvalidArgument(_))
        ));
        assert!(Barrier::new(BARRIER_MAX_PARTIES).is_ok());
    }

    #[test]
    fn a_semaphore_counts_its_permits() {
        let semaphore = Semaphore::new(2).unwrap();
        let one = semaphore.try_acquire().expect("first");
        let two = semaphore.acquire();
        assert!(semaphore.try_acquire().is_none(), "two permits only");
        assert!(semaphore.acquire_timeout(SHORT).is_none());
        assert_eq!(semaphore.available(), 0);
        drop(one);
        assert_eq!(semaphore.available(), 1);
        let three = semaphore.try_acquire().expect("given back");
        // A blocked acquire is woken by a release in another thread.
        let other = semaphore.clone();
        let waiter =
            thread::spawn(move || other.acquire_timeout(Duration::from_secs(10)).is_some());
        thread::sleep(SHORT);
        drop(two);
        assert!(waiter.join().unwrap());
        drop(three);
        assert_eq!(semaphore.available(), 2);
        let none = Semaphore::new(0).unwrap();
        assert!(none.try_acquire().is_none() && none.acquire_timeout(SHORT).is_none());
        assert!(matches!(
            Semaphore::new(u32::MAX as usize + 1),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_semaphore_bounds_the_threads_inside() {
        let semaphore = Semaphore::new(2).unwrap();
        let inside = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (semaphore, inside) = (semaphore.clone(), inside.clone());
                thread::spawn(move || {
                    for _ in 0..50 {
                        let _permit = semaphore.acquire();
                        assert!(inside.fetch_add(1, Ordering::SeqCst) < 2);
                        thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(semaphore.available(), 2);
    }

    #[test]
    fn decoded_sync_handles_are_the_same_objects() {
        let (lock, event) = (Lock::new().unwrap(), Event::new().unwrap());
        let (barrier, semaphore) = (Barrier::new(2).unwrap(), Semaphore::new(1).unwrap());
        let bytes = postcard::to_allocvec(&(&lock, &event, &barrier, &semaphore)).unwrap();
        assert_eq!(crate::handoff::take_kept().len(), 4);
        let (lock2, event2, barrier2, semaphore2): (Lock, Event, Barrier, Semaphore) =
            postcard::from_bytes(&bytes).unwrap();
        let held = lock.lock();
        assert!(lock2.try_lock().is_none());
        drop(held);
        event2.set();
        assert!(event.is_set());
        let _permit = semaphore2.acquire();
        assert!(semaphore.try_acquire().is_none());
        assert_eq!(barrier2.parties(), 2);
        let partner = thread::spawn(move || barrier2.wait_timeout(Duration::from_secs(10)));
        assert!(barrier.wait_timeout(Duration::from_secs(10)) && partner.join().unwrap());
        // Not another kind of object.
        let bytes = postcard::to_allocvec(&lock).unwrap();
        let _ = crate::handoff::take_kept();
        assert!(postcard::from_bytes::<Event>(&bytes).is_err());
        assert!(postcard::from_bytes::<Semaphore>(&[1, 2, 3]).is_err());
        assert!(format!("{lock:?}").starts_with("Lock(Lock "));
    }
}
