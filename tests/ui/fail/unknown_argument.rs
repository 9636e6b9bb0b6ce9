use procpool::pool_task;

#[pool_task(krate = ::procpool)]
fn square(number: u64) -> u64 {
    number * number
}

#[pool_task(crate = "procpool")]
fn cube(number: u64) -> u64 {
    number * number * number
}

fn main() {}
