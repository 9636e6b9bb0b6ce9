//! Helper for tests: opens a pipe without close-on-exec (as `libc::pipe` does),
//! starts a pool on the transport named by `PROCPOOL_TEST_TRANSPORT`, closes the
//! pipe's writing end and prints `eof` if its reader sees the end while the workers
//! live (they did not inherit the writing end), `held` if not within 10 s.

use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;

use procpool::pool_task;

#[pool_task]
fn square(n: u64) -> u64 {
    n * n
}

#[procpool::main]
fn main() -> Result<(), procpool::Error> {
    // Descriptors 3 to 6 taken first (close-on-exec, as std opens them), so that the
    // pipe lands above the ones a worker gets from the pool.
    let _low: Vec<File> = (0..4)
        .map(|_| File::open("/dev/null"))
        .collect::<Result<_, _>>()?;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe() writes.
    #[allow(unsafe_code)]
    let made = unsafe { libc::pipe(fds.as_mut_ptr()) };
    assert_eq!(made, 0, "pipe() failed");
    // SAFETY: both descriptors were just opened by pipe() and are owned here alone.
    #[allow(unsafe_code)]
    let (mut reader, writer) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let transport = std::env::var("PROCPOOL_TEST_TRANSPORT").ok();
    let pool = procpool_downstream::builder_for(transport.as_deref())?
        .processes(2)
        .build()?;
    assert_eq!(pool.map(square, 0..10u64)?[9], 81);
    drop(writer);
    // A read that blocks while a worker holds the writing end: bounded by a thread.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        let _ = tx.send(reader.read(&mut byte).ok());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(Some(0)) => println!("eof"),
        _ => println!("held"),
    }
    assert_eq!(
        pool.map(square, 0..10u64)?[9],
        81,
        "the workers still serve"
    );
    Ok(())
}
