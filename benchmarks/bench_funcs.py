"""Row 12: what a function probe costs per call, beside bcc's uprobe + uretprobe pair; attach/detach.

benchmarks/go/calls calls ``main.leaf`` in a loop (GOMAXPROCS=1, pinned, GODEBUG=asyncpreemptoff=1
in every variant). Per repetition, interleaved: untraced; gotel's function probes (bpf/funcs.c: an
entry probe and a probe on the RET, each reading the g from R14 and submitting a 128-byte record);
the same two uprobes with a program that only counts (the traps alone); gotel on ``main.framed``, a
function with a frame, whose entry probe sits on an emulated ``push rbp``; and bcc's ``funclatency`` style pair: a uprobe at the same entry storing a timestamp keyed by
*thread* id, and a uretprobe computing the latency into a log2 histogram. The target's CPU time
(user + system, from wait4: a probe's trap and BPF program are charged to it as system time) per
call, traced minus untraced, pair by pair within a repetition, is the cost of one probed call. CPU
time rather than wall time: on a shared machine every trap is a chance to be descheduled, which
wall time would count.

The uretprobe is only run on this leaf: it has no stack check and calls nothing, so the stack it
returns on cannot have moved (with asynchronous preemption off, no signal can inject a call that
grows it). On any function that can grow or have its stack walked mid-call a uretprobe can crash the
Go program (golang/go#22008), which is why gotel never uses one.

Then attach/detach: ``FuncProbes`` attaching to every function matched by ``strconv.*`` and
removing them again: as single perf uprobes removed one by one and from 8 threads (removing a uprobe
waits in the kernel, ~0.1 s here, and the waits do not overlap), and as two BPF uprobe_multi links
(what gotel uses where the kernel has them, Linux 6.6+), whose removal waits once.

Trust the median ns per call of each variant, relative to each other: both place the entry probe on
the same instruction; gotel's RET probe is single-stepped, bcc's uretprobe rewrites the return
address instead.
"""

import subprocess
import threading
import time

from benchmarks import harness
from benchmarks.bench_uprobe_floor import COUNT   # the BPF program that only counts (row 6)

BCC_LATENCY = r"""
#include <uapi/linux/ptrace.h>
BPF_HASH(start, u32, u64);
BPF_HISTOGRAM(dist);
int entry(struct pt_regs *ctx) {
    u32 tid = bpf_get_current_pid_tgid();
    u64 ts = bpf_ktime_get_ns();
    start.update(&tid, &ts);
    return 0;
}
int ret(struct pt_regs *ctx) {
    u32 tid = bpf_get_current_pid_tgid();
    u64 *tsp = start.lookup(&tid);
    if (tsp == 0)
        return 0;
    u64 delta = bpf_ktime_get_ns() - *tsp;
    start.delete(&tid);
    dist.increment(bpf_log2l(delta));
    return 0;
}
"""


def _env():
    return {"GODEBUG": "asyncpreemptoff=1"}


def run_plain(binary, calls, framed=False):
    proc = _start(binary, calls, framed)
    out, cpu = harness.release(proc)
    return cpu * 1e9 / calls


def _start(binary, calls, framed=False):
    import os

    return subprocess.Popen([str(binary), "-n", str(calls), "-wait"] + (["-framed"] if framed else []),
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "GOMAXPROCS": "1", **_env()},
                            preexec_fn=harness.on_cpu(harness.TARGET_CPU))


def run_gotel(binary, calls, function="main.leaf"):
    from pipeline.funcs import CallMatcher
    from receiver import funcs
    from receiver.binary import GoBinary
    from receiver.ringbuf import RingBufferReader

    b = GoBinary.open(binary)
    fs = funcs.resolve(b, [function])
    proc = _start(binary, calls, function == "main.framed")
    probes = funcs.FuncProbes(b, fs, funcs.Config(ring_bytes=1 << 26))
    try:
        probes.attach(proc.pid)
        reader = RingBufferReader(probes.events_fd, funcs.FUNC_EVENT_DTYPE)
        matcher = CallMatcher([f.sp_delta for f in fs])
        am = funcs.AddressMap(fs, b.load_bias(proc.pid) if b.pie else 0)
        stop = threading.Event()
        matched = [0]

        def drain():
            while not stop.is_set():
                ev = reader.poll(0.05)
                matched[0] += len(matcher.process(ev, am.lookup(ev["ip"])))

        t = threading.Thread(target=drain)
        t.start()
        out, cpu = harness.release(proc)
        stop.set()
        t.join()
        ev = reader.read()
        matched[0] += len(matcher.process(ev, am.lookup(ev["ip"])))
        counters = probes.counters()
        reader.close()
    finally:
        probes.close()
    if counters["lost"] or matched[0] != calls:
        raise RuntimeError(f"gotel matched {matched[0]} calls of {calls} ({counters})")
    return cpu * 1e9 / calls


