"""What every benchmark row shares: Go workloads, CPU pinning, statistics, process accounting, and
the one result shape that ``benchmarks/run.py`` renders.

A row module (``bench_*.py``) has a ``run(quick=False) -> dict`` returning ``row(...)``; run as a
script (``python -m benchmarks.bench_x [--quick] [--out FILE]``) it prints or writes that dict as
JSON. ``run.py`` starts each row in its own process, so one row's memory, BPF programs and threads
never leak into the next, and its peak RSS is its own.

CPUs: the machine has two. Traced Go programs run on ``TARGET_CPU`` with GOMAXPROCS=1; gotel (and
load generators) run on ``GOTEL_CPU``. A probe's cost is charged to the traced thread, so it shows
up in the target's own timing undiluted by gotel's user-space work on the other CPU.
"""

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.probe_cost import Discard  # noqa: E402,F401  (the counting last stage)
from pipeline.app import gotool  # noqa: E402

GO_DIR = REPO / "benchmarks" / "go"
BUILD_DIR = REPO / ".cache" / "bench"
GO_VERSION = "1.25"
GOTEL_CPU, TARGET_CPU = 0, 1
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- Go workloads -------------------------------------------------------------------------------
def workload(name, version=GO_VERSION):
    """Path of benchmarks/go/<name> built with the given Go toolchain (cached)."""
    return gotool.build(GO_DIR / name, BUILD_DIR, version=version)


def go_env(gomaxprocs=1):
    return {**os.environ, "GOMAXPROCS": str(gomaxprocs)}


def on_cpu(cpu):
    """preexec_fn pinning a child process to one CPU (on a one-CPU machine, that one)."""
    return lambda: os.sched_setaffinity(0, {cpu % os.cpu_count()})


def pin_self(cpu=GOTEL_CPU):
    """Pin this process (and threads it starts from now on) to one CPU."""
    os.sched_setaffinity(0, {cpu % os.cpu_count()})


def start_waiting(binary, args, cpu=TARGET_CPU, gomaxprocs=1):
    """Start a workload that waits for a line on stdin (``-wait``) before its measured loop."""
    return subprocess.Popen([str(binary), *map(str, args), "-wait"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=go_env(gomaxprocs), preexec_fn=on_cpu(cpu))


def warm_up(proc):
    """Let a ``-wait -warm`` workload run, unmeasured, until ``release`` starts its measured run:
    what a tracer attaching to a busy program sees."""
    proc.stdin.write("\n")
    proc.stdin.flush()


def release(proc):
    """Let a ``-wait`` workload go and wait for it to exit; return (stdout, CPU seconds it used).

    The CPU time (user + system, from wait4) is the whole process's, start-up included; a uprobe's
    trap and BPF program are charged to the traced thread as system time, so this moves less than
    wall time when other tenants load the machine."""
    proc.stdin.write("\n")
    proc.stdin.close()
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"workload exited {proc.returncode}: {err.strip()[-500:]}")
    return out, usage.ru_utime + usage.ru_stime


def ns_per_op(output):
    """The ``ns/op X`` figure the ping-pong and spawn workloads print."""
    m = re.search(r"ns/op\s+([0-9.]+)", output)
    if not m:
        raise RuntimeError(f"no 'ns/op' in workload output: {output!r}")
    return float(m.group(1))


# --- processes ----------------------------------------------------------------------------------
def cpu_seconds(pid):
    """User + system CPU seconds a process has used (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def status_bytes(pid, field):
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM) in bytes; 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_self():
    """This process's peak resident set size, bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- statistics and the result shape -------------------------------------------------------------
def figure(label, unit, values, digits=1):
    """One measured quantity over repetitions: min, median and max, and the values themselves."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"label": label, "unit": unit, "n": 0, "min": None, "median": None, "max": None,
                "values": []}
    r = (lambda v: round(v, digits)) if digits is not None else float
    return {"label": label, "unit": unit, "n": len(values), "min": r(min(values)),
            "median": r(statistics.median(values)), "max": r(max(values)),
            "values": [r(v) for v in values]}


def goal(text, figure_key, value, target, met, limit="", unresolved=""):
    """A goal from the issue, the measured median it is judged on, and, when missed, what limits it.
    ``unresolved`` (why): the row's own noise is wider than the goal's tolerance, so the median can
    neither meet nor miss it; the goal is then reported as unresolved, not met."""
    if unresolved:
        return {"goal": text, "figure": figure_key, "value": value, "target": target, "met": False,
                "unresolved": True, "limit": unresolved}
    return {"goal": text, "figure": figure_key, "value": value, "target": target, "met": bool(met),
            "limit": "" if met else limit}


def row(number, title, doc, figures, goals=(), notes=(), config=None):
    """The dict a row returns; ``doc`` is the module docstring (its 'Trust' paragraph is quoted)."""
    return {"row": number, "title": title, "trust": trust_paragraph(doc), "figures": figures,
            "goals": list(goals), "notes": list(notes), "config": config or {},
            "peak_rss_bytes": peak_rss_self()}


def trust_paragraph(doc):
    """The paragraph of a module docstring that starts with 'Trust'."""
    for para in (doc or "").split("\n\n"):
        if para.strip().startswith("Trust"):
            return " ".join(para.split())
    return ""


def interleaved(variants, repeats):
    """[(repetition, variant)] in the order untraced, a, b, ..., untraced, a, b, ...: noise from
    other tenants then hits every variant alike."""
    return [(i, v) for i in range(repeats) for v in variants]


# --- the machine ----------------------------------------------------------------------------------
def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    go = gotool.toolchain(GO_VERSION)
    go_version = subprocess.run([str(go), "version"], capture_output=True, text=True,
                                env=gotool.go_env(go)).stdout.strip()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    container = subprocess.run(["systemd-detect-virt", "--container"], capture_output=True,
                               text=True).stdout.strip() \
        if os.path.exists("/usr/bin/systemd-detect-virt") else ""
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_bytes": mem, "kernel": platform.release(),
            "os": _os_release(), "python": platform.python_version(), "go": go_version,
            "vm": _hypervisor(), "container": "" if container == "none" else container,
            "syscall_ns": round(syscall_ns()),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average_at_start": os.getloadavg()}


def _hypervisor():
    try:
        return " hypervisor" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def syscall_ns(n=200_000):
    """Round trip of a trivial system call (getppid), less the Python loop around it: a yardstick
    for what entering the kernel costs on this machine, which every uprobe hit does."""
    t0 = time.perf_counter()
    for _ in range(n):
        os.getppid()
    t1 = time.perf_counter()
    for _ in range(n):
        os.getppid   # noqa: B018  (the same loop without the call)
    t2 = time.perf_counter()
    return max(0.0, ((t1 - t0) - (t2 - t1)) / n * 1e9)


def _os_release():
    try:
        text = Path("/etc/os-release").read_text()
        return re.search(r'^PRETTY_NAME="?([^"\n]*)', text, re.M).group(1)
    except (OSError, AttributeError):
        return ""


# --- row entry point ------------------------------------------------------------------------------
def main(run, doc, argv=None):
    """Command line of a row module: ``[--quick] [--out FILE]``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness only")
    parser.add_argument("--out", help="write the row's JSON here (default: print it)")
    args = parser.parse_args(argv)
    pin_self(GOTEL_CPU)
    result = run(quick=args.quick)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0
