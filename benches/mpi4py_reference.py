"""mpi4py.futures on the scenarios the comparison runner measures under MPI.

    mpirun --allow-run-as-root --oversubscribe -np 3 python3 -m mpi4py.futures \
        benches/mpi4py_reference.py [--repeat R]

Rank 0 runs this file; the other ranks are mpi4py's workers (MPIPoolExecutor).
The same sizes as benches/python_reference.py: map_tiny (1 M `square`, chunks of
ceil(n / (4 * workers)), as the runner's default), map_tiny_chunk1 (20 000 at
chunksize 1), apply_rtt (submit(...).result() one at a time, 2 000 calls),
cpu_bound (64 x ~20 ms `busy`, speedup over serial). Best of R runs; one JSON line
per figure on stdout, in the runner's schema, with impl "mpi4py.futures".
"""
import json
import math
import sys
import time

from mpi4py.futures import MPIPoolExecutor

N_MAP = 1_000_000
N_MAP_CHUNK1 = 20_000
APPLY_CALLS = 2_000
CPU_ITEMS = 64
LCG_STEPS = 180_000


def square(x):
    return x * x


def busy(seed):
    state = seed
    for _ in range(LCG_STEPS):
        state = (state * 1103515245 + 12345) & 0xFFFFFFFF
    return state


def emit(workers, scenario, metric, value, unit):
    print(json.dumps({"impl": "mpi4py.futures", "scenario": scenario, "metric": metric,
                      "value": round(value, 3), "unit": unit, "processes": workers,
                      "start_method": "mpi"}), flush=True)


def best(repeat, f):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    repeat = int(sys.argv[sys.argv.index("--repeat") + 1]) if "--repeat" in sys.argv else 3
    with MPIPoolExecutor() as pool:
        workers = pool.num_workers
        list(pool.map(square, range(4 * workers), chunksize=1))  # warm
        chunk = math.ceil(N_MAP / (4 * workers))
        t = best(repeat, lambda: list(pool.map(square, range(N_MAP), chunksize=chunk)))
        emit(workers, "map_tiny", "throughput", N_MAP / t, "tasks/s")
        t = best(repeat, lambda: list(pool.map(square, range(N_MAP_CHUNK1), chunksize=1)))
        emit(workers, "map_tiny_chunk1", "throughput", N_MAP_CHUNK1 / t, "tasks/s")
        samples = []
        for i in range(APPLY_CALLS):
            t0 = time.perf_counter()
            pool.submit(square, i).result()
            samples.append(time.perf_counter() - t0)
        samples.sort()
        emit(workers, "apply_rtt", "median", samples[len(samples) // 2] * 1e6, "us")
        emit(workers, "apply_rtt", "p99", samples[int(len(samples) * 0.99)] * 1e6, "us")
        serial = best(1, lambda: [busy(i) for i in range(CPU_ITEMS)])
        par = best(repeat, lambda: list(pool.map(busy, range(CPU_ITEMS), chunksize=1)))
        emit(workers, "cpu_bound", "speedup", serial / par, "x")


if __name__ == "__main__":
    main()
