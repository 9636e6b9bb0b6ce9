// A crate that denies unsafe code can still register tasks: the registration's
// link section is procpool's business, not the user's.
#![deny(unsafe_code)]

use procpool::pool_task;

#[pool_task]
fn square(n: u64) -> u64 {
    n * n
}

fn main() {
    assert_eq!(square(4), 16);
    assert!(procpool::task_name(&square).is_some());
}
