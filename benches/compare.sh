#!/usr/bin/env bash
# procpool vs Python's multiprocessing.Pool, back to back on this machine.
#
#   bash benches/compare.sh [--processes N] [--repeat R] [--rounds K]
#                           [--start-method M] [--out DIR] [SCENARIO ...]
#
# Runs benches/python_reference.py, then the Rust runner (the `compare` bench target,
# benches/compare/) over the pipe and the ipc transport, all with the same
# --processes, --repeat and scenarios, and prints one Markdown table joined on
# (scenario, metric). The raw-pipe and rayon reference rows come from the pipe run.
# With --rounds K the three runs take turns K times and each figure is the best of its
# rounds, so that on a shared, noisy machine every side gets the same chance at a
# quiet moment. --start-method goes to Python only (procpool always re-executes its
# binary); --out DIR keeps the JSON lines of each run. Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

common=()
python_only=()
out=""
rounds=1
while [ $# -gt 0 ]; do
    case "$1" in
        --processes | --repeat)
            [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }
            common+=("$1" "$2"); shift 2 ;;
        --rounds)
            [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }
            rounds="$2"; shift 2 ;;
        --start-method)
            [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }
            python_only+=("$1" "$2"); shift 2 ;;
        --out)
            [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }
            out="$2"; shift 2 ;;
        -h | --help)
            sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) common+=("$1"); shift ;;
    esac
done

if [ -z "$out" ]; then
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi
mkdir -p "$out"

echo "==> building the Rust runner" >&2
cargo bench --quiet --no-run --bench compare --features ipc
runner=(cargo bench --quiet --bench compare --features ipc --)

case "$rounds" in
    '' | *[!0-9]* | 0) echo "--rounds needs a positive number" >&2; exit 2 ;;
esac
: >"$out/python.jsonl"; : >"$out/pipe.jsonl"; : >"$out/ipc.jsonl"
for round in $(seq "$rounds"); do
    echo "==> round $round of $rounds: python-multiprocessing" >&2
    python3 benches/python_reference.py ${common[@]+"${common[@]}"} \
        ${python_only[@]+"${python_only[@]}"} >>"$out/python.jsonl"
    echo "==> round $round of $rounds: procpool-pipe" >&2
    "${runner[@]}" --transport pipe ${common[@]+"${common[@]}"} >>"$out/pipe.jsonl"
    echo "==> round $round of $rounds: procpool-ipc" >&2
    "${runner[@]}" --transport ipc --no-reference ${common[@]+"${common[@]}"} >>"$out/ipc.jsonl"
done

python3 - "$out/python.jsonl" "$out/pipe.jsonl" "$out/ipc.jsonl" "$rounds" <<'PY'
import json
import sys

ORDER = ["map_tiny", "map_tiny_chunk1", "apply_rtt", "startup", "payload_1mib",
         "cpu_bound", "imap_stream"]
LOWER_IS_BETTER = {"us", "ms"}

rows = [json.loads(line) for path in sys.argv[1:4] for line in open(path) if line.strip()]
keys, units = [], {}      # (scenario, metric) in order of appearance, and their units
value = {}                # (impl, scenario, metric) -> value; procpool, and references
python = {}               # (scenario, metric) -> {start_method: value}


def best(unit, old, new):
    """The better of two rounds' figures."""
    if old is None:
        return new
    return min(old, new) if unit in LOWER_IS_BETTER else max(old, new)


for r in rows:
    key = (r["scenario"], r["metric"])
    if key not in units:
        keys.append(key)
        units[key] = r["unit"]
    unit = units[key]
    if r["impl"] == "python-multiprocessing":
        methods = python.setdefault(key, {})
        methods[r["start_method"]] = best(unit, methods.get(r["start_method"]), r["value"])
    else:
        k = (r["impl"], *key)
        value[k] = best(unit, value.get(k), r["value"])
seen = {k: n for n, k in enumerate(keys)}
keys.sort(key=lambda k: (ORDER.index(k[0]) if k[0] in ORDER else len(ORDER), seen[k]))


def fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "-"


table = [["scenario", "metric", "unit", "python", "procpool-pipe", "procpool-ipc",
          "reference", "pipe/python", "ipc/python", "better"]]
for key in keys:
    scenario, metric = key
    unit = units[key]
    pipe = value.get(("procpool-pipe", *key))
    ipc = value.get(("procpool-ipc", *key))
    ref = [f"{who} {fmt(value[(who, *key)])}" for who in ("raw-pipe", "rayon")
           if (who, *key) in value]
    better = "lower" if unit in LOWER_IS_BETTER else "higher"
    runs = list(python.get(key, {}).items()) or [(None, None)]
    for method, py in runs:
        label = scenario if len(runs) == 1 else f"{scenario} (py {method})"
        table.append([label, metric, unit, fmt(py), fmt(pipe), fmt(ipc), ", ".join(ref),
                      ratio(pipe, py), ratio(ipc, py), better])

widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
right = {3, 4, 5, 7, 8}
for n, row in enumerate(table):
    cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
    print("| " + " | ".join(cells) + " |")
    if n == 0:
        print("|" + "|".join(("-" * (w + 1) + ":") if i in right else ("-" * (w + 2))
                             for i, w in enumerate(widths)) + "|")
p = rows[0]["processes"] if rows else "?"
rounds = sys.argv[4] if len(sys.argv) > 4 else "1"
print(f"\nprocesses={p}; best of --repeat runs and of {rounds} round(s); ratio = procpool / python: above 1 is "
      "better for throughput and speedup (better=higher), below 1 is better for "
      "latency and startup (better=lower). procpool's start_method is reexec; "
      "Python's is fork unless --start-method was given (startup shows each).")
PY
