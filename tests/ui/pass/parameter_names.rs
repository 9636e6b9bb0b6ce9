// `mut` parameters, `_name` and `_` are plain names.
use procpool::pool_task;

#[pool_task]
fn push_one(mut items: Vec<u8>) -> Vec<u8> {
    items.push(1);
    items
}

#[pool_task]
fn first(value: u32, _unused: String, _: bool) -> u32 {
    value
}

fn main() {
    assert_eq!(push_one(vec![0]), [0, 1]);
    assert_eq!(first(7, String::new(), true), 7);
    assert!(procpool::task_name(&push_one).is_some());
    assert!(procpool::task_name(&first).is_some());
}
