//! Tasks registered in another library crate are found by workers started from a
//! constructor, every one of them.

use procpool::{Error, Pool};
use procpool_task_lib::{arity, fail_on_odd, many, shout, sum, whoami};

#[test]
fn every_task_of_a_linked_library_is_found() {
    let pool = Pool::new(2).unwrap();
    let checked = many::check_all(&pool).unwrap();
    assert_eq!(checked.len(), 40);
    for (name, got, expected) in checked {
        assert_eq!(got, expected, "task {name}");
    }
    let names = procpool::task_names();
    assert!(
        names
            .iter()
            .filter(|n| n.starts_with("procpool_task_lib::many::"))
            .count()
            == 40,
        "{names:?}"
    );
}

#[test]
fn arities_zero_to_six_and_twelve() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.apply(arity::zero, ()).unwrap(), 42);
    assert_eq!(pool.apply(arity::one, (5u8,)).unwrap(), 5);
    assert_eq!(pool.map(arity::one, [1u8, 2]).unwrap(), [1, 2]);
    assert_eq!(pool.apply(arity::two, (2u32, 3u32)).unwrap(), 5);
    assert_eq!(
        pool.apply(arity::three, ("a".to_owned(), 7u16, true))
            .unwrap(),
        "a-7-true"
    );
    assert_eq!(
        pool.apply(arity::four, (3i64, 4i64, 1i64, 2i64)).unwrap(),
        10
    );
    assert_eq!(
        pool.apply(arity::five, (1u8, 2u8, 3u8, 4u8, 5u8)).unwrap(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(
        pool.apply(arity::six, (1u64, 2u64, 3u64, 4u64, 5u64, 6u64))
            .unwrap(),
        21
    );
    let twelve = (
        1u8, 2u8, 3u8, 4u8, 5u8, 6u8, 7u8, 8u8, 9u8, 10u8, 11u8, 12u8,
    );
    assert_eq!(pool.apply(arity::twelve, twelve).unwrap(), 78);
    assert_eq!(
        pool.starmap(arity::two, [(1u32, 1u32), (2, 2)]).unwrap(),
        [2, 4]
    );
}

#[test]
fn library_tasks_with_collections_strings_and_panics() {
    let pool = Pool::new(2).unwrap();
    assert_eq!(
        pool.map(sum, vec![vec![1i64, 2, 3], vec![], vec![-5]])
            .unwrap(),
        [6, 0, -5]
    );
    assert_eq!(
        pool.map(shout, ["ab".to_owned(), "ß".to_owned()]).unwrap(),
        ["AB", "SS"]
    );
    let err = pool.map(fail_on_odd, [2u32, 4, 5, 6]).unwrap_err();
    assert!(
        matches!(&err, Error::TaskPanicked { index: 2, task, message, .. }
            if task == "procpool_task_lib::fail_on_odd" && message == "odd input 5"),
        "{err:?}"
    );
    let pid = pool.apply(whoami, ()).unwrap();
    assert_ne!(pid, std::process::id());
    assert!(pool.pids().contains(&pid));
}
