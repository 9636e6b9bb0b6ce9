// A task in a nested module is registered under its full path.
mod math {
    pub mod integer {
        use procpool::pool_task;

        #[pool_task]
        pub fn add(a: i64, b: i64) -> i64 {
            a + b
        }

        #[pool_task]
        pub(crate) fn negate(a: i64) -> i64 {
            -a
        }
    }
}

fn main() {
    assert_eq!(math::integer::add(2, 3), 5);
    assert_eq!(math::integer::negate(2), -2);

    let name = procpool::task_name(&math::integer::add).unwrap();
    assert!(name.ends_with("::math::integer::add"), "{name}");
    let name = procpool::task_name(&math::integer::negate).unwrap();
    assert!(name.ends_with("::math::integer::negate"), "{name}");
}
