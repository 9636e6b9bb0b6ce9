use procpool::pool_task;

struct Handle(u64);

#[pool_task]
fn open(handle: Handle) -> u64 {
    handle.0
}

fn main() {}
