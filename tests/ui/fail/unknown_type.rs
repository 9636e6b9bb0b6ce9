use procpool::pool_task;

#[pool_task]
fn open(handle: Handel) -> u64 {
    0
}

fn main() {}
