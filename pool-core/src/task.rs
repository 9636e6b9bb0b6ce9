//! The [`Task`] trait: a plain function that a worker process can run.
//!
//! A task is any `fn` marked `#[pool_task]`. The trait is implemented for every
//! `Fn(A, B, ..) -> R` of up to twelve parameters whose arguments and result can be
//! serialized; the registry (filled by `#[pool_task]`) decides at run time whether a
//! function is known to the workers.

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::protocol::{self, ItemFailure, Items, STATUS_FAILED, STATUS_OK};

/// A function that can run in a worker process with the argument tuple `Args`.
///
/// `Args` is the tuple of the function's parameters: `(u64,)` for `fn square(n: u64)`,
/// `(u64, u64)` for `fn add(a: u64, b: u64)`, `()` for no parameter. Arguments and
/// the output cross the process boundary as postcard, so they must be
/// `Serialize + DeserializeOwned + Send + 'static`.
///
/// The trait is implemented for closures too, so that they compile; a closure is
/// then refused at run time with [`Error::NotRegistered`],
/// because only a `#[pool_task]` function can be found by a worker.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot run as a pool task with the arguments `{Args}`",
    label = "not a pool task taking `{Args}`",
    note = "a pool task is a plain `fn` marked #[pool_task] whose parameters and result are \
            Serialize + DeserializeOwned + Send + 'static",
    note = "`map` and `imap` take one-parameter tasks; `starmap` and `apply` take a tuple of all the parameters, \
            e.g. `pool.apply(square, (7u64,))`"
)]
pub trait Task<Args>: 'static {
    /// What the function returns.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Calls the function with its arguments spread out of the tuple.
    fn call(&self, args: Args) -> Self::Output;
}

macro_rules! impl_task {
    ($($arg:ident $ty:ident),*) => {
        impl<Func, Out, $($ty,)*> Task<($($ty,)*)> for Func
        where
            Func: Fn($($ty),*) -> Out + 'static,
            Out: Serialize + DeserializeOwned + Send + 'static,
            $($ty: Serialize + DeserializeOwned + Send + 'static,)*
        {
            type Output = Out;

            fn call(&self, ($($arg,)*): ($($ty,)*)) -> Out {
                self($($arg),*)
            }
        }
    };
}

macro_rules! all_the_tuples {
    ($name:ident) => {
        $name!();
        $name!(a1 A1);
        $name!(a1 A1, a2 A2);
        $name!(a1 A1, a2 A2, a3 A3);
        $name!(a1 A1, a2 A2, a3 A3, a4 A4);
        $name!(a1 A1, a2 A2, a3 A3, a4 A4, a5 A5);
        $name!(a1 A1, a2 A2, a3 A3, a4 A4, a5 A5, a6 A6);
        $name!(a1 A1, a2 A2, a3 A3, a4 A4, a5 A5, a6 A6, a7 A7);
        $name!(a1 A1, a2 A2, a3 A3, a4 A4, a5 A5, a6 A6, a7 A7, a8 A8);
        $name!(a1 A1, a2 A2, a3 A3, a4 A4, a5 A5, a6 A6, a7 A7, a8 A8, a9 A9);
        $name!(a1 A1, a2 A2, a3 A3, a4 A4, a5 A5, a6 A6, a7 A7, a8 A8, a9 A9, a10 A10);
        $name!(a1 A1, a2 A2, a3 A3, a4 A4, a5 A5, a6 A6, a7 A7, a8 A8, a9 A9, a10 A10, a11 A11);
        $name!(a1 A1, a2 A2, a3 A3, a4 A4, a5 A5, a6 A6, a7 A7, a8 A8, a9 A9, a10 A10, a11 A11, a12 A12);
    };
}

all_the_tuples!(impl_task);

thread_local! {
    /// True while this thread runs a task under [`run_batch`]: its panics are captured.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
    /// Where the last captured panic happened.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs the worker's panic hook: panics inside a task are captured (message and
/// location travel back to the parent in the error) instead of printed; panics
/// elsewhere go to the previous hook.
pub(crate) fn install_panic_hook() {
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if IN_TASK.with(Cell::get) {
            let location = info.location().map(|l| l.to_string());
            PANIC_LOCATION.with(|slot| *slot.borrow_mut() = location);
        } else {
            previous(info);
        }
    }));
}

/// One batch as a worker runs it: the encoded items, where the results go, and the
/// hook told as each item starts. Built by the worker loop, handed to the runner that
/// `#[pool_task]` registered.
#[doc(hidden)]
pub struct BatchRun<'a> {
    pub(crate) items: Items<'a>,
    pub(crate) count: u32,
    pub(crate) out: &'a mut Vec<u8>,
    /// Called with `k` before item `k > 0` starts (only when the pool times items).
    pub(crate) started: Option<&'a mut (dyn FnMut(u32) -> Result<(), Error> + 'a)>,
    /// Set to `k` as item `k` starts: the worker's progress page, which the pool
    /// reads when the worker dies (one relaxed store per item).
    pub(crate) item: &'a AtomicU32,
}

