#!/usr/bin/env python3
"""Checks that pool-core's imports run one way: caller -> engine -> wire, worker -> wire.

Reads every `crate::<module>` path in pool-core/src (outside `#[cfg(test)] mod tests`
blocks and test-only modules, which may reach anywhere to set a case up), maps each file to its layer (the
folder it sits in, or the root module's name) and fails on an import that goes
against the allowed direction, or on any circle between two layers.
"""
import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "pool-core" / "src"
LAYERS = {"caller", "engine", "wire", "worker", "share", "cluster"}
# Which layer may import which: the root modules (error, sync, sys, task, transport,
# bytes, runtime, lib) are shared helpers and the public face.
ALLOWED = {
    "caller": {"engine", "wire", "share", "cluster"},
    "engine": {"wire"},
    "worker": {"wire"},
    "wire": set(),
    # Channels, shared memory and locks: built on the root's handoff and sys alone.
    "share": set(),
    # Rank 0's remote workers and the node agent: launched and driven through the engine.
    "cluster": {"engine", "wire"},
}
# The root modules are shared helpers (error, sync, sys, task, transport, bytes) and
# import no layer; `process` (what init recorded) reads the wire's marker; `lib` is
# the public face and re-exports from every layer.
ROOT_MAY_IMPORT = {"process": {"wire"}, "lib": LAYERS}


def layer_of(path: pathlib.Path) -> str:
    rel = path.relative_to(SRC).parts
    return rel[0] if len(rel) > 1 else rel[0].removesuffix(".rs")


def code_of(path: pathlib.Path) -> str:
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "#[cfg(test)]" and i + 1 < len(lines) and lines[i + 1].lstrip().startswith("mod tests"):
            lines = lines[:i]
            break
    # Drop comments, so that doc links and prose do not count as imports.
    return "\n".join(l.split("//")[0] for l in lines)


def test_only_files() -> set:
    """Files of modules declared under `#[cfg(test)]` (fakes for unit tests)."""
    found = set()
    for parent in SRC.rglob("*.rs"):
        text = parent.read_text()
        for name in re.findall(r"#\[cfg\(test\)\]\s*(?:pub(?:\(\w+\))? )?mod (\w+);", text):
            base = parent.parent if parent.name in ("mod.rs", "lib.rs") else parent.with_suffix("")
            found.add(base / f"{name}.rs")
    return found


edges = {}
problems = []
skipped = test_only_files()
for path in sorted(SRC.rglob("*.rs")):
    if path in skipped:
        continue
    me = layer_of(path)
    for target in set(re.findall(r"crate::([a-z_]+)", code_of(path))):
        if target == me:
            continue
        edges.setdefault(me, set()).add(target)
        if me in LAYERS and target in LAYERS and target not in ALLOWED[me]:
            problems.append(f"{path.relative_to(SRC)}: {me} imports {target}")
        if me not in LAYERS and target in LAYERS and target not in ROOT_MAY_IMPORT.get(me, set()):
            problems.append(f"{path.relative_to(SRC)}: root module {me} imports the layer {target}")

for a, targets in edges.items():
    for b in targets:
        if a in edges.get(b, set()) and a < b and {a, b} & LAYERS:
            problems.append(f"circle: {a} <-> {b}")

for a in sorted(edges):
    print(f"{a:>10} -> {', '.join(sorted(edges[a]))}")
if problems:
    print("\n".join(["", "layering problems:"] + problems))
    sys.exit(1)
print("\nlayers ok: caller -> engine -> wire, worker -> wire, no circle")
