use procpool::pool_task;

#[pool_task(timeout = 5)]
async unsafe fn broken<T>((a, b): (T, T), name: &str) -> T {
    let _ = (b, name);
    a
}

fn main() {}
