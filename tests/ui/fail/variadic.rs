use procpool::pool_task;

#[pool_task]
fn log(level: u8, ...) -> u8 {
    level
}

fn main() {}
