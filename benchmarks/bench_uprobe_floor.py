"""Row 6: the kernel's own floor for one uprobe hit on this machine, on a C program, not Go.

The program and the method are gotel's start-up calibration (receiver/calibrate.py, bpf/calibrate.c):
a BPF program that only increments a counter is attached (pid-filtered, and as a BPF link where the
kernel has them, as gotel attaches) to the first instruction of a leaf function, which short blocks of calls alternate with an identical
unprobed one; ns per call of the fastest probed block minus the fastest unprobed one is the cost of
one hit. Two leaves: `push %rbp` (what gotel probes in runtime.casgstatus: emulated, no single-step)
and a 5-byte NOP (which kernels with arch_uprobe_optimize can patch into a call to a trampoline).
The `push` leaf is also measured with the probe attached as a perf event (what bcc's
``attach_uprobe`` makes): each of its hits also passes the trace event layer (receiver/uprobe.py),
whose filter lock every CPU hitting the probe takes; and with two threads hitting it at once, as a
multi-threaded program's CPUs do, both ways.

Trust the median ns per hit of `push`: it is the least any uprobe-based tracer can add per goroutine
transition on this machine, whatever its BPF program does; gotel's row 1 figures sit on top of it.
Each figure is the fastest block of its run, the one other tenants disturbed least.
"""

THREADS = 2   # the two-thread figures: as many threads as this project's machines have CPUs

COUNT = r"""
#include <uapi/linux/ptrace.h>
BPF_ARRAY(hits, u64, 1);
int count(struct pt_regs *ctx) {
    int k = 0;
    u64 *v = hits.lookup(&k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}
"""


def measure(repeat=5, calls=1_000_000):
    """{"push": [ns per hit...], "nop5": [...], "push_perf": [...]}, one value per run, interleaved.

    ``push`` and ``nop5`` are attached as gotel attaches (receiver/uprobe.py: a BPF link where the
    kernel has them), ``push_perf`` as a perf event, the other way, on the same leaf."""
    from bcc import BPF

    from receiver import calibrate, uprobe

    bpf = BPF(text=COUNT)
    links = uprobe.links_available()
    try:
        fns = {True: uprobe.load(bpf, "count", True) if links else None,
               False: uprobe.load(bpf, "count", False)}
        kinds = [(leaf, links, 1) for leaf in calibrate.LEAVES] + [("push", False, 1)]
        kinds += [("push", as_link, THREADS) for as_link in sorted({links, False}, reverse=True)]
        out = {f"{leaf}{'' if as_link == links else '_perf'}{'' if n == 1 else f'_{n}threads'}": []
               for leaf, as_link, n in kinds}
        for _ in range(repeat):
            for (leaf, as_link, n), values in zip(kinds, out.values()):
                before = bpf["hits"][0].value
                values.append(calibrate.measure(fns[as_link].fd, calls, leaf, links=as_link, threads=n))
                hits = bpf["hits"][0].value - before
                if hits != calls * n:
                    raise RuntimeError(f"{leaf}: {hits} hits for {calls * n} calls")
        return out
    finally:
        bpf.cleanup()


def run(quick=False):
    from benchmarks import harness

    repeat, calls = (2, 100_000) if quick else (5, 1_000_000)
    hits = measure(repeat, calls)
    figures = {
        "push.ns_per_hit": harness.figure("one uprobe hit on `push %rbp` (C leaf function)", "ns",
                                          hits["push"], 0),
        "nop5.ns_per_hit": harness.figure("one uprobe hit on a 5-byte NOP (C leaf function)", "ns",
                                          hits["nop5"], 0),
    }
    for key in [k for k in hits if k.endswith("threads")]:
        how = "as a perf event" if "_perf" in key else "as gotel attaches"
        figures[f"{key}.ns_per_hit"] = harness.figure(
            f"one uprobe hit on `push %rbp`, {THREADS} threads hitting it at once, attached {how}",
            "ns", hits[key], 0)
    if "push_perf" in hits:
        figures["push_perf.ns_per_hit"] = harness.figure(
            "one uprobe hit on `push %rbp`, attached as a perf event instead of a BPF link", "ns",
            hits["push_perf"], 0)
        figures["perf_over_link"] = harness.figure(
            "perf event / BPF link, ns per hit on `push %rbp`, run by run", "x",
            [p / max(k, 1.0) for p, k in zip(hits["push_perf"], hits["push"])], 2)
    notes = [f"{calls:,} probed calls per run in 100 blocks, alternating with as many unprobed "
             f"ones; {repeat} repetitions, the leaves interleaved; the BPF program only counts."]
    return harness.row(6, "The kernel's floor: one uprobe hit, no Go", __doc__, figures, (), notes,
                       {"calls": calls, "repeat": repeat})


if __name__ == "__main__":
    from benchmarks import harness

    raise SystemExit(harness.main(run, __doc__))
