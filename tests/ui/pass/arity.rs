// Tasks of 0, 1, 6 and 12 parameters: still plain functions, and registered.
use procpool::pool_task;

#[pool_task]
fn zero() -> u32 {
    42
}

#[pool_task]
fn square(number: u64) -> u64 {
    number * number
}

#[pool_task]
fn six(a: u8, b: u16, c: u32, d: u64, e: i8, f: String) -> String {
    format!("{a}{b}{c}{d}{e}{f}")
}

#[pool_task]
fn twelve(
    a: u8,
    b: u8,
    c: u8,
    d: u8,
    e: u8,
    f: u8,
    g: u8,
    h: u8,
    i: u8,
    j: u8,
    k: u8,
    l: u8,
) -> u32 {
    [a, b, c, d, e, f, g, h, i, j, k, l]
        .iter()
        .map(|&x| u32::from(x))
        .sum()
}

fn main() {
    assert_eq!(zero(), 42);
    assert_eq!(square(3), 9);
    assert_eq!(six(1, 2, 3, 4, -5, "x".to_owned()), "1234-5x");
    assert_eq!(twelve(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1), 12);

    let module = module_path!();
    assert_eq!(
        procpool::task_name(&zero),
        Some(&*format!("{module}::zero"))
    );
    assert_eq!(
        procpool::task_name(&square),
        Some(&*format!("{module}::square"))
    );
    assert_eq!(procpool::task_name(&six), Some(&*format!("{module}::six")));
    assert_eq!(
        procpool::task_name(&twelve),
        Some(&*format!("{module}::twelve"))
    );
}
