"""What gotel's kernel side costs a traced Go program, and how fast it can deliver events losslessly.

Runs tests/go/churn (goroutine ping-pong over unbuffered channels, or spawn-and-wait) three ways:
untraced; traced by a full GoroutineReceiver with the default kinds (the real path: uprobe, ring
buffer, numpy reader, clock conversion, a sink that drops the batches); and traced with every kind
filtered out in the kernel (the bare uprobe trap plus the table lookup, nothing captured). From those:

- ``ns_per_event``: CPU time (user + system, measured by the Go program itself with getrusage)
  added per captured event, (traced - untraced) / events; uprobe handling is charged to the traced
  process as system time, and CPU time moves less than wall time with other tenants' load;
- ``ns_per_hit_filtered``: the same with every kind dropped in the kernel, per casgstatus call
  (estimated as the default run's events per op): what the trap alone costs, paid by every
  transition, wanted or not;
- ``*_wall_ns_per_op``: wall time per op, for reference;
- ``syscall_cost``: CPU ns added per syscall with the default kinds (syscalls filtered out), per
  Go version: up to Go 1.25 every syscall passes casgstatus twice, so it pays two traps;
- ``event_rate``: captured events per second during the traced run, with ``lost`` (ring-buffer
  reserve failures) which must be 0 for the rate to count.

The machine is shared and noisy: each figure is the median of ``repeats`` runs. Usage:
``python benchmarks/probe_cost.py [--version 1.25] [--ops 200000] [--json]``; or import and call
``measure(...)`` / ``max_rate(...)``, which return dicts.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.app import gotool  # noqa: E402
from receiver.receiver import run_command  # noqa: E402

CHURN = REPO / "tests" / "go" / "churn"
BUILD_DIR = REPO / ".cache" / "bench"


class Discard:
    """Last stage that only counts what it is given."""

    def __init__(self):
        self.events = 0

    def start(self):
        pass

    def consume(self, batch):
        self.events += len(batch)

    def shutdown(self, timeout=5.0):
        pass


def churn_binary(version):
    return gotool.build(CHURN, BUILD_DIR, version=version)


def _ns_per_op(output, field="cpu_ns_per_op"):
    fields = output.split()
    return float(fields[fields.index(field) + 1])


def run_untraced(binary, args):
    """(CPU ns/op, wall ns/op)."""
    out = subprocess.run([str(binary), *args], capture_output=True, text=True, check=True).stdout
    return _ns_per_op(out), _ns_per_op(out, "ns_per_op")


def run_traced(binary, args, kinds=None, ring_bytes=None):
    """(CPU ns/op, events captured, lost, wall seconds of the loop, wall ns/op) under a
    GoroutineReceiver."""
    sink = Discard()
    options = {} if kinds is None else {"kinds": tuple(kinds)}
    if ring_bytes:
        options["ring_bytes"] = ring_bytes
    rx, done = run_command([binary, *args], sink, timeout=600, existing=False, **options)
    out = done.stdout
    wall = _ns_per_op(out, "ns_per_op")
    ops = int(out.split()[1])
    return _ns_per_op(out), sink.events, rx.lost, wall * ops / 1e9, wall


def measure(version="1.25", workload="pingpong", ops=200_000, pairs=1, repeats=3, ring_bytes=None):
    """Median cost figures for one workload; see the module docstring for the fields."""
    binary = churn_binary(version)
    args = [workload, str(ops)] + ([str(pairs)] if workload == "pingpong" else [])
    total_ops = ops * (pairs if workload == "pingpong" else 1)
    base, full, filt = [], [], []
    for _ in range(repeats):
        base.append(run_untraced(binary, args))
        full.append(run_traced(binary, args, ring_bytes=ring_bytes))
        filt.append(run_traced(binary, args, kinds=("create",), ring_bytes=ring_bytes))
    base_ns = statistics.median(r[0] for r in base)
    full_ns = statistics.median(r[0] for r in full)
    filt_ns = statistics.median(r[0] for r in filt)
    events = statistics.median(r[1] for r in full)
    events_per_op = events / total_ops
    lost = max(r[2] for r in full)
    rate = statistics.median(r[1] / r[3] for r in full)
    # casgstatus calls per op ~ events per op: these workloads make no syscalls, so every
    # transition is a default kind (ping-pong: park, ready, run per side; spawn: create, run, exit).
    return {
        "version": version, "workload": workload, "ops": total_ops, "pairs": pairs,
        "untraced_wall_ns_per_op": round(statistics.median(r[1] for r in base), 1),
        "traced_wall_ns_per_op": round(statistics.median(r[4] for r in full), 1),
        "untraced_ns_per_op": round(base_ns, 1),
        "traced_ns_per_op": round(full_ns, 1),
        "filtered_ns_per_op": round(filt_ns, 1),
        "events_per_op": round(events_per_op, 2),
        "ns_per_event": round((full_ns - base_ns) / events_per_op, 1) if events_per_op else None,
        "ns_per_hit_filtered": round((filt_ns - base_ns) / events_per_op, 1) if events_per_op else None,
        "event_rate": round(rate),
        "lost": lost,
    }


def syscall_cost(versions=("1.25", "1.27"), ops=200_000, repeats=3):
    """CPU ns added per syscall with syscall kinds filtered out (the default), per Go version:
    up to Go 1.25 entersyscall/exitsyscall go through casgstatus (two traps per syscall, captured
    or not); from Go 1.26 a fast-path CAS skips it (and syscall events become incomplete)."""
    out = {}
    for version in versions:
        binary = churn_binary(version)
        args = ["syscall", str(ops)]
        base = statistics.median(run_untraced(binary, args)[0] for _ in range(repeats))
        traced = statistics.median(run_traced(binary, args)[0] for _ in range(repeats))
        out[version] = round(traced - base, 1)
    return out


def max_rate(version="1.25", ops=200_000, pairs=(1, 2, 4, 8), repeats=1, ring_bytes=None):
    """The highest event rate the probes produce here, with lost events, per ping-pong width."""
    results = []
    for p in pairs:
        r = measure(version, "pingpong", ops // p, p, repeats, ring_bytes)
        results.append({k: r[k] for k in ("pairs", "event_rate", "lost", "ns_per_event")})
    lossless = [r for r in results if r["lost"] == 0]
    best = max(lossless, key=lambda r: r["event_rate"]) if lossless else None
    return {"version": version, "runs": results, "max_lossless_rate": best and best["event_rate"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="1.25")
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = [measure(args.version, w, args.ops, 1, args.repeats) for w in ("pingpong", "spawn")]
    rate = max_rate(args.version, args.ops)
    syscalls = syscall_cost(ops=args.ops, repeats=args.repeats)
    if args.json:
        print(json.dumps({"workloads": results, "max_rate": rate, "syscall_ns": syscalls}, indent=2))
        return 0
    cols = ["workload", "untraced_ns_per_op", "traced_ns_per_op", "filtered_ns_per_op",
            "events_per_op", "ns_per_event", "ns_per_hit_filtered", "event_rate", "lost"]
    print(" ".join(f"{c:>20}" for c in cols))
    for r in results:
        print(" ".join(f"{str(r[c]):>20}" for c in cols))
    print(f"max lossless event rate: {rate['max_lossless_rate']} events/s  runs: {rate['runs']}")
    print(f"CPU ns added per syscall, syscall kinds filtered out: {syscalls}")
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
