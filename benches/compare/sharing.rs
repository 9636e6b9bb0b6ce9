//! What processes share besides a pool (procpool only; issue 14's figures):
//!
//! - `channel_stream`: 200 000 `u64` messages through a channel to an echo
//!   `Process` and back through a second channel, written by one thread and read
//!   by another (`throughput`, messages per second one way). Reference row
//!   `raw-pipe`: the same 8-byte messages, one `write` and one `read` each, through
//!   the echo child's two plain pipes (it copies whatever it reads at once, where the
//!   echo process receives and sends message by message).
//! - `channel_rtt`: one message to the echo process and its answer, timed one by
//!   one as `apply_rtt` times its calls (`median`, `p99`, µs); reference row
//!   `raw-pipe`: `apply_rtt`'s 8-byte echo.
//! - `shared_slice_1gib`: 1 GiB of `f64` summed by each of 4 `map` tasks, handed
//!   over as a `SharedSlice` (mapped in the worker, no copy) and, reference row
//!   `bytes-arg`, as the same bytes sent as `procpool::Bytes` to every task
//!   (`throughput`: GiB handed to tasks per second).

use std::io::{Read, Write};
use std::time::Duration;

use procpool::{Process, Receiver, Sender, channel, pool_task};

use crate::latency::{join_f, rtt_rounds};
use crate::reference::EchoChild;
use crate::{Bench, Res, emit, fmt_times, log};

/// Messages of `channel_stream`.
const STREAM_MESSAGES: u64 = 200_000;

/// Sends back on `back` whatever arrives on `input`, until `input` is
/// disconnected; returns how many it echoed.
#[pool_task]
fn echo_messages(input: Receiver<u64>, back: Sender<u64>) -> u64 {
    let mut n = 0;
    for m in input.iter() {
        if back.send(m).is_err() {
            break;
        }
        n += 1;
    }
    n
}

/// An echo process and the parent's ends of its two channels.
struct Echo {
    process: Process<u64>,
    to: Sender<u64>,
    from: Receiver<u64>,
}

impl Echo {
    fn start() -> Res<Echo> {
        let (to, input) = channel::<u64>()?;
        let (back, from) = channel::<u64>()?;
        let process = Process::spawn(echo_messages, (input, back))?;
        Ok(Echo { process, to, from })
    }

    /// Disconnects the echo process's input; how many messages it echoed.
    fn finish(self) -> Res<u64> {
        drop(self.to);
        Ok(self.process.join()?)
    }
}

pub(crate) fn channel_stream(bench: &Bench) -> Res<()> {
    let echo = Echo::start()?;
    let (best, times, ()) = bench.best_time(|| {
        let to = echo.to.clone();
        let writer = std::thread::spawn(move || -> Result<(), procpool::Error> {
            (0..STREAM_MESSAGES).try_for_each(|m| to.send(m))
        });
        for m in 0..STREAM_MESSAGES {
            let got = echo.from.recv_timeout(Duration::from_secs(60))?;
            assert_eq!(got, m, "in order from one sender");
        }
        writer.join().expect("writer thread")?;
        Ok(())
    })?;
    let echoed = echo.finish()?;
    assert_eq!(echoed, STREAM_MESSAGES * bench.repeat as u64);
    let rate = STREAM_MESSAGES as f64 / best;
    log(&format!(
        "channel_stream: {:.0} k messages/s  (through an echo process; {})",
        rate / 1e3,
        fmt_times(&times)
    ));
    bench.emit("channel_stream", "throughput", rate, "msgs/s");
    if bench.reference {
        channel_stream_raw_pipe(bench)?;
    }
    Ok(())
}

