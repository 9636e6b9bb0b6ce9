//! Attribute macros of [procpool](https://docs.rs/procpool): `#[pool_task]` and
//! `#[procpool::main]`.
//!
//! Do not depend on this crate directly: use the macros through `procpool`, which
//! re-exports them and provides the items their expansion names
//! (`::procpool::__private::..`).
//!
//! Each macro is a thin shim over a module that works on `proc_macro2` tokens, so the
//! logic is unit-tested without a compiler: `task` for `#[pool_task]`, `entry` for
//! `#[procpool::main]`. Both parse, then check everything and report every problem at
//! once, then generate. When the item is rejected, it is still emitted unchanged next
//! to the errors, so that the IDE keeps seeing the function.
//!
//! ```text
//!  #[pool_task(args)] fn f(..)            #[procpool::main(args)] fn main()
//!             │                                        │
//!       task::expand                             entry::expand
//!             └───────────────────┬────────────────────┘
//!                       item::parse_checked
//!                         ├─ attr::Options::parse   the `crate = path` argument
//!                         ├─ item::parse_fn         a fn with a body; body unparsed
//!                         └─ check(&signature)      task::check or entry::check
//!                                 │
//!             any error? ── yes ──▶ error::rejected: the item as written,
//!                                 │                  then one compile_error! per error
//!                                 no
//!             ┌───────────────────┴────────────────────┐
//!   task::registration                         entry::with_init
//!   the item, then its `const _` entry         the item, `init();` first in its body
//! ```
//!
//! Errors point at the tokens they are about (the `async` keyword, a borrowed
//! parameter type, an unknown argument), not at the attribute, except when the item
//! is not a function at all.

#![forbid(unsafe_code)]

mod attr;
mod entry;
mod error;
mod item;
mod task;

use proc_macro::TokenStream;

/// Registers a free function as a pool task, so that worker processes can run it.
///
/// ```
/// use procpool::pool_task;
///
/// #[pool_task]
/// pub fn square(number: u64) -> u64 {
///     number * number
/// }
///
/// fn main() {
///     assert_eq!(square(3), 9); // still an ordinary function
///     let name = procpool::task_name(&square).unwrap();
///     assert!(name.ends_with("::square"));
/// }
/// ```
///
/// The function is left as it is, and can still be called directly. Next to it the
/// macro adds an entry to the program's task registry, under the name
/// `module::path::function`: a worker receives that name and the encoded
/// arguments, and finds the function by it.
///
/// Because the call crosses a process boundary, the function must be:
///
/// - a free `fn`, not a method, and neither `async`, `unsafe`, variadic nor `extern`;
/// - not generic (no type or lifetime parameters, no `impl Trait` parameters): a
///   worker finds it by name, so its types must be concrete;
/// - of at most 12 parameters, each a plain name (`mut` is fine) with an owned type:
///   `String` rather than `&str`, `Vec<T>` rather than `&[T]`;
/// - of parameter and result types that are `Serialize + DeserializeOwned + Send +
///   'static`.
///
/// Each violation is reported as a compile error pointing at the offending part.
///
/// # Arguments
///
/// - `crate = path`: where to find procpool, for crates that re-export it under
///   another name, e.g. `#[pool_task(crate = ::my_runtime::procpool)]`. The default
///   is `::procpool`.
///
/// # Attributes of the function
///
/// The function keeps all its attributes. Its `#[cfg(..)]` attributes written
/// below `#[pool_task]` are copied onto the registry entry as well, so that a task
/// compiled out leaves no entry naming a missing function.
#[proc_macro_attribute]
pub fn pool_task(args: TokenStream, item: TokenStream) -> TokenStream {
    task::expand(args.into(), item.into()).into()
}

/// Makes `main` start procpool: the annotated function first calls `procpool::init()`.
///
/// ```no_run
/// #[procpool::main]
/// fn main() -> Result<(), procpool::Error> {
///     let pool = procpool::Pool::new(4)?;
///     // ..
///     Ok(())
/// }
/// ```
///
/// A pool re-executes the current binary as its workers; `init()` is where such a
/// worker process takes over and serves tasks instead of running the rest of `main`.
/// It must therefore run first, before anything with side effects.
///
/// The function must be synchronous, without parameters and not generic. With an
/// async runtime, place this attribute below the runtime's (`#[tokio::main]` then
/// `#[procpool::main]`), so that it sees the synchronous `main` the runtime's macro
/// produces and workers start before any runtime.
///
/// The call goes before the first statement of the body, after any inner attributes
/// (`#![allow(..)]`), which must stay first. The body is not parsed, so a body with
/// syntax errors still gets the call and the compiler reports its errors where they
/// are.
///
/// # Arguments
///
/// - `crate = path`: where to find procpool, as for [`macro@pool_task`].
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    entry::expand(args.into(), item.into()).into()
}
