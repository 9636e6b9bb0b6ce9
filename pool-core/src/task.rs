//! The [`Task`] trait: a plain function that a worker process can run.
//!
//! A task is any `fn` marked `#[pool_task]`. The trait is implemented for every
//! `Fn(A, B, ..) -> R` of up to twelve parameters whose arguments and result can be
//! serialized; the registry (filled by `#[pool_task]`) decides at run time whether a
//! function is known to the workers.

use serde::Serialize;
use serde::de::DeserializeOwned;

#[cfg(doc)]
use crate::error::Error;

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
///
/// ```rust,ignore
/// #[pool_task]
/// fn add(a: u64, b: u64) -> u64 { a + b }   // add: Task<(u64, u64), Output = u64>
///
/// let three = pool.apply(add, (1, 2))?;
/// let sums = pool.starmap(add, [(1, 2), (3, 4)])?;   // [3, 7]
/// ```
///
/// In the worker, [`call`](Task::call) is what the batch runner invokes for each
/// item, with the tuple it decoded.
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

/// Implements [`Task`] for every `Fn` of the listed parameters (`a1 A1, a2 A2`: the
/// binding and the type of each).
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

/// Calls `$name!` once for each arity from 0 to 12.
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
