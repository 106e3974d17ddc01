"""What the runtime.preemptPark probe (GC stack-scan stops, bpf/gotel.c) costs a traced program.

Runs tests/go/fidelity's ``gcspin`` scenario (a goroutine spinning while the program makes a GC cycle
every few milliseconds, a stop per cycle: the probe's busiest realistic case) traced with the default
probes, with the kernel's BPF run-time statistics on (``kernel.bpf_stats_enabled``, restored after),
and reports per probe: hits, hits per second, and the BPF program's own time per hit, from the
kernel's ``run_cnt``/``run_time_ns``. The trap itself comes on top: the probe sits on the ``push rbp``
after the stack check, which the kernel emulates (one trap, ~0.2-0.7 us per hit on the machines
measured, benchmarks/bench_uprobe_floor.py). CPU time of the whole program is not a usable measure
here: the spinning goroutine burns whatever it is given.

Usage: ``python benchmarks/preempt_park_cost.py [--version 1.25] [--repeats 3]``.
"""

import argparse
import ctypes
import json
import os
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.app import gotool  # noqa: E402
from receiver.receiver import Config, GoroutineReceiver  # noqa: E402


class Sink:
    def __init__(self):
        self.batches = []

    def start(self):
        pass

    def consume(self, batch):
        self.batches.append(batch.copy())

    def shutdown(self, timeout=5.0):
        pass


STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
# struct bpf_prog_info (uapi/linux/bpf.h): run_time_ns and run_cnt, then recursion_misses.
INFO_SIZE, RUN_TIME_NS, RUN_CNT = 232, 192, 200


def prog_stats(fd):
    """(run count, run ns) of a loaded BPF program, from BPF_OBJ_GET_INFO_BY_FD."""
    from bcc import lib

    buf = ctypes.create_string_buffer(INFO_SIZE)
    size = ctypes.c_uint32(INFO_SIZE)
    if lib.bpf_obj_get_info(fd, buf, ctypes.byref(size)) != 0:
        raise OSError("BPF_OBJ_GET_INFO_BY_FD failed")
    run_ns, runs = struct.unpack_from("<QQ", buf.raw, RUN_TIME_NS)
    return runs, run_ns


def run_once(binary):
    sink = Sink()
    rx = GoroutineReceiver(Config(command=(str(binary), "gcspin")), sink,
                           launch_options={"stdout": subprocess.DEVNULL})
    rx.start()
    t0 = time.monotonic()
    try:
        rx.command.popen.wait(timeout=120)
        wall = time.monotonic() - t0
        slot = next(iter(rx.probes.attachments.values())).slot
        return {"preemptPark": prog_stats(rx.probes._preempt_fns[slot].fd),
                "casgstatus": prog_stats(rx.probes._fns[slot].fd), "wall_s": wall}
    finally:
        rx.shutdown()


def measure(version="1.25", repeats=3):
    binary = gotool.build(REPO / "tests" / "go" / "fidelity", REPO / ".cache" / "bench-bin",
                          version=version)
    old = STATS.read_text().strip()
    STATS.write_text("1")
    try:
        runs = [run_once(binary) for _ in range(repeats)]
    finally:
        STATS.write_text(old)
    out = {"version": version, "repeats": repeats}
    for probe in ("preemptPark", "casgstatus"):
        hits = [r[probe][0] for r in runs]
        ns = [r[probe][1] / r[probe][0] for r in runs if r[probe][0]]
        out[f"{probe}_hits_per_run"] = statistics.median(hits)
        out[f"{probe}_hits_per_s"] = round(statistics.median(
            r[probe][0] / r["wall_s"] for r in runs), 1)
        out[f"{probe}_bpf_ns_per_hit"] = round(statistics.median(ns), 1) if ns else None
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="1.25")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("tracing needs root")
    print(json.dumps(measure(args.version, args.repeats), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
