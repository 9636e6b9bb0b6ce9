use procpool::pool_task;

#[pool_task]
extern "C" fn square(number: u64) -> u64 {
    number * number
}

fn main() {}