/// `channel_stream[raw-pipe]`: 8-byte writes and reads through the echo child.
fn channel_stream_raw_pipe(bench: &Bench) -> Res<()> {
    let mut child = EchoChild::spawn()?;
    let (best, times, ()) = bench.best_time(|| {
        let mut input = child.input.try_clone()?;
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            (0..STREAM_MESSAGES).try_for_each(|m| input.write_all(&m.to_le_bytes()))
        });
        for m in 0..STREAM_MESSAGES {
            let mut back = [0u8; 8];
            child.output.read_exact(&mut back)?;
            assert_eq!(u64::from_le_bytes(back), m);
        }
        writer.join().expect("writer thread")?;
        Ok(())
    })?;
    child.finish()?;
    let rate = STREAM_MESSAGES as f64 / best;
    log(&format!(
        "channel_stream[raw-pipe]: {:.0} k messages/s  (echo child; {})",
        rate / 1e3,
        fmt_times(&times)
    ));
    emit(
        bench,
        "raw-pipe",
        "channel_stream",
        "throughput",
        rate,
        "msgs/s",
    );
    Ok(())
}

pub(crate) fn channel_rtt(bench: &Bench) -> Res<()> {
    let echo = Echo::start()?;
    let (median, p99, medians) = rtt_rounds(bench, |i| {
        echo.to.send(i)?;
        assert_eq!(echo.from.recv()?, i);
        Ok(())
    })?;
    echo.finish()?;
    log(&format!(
        "channel_rtt: median {median:.1} us, p99 {p99:.1} us  (medians {} us)",
        join_f(&medians)
    ));
    bench.emit("channel_rtt", "median", median, "us");
    bench.emit("channel_rtt", "p99", p99, "us");
    if bench.reference {
        crate::reference::apply_rtt_raw_pipe_as(bench, "channel_rtt")?;
    }
    Ok(())
}

/// `f64`s in `shared_slice_1gib`'s data: 1 GiB.
const SLICE_VALUES: usize = 1 << 27;
/// Tasks of `shared_slice_1gib`, each summing all of the data.
const SLICE_TASKS: usize = 4;

/// The sum of a shared slice, read where it is mapped.
#[pool_task]
fn sum_shared(data: procpool::SharedSlice<f64>) -> f64 {
    data.iter().sum()
}

/// The sum of the same values sent as bytes (little-endian `f64`s).
#[pool_task]
fn sum_bytes(data: procpool::Bytes) -> f64 {
    data.chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
        .sum()
}

pub(crate) fn shared_slice_1gib(bench: &Bench) -> Res<()> {
    let values: Vec<f64> = (0..SLICE_VALUES).map(|i| (i % 1000) as f64).collect();
    let expected: f64 = values.iter().sum();
    let gib = (SLICE_TASKS * SLICE_VALUES * 8) as f64 / (1u64 << 30) as f64;
    // Room for a 1 GiB argument in one frame (the default cap is 1 GiB in all).
    let pool = bench.warm(bench.builder().max_frame_size(3 << 29).build()?)?;
    let created = std::time::Instant::now();
    let shared = procpool::SharedSlice::from_slice(&values)?;
    let create_ms = created.elapsed().as_secs_f64() * 1e3;
    let (best, times, sums) = bench
        .best_time(|| Ok(pool.map_chunked(sum_shared, vec![shared.clone(); SLICE_TASKS], 1)?))?;
    assert!(sums.iter().all(|s| *s == expected));
    let rate = gib / best;
    log(&format!(
        "shared_slice_1gib: {rate:.2} GiB/s handed to tasks  ({SLICE_TASKS} tasks each summing \
         1 GiB; made in {create_ms:.0} ms; {})",
        fmt_times(&times)
    ));
    bench.emit("shared_slice_1gib", "throughput", rate, "GiB/s");
    bench.emit("shared_slice_1gib", "create", create_ms, "ms");
    drop(shared);
    if bench.reference {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        drop(values);
        let bytes = procpool::Bytes::from(bytes);
        let (best, times, sums) = bench.best_time(|| {
            Ok(pool.map_chunked(sum_bytes, std::iter::repeat_n(&bytes, SLICE_TASKS), 1)?)
        })?;
        assert!(sums.iter().all(|s| *s == expected));
        let rate = gib / best;
        log(&format!(
            "shared_slice_1gib[bytes-arg]: {rate:.2} GiB/s handed to tasks  (the same data as \
             `Bytes` to every task; {})",
            fmt_times(&times)
        ));
        emit(
            bench,
            "bytes-arg",
            "shared_slice_1gib",
            "throughput",
            rate,
            "GiB/s",
        );
    }
    crate::shutdown(pool)
}
