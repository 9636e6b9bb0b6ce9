use procpool::pool_task;

#[pool_task]
fn identity<T: Clone>(value: T) -> T {
    value
}

#[pool_task]
fn first_word<'a>(text: std::borrow::Cow<'a, str>) -> usize {
    text.len()
}

#[pool_task]
fn total(numbers: impl IntoIterator<Item = u64>) -> u64 {
    numbers.into_iter().sum()
}

#[pool_task]
fn length(text: std::borrow::Cow<'_, str>) -> usize {
    text.len()
}

fn main() {}
