#!/usr/bin/env python3
"""procpool's Python reference: the benchmark scenarios on multiprocessing.Pool.

Same scenarios, sizes, command line and JSON-lines output as the Rust runner
(`cargo bench --bench compare`, benches/compare/), so the two can be run back to
back (`benches/compare.sh` does) and joined on (scenario, metric). Stdlib only,
Python 3.11+.

    python3 benches/python_reference.py [SCENARIO ...] [--processes N]
        [--start-method fork|spawn|forkserver] [--repeat R]

stdout: one JSON object per line
    {"impl": "python-multiprocessing", "scenario", "metric", "value", "unit",
     "processes", "start_method"}
stderr: what was measured, for people.

Each scenario runs R times (default 3) and reports its best run. Pools are
started and warmed (a chunksize-1 map over processes*4 items) before any timer,
except in `startup`, which times pool creation plus the first `apply`.
"""

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import sys
import time

IMPL = "python-multiprocessing"
METHODS = ("fork", "spawn", "forkserver")

N_MAP = 1_000_000
N_MAP_CHUNK1 = 20_000
N_RTT = 2_000
RTT_WARMUP = 20
BLOB_SIZE = 1 << 20
N_BLOBS = 200
N_CPU = 64
# ~20 ms per busy() call in CPython 3.11 on a typical x86-64 core; the Rust side
# calibrates its own loop to the same per-call time.
LCG_STEPS = 180_000
N_IMAP = 1_000_000
IMAP_CHUNK = 1_000


# Tasks: top level, so that spawn and forkserver workers can import them.

def square(x):
    return x * x


def identity(x):
    return x


def busy(seed):
    state = seed
    for _ in range(LCG_STEPS):
        state = (state * 1103515245 + 12345) & 0xFFFFFFFF
    return state


SCENARIOS = ("map_tiny", "map_tiny_chunk1", "apply_rtt", "startup", "payload_1mib",
             "cpu_bound", "imap_stream")


