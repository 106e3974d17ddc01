"""Row 11: gotel as a node agent: discovery on a node of 50 Go processes, gotel's own CPU and memory.

The row starts 50 copies of benchmarks/go/paced, a node's worth of modest services (each 100
goroutines a second started, handed a value and exited, in bursts every 20 ms: about 750 goroutine
events/s with its timer wake-ups), under a folder of their own, plus 20 non-Go
processes (``sleep``) that discovery must skip. gotel runs as shipped, in this process: the
``Service`` from the embedded default configuration with ``discovery`` selecting the folder's
executables (``exe_paths``) instead of PIDs, writing OTLP files. Measured over a window once every
process is traced:

- gotel's CPU (this process, user + system, all threads), as a share of one core;
- gotel's RSS at the end of the window, and its peak;
- one discovery scan of /proc (wall time; the Go check is cached per executable);
- how long after a process starts gotel traces it: a 51st program is started during the window.

Trust the CPU share against the events the 50 processes produced (also given): it grows with the
event rate, not with the process count. Discovery's own share is the scan time divided by its
interval (1 s by default). Every process here is traced at the full level (every goroutine status
change), the only level this build has; the traced processes' own slowdown is rows 1 and 2.
"""

import os
import shutil
import subprocess
import tempfile
import time

from benchmarks import harness

PROCESSES = 50
OPS = 100            # goroutines per second and process (paced: 6 events per op)
SLICE = "20ms"       # paced's sleep between bursts


def measure(n, seconds):
    from pipeline import config
    from pipeline.service import Service

    binary = harness.workload("paced")
    with tempfile.TemporaryDirectory(prefix="gotel-agent-") as work:
        node = os.path.join(work, "node")
        os.mkdir(node)
        args = ["-rate", str(OPS), "-slice", SLICE, "-duration", f"{seconds + 30}s"]
        procs = []
        for i in range(n + 1):
            exe = os.path.join(node, f"svc{i}")
            shutil.copy(binary, exe)
        sleepers = [subprocess.Popen(["sleep", str(seconds + 60)]) for _ in range(20)]
        procs = [subprocess.Popen([os.path.join(node, f"svc{i}"), *args], stdout=subprocess.PIPE,
                                  env=harness.go_env(1)) for i in range(n)]
        text = config.default_dict()
        text["receivers"]["goroutines"] = {"discovery": {
            "enabled": True, "exe_paths": [f"{node}/svc*"]}}
        out_dir = os.path.join(work, "out")
        cfg = config.loads(_yaml(text), overrides={"GOTEL_OUT": out_dir})
        service = Service(cfg)
        rss0 = harness.status_bytes("self", "VmRSS")
        try:
            service.start()
            source = service.receiver.source
            deadline = time.monotonic() + 60
            while len(source.registry.alive()) < n and time.monotonic() < deadline:
                time.sleep(0.1)
            traced = len(source.registry.alive())
            cpu0, t0, ev0 = _cpu_self(), time.monotonic(), source.events
            late = subprocess.Popen([os.path.join(node, f"svc{n}"), *args],
                                    stdout=subprocess.PIPE, env=harness.go_env(1))
            started = time.monotonic()
            while late.pid not in source.registry and time.monotonic() < started + 30:
                time.sleep(0.01)
            pickup = time.monotonic() - started
            procs.append(late)
            time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
            cpu, wall, events = _cpu_self() - cpu0, time.monotonic() - t0, source.events - ev0
            result = {"traced": traced, "cpu_share": cpu / wall, "events_per_s": events / wall,
                      "rss_mb": (harness.status_bytes("self", "VmRSS")) / 1e6,
                      "rss_growth_mb": (harness.status_bytes("self", "VmRSS") - rss0) / 1e6,
                      "scan_ms": source.discovery.last_scan_s * 1e3, "pickup_s": pickup,
                      "not_go": source.discovery.not_go, "lost": source.lost}
        finally:
            for p in procs + sleepers:
                p.kill()
                p.wait()
            service.shutdown(30.0)
    result["peak_rss_mb"] = harness.status_bytes("self", "VmHWM") / 1e6
    return result


def _yaml(tree):
    import yaml

    return yaml.safe_dump(tree)


def _cpu_self():
    t = os.times()
    return t.user + t.system


def run(quick=False):
    started = time.monotonic()
    n, seconds, repeats = (5, 3, 1) if quick else (PROCESSES, 20, 2)
    runs = [measure(n, seconds) for _ in range(repeats)]
    figs = {
        "traced": harness.figure("processes traced through discovery", "processes",
                                 [r["traced"] for r in runs], 0),
        "cpu_share": harness.figure("gotel CPU, share of one core", "%",
                                    [100 * r["cpu_share"] for r in runs], 1),
        "events_per_s": harness.figure("goroutine events/s from all processes", "events/s",
                                       [r["events_per_s"] for r in runs], 0),
        "rss_mb": harness.figure("gotel RSS at the end of the window", "MB",
                                 [r["rss_mb"] for r in runs], 1),
        "peak_rss_mb": harness.figure("gotel peak RSS", "MB", [r["peak_rss_mb"] for r in runs], 1),
        "scan_ms": harness.figure("one discovery scan of /proc", "ms", [r["scan_ms"] for r in runs], 1),
        "pickup_s": harness.figure("a new process traced after it started", "s",
                                   [r["pickup_s"] for r in runs], 2),
        "lost": harness.figure("events lost", "events", [r["lost"] for r in runs], 0),
    }
    notes = [f"{n} copies of paced at {OPS} goroutines/s each, 20 sleep processes, discovery by "
             f"exe_paths, default configuration otherwise; {repeats} runs of {seconds} s.",
             f"Row wall time {time.monotonic() - started:.0f} s."]
    return harness.row(11, "Node agent: discovery over 50 Go processes", __doc__, figs, (), notes,
                       {"processes": n, "goroutines_per_s": OPS, "slice": SLICE, "seconds": seconds})


if __name__ == "__main__":
    raise SystemExit(harness.main(run, __doc__))
