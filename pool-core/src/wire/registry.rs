//! The task registry: every `#[pool_task]` function, collected at link time.
//!
//! `#[pool_task]` emits one `TaskEntry` into the `TASKS` distributed slice
//! (linkme). The slice is assembled by the linker, so it is complete before any code
//! runs: a worker entered from a constructor (see `test_support!`) sees every task,
//! unlike registries filled by constructors of their own.
//!
//! The parent finds a task by the `TypeId` of the function item it was handed; the
//! worker finds it by the registered name that travels on the wire.
//!
//! Names are unique. Two tasks can share a path — a `#[pool_task] fn helper` inside
//! two test functions of one module, or two versions of one crate linked together —
//! and then the second and later ones, in the order of the slice, are told apart by a
//! suffix: `tests::helper`, `tests::helper#2`. Parent and worker are the same
//! executable, so the linker laid the slice out alike in both and each name means
//! the same function on both sides.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::OnceLock;

use std::sync::atomic::AtomicU32;

use crate::error::Error;
use crate::wire::protocol::Items;

/// Runs one batch of a task (see [`run_batch`](crate::worker::batch::run_batch)).
#[doc(hidden)]
pub type RunFn = fn(&mut BatchRun<'_>) -> Result<(), Error>;

/// One registered task, as emitted by `#[pool_task]`.
#[doc(hidden)]
pub struct TaskEntry {
    /// The path of the function, `module_path!()` and its name: not unique (see
    /// [`TaskEntry::name`] for the name that is).
    name: &'static str,
    /// The `TypeId` of the function item, behind a function called when the index
    /// is built.
    type_id: fn() -> TypeId,
    /// The runner `#[pool_task]` monomorphized for this function.
    run: RunFn,
}

impl TaskEntry {
    /// A registry entry: the stable name, the `TypeId` of the function item, and
    /// the monomorphized runner.
    pub const fn new(name: &'static str, type_id: fn() -> TypeId, run: RunFn) -> Self {
        TaskEntry { name, type_id, run }
    }

    /// The registered name, `module::path::function` (with a suffix `#2`, `#3`, ...
    /// when several tasks share that path: see the module docs).
    pub fn name(&self) -> &'static str {
        self.position()
            .and_then(|at| index().names.get(at).copied())
            .unwrap_or(self.name)
    }

    /// Where this entry sits in [`TASKS`]; `None` for an entry that is not in it.
    fn position(&self) -> Option<usize> {
        let base = TASKS.as_ptr() as usize;
        let offset = (self as *const TaskEntry as usize).checked_sub(base)?;
        let at = offset / std::mem::size_of::<TaskEntry>().max(1);
        (at < TASKS.len()).then_some(at)
    }

    /// Runs one batch of this task in a worker.
    ///
    /// # Errors
    ///
    /// Only a malformed batch (see `run_batch`); failing items are results.
    pub(crate) fn run(&self, batch: &mut BatchRun<'_>) -> Result<(), Error> {
        (self.run)(batch)
    }
}

impl std::fmt::Debug for TaskEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskEntry")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One batch as a worker runs it: the encoded items, where the results go, and the
/// hook told as each item starts. Built by the worker loop, handed to the runner that
/// `#[pool_task]` registered.
#[doc(hidden)]
pub struct BatchRun<'a> {
    /// The batch's argument items, not yet read.
    pub(crate) items: Items<'a>,
    /// Items announced by the header: the runner fails the batch if it holds more
    /// or fewer.
    pub(crate) count: u32,
    /// Where one result item per argument item is appended.
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

/// Every `#[pool_task]` of the program.
#[doc(hidden)]
#[linkme::distributed_slice]
pub static TASKS: [TaskEntry];

/// The `TypeId` of a value's type; `#[pool_task]` uses it on the function item.
#[doc(hidden)]
pub fn type_id_of_val<T: 'static>(_: &T) -> TypeId {
    TypeId::of::<T>()
}

/// The lookups over `TASKS`, built once on first use.
struct Index {
    /// The parent's lookup: the function item handed to a call.
    by_type: HashMap<TypeId, &'static TaskEntry>,
    /// The worker's lookup: the unique name a batch names.
    by_name: HashMap<&'static str, &'static TaskEntry>,
    /// The unique name of each entry of `TASKS`, by position.
    names: Vec<&'static str>,
    /// See [`build_id`].
    build_id: u64,
}

