use procpool::pool_task;

struct Counter {
    count: u64,
}

impl Counter {
    #[pool_task]
    fn add(&self, amount: u64) -> u64 {
        self.count + amount
    }
}

fn main() {
    let _ = Counter { count: 0 }.add(1);
}
