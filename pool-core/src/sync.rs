//! Small locking helpers shared by the caller side and the engine.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks, ignoring poisoning: every critical section leaves the state consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
