"""How long `gotel inspect` takes on ~30 MB Go binaries, with and without DWARF, and how fast the
symbolizer names PCs (500,000 PCs over the first 500 functions of the stripped build, one call).

Trust the in-process figure (GoBinary.open, best of N) for gotel's own cost; the CLI wall time adds
the interpreter start and the imports of numpy and capstone (~0.3 s), which a long-running gotel
pays once. The binaries: the Go 1.27 compiler as Go distributions ship it (symbols, no DWARF), and
cmd/compile built here with Go 1.25 with DWARF, and the same built `-s -w`.

Row 7 of ``make bench`` (``run(quick)``); ``--quick`` times only the shipped Go 1.27 compiler, with
no builds.
"""

import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.app import gotool
from receiver.binary import GoBinary

REPO = Path(__file__).resolve().parent.parent


def _build_compiler(out_dir, flags=()):
    go = gotool.toolchain("1.25")
    out = Path(out_dir) / ("compile" + ("-stripped" if flags else "-dwarf"))
    if not out.exists():
        subprocess.run([str(go), "build", *flags, "-o", str(out), "cmd/compile"],
                       env=gotool.go_env(go), check=True, capture_output=True)
    return out


def _inspect(path):
    """What `gotel inspect` computes: the probe points and the runtime layout."""
    binary = GoBinary.open(path)
    return binary.functions, binary.layout


def _times(fn, repeat):
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def measure(work_dir, repeat=5, builds=True):
    """Return {binary label: {"size_mb", "open_s": [..], "cli_s": [..], "has_dwarf"}} and
    {"symbolizer": {"pcs_per_s": [..]}} (on the stripped build, or the shipped compiler without
    builds)."""
    binaries = {
        "go1.27 compile (no DWARF)": gotool.toolchain("1.27").parents[1] / "pkg/tool/linux_amd64/compile",
    }
    if builds:
        binaries["go1.25 cmd/compile (DWARF)"] = _build_compiler(work_dir)
        binaries["go1.25 cmd/compile (-s -w)"] = _build_compiler(work_dir, ["-ldflags=-s -w"])
    results = {}
    for label, path in binaries.items():
        cli = [sys.executable, "-m", "pipeline.app.cli", "inspect", "--json", str(path)]
        results[label] = {
            "size_mb": round(path.stat().st_size / 1e6, 1),
            "has_dwarf": GoBinary.open(path).has_dwarf,
            "open_s": _times(lambda: _inspect(path), repeat),
            "cli_s": _times(lambda: subprocess.run(cli, cwd=REPO, check=True, capture_output=True), repeat),
        }
    stripped = GoBinary.open(binaries.get("go1.25 cmd/compile (-s -w)",
                                          binaries["go1.27 compile (no DWARF)"]))
    sym = stripped.symbolizer()
    pcs = np.random.default_rng(1).choice(stripped.pclntab.entries[:500], 500_000) + np.uint64(3)
    results["symbolizer"] = {"pcs_per_s": [len(pcs) / t for t in _times(lambda: sym.symbolize(pcs), repeat)]}
    return results


def run(quick=False):
    """Row 7 of ``make bench``, in the shape of benchmarks/harness.py."""
    from benchmarks import harness

    work = REPO / "benchmarks" / ".work"
    work.mkdir(parents=True, exist_ok=True)
    repeat = 2 if quick else 5
    results = measure(work, repeat, builds=not quick)
    rates = results.pop("symbolizer")["pcs_per_s"]
    figures = {"symbolizer.pcs_per_s": harness.figure("symbolizer: PCs named per second", "PCs/s",
                                                      rates, 0)}
    for label, r in results.items():
        key = label.split(" (")[0].replace(" ", "_").replace("/", "_") + ("_dwarf" if r["has_dwarf"] else "")
        key += "_stripped" if "-s -w" in label else ""
        figures[f"{key}.open_s"] = harness.figure(
            f"{label}, {r['size_mb']} MB: GoBinary.open (in process)", "s", r["open_s"], 3)
        figures[f"{key}.cli_s"] = harness.figure(
            f"{label}, {r['size_mb']} MB: `gotel inspect --json` (new process)", "s", r["cli_s"], 3)
    notes = [f"{repeat} repetitions; binaries: {', '.join(results)}."]
    return harness.row(7, "Binary inspection and symbolization", __doc__, figures, (), notes,
                       {"repeat": repeat})


if __name__ == "__main__" and len(sys.argv) > 1:   # run.py: --out FILE [--quick]
    from benchmarks import harness

    raise SystemExit(harness.main(run, __doc__))
elif __name__ == "__main__":   # by hand: a human-readable table
    work = REPO / "benchmarks" / ".work"
    work.mkdir(parents=True, exist_ok=True)
    results = measure(work)
    rates = results.pop("symbolizer")["pcs_per_s"]
    print(f"symbolizer: median {statistics.median(rates):,.0f} PCs/s")
    for label, r in results.items():
        print(f"{label:32s} {r['size_mb']:5.1f} MB  open min {min(r['open_s']):.3f}s "
              f"median {statistics.median(r['open_s']):.3f}s  cli min {min(r['cli_s']):.3f}s")
