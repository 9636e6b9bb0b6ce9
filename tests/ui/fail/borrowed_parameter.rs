use procpool::pool_task;

#[pool_task]
fn count_words(text: &str) -> usize {
    text.split_whitespace().count()
}

#[pool_task]
fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |sum, b| sum.wrapping_add(*b))
}

#[pool_task]
fn describe(value: &dyn std::fmt::Debug) -> String {
    format!("{value:?}")
}

fn main() {}