def run_bare(binary, calls):
    """The traps alone: a program that only counts, at gotel's entry and RET addresses."""
    from bcc import BPF, lib

    from receiver import funcs
    from receiver.binary import GoBinary

    b = GoBinary.open(binary)
    (f,) = funcs.resolve(b, ["main.leaf"])
    proc = _start(binary, calls)
    bpf = BPF(text=COUNT)
    try:
        fn = bpf.load_func(b"count", BPF.KPROBE)
        for i, vaddr in enumerate((f.probe_address, *f.ret_addresses)):
            ev = f"gotel_bench_bare_{proc.pid}_{i}".encode()
            fd = lib.bpf_attach_uprobe(fn.fd, 0, ev, str(binary).encode(), b.file_offset(vaddr), proc.pid)
            if fd < 0:
                raise RuntimeError("attach failed")
            bpf._add_uprobe_fd(ev, fd)
        out, cpu = harness.release(proc)
        hits = bpf["hits"][0].value
    finally:
        bpf.cleanup()
    if hits != 2 * calls:
        raise RuntimeError(f"bare probes counted {hits} hits for {calls} calls")
    return cpu * 1e9 / calls


def run_bcc_pair(binary, calls):
    from bcc import BPF

    proc = _start(binary, calls)
    bpf = BPF(text=BCC_LATENCY)
    try:
        bpf.attach_uprobe(name=str(binary), sym="main.leaf", fn_name="entry", pid=proc.pid)
        bpf.attach_uretprobe(name=str(binary), sym="main.leaf", fn_name="ret", pid=proc.pid)
        out, cpu = harness.release(proc)
        seen = sum(v.value for v in bpf["dist"].values())
    finally:
        bpf.cleanup()
    if seen != calls:
        raise RuntimeError(f"bcc pair saw {seen} returns of {calls} calls")
    return cpu * 1e9 / calls


def attach_detach(threads, links, pattern="strconv.*"):
    """(probes, attach s, detach s) for every function strconv.* matches, on a waiting process:
    one uprobe_multi link per program (``links``) or one perf uprobe per site."""
    from receiver import funcs
    from receiver.binary import GoBinary

    binary = harness.workload("calls")
    b = GoBinary.open(binary)
    fs = funcs.resolve(b, [pattern])
    proc = _start(binary, 1)
    probes = funcs.FuncProbes(b, fs, links=links)
    try:
        probes.attach(proc.pid)
        n = probes.probe_count
        attach_s = probes.attach_seconds
        started = time.monotonic()
        probes.close(threads=threads)
        detach_s = time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()
    return n, attach_s, detach_s


def run(quick=False):
    harness.pin_self()
    binary = harness.workload("calls")
    repeat, calls = (2, 50_000) if quick else (5, 100_000)
    plain, gotel, bare, bcc, framed = [], [], [], [], []
    for _ in range(repeat):
        base = run_plain(binary, calls)
        plain.append(base)
        gotel.append(run_gotel(binary, calls) - base)
        bare.append(run_bare(binary, calls) - base)
        bcc.append(run_bcc_pair(binary, calls) - base)
        framed.append(run_gotel(binary, calls, "main.framed") - run_plain(binary, calls, True))
    pattern = "strconv.Format*" if quick else "strconv.*"
    seq = attach_detach(1, False, pattern)
    par = attach_detach(8, False, pattern)
    multi = attach_detach(1, True, pattern)
    figures = {
        "untraced.ns_per_call": harness.figure("main.leaf untraced, CPU per call incl. start-up", "ns", plain, 1),
        "gotel.ns_per_call": harness.figure("added by gotel: entry + RET probe, goroutine from R14",
                                            "ns", gotel, 0),
        "gotel_framed.ns_per_call": harness.figure(
            "added by gotel on main.framed (entry on an emulated `push rbp`, RET stepped)", "ns",
            framed, 0),
        "bare.ns_per_call": harness.figure("added by the same two uprobes with a count-only program",
                                           "ns", bare, 0),
        "bcc_pair.ns_per_call": harness.figure("added by bcc uprobe + uretprobe (funclatency style)",
                                               "ns", bcc, 0),
        "attach.ms_per_probe": harness.figure(f"attach one by one, per uprobe ({seq[0]} probes)", "ms",
                                              [1000 * seq[1] / seq[0], 1000 * par[1] / par[0]], 2),
        "links_attach.ms": harness.figure(f"attach {multi[0]} probes as 2 uprobe_multi links", "ms",
                                          [1000 * multi[1]], 1),
        "links_detach.ms": harness.figure(f"detach {multi[0]} probes as 2 uprobe_multi links", "ms",
                                          [1000 * multi[2]], 1),
        "detach_sequential.ms_per_probe": harness.figure(
            f"detach one by one, per uprobe ({seq[0]} probes)", "ms", [1000 * seq[2] / seq[0]], 1),
        "detach_8_threads.ms_per_probe": harness.figure(
            f"detach with 8 threads, per uprobe ({par[0]} probes)", "ms", [1000 * par[2] / par[0]], 1),
    }
    notes = [f"{calls:,} calls per run, {repeat} interleaved repetitions; GOMAXPROCS=1, "
             "GODEBUG=asyncpreemptoff=1, target pinned to one CPU, gotel's reader on the other.",
             "The bcc pair matches returns to entries by thread id: right here only because the "
             "leaf never blocks; gotel matches by goroutine and stack frame."]
    return harness.row(12, "Function probes: cost per call, attach and detach", __doc__, figures, (),
                       notes, {"calls": calls, "repeat": repeat})


if __name__ == "__main__":
    raise SystemExit(harness.main(run, __doc__))
