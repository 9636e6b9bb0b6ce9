// `crate = path` for the default path, and for a crate that re-exports procpool.
mod runtime {
    pub use ::procpool;
}

#[procpool::pool_task(crate = ::procpool)]
fn square(number: u64) -> u64 {
    number * number
}

#[procpool::pool_task(crate = crate::runtime::procpool)]
fn cube(number: u64) -> u64 {
    number * number * number
}

fn main() {
    assert_eq!(square(3), 9);
    assert_eq!(cube(3), 27);
    assert!(procpool::task_name(&square).is_some());
    assert!(procpool::task_name(&cube).is_some());
}
