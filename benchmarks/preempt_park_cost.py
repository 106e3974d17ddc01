"""What the runtime.preemptPark probe (GC stack-scan stops, bpf/gotel.c) costs a traced program.

Runs tests/go/fidelity's ``gcspin`` scenario (a goroutine spinning while the program makes a GC cycle
every few milliseconds: the probe's worst realistic case, a stop per GC cycle) side by side:
untraced, traced with the default probes, and traced without the preemptPark probe. Reports the
medians of the program's CPU time (user + system of the child, which is charged the uprobe work),
the probe's hits per run and per second, and (with - without) / hits, the cost per hit (noisy: the
hits are few, so the difference is within run-to-run noise on a shared machine; the figure that
matters is the rate of hits).

Usage: ``python benchmarks/preempt_park_cost.py [--version 1.25] [--repeats 5]``.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline import gotool  # noqa: E402
from receiver import probes  # noqa: E402
from receiver.events import Kind  # noqa: E402
from receiver.receiver import run_command  # noqa: E402


class Sink:
    def __init__(self):
        self.batches = []

    def start(self):
        pass

    def consume(self, batch):
        self.batches.append(batch.copy())

    def shutdown(self, timeout=5.0):
        pass


def child_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_once(binary, mode):
    """(child CPU s, wall s, preemptPark hits) of one run of gcspin."""
    before, t0 = child_cpu(), time.monotonic()
    if mode == "untraced":
        subprocess.run([str(binary), "gcspin"], check=True, capture_output=True)
        return child_cpu() - before, time.monotonic() - t0, 0
    saved = probes.PREEMPT_FUNCTION
    if mode == "without":
        probes.PREEMPT_FUNCTION = "runtime.gotelNoSuchFunction"
    try:
        sink = Sink()
        rx, _ = run_command([binary, "gcspin"], sink, timeout=120)
    finally:
        probes.PREEMPT_FUNCTION = saved
    proc = rx.registry.get(rx.command.pid)
    preempted = proc.binary.layout.wait_reasons.index("preempted")
    hits = sum(int(((b["kind"] == Kind.PARK) & (b["wait_reason"] == preempted)
                    & ((b["new_status"] & 0xF) == 9)).sum()) for b in sink.batches)
    return child_cpu() - before, time.monotonic() - t0, hits


def measure(version="1.25", repeats=5):
    binary = gotool.build(REPO / "tests" / "go" / "fidelity", REPO / ".cache" / "bench-bin",
                          version=version)
    runs = {m: [] for m in ("untraced", "with", "without")}
    for _ in range(repeats):
        for mode in runs:                  # interleaved, so that load changes hit every mode alike
            runs[mode].append(run_once(binary, mode))
    med = {m: statistics.median(r[0] for r in v) for m, v in runs.items()}
    hits = statistics.median(r[2] for r in runs["with"])
    wall = statistics.median(r[1] for r in runs["with"])
    return {
        "version": version,
        "cpu_s_untraced": round(med["untraced"], 4),
        "cpu_s_traced_with_preemptpark": round(med["with"], 4),
        "cpu_s_traced_without_preemptpark": round(med["without"], 4),
        "preemptpark_hits_per_run": hits,
        "preemptpark_hits_per_s": round(hits / wall, 1) if wall else 0,
        "us_per_hit_estimate": round((med["with"] - med["without"]) / hits * 1e6, 2) if hits else None,
        "repeats": repeats,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="1.25")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("tracing needs root")
    print(json.dumps(measure(args.version, args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
