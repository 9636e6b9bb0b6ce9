//! Small locking helpers shared by the caller side, the engine and the cluster.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Locks, ignoring poisoning: every critical section leaves the state consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits on `changed` until `ready` holds for the guarded state or `deadline`
/// passes (`None`: no deadline); the guard, and whether `ready` held.
///
/// The one wait loop of the crate's waiters (results, processes, remote workers):
/// spurious wake-ups and poisoning are dealt with here.
pub(crate) fn wait_until<'a, T>(
    changed: &Condvar,
    mut guard: MutexGuard<'a, T>,
    deadline: Option<Instant>,
    mut ready: impl FnMut(&mut T) -> bool,
) -> (MutexGuard<'a, T>, bool) {
    loop {
        if ready(&mut guard) {
            return (guard, true);
        }
        guard = match deadline {
            None => changed.wait(guard).unwrap_or_else(PoisonError::into_inner),
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return (guard, false);
                }
                changed
                    .wait_timeout(guard, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
    }
}
