// The function keeps its docs, attributes, visibility and qualifiers; structs that
// derive serde's traits are fine as parameters and results; `#[cfg]` below the
// attribute removes the registration along with the function.
use procpool::pool_task;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    x: i32,
    y: i32,
}

/// Mirrors a point.
#[pool_task]
#[must_use]
pub const fn mirror(point: Point) -> Point {
    Point {
        x: -point.x,
        y: point.y,
    }
}

#[pool_task]
fn r#type(kind: Option<String>) -> Result<String, String> {
    kind.ok_or_else(|| "none".to_owned())
}

#[pool_task]
#[cfg(any())]
fn removed(_: NoSuchType) {}

fn main() {
    assert_eq!(mirror(Point { x: 1, y: 2 }), Point { x: -1, y: 2 });
    assert_eq!(r#type(None), Err("none".to_owned()));
    let name = procpool::task_name(&r#type).unwrap();
    assert!(name.ends_with("::type"), "{name}");
}
