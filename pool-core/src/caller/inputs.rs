//! The bounds on the items of a call, named once: [`Inputs`] for `map`, `starmap`
//! and the `_async` calls, [`StreamInputs`] for `imap`. Each is a trait with a
//! blanket impl, so any iterable that fits is one already — nothing to implement.

use std::borrow::Borrow;

/// The items of a `map`-like call whose task takes an `A`: anything iterable, owned
/// or borrowed, whose items are `A` or borrow as one (`Vec<A>`, `&[A]`, a range, an
/// iterator adaptor...).
///
/// ```text
/// pool.map(square, vec![1u64, 2, 3])?;      // items are u64
/// pool.map(square, &numbers)?;              // items are &u64
/// pool.map(square, (0..10).map(|x| x * 2))?;
/// ```
pub trait Inputs<A>: IntoIterator<Item: Borrow<A>> {}

impl<A, I> Inputs<A> for I where I: IntoIterator<Item: Borrow<A>> {}

/// The items of an `imap` call: [`Inputs`] whose iterator may move to the thread
/// that reads it (`imap` reads its input on a feeder thread, so that results flow
/// while the input waits).
pub trait StreamInputs<A>: Inputs<A, IntoIter: Send + 'static> {}

impl<A, I> StreamInputs<A> for I where I: Inputs<A, IntoIter: Send + 'static> {}
