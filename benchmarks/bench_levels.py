"""Row 10: what each level costs, side by side on the net/http server of row 2 under wrk.

Variants, each on a freshly started server warmed up first, interleaved over the repetitions:
untraced; ``gotel trace --pid PID --level census`` (no probe), ``--level lifecycle``, ``--level
full`` (as shipped), and full under ``--max-overhead`` 1%, 2% and 5%. For each: requests/s and the
server's CPU time per request (from /proc/PID/stat, server pinned to one CPU with GOMAXPROCS=1);
gotel's own estimate of its overhead over the run (from its summary: probe hits x the per-hit
cost it calibrated at start / the server's CPU time); and the measured overhead, the share of the
server's CPU per request that tracing added: (traced - untraced) / traced, pair by pair.

Trust the per-pair ratios (throughput kept, measured overhead) over absolute figures: the machine
is shared, and a pair's runs are seconds apart. The estimate is gotel's own figure, the measured
one is the server's: their ratio says how well the budget can be trusted on this machine.
"""

import re
import signal
import subprocess
import tempfile
import time

from benchmarks import harness
from benchmarks.bench_http import GOTEL, attached, start_server, stop_gotel, wrk

VARIANTS = {
    "untraced": None,
    "census": ["--level", "census"],
    "lifecycle": ["--level", "lifecycle"],
    "full": ["--level", "full"],
    "budget_1": ["--max-overhead", "1%"],
    "budget_2": ["--max-overhead", "2%"],
    "budget_5": ["--max-overhead", "5%"],
}


