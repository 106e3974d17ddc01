"""What one goroutine census costs gotel: CPU time of ``CensusReader.read`` on a Go program with
10 to 1,000,000 parked goroutines (tests/go/blocked -n N -depth 4: each parked on a channel six
frames deep), without stacks (the goroutine table: allgs, every g, decoded) and with stacks
(frame-pointer unwinding of every goroutine), plus naming every frame (symbolization with inlined
calls, per distinct PC).

Trust the CPU seconds of the gotel process (``time.process_time``, user + system: the
``process_vm_readv`` copies are charged to the reader), best and median of the repetitions; the
traced program is never stopped, and pays nothing but the cache misses of being read. Goals
(issue 10): 100,000 goroutines in <= 100 ms without stacks, <= 1 s with.

Row 8 of ``make bench`` (``run(quick)``); ``--quick`` uses 10 and 1,000 goroutines.
"""

import subprocess
import sys
import time
from pathlib import Path

from pipeline.app import gotool
from receiver.binary import GoBinary
from receiver.census import CensusReader

REPO = Path(__file__).resolve().parent.parent
SIZES = (10, 1_000, 100_000, 1_000_000)
QUICK_SIZES = (10, 1_000)
DEPTH = 4


def _start(binary, n):
    p = subprocess.Popen([str(binary), "-n", str(n), "-depth", str(DEPTH)], stdout=subprocess.PIPE,
                         text=True)
    p.stdout.readline()
    p.stdout.readline()
    return p


def _cpu(fn):
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def measure(sizes, repeat):
    """{n: {"table_s": [...], "stacks_s": [...], "symbolize_s": [...], "goroutines", "frames"}}."""
    binary_path = gotool.build(REPO / "tests" / "go" / "blocked", REPO / "benchmarks" / ".work",
                               version="1.25")
    results = {}
    for n in sizes:
        proc = _start(binary_path, n)
        try:
            binary = GoBinary.open(proc.pid)
            reader = CensusReader(binary, proc.pid)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:   # every goroutine parked (1M take seconds to start)
                c = reader.read(stacks=False)
                if len(c.goroutines) >= n and (c.goroutines["status"] == 4).sum() >= n:
                    break
                time.sleep(0.5)
            r = {"table_s": [], "stacks_s": [], "symbolize_s": []}
            for _ in range(repeat):
                t, c = _cpu(lambda: reader.read(stacks=False))
                r["table_s"].append(t)
                t, c = _cpu(lambda: reader.read(stacks=True))
                r["stacks_s"].append(t)
                sym = binary.symbolizer()
                sym._expanded.clear()
                t, _ = _cpu(lambda: sym.frames(c.pcs, bias=c.bias))
                r["symbolize_s"].append(t)
            r["goroutines"] = len(c.goroutines)
            r["frames"] = len(c.pcs)
            r["dropped"] = c.dropped
            results[n] = r
        finally:
            proc.kill()
            proc.wait()
    return results


def run(quick=False):
    """Row 8 of ``make bench``, in the shape of benchmarks/harness.py."""
    from benchmarks import harness

    repeat = 2 if quick else 5
    results = measure(QUICK_SIZES if quick else SIZES, repeat)
    figures, goals, notes = {}, [], [f"{repeat} repetitions; Go 1.25 program, goroutines {DEPTH + 2} frames deep."]
    for n, r in results.items():
        figures[f"n{n}.table_s"] = harness.figure(f"{n:,} goroutines: census without stacks (CPU)", "s",
                                                  r["table_s"], 4)
        figures[f"n{n}.stacks_s"] = harness.figure(f"{n:,} goroutines: census with stacks (CPU)", "s",
                                                   r["stacks_s"], 4)
        figures[f"n{n}.symbolize_s"] = harness.figure(
            f"{n:,} goroutines: naming every frame, inlined calls expanded (CPU)", "s", r["symbolize_s"], 4)
        notes.append(f"{n:,}: {r['goroutines']:,} goroutines read, {r['frames']:,} frames, dropped {r['dropped']}.")
    if 100_000 in results:
        for key, target in (("table_s", 0.1), ("stacks_s", 1.0)):
            fig = figures[f"n100000.{key}"]
            goals.append(harness.goal(f"100,000 goroutines {'with' if key == 'stacks_s' else 'without'} stacks "
                                      f"in <= {target} s", f"n100000.{key}", fig["median"], target,
                                      fig["median"] <= target,
                                      "Python-side decoding and one process_vm_readv per 1024 records"))
    return harness.row(8, "Goroutine census", __doc__, figures, goals, notes, {"repeat": repeat})


if __name__ == "__main__" and len(sys.argv) > 1:   # run.py: --out FILE [--quick]
    from benchmarks import harness

    raise SystemExit(harness.main(run, __doc__))
elif __name__ == "__main__":
    for n, r in measure(SIZES, 3).items():
        print(f"{n:>9,}  table {min(r['table_s']):.4f}s  stacks {min(r['stacks_s']):.4f}s  "
              f"symbolize {min(r['symbolize_s']):.4f}s  ({r['frames']:,} frames)")
