//! Property tests: for arbitrary inputs, pool results equal serial results.

use std::sync::LazyLock;

use procpool::Pool;
use procpool_downstream::{Record, collatz_steps, summarize};
use proptest::prelude::*;

/// One pool for every case: a `Pool` is `Sync`, and its workers live as long as
/// the test process.
static POOL: LazyLock<Pool> = LazyLock::new(|| Pool::new(2).expect("pool"));

fn record() -> impl Strategy<Value = Record> {
    (
        any::<u32>(),
        ".{0,20}",
        proptest::option::of(proptest::collection::vec(".{0,5}", 0..4)),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(id, name, tags, blob)| Record {
            id,
            name,
            tags,
            blob,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn map_equals_serial(items in proptest::collection::vec(any::<u64>(), 0..300)) {
        let serial: Vec<u32> = items.iter().map(|&n| collatz_steps(n)).collect();
        prop_assert_eq!(POOL.map(collatz_steps, &items).unwrap(), serial);
    }

    #[test]
    fn map_chunked_equals_serial(items in proptest::collection::vec(0u64..1_000_000, 0..200), chunk in 1usize..50) {
        let serial: Vec<u32> = items.iter().map(|&n| collatz_steps(n)).collect();
        prop_assert_eq!(POOL.map_chunked(collatz_steps, items, chunk).unwrap(), serial);
    }

    #[test]
    fn starmap_of_structs_equals_serial(args in proptest::collection::vec((record(), any::<i16>()), 0..40)) {
        let serial: Vec<_> = args.iter().cloned().map(|(r, w)| summarize(r, w)).collect();
        prop_assert_eq!(POOL.starmap(summarize, &args).unwrap(), serial);
    }

    #[test]
    fn a_fresh_pool_per_case_works_too(n in 1usize..4, items in proptest::collection::vec(any::<u64>(), 0..20)) {
        let pool = Pool::new(n).unwrap();
        let serial: Vec<u32> = items.iter().map(|&x| collatz_steps(x)).collect();
        prop_assert_eq!(pool.map(collatz_steps, items).unwrap(), serial);
    }
}
