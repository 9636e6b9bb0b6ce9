// #[procpool::main] with `crate = path`, on a `main` without a result.
mod runtime {
    pub use ::procpool;
}

#[procpool::main(crate = crate::runtime::procpool)]
fn main() {
    assert!(!procpool::is_worker());
}
