#[procpool::main]
async fn main() {}
