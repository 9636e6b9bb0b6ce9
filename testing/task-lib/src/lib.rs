//! Test fixture: `#[pool_task]`s defined in a library crate, in several modules, used
//! by `procpool-downstream`. It depends on nothing but `procpool` — no serde, no
//! linkme — as an outside crate defining tasks would.

use procpool::pool_task;

/// Tasks of every arity from 0 to 6, and 12.
pub mod arity {
    use procpool::pool_task;

    /// No parameter.
    #[pool_task]
    pub fn zero() -> u32 {
        42
    }

    /// One parameter.
    #[pool_task]
    pub fn one(a: u8) -> u32 {
        u32::from(a)
    }

    /// Two parameters.
    #[pool_task]
    pub fn two(a: u32, b: u32) -> u32 {
        a + b
    }

    /// Three parameters of different types.
    #[pool_task]
    pub fn three(a: String, b: u16, c: bool) -> String {
        format!("{a}-{b}-{c}")
    }

    /// Four parameters.
    #[pool_task]
    pub fn four(a: i64, b: i64, c: i64, d: i64) -> i64 {
        a * b - c * d
    }

    /// Five parameters.
    #[pool_task]
    pub fn five(a: u8, b: u8, c: u8, d: u8, e: u8) -> Vec<u8> {
        vec![a, b, c, d, e]
    }

    /// Six parameters.
    #[pool_task]
    pub fn six(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64) -> u64 {
        a + b + c + d + e + f
    }

    /// Twelve parameters, the most a task may have.
    #[pool_task]
    #[allow(clippy::too_many_arguments)]
    pub fn twelve(
        a: u8,
        b: u8,
        c: u8,
        d: u8,
        e: u8,
        f: u8,
        g: u8,
        h: u8,
        i: u8,
        j: u8,
        k: u8,
        l: u8,
    ) -> u32 {
        [a, b, c, d, e, f, g, h, i, j, k, l]
            .iter()
            .map(|&x| u32::from(x))
            .sum()
    }
}

/// Many small tasks, to check that every registration is found from a worker
/// started before `main` (in test binaries, from a constructor).
pub mod many {
    macro_rules! offset_tasks {
        ($($name:ident = $k:expr),* $(,)?) => {
            $(
                #[doc = concat!("Adds ", stringify!($k), ".")]
                #[procpool::pool_task]
                pub fn $name(x: u64) -> u64 {
                    x + $k
                }
            )*
            /// Runs every task of this module in `pool` on a few inputs; returns
            /// `(task name, pool results, serial results)` for each.
            pub fn check_all(pool: &procpool::Pool) -> Result<Vec<(&'static str, Vec<u64>, Vec<u64>)>, procpool::Error> {
                let inputs = [0u64, 1, 1000];
                Ok(vec![$(
                    (
                        stringify!($name),
                        pool.map($name, inputs)?,
                        inputs.iter().map(|&x| $name(x)).collect(),
                    ),
                )*])
            }
        };
    }

    offset_tasks!(
        add00 = 0,
        add01 = 1,
        add02 = 2,
        add03 = 3,
        add04 = 4,
        add05 = 5,
        add06 = 6,
        add07 = 7,
        add08 = 8,
        add09 = 9,
        add10 = 10,
        add11 = 11,
        add12 = 12,
        add13 = 13,
        add14 = 14,
        add15 = 15,
        add16 = 16,
        add17 = 17,
        add18 = 18,
        add19 = 19,
        add20 = 20,
        add21 = 21,
        add22 = 22,
        add23 = 23,
        add24 = 24,
        add25 = 25,
        add26 = 26,
        add27 = 27,
        add28 = 28,
        add29 = 29,
        add30 = 30,
        add31 = 31,
        add32 = 32,
        add33 = 33,
        add34 = 34,
        add35 = 35,
        add36 = 36,
        add37 = 37,
        add38 = 38,
        add39 = 39,
    );
}

/// Sums a list.
#[pool_task]
pub fn sum(values: Vec<i64>) -> i64 {
    values.iter().sum()
}

/// Uppercases a string.
#[pool_task]
pub fn shout(s: String) -> String {
    s.to_uppercase()
}

/// Panics for odd numbers.
#[pool_task]
pub fn fail_on_odd(n: u32) -> u32 {
    if n % 2 == 1 {
        panic!("odd input {n}");
    }
    n
}

/// The worker's process id.
#[pool_task]
pub fn whoami() -> u32 {
    std::process::id()
}
