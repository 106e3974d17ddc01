"""Go runtime metrics read from memory: gotel's CPU per read of one process, and what the traced
program pays when gotel reads it far more often than it would (every 1 ms; the default collection
interval is 10 s).

Trust: the read cost is gotel's own CPU time (``time.process_time``) over many reads of a live
ping-pong process, so other tenants' load moves it little. The traced program's figure is ping-pong
ns/op with and without a reader thread, interleaved repetitions, on its own CPU; reading
/proc/PID/mem takes no lock the program holds and sends it no signal, so any difference is noise
or cache effects, and the figure says how large that noise is.

Row 9 of ``make bench`` (``run(quick)``).
"""

import statistics
import threading
import time

from receiver.binary import GoBinary
from receiver.runtime_stats import RuntimeStatsReader


def read_cost(binary_path, reads):
    """Microseconds of gotel CPU per ``read()`` (and per reader set-up) on a running workload."""
    from benchmarks import harness

    proc = harness.start_waiting(binary_path, ["-n", "100000000"])
    try:
        start = time.process_time()
        reader = RuntimeStatsReader(GoBinary.open(proc.pid), proc.pid)
        setup = time.process_time() - start
        proc.stdin.write("\n")
        proc.stdin.flush()
        start = time.process_time()
        for _ in range(reads):
            stats = reader.read()
        per_read = (time.process_time() - start) / reads
        reader.close()
        if stats.rejected or stats.goroutines is None:
            raise RuntimeError(f"implausible read: {stats}")
        return per_read * 1e6, setup * 1e3
    finally:
        proc.kill()
        proc.wait()


def pingpong(binary_path, n, read_every_s):
    """ns/op of one ping-pong run, with a reader thread polling every read_every_s (None: none)."""
    from benchmarks import harness

    proc = harness.start_waiting(binary_path, ["-n", str(n)])
    stop = threading.Event()
    reads = [0]

    def poll():
        reader = RuntimeStatsReader(GoBinary.open(proc.pid), proc.pid)
        try:
            while not stop.wait(read_every_s):
                try:
                    reader.read()
                    reads[0] += 1
                except Exception:  # noqa: BLE001  (the process exits at the end of its loop)
                    return
        finally:
            reader.close()

    thread = None
    if read_every_s is not None:
        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        time.sleep(0.2)
    out, _ = harness.release(proc)
    stop.set()
    if thread is not None:
        thread.join()
    return harness.ns_per_op(out), reads[0]


def run(quick=False):
    from benchmarks import harness

    binary = harness.workload("pingpong")
    reads, repeat, n = (200, 2, 200_000) if quick else (5000, 5, 2_000_000)
    per_read, setup = read_cost(binary, reads)
    base, polled, nreads = [], [], []
    for _, variant in harness.interleaved(["untraced", "read every 1 ms"], repeat):
        if variant == "untraced":
            base.append(pingpong(binary, n, None)[0])
        else:
            ns, k = pingpong(binary, n, 0.001)
            polled.append(ns)
            nreads.append(k)
    loss = [100 * (p - b) / b for b, p in zip(base, polled)]
    figures = {
        "read.us": harness.figure("gotel CPU per read of one process (all metrics)", "us", [per_read], 1),
        "setup.ms": harness.figure("opening the binary and locating globals (once per process)", "ms",
                                   [setup], 1),
        "pingpong.untraced": harness.figure("ping-pong, no reader", "ns/op", base, 0),
        "pingpong.read_1ms": harness.figure("ping-pong, read every 1 ms", "ns/op", polled, 0),
        "pingpong.delta_pct": harness.figure("ping-pong slowdown, pair by pair", "%", loss, 1),
    }
    notes = [f"{reads} reads for the CPU figure; ping-pong {n:,} round trips, {repeat} interleaved pairs; "
             f"median {statistics.median(nreads):.0f} reads per polled run."]
    return harness.row(9, "Go runtime metrics from memory", __doc__, figures, (), notes,
                       {"reads": reads, "repeat": repeat, "round_trips": n})


if __name__ == "__main__":
    from benchmarks import harness

    raise SystemExit(harness.main(run, __doc__))