class Runner:
    """Holds the options; one method per scenario, named as in SCENARIOS."""

    def __init__(self, processes, repeat, start_method):
        self.processes = processes
        self.repeat = repeat
        self.explicit_method = start_method
        self.method = start_method or "fork"

    # -- helpers -----------------------------------------------------------

    @staticmethod
    def say(text):
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def record(self, scenario, metric, value, unit, method=None):
        line = json.dumps({
            "impl": IMPL,
            "scenario": scenario,
            "metric": metric,
            "value": round(float(value), 3),
            "unit": unit,
            "processes": self.processes,
            "start_method": method or self.method,
        })
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    @contextlib.contextmanager
    def warm_pool(self):
        """A started pool whose workers have all answered; closed and joined after."""
        pool = mp.get_context(self.method).Pool(self.processes)
        try:
            pool.map(square, range(4 * self.processes), chunksize=1)
            yield pool
        finally:
            pool.close()
            pool.join()

    def timed(self, work):
        """Best wall time of `repeat` runs of work(), every time, last result."""
        times, result = [], None
        for _ in range(self.repeat):
            start = time.perf_counter()
            result = work()
            times.append(time.perf_counter() - start)
        return min(times), times, result

    @staticmethod
    def ms(times):
        return ", ".join("%.1f" % (t * 1000) for t in times) + " ms"

    @staticmethod
    def percentiles(samples_ns):
        """Median (mean of the middle two for an even count) and p99, in us."""
        s = sorted(samples_ns)
        n = len(s)
        mid = n // 2
        median = s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2
        return median / 1000, s[min(n - 1, n * 99 // 100)] / 1000

    # -- scenarios ---------------------------------------------------------

    def map_tiny(self):
        with self.warm_pool() as pool:
            best, times, out = self.timed(lambda: pool.map(square, range(N_MAP)))
        assert len(out) == N_MAP and out[12345] == 12345 ** 2
        chunk = (N_MAP + 4 * self.processes - 1) // (4 * self.processes)
        self.say("map_tiny: %s tasks/s  (n=%d, default chunksize=%d; %s)"
                 % (format(round(N_MAP / best), ","), N_MAP, chunk, self.ms(times)))
        self.record("map_tiny", "throughput", N_MAP / best, "tasks/s")

    def map_tiny_chunk1(self):
        with self.warm_pool() as pool:
            best, times, out = self.timed(
                lambda: pool.map(square, range(N_MAP_CHUNK1), chunksize=1))
        assert len(out) == N_MAP_CHUNK1 and out[-1] == (N_MAP_CHUNK1 - 1) ** 2
        self.say("map_tiny_chunk1: %s tasks/s  (n=%d; %s)"
                 % (format(round(N_MAP_CHUNK1 / best), ","), N_MAP_CHUNK1, self.ms(times)))
        self.record("map_tiny_chunk1", "throughput", N_MAP_CHUNK1 / best, "tasks/s")

    def apply_rtt(self):
        clock = time.perf_counter_ns
        rounds = []
        with self.warm_pool() as pool:
            for i in range(RTT_WARMUP):
                pool.apply(square, (i,))
            for _ in range(self.repeat):
                samples = [0] * N_RTT
                for i in range(N_RTT):
                    start = clock()
                    got = pool.apply(square, (i,))
                    samples[i] = clock() - start
                    assert got == i * i
                rounds.append(self.percentiles(samples))
        median = min(r[0] for r in rounds)
        p99 = min(r[1] for r in rounds)
        self.say("apply_rtt: median %.1f us, p99 %.1f us  (n=%d; medians %s us)"
                 % (median, p99, N_RTT, ", ".join("%.1f" % r[0] for r in rounds)))
        self.record("apply_rtt", "median", median, "us")
        self.record("apply_rtt", "p99", p99, "us")

    def startup(self):
        methods = [self.explicit_method] if self.explicit_method else list(METHODS)
        for method in methods:
            ctx = mp.get_context(method)
            times = []
            for _ in range(self.repeat):
                start = time.perf_counter()
                pool = ctx.Pool(self.processes)
                got = pool.apply(square, (7,))
                times.append(time.perf_counter() - start)
                pool.close()
                pool.join()
                assert got == 49
            self.say("startup[%s]: %.1f ms  (%s)" % (method, min(times) * 1000, self.ms(times)))
            self.record("startup", "first_result", min(times) * 1000, "ms", method=method)

    def payload_1mib(self):
        blob = os.urandom(BLOB_SIZE)
        blobs = [blob] * N_BLOBS
        with self.warm_pool() as pool:
            best, times, out = self.timed(lambda: pool.map(identity, blobs, chunksize=1))
        assert len(out) == N_BLOBS and all(b == blob for b in out)
        rate = BLOB_SIZE * N_BLOBS / (1 << 20) / best
        self.say("payload_1mib: %.1f MiB/s one way  (%d x 1 MiB; %s)"
                 % (rate, N_BLOBS, self.ms(times)))
        self.record("payload_1mib", "throughput", rate, "MiB/s")

    def cpu_bound(self):
        seeds = range(N_CPU)
        serial, _, expected = self.timed(lambda: [busy(s) for s in seeds])
        with self.warm_pool() as pool:
            parallel, _, out = self.timed(lambda: pool.map(busy, seeds))
        assert out == expected
        self.say("cpu_bound: speedup %.2fx  (serial %.0f ms, pool %.0f ms, busy() ~%.1f ms/call, "
                 "%d CPUs)" % (serial / parallel, serial * 1000, parallel * 1000,
                               serial / N_CPU * 1000, os.cpu_count()))
        self.record("cpu_bound", "speedup", serial / parallel, "x")

    def imap_stream(self):
        with self.warm_pool() as pool:
            best, times, total = self.timed(
                lambda: sum(pool.imap(square, range(N_IMAP), chunksize=IMAP_CHUNK)))
        assert total == (N_IMAP - 1) * N_IMAP * (2 * N_IMAP - 1) // 6
        self.say("imap_stream: %s tasks/s  (n=%d, chunksize=%d; %s)"
                 % (format(round(N_IMAP / best), ","), N_IMAP, IMAP_CHUNK, self.ms(times)))
        self.record("imap_stream", "throughput", N_IMAP / best, "tasks/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help="default: all of " + ", ".join(SCENARIOS))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--start-method", choices=METHODS,
                        help="default fork; startup measures all three unless given")
    opts = parser.parse_args()
    bad = [s for s in opts.scenarios if s not in SCENARIOS]
    if bad:
        parser.error("unknown scenario(s) %s; choose from %s"
                     % (", ".join(bad), ", ".join(SCENARIOS)))
    if opts.processes < 1 or opts.repeat < 1:
        parser.error("--processes and --repeat must be at least 1")

    runner = Runner(opts.processes, opts.repeat, opts.start_method)
    runner.say("%s: Python %s, %d CPUs, processes=%d, start_method=%s, repeat=%d"
               % (IMPL, sys.version.split()[0], os.cpu_count(), opts.processes,
                  runner.method, opts.repeat))
    overall = time.perf_counter()
    for name in opts.scenarios or SCENARIOS:
        start = time.perf_counter()
        getattr(runner, name)()
        runner.say("  [%s took %.1f s]" % (name, time.perf_counter() - start))
    runner.say("total: %.1f s" % (time.perf_counter() - overall))


if __name__ == "__main__":
    main()