def start_gotel(pid, out_dir, extra, timeout=60):
    gotel = subprocess.Popen([str(GOTEL), "-v", "trace", "--pid", str(pid), "--out", str(out_dir),
                              *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=harness.on_cpu(harness.GOTEL_CPU))
    deadline = time.monotonic() + timeout
    if "census" in extra:
        time.sleep(4.0)      # no probe to wait for: about what compiling and starting take
    else:
        while not attached(gotel.pid):
            if gotel.poll() is not None or time.monotonic() > deadline:
                gotel.kill()
                raise RuntimeError(f"gotel did not attach: {gotel.communicate()[0][-800:]}")
            time.sleep(0.05)
    time.sleep(0.3)
    return gotel


def estimated(text):
    """gotel's estimate of its overhead over the run, as a fraction, from its summary."""
    m = re.search(r"estimated overhead ([0-9.]+)% of its CPU time over the run", text)
    return float(m.group(1)) / 100 if m else None


def attach_times(rounds=10):
    """(full attach, full detach, lifecycle attach, lifecycle detach) seconds per round, on a
    running Go program: what opening and closing a window costs gotel (the program is not
    stopped)."""
    from receiver import probes
    from receiver.binary import GoBinary

    server, _addr = start_server()
    p = probes.Probes()
    out = ([], [], [], [])
    try:
        binary = GoBinary.open(server.pid)
        for _ in range(rounds):
            t = time.perf_counter()
            a = p.attach(binary, server.pid)
            out[0].append(time.perf_counter() - t)
            t = time.perf_counter()
            p.detach(a)
            out[1].append(time.perf_counter() - t)
            t = time.perf_counter()
            life = p.attach_lifecycle(binary, server.pid)
            out[2].append(time.perf_counter() - t)
            t = time.perf_counter()
            for a in life:
                p.detach(a)
            out[3].append(time.perf_counter() - t)
    finally:
        p.close()
        server.kill()
        server.wait()
    return out


def one_run(variant, seconds, connections, warmup):
    server, addr = start_server()
    gotel = None
    try:
        wrk(addr, warmup, connections)
        with tempfile.TemporaryDirectory(prefix="gotel-bench-") as out_dir:
            if VARIANTS[variant] is not None:
                gotel = start_gotel(server.pid, out_dir, VARIANTS[variant])
            server0 = harness.cpu_seconds(server.pid)
            rps, p99 = wrk(addr, seconds, connections)
            server_cpu = harness.cpu_seconds(server.pid) - server0
            result = {"rps": rps, "p99_ms": p99, "us_per_request": 1e6 * server_cpu / (rps * seconds)}
            if gotel is not None:
                text = stop_gotel(gotel)
                gotel = None
                result["estimated"] = estimated(text)
                floor = re.search(r"one uprobe hit costs (\d+) ns", text)
                result["floor_ns"] = float(floor.group(1)) if floor else None
                result["windows"] = sum(int(n) for n in re.findall(r"(\d+) window\(s\)", text))
        return result
    finally:
        if gotel is not None:
            gotel.send_signal(signal.SIGKILL)
            gotel.wait()
        server.kill()
        server.wait()


def run(quick=False):
    seconds, warmup, repeats, connections = (1, 1, 1, 4) if quick else (10, 1, 3, 8)
    started = time.monotonic()
    runs = {v: [None] * repeats for v in VARIANTS}
    for i, variant in harness.interleaved(tuple(VARIANTS), repeats):
        runs[variant][i] = one_run(variant, seconds, connections, warmup)
    base = runs["untraced"]
    times = attach_times(2 if quick else 10)
    figs = {
        "attach_full_ms": harness.figure("attaching the full probe (a window opens)", "ms",
                                         [1e3 * t for t in times[0]], 1),
        "detach_full_ms": harness.figure("detaching it (a window closes)", "ms",
                                         [1e3 * t for t in times[1]], 1),
        "attach_lifecycle_ms": harness.figure("attaching the two lifecycle probes", "ms",
                                              [1e3 * t for t in times[2]], 1),
        "detach_lifecycle_ms": harness.figure("detaching them", "ms", [1e3 * t for t in times[3]], 1),
        "untraced.rps": harness.figure("untraced: requests/s", "req/s", [r["rps"] for r in base], 0),
        "untraced.us_per_request": harness.figure(
                "untraced: server CPU per request", "us", [r["us_per_request"] for r in base], 2)}
    goals = []
    for v in VARIANTS:
        if v == "untraced":
            continue
        rows = runs[v]
        loss = [100 * (1 - r["rps"] / b["rps"]) for b, r in zip(base, rows)]
        measured = [100 * (r["us_per_request"] - b["us_per_request"]) / r["us_per_request"]
                    for b, r in zip(base, rows)]
        est = [100 * r["estimated"] if r.get("estimated") is not None else None for r in rows]
        figs[f"{v}.rps"] = harness.figure(f"{v}: requests/s", "req/s", [r["rps"] for r in rows], 0)
        figs[f"{v}.throughput_loss_pct"] = harness.figure(f"{v}: throughput lost (per pair)", "%", loss, 1)
        figs[f"{v}.us_per_request"] = harness.figure(
            f"{v}: server CPU per request", "us", [r["us_per_request"] for r in rows], 2)
        figs[f"{v}.measured_overhead_pct"] = harness.figure(
            f"{v}: measured overhead, share of the server's CPU added (per pair)", "%", measured, 1)
        figs[f"{v}.estimated_overhead_pct"] = harness.figure(
            f"{v}: gotel's estimated overhead over the run", "%", est, 2)
        figs[f"{v}.windows"] = harness.figure(f"{v}: windows of full tracing", "windows",
                                              [r.get("windows", 0) for r in rows], 0)
        figs[f"{v}.floor_ns"] = harness.figure(f"{v}: one uprobe hit as gotel calibrated it", "ns",
                                               [r.get("floor_ns") for r in rows], 0)
    census_loss = figs["census.throughput_loss_pct"]["median"]
    goals.append(harness.goal("census <= 1% throughput loss", "census.throughput_loss_pct",
                              census_loss, 1, census_loss is not None and census_loss <= 1,
                              "census attaches no probe: what it loses is gotel sharing wrk's CPU "
                              "and run-to-run noise"))
    for v, budget in (("budget_1", 1), ("budget_2", 2), ("budget_5", 5)):
        loss = figs[f"{v}.throughput_loss_pct"]["median"]
        est = figs[f"{v}.estimated_overhead_pct"]["median"]
        measured = figs[f"{v}.measured_overhead_pct"]["median"]
        goals.append(harness.goal(f"max_overhead {budget}%: loss within 1 point of the budget",
                                  f"{v}.throughput_loss_pct", loss, budget + 1,
                                  loss is not None and loss <= budget + 1,
                                  f"gotel estimated {est}% and the server's CPU per request rose by "
                                  f"{measured}%: the budget prices probe hits only, not the load "
                                  f"side (wrk shares its CPU with gotel) nor the first, measuring "
                                  f"window"))
    notes = [f"wrk -t1 -c{connections} -d{seconds}s --latency after a {warmup}s warm-up; server "
             f"GOMAXPROCS=1 on CPU {harness.TARGET_CPU}; {repeats} interleaved repetitions.",
             f"Row wall time {time.monotonic() - started:.0f} s."]
    return harness.row(10, "Levels and budgets: net/http server under wrk", __doc__, figs, goals,
                       notes, {"seconds": seconds, "connections": connections, "repeats": repeats})


if __name__ == "__main__":
    raise SystemExit(harness.main(run, __doc__))
