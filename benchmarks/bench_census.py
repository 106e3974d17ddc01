"""What one goroutine census costs gotel: CPU time of ``CensusReader.read`` on a Go program with
10 to 1,000,000 parked goroutines (tests/go/blocked -n N -depth 4: each parked on a channel eight
frames deep, runtime frames included), without stacks (the goroutine table: allgs, every g, decoded) and with stacks
(frame-pointer unwinding of every goroutine), plus naming every frame (symbolization with inlined
calls, per distinct PC).

Then the cost to a traced program: the net/http server of row 2 (benchmarks/go/httpserver,
GOMAXPROCS=1 on one CPU) under ``wrk`` load, untraced and with a census with stacks every second
(taken by this process on the other CPU, which wrk shares, as gotel does in row 2); the runs
alternate, each on a fresh server warmed up first.

Trust the CPU seconds of the gotel process (``time.process_time``, user + system: the
``process_vm_readv`` copies are charged to the reader), best and median of the repetitions; the
traced program is never stopped, and pays nothing but the cache misses of being read; trust the
per-pair ``throughput kept`` ratio for that. Goals (issue 10): 100,000 goroutines in <= 100 ms
without stacks, <= 1 s with; <= 1% of the HTTP server's throughput lost to a 1 s census.

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


def http_with_census(repeat, seconds=8, connections=4, interval=1.0):
    """{"kept": [census/untraced requests/s per pair], "rps": {variant: [...]}, "censuses": n}."""
    import threading

    from benchmarks import bench_http

    out = {"kept": [], "rps": {"untraced": [], "census": []}, "censuses": 0}
    for _ in range(repeat):
        pair = {}
        for variant in ("untraced", "census"):
            server, addr = bench_http.start_server()
            stop = threading.Event()
            thread = None
            try:
                bench_http.wrk(addr, 1, connections)          # warm-up
                if variant == "census":
                    reader = CensusReader(GoBinary.open(server.pid), server.pid)

                    def loop(reader=reader, stop=stop):
                        while not stop.wait(interval):
                            reader.read(stacks=True)
                            out["censuses"] += 1

                    thread = threading.Thread(target=loop, daemon=True)
                    thread.start()
                pair[variant], _ = bench_http.wrk(addr, seconds, connections)
            finally:
                stop.set()
                if thread is not None:
                    thread.join(5)
                server.kill()
                server.wait()
            out["rps"][variant].append(pair[variant])
        out["kept"].append(pair["census"] / pair["untraced"])
    return out


def run(quick=False):
    """Row 8 of ``make bench``, in the shape of benchmarks/harness.py."""
    from benchmarks import harness

    repeat = 2 if quick else 5
    results = measure(QUICK_SIZES if quick else SIZES, repeat)
    figures, goals, notes = {}, [], [f"{repeat} repetitions; Go 1.25 program, goroutines {DEPTH + 4} frames deep."]
    for n, r in results.items():
        figures[f"n{n}.table_s"] = harness.figure(f"{n:,} goroutines: census without stacks (CPU)", "s",
                                                  r["table_s"], 4)
        figures[f"n{n}.stacks_s"] = harness.figure(f"{n:,} goroutines: census with stacks (CPU)", "s",
                                                   r["stacks_s"], 4)
        figures[f"n{n}.symbolize_s"] = harness.figure(
            f"{n:,} goroutines: naming every frame, inlined calls expanded (CPU)", "s", r["symbolize_s"], 4)
        notes.append(f"{n:,}: {r['goroutines']:,} goroutines read, {r['frames']:,} frames, dropped {r['dropped']}.")
    http = http_with_census(1 if quick else 5, seconds=2 if quick else 8)
    figures["http.kept"] = harness.figure("HTTP server throughput kept with a census every 1 s "
                                          "(census/untraced, per pair)", "ratio", http["kept"], 4)
    for variant, values in http["rps"].items():
        figures[f"http.{variant}_rps"] = harness.figure(f"HTTP server, {variant}: requests/s", "req/s",
                                                        values, 0)
    notes.append(f"HTTP: {http['censuses']} censuses taken during the measured loads.")
    fig = figures["http.kept"]
    # Judged only when the pairs agree: a median among pairs spread wider than the goal's 1% can
    # neither meet nor miss it.
    resolved = fig["n"] >= 3 and fig["max"] - fig["min"] <= 0.02
    goals.append(harness.goal("<= 1% of the HTTP server's throughput lost to a 1 s census",
                              "http.kept", fig["median"], 0.99, fig["median"] >= 0.99,
                              "the census's page copies slow the server",
                              unresolved="" if resolved else
                              f"pairs ranged {fig['min']}-{fig['max']}: the load's own noise is "
                              f"larger than the 1% to resolve"))
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
    h = http_with_census(3)
    print(f"HTTP throughput kept with a 1 s census: {h['kept']} ({h['censuses']} censuses)")
    for n, r in measure(SIZES, 3).items():
        print(f"{n:>9,}  table {min(r['table_s']):.4f}s  stacks {min(r['stacks_s']):.4f}s  "
              f"symbolize {min(r['symbolize_s']):.4f}s  ({r['frames']:,} frames)")