/// The index, built on first use from `TASKS`, which the linker completed before
/// `main`. The fingerprint hashes the sorted paths, not the suffixed names, so it
/// does not depend on the slice's order.
fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut by_type = HashMap::with_capacity(TASKS.len());
        let mut by_name = HashMap::with_capacity(TASKS.len());
        let mut seen: HashMap<&'static str, usize> = HashMap::with_capacity(TASKS.len());
        let mut names = Vec::with_capacity(TASKS.len());
        for entry in TASKS.iter() {
            by_type.insert((entry.type_id)(), entry);
            let name = unique_name(entry.name, &mut seen, |n| by_name.contains_key(n));
            by_name.insert(name, entry);
            names.push(name);
        }
        let mut sorted: Vec<&str> = TASKS.iter().map(|e| e.name).collect();
        sorted.sort_unstable();
        let mut id = Fnv::new();
        id.write(env!("CARGO_PKG_VERSION").as_bytes());
        for name in sorted {
            id.write(name.as_bytes());
            id.write(&[0]);
        }
        Index {
            by_type,
            by_name,
            names,
            build_id: id.0,
        }
    })
}

/// `name` the first time it is met, `name#2`, `name#3`, ... after that (skipping any
/// that `taken` says is in use). The few names made are leaked once, with the index.
fn unique_name(
    name: &'static str,
    seen: &mut HashMap<&'static str, usize>,
    taken: impl Fn(&str) -> bool,
) -> &'static str {
    let count = seen.entry(name).or_insert(0);
    *count += 1;
    if *count == 1 {
        if !taken(name) {
            return name;
        }
        *count = 2;
    }
    loop {
        let candidate = format!("{name}#{count}");
        if !taken(&candidate) {
            return Box::leak(candidate.into_boxed_str());
        }
        *count += 1;
    }
}

/// The entry of the function item type `F`, if it was registered.
pub(crate) fn by_type<F: 'static>() -> Option<&'static TaskEntry> {
    index().by_type.get(&TypeId::of::<F>()).copied()
}

/// The entry registered under the unique `name`; `None` if unknown.
pub(crate) fn by_name(name: &str) -> Option<&'static TaskEntry> {
    index().by_name.get(name).copied()
}

/// A fingerprint of this program's registry, exchanged in the handshake: parent and
/// worker must be the same build.
pub(crate) fn build_id() -> u64 {
    index().build_id
}

/// The registered name of `task`, or `None` if it is not a `#[pool_task]`.
pub fn task_name<F: 'static>(task: &F) -> Option<&'static str> {
    let _ = task;
    by_type::<F>().map(TaskEntry::name)
}

/// The names of every task registered in this program, sorted.
pub fn task_names() -> Vec<&'static str> {
    let mut names = index().names.clone();
    names.sort_unstable();
    names
}

/// 64-bit FNV-1a: stable across processes and builds, unlike `DefaultHasher`'s contract.
struct Fnv(u64);

impl Fnv {
    /// The FNV-1a offset basis.
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    /// Folds `bytes` in: xor each byte, multiply by the FNV prime.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(n: u32) -> u32 {
        n * 2
    }

    #[allow(unsafe_code)] // linkme places the entry with #[link_section]
    #[linkme::distributed_slice(TASKS)]
    static DOUBLE: TaskEntry = TaskEntry::new(
        concat!(module_path!(), "::double"),
        || type_id_of_val(&double),
        |batch| crate::worker::batch::run_batch::<(u32,), _>(double, batch),
    );

    #[test]
    fn finds_by_type_and_name() {
        let name = task_name(&double).expect("registered");
        assert_eq!(name, "procpool_core::wire::registry::tests::double");
        assert!(task_names().contains(&name));
        let entry = by_name(name).expect("by name");
        let mut payload = Vec::new();
        crate::wire::protocol::push_item::<()>(&mut payload, |b| {
            crate::wire::protocol::encode_into(&(21u32,), b).map_err(drop)
        })
        .unwrap();
        let mut out = Vec::new();
        entry
            .run(&mut BatchRun {
                items: crate::wire::protocol::Items::new(&payload),
                count: 1,
                out: &mut out,
                started: None,
                item: &std::sync::atomic::AtomicU32::new(0),
            })
            .unwrap();
        // One result item: length 2, status OK, then 42.
        assert_eq!(out, [2, crate::wire::protocol::STATUS_OK, 42]);
        let closure = |n: u32| n;
        assert_eq!(task_name(&closure), None);
        assert!(by_name("nope::nothing").is_none());
    }

    #[test]
    fn names_shared_by_several_tasks_get_suffixes() {
        let mut seen = HashMap::new();
        let mut made: Vec<&'static str> = Vec::new();
        for name in [
            "m::helper",
            "m::other",
            "m::helper",
            "m::helper#2",
            "m::helper",
        ] {
            let unique = unique_name(name, &mut seen, |n| made.contains(&n));
            made.push(unique);
        }
        assert_eq!(
            made,
            [
                "m::helper",
                "m::other",
                "m::helper#2",
                "m::helper#2#2",
                "m::helper#3"
            ]
        );
    }

    #[test]
    fn build_id_is_stable() {
        assert_eq!(build_id(), build_id());
        assert_ne!(build_id(), Fnv::new().0);
    }
}
