use procpool::pool_task;

#[pool_task]
fn greeting(formal: bool) -> &'static str {
    if formal { "good day" } else { "hi" }
}

#[pool_task]
fn numbers(count: u64) -> impl Iterator<Item = u64> {
    0..count
}

fn main() {}