impl std::fmt::Debug for BatchRun<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchRun")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

/// Runs a batch of a registered task: for each item, decodes the arguments, calls the
/// function with panics caught, and appends one result item (status and encoded
/// output or failure) to the batch's output.
///
/// This is what the code generated by `#[pool_task]` calls in a worker process: one
/// monomorphized loop per task, so decoding, the call and encoding inline together.
/// Only a malformed batch ends it with an error; a failing item is reported in its
/// result item.
///
/// Panics are caught around the run of items, not around each item: the items run
/// in one `catch_unwind` until one panics; that item's output is cut off and
/// replaced by its failure, and the run goes on with the next item. Only the item's
/// own work (decoding, the call, encoding) runs inside: the `started` hook, when
/// there is one, is called outside, between runs of one item each.
#[doc(hidden)]
pub fn run_batch<Args, F>(task: F, batch: &mut BatchRun<'_>) -> Result<(), Error>
where
    F: Task<Args>,
    Args: DeserializeOwned,
{
    let count = batch.count;
    // The item running, and where its result item starts.
    let mut k = 0;
    let mut mark = batch.out.len();
    while k < count {
        if k > 0
            && let Some(started) = batch.started.as_mut()
        {
            started(k)?;
        }
        // With a `started` hook, one item per run, so that the hook is called between.
        let end = if batch.started.is_some() {
            k + 1
        } else {
            count
        };
        IN_TASK.with(|flag| flag.set(true));
        let run = panic::catch_unwind(AssertUnwindSafe(|| -> Result<(), Error> {
            while k < end {
                batch.item.store(k, Ordering::Relaxed);
                let input = batch.items.next_item()?.ok_or_else(|| {
                    Error::protocol(format!("batch announced {count} items but holds fewer"))
                })?;
                mark = batch.out.len();
                protocol::push_item::<Error>(batch.out, |out| {
                    out.push(STATUS_OK);
                    if let Err(failure) = run_item(&task, input, out) {
                        out.truncate(mark + 1);
                        push_failure(out, &failure)?;
                    }
                    Ok(())
                })?;
                k += 1;
            }
            Ok(())
        }));
        IN_TASK.with(|flag| flag.set(false));
        match run {
            Ok(done) => done?,
            Err(payload) => {
                // Item `k` panicked after its input was read (nothing before that
                // can panic) and `mark` was set: its result item is replaced.
                batch.out.truncate(mark);
                let failure = panic_failure(payload);
                protocol::push_item::<Error>(batch.out, |out| push_failure(out, &failure))?;
                k += 1;
            }
        }
    }
    if !batch.items.is_empty() {
        return Err(Error::protocol(format!(
            "batch announced {count} items but holds more"
        )));
    }
    Ok(())
}

/// Appends a failed result item's status and failure.
#[cold]
fn push_failure(out: &mut Vec<u8>, failure: &ItemFailure) -> Result<(), Error> {
    out.push(STATUS_FAILED);
    protocol::encode_into(failure, out)
        .map_err(|e| Error::protocol(format!("cannot encode a task failure: {e}")))
}

/// Runs one item: decodes the arguments from `input`, calls the function (a panic
/// unwinds to [`run_batch`]), and appends the encoded result to `out`.
#[inline]
fn run_item<Args, F>(task: &F, input: &[u8], out: &mut Vec<u8>) -> Result<(), ItemFailure>
where
    F: Task<Args>,
    Args: DeserializeOwned,
{
    let args: Args =
        postcard::from_bytes(input).map_err(|e| ItemFailure::ArgDecode(e.to_string()))?;
    let value = task.call(args);
    let mark = out.len();
    protocol::encode_into(&value, out).map_err(|e| {
        out.truncate(mark);
        ItemFailure::OutputEncode(e.to_string())
    })
}

/// The failure reported for a task that panicked with `payload`.
#[cold]
fn panic_failure(payload: Box<dyn std::any::Any + Send>) -> ItemFailure {
    let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    };
    let location = PANIC_LOCATION.with(|slot| slot.borrow_mut().take());
    // Drop the payload with the hook still telling panics apart: a payload whose
    // destructor panics would otherwise abort.
    drop(panic::catch_unwind(AssertUnwindSafe(move || drop(payload))));
    ItemFailure::Panicked { message, location }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(a: u64, b: u64) -> u64 {
        a + b
    }

    fn boom(n: u32) -> u32 {
        if n > 1 {
            panic!("too big: {n}");
        }
        n
    }

    #[test]
    fn call_spreads_the_tuple() {
        assert_eq!(Task::call(&add, (2, 3)), 5);
        assert_eq!(Task::call(&|| 7u8, ()), 7);
    }

    /// Runs `task` on the encoded `inputs` as a worker does; one decoded outcome
    /// per item.
    fn run<Args: DeserializeOwned, R: DeserializeOwned>(
        task: impl Task<Args>,
        inputs: &[Vec<u8>],
    ) -> Vec<Result<R, ItemFailure>> {
        let mut payload = Vec::new();
        for input in inputs {
            protocol::push_item::<()>(&mut payload, |b| {
                b.extend_from_slice(input);
                Ok(())
            })
            .unwrap();
        }
        let mut out = Vec::new();
        let item = AtomicU32::new(u32::MAX);
        let mut batch = BatchRun {
            items: Items::new(&payload),
            count: inputs.len() as u32,
            out: &mut out,
            started: None,
            item: &item,
        };
        run_batch(task, &mut batch).unwrap();
        // The progress page holds the last item started.
        let last = inputs.len().checked_sub(1).map_or(u32::MAX, |k| k as u32);
        assert_eq!(item.load(Ordering::Relaxed), last);
        let mut items = Items::new(&out);
        let mut outcomes = Vec::new();
        while let Some(item) = items.next_item().unwrap() {
            outcomes.push(match item.split_first() {
                Some((&STATUS_OK, body)) => Ok(postcard::from_bytes(body).unwrap()),
                Some((&STATUS_FAILED, body)) => Err(postcard::from_bytes(body).unwrap()),
                other => panic!("bad result item {other:?}"),
            });
        }
        outcomes
    }

    #[test]
    fn a_batch_round_trips_and_a_panic_fails_only_its_item() {
        let sums: Vec<Result<u64, _>> = run(add, &[postcard::to_stdvec(&(4u64, 5u64)).unwrap()]);
        assert!(matches!(sums[..], [Ok(9)]), "{sums:?}");

        // Panics first, in the middle, twice in a row and last.
        let inputs: Vec<Vec<u8>> = [7u32, 1, 9, 8, 0, 5]
            .iter()
            .map(|n| postcard::to_stdvec(&(*n,)).unwrap())
            .collect();
        let got: Vec<Result<u32, ItemFailure>> = run(boom, &inputs);
        assert_eq!(got.len(), 6);
        for (k, n) in [7u32, 1, 9, 8, 0, 5].into_iter().enumerate() {
            match &got[k] {
                Ok(v) => assert!(n <= 1 && *v == n, "item {k}: {v}"),
                Err(ItemFailure::Panicked { message, location }) => {
                    assert!(n > 1, "item {k} should not fail");
                    assert_eq!(message, &format!("too big: {n}"));
                    let _ = location; // set by the worker's hook, not installed here
                }
                Err(other) => panic!("item {k}: {other:?}"),
            }
        }
    }

    fn ident(n: u32) -> u32 {
        n
    }

    #[test]
    fn a_panicking_started_hook_is_not_taken_for_an_item() {
        let inputs: Vec<Vec<u8>> = [10u32, 11, 12]
            .iter()
            .map(|n| postcard::to_stdvec(&(*n,)).unwrap())
            .collect();
        let mut payload = Vec::new();
        for input in &inputs {
            protocol::push_item::<()>(&mut payload, |b| {
                b.extend_from_slice(input);
                Ok(())
            })
            .unwrap();
        }
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let mut hook = |k: u32| -> Result<(), Error> {
            seen.push(k);
            assert!(k != 2, "hook broke at {k}");
            Ok(())
        };
        let escaped = panic::catch_unwind(AssertUnwindSafe(|| {
            let mut batch = BatchRun {
                items: Items::new(&payload),
                count: 3,
                out: &mut out,
                started: Some(&mut hook),
                item: &AtomicU32::new(0),
            };
            run_batch(ident, &mut batch)
        }));
        // The hook's panic is not an item's: it leaves run_batch (the worker dies
        // and the pool reports it), and the items done before it keep their results.
        assert!(escaped.is_err());
        assert_eq!(seen, [1, 2]);
        let mut items = Items::new(&out);
        let mut done = Vec::new();
        while let Some(item) = items.next_item().unwrap() {
            assert_eq!(item[0], STATUS_OK);
            done.push(postcard::from_bytes::<u32>(&item[1..]).unwrap());
        }
        assert_eq!(done, [10, 11]);
    }

    #[test]
    fn bad_arguments_fail_the_item() {
        let good = postcard::to_stdvec(&(1u64, 2u64)).unwrap();
        let got: Vec<Result<u64, ItemFailure>> = run(add, &[good.clone(), vec![0xff], good]);
        assert!(matches!(got[0], Ok(3)));
        assert!(
            matches!(got[1], Err(ItemFailure::ArgDecode(_))),
            "{:?}",
            got[1]
        );
        assert!(matches!(got[2], Ok(3)));
    }
}
