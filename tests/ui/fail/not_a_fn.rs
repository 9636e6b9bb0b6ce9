use procpool::pool_task;

#[pool_task]
struct Square {
    number: u64,
}

fn main() {}
