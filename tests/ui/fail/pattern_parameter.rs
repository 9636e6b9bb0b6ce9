use procpool::pool_task;

#[pool_task]
fn sum((a, b): (u64, u64)) -> u64 {
    a + b
}

fn main() {}
