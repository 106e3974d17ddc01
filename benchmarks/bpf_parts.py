"""What gotel's casgstatus program spends beyond the uprobe trap, part by part.

Runs a benchmarks/go workload (``pingpong``: park, ready, run on both sides per op; ``spawn``:
create, run, exit) pinned to one CPU, traced by bpf/gotel.c and by variants of it with one part
cut out, interleaved within each repetition, with the kernel's BPF run-time statistics on
(``kernel.bpf_stats_enabled``, restored after). Per variant: the program's own ns per hit (the
kernel's ``run_time_ns / run_cnt`` of the program, from /proc/self/fdinfo) and the CPU ns the
traced process gained per hit over an untraced run. The difference between ``gotel`` and a
variant is what the part cut out costs, per hit:

- ``no_waker``: a wakeup's waker not looked up (the thread's entry, or the reads of g0.m and m.curg);
- ``no_g_read``: no read of the g (the window of a creation's fields or a park's wait reason, the
  goid of a g the cache misses);
- ``no_cache``: the goid cache never hits: every event reads its g's goid (as before the cache);
- ``no_clock``: bpf_ktime_get_ns not called;
- ``no_buffer``: the event built, not written to the event buffer;
- ``ring``: the event written to a BPF ring buffer instead (``bpf_ringbuf_output``, no wakeup, drained
  by gotel's ring reader), as gotel did before its per-CPU buffers;
- ``trap_only``: every kind dropped by the table: what any hit costs before it is kept;
- ``count_only``: a counting program like row 6's, on the same casgstatus: the kernel's floor measured
  the way this row measures the others (a CPU average over the whole run, not row 6's fastest block);
- ``least_event``: the least any event can do (the clock, the pid, one read of g.goid, written to
  a per-CPU slot that nothing delivers): a lower bound for every design of the program.

The variants are for measuring only (the text substitutions below fail loudly when bpf/gotel.c no
longer has the code they cut). The statistics add their own clock reads to every run: compare
variants with each other, not with row 6's floor. Usage:
``python benchmarks/bpf_parts.py [--workload pingpong] [--ops 200000] [--repeats 5]``.
"""

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import harness  # noqa: E402
from receiver import probes  # noqa: E402
from receiver.events import Kind  # noqa: E402
from receiver.ringbuf import RingBufferReader  # noqa: E402

WORK = REPO / "benchmarks" / ".work"
ON_CASGSTATUS = "static __always_inline int on_casgstatus(struct pt_regs *ctx, int slot)\n{\n"
# variant -> [(text in bpf/gotel.c, its replacement)]
CUTS = {
    "gotel": [],
    "no_waker": [("    if (kind == GOTEL_KIND_READY) {\n        __u64 waker = 0;",
                  "    if (0) {\n        __u64 waker = 0;")],
    "no_g_read": [("        bpf_probe_read_user(window, len, (void *)(gp + l->g_window));\n        if (!goid)",
                   "        __builtin_memset(window, 0, sizeof(window));\n        if (!goid)"),
                  ("        goid = read_u64(gp + l->g_goid);\n    }\n    if (kind == GOTEL_KIND_READY)",
                   "        goid = 1;\n    }\n    if (kind == GOTEL_KIND_READY)")],
    "no_cache": [("    __u64 goid = born ? 0 : goid_cached(gp, tag);\n",
                  "    __u64 goid = 0;\n"),
                 ("    __u64 goid = goid_cached(curg, tag);\n", "    __u64 goid = 0;\n")],
    "no_clock": [("    e.ts_ns = bpf_ktime_get_ns();\n    e.g = gp;\n    e.pid",
                  "    e.ts_ns = 1;\n    e.g = gp;\n    e.pid")],
    "no_buffer": [("        count(GOTEL_COUNTER_HELD_FULL);\n    }\n    emit(&e);",
                   "        count(GOTEL_COUNTER_HELD_FULL);\n    }\n    if (e.ts_ns)\n        return 0;\n"
                   "    emit(&e);")],
    "ring": [("static __always_inline void emit(struct gotel_event *e)\n{\n",
              "BPF_RINGBUF_OUTPUT(ring_events, 2048);\n"
              "static __always_inline void emit(struct gotel_event *e)\n{\n"
              "    if (ring_events.ringbuf_output(e, sizeof(*e), BPF_RB_NO_WAKEUP))\n"
              "        count(GOTEL_COUNTER_LOST);\n"
              "    if (e->ts_ns)\n        return;\n")],
    "trap_only": [],
    # Not parts of gotel's program but bounds on any: a counting program like row 6's, on the same
    # casgstatus (the kernel's floor, by this row's method) and the least an event can do: the
    # clock, the pid and one read of g.goid into a per-CPU slot that nothing delivers.
    "count_only": [(ON_CASGSTATUS, ON_CASGSTATUS + """    int k0 = GOTEL_COUNTER_HITS;
    __u64 *v0 = counters.lookup(&k0);
    if (v0)
        __sync_fetch_and_add(v0, 1);
    return 0;
""")],
    "least_event": [(ON_CASGSTATUS, """BPF_PERCPU_ARRAY(least_slot, struct gotel_event, 1);
""" + ON_CASGSTATUS + """    int k0 = 0;
    struct gotel_layout *l0 = layouts.lookup(&slot);
    struct gotel_event *e0 = least_slot.lookup(&k0);
    if (!l0 || !e0)
        return 0;
    __u64 pid_tgid0 = bpf_get_current_pid_tgid();
    e0->ts_ns = bpf_ktime_get_ns();
    e0->g = ctx->ax;
    bpf_probe_read_user(&e0->goid, sizeof(e0->goid), (void *)(ctx->ax + l0->g_goid));
    e0->pid = pid_tgid0 >> 32;
    e0->kind = l0->kinds[((ctx->bx & 0xf) << 4) | (ctx->cx & 0xf)];
    return 0;
""")],
}


def variant_source(name):
    text = probes.SOURCE.read_text()
    for old, new in CUTS[name]:
        if text.count(old) != 1:
            raise SystemExit(f"bpf/gotel.c changed: the cut for {name} no longer applies")
        text = text.replace(old, new)
    WORK.mkdir(exist_ok=True)
    out = WORK / f"gotel_{name}.c"
    out.write_text(text)
    return out


def load(name):
    """A Probes object compiled from the variant's source."""
    shipped = probes.SOURCE
    probes.SOURCE = variant_source(name)
    try:
        kinds = frozenset({Kind.STACK_COPY}) if name == "trap_only" else probes.DEFAULT_KINDS
        return probes.Probes(probes.Config(kinds=kinds))
    finally:
        probes.SOURCE = shipped


def drain_reader(p):
    """The reader of what a variant writes: the ``ring`` variant's ring buffer, else p's own."""
    try:
        return RingBufferReader(p.bpf["ring_events"].map_fd)
    except KeyError:
        return p.reader()


def run_stats(fd):
    """(run_time_ns, run_cnt) of a BPF program fd of this process."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/self/fdinfo/{fd}") if ":" in line)
    return int(fields.get("run_time_ns", 0)), int(fields.get("run_cnt", 0))


def one_run(p, binary, gobinary, n):
    """(CPU ns/op, BPF ns per hit, hits per op) of one run; p None: untraced."""
    proc = harness.start_waiting(binary, ["-n", n])
    if p is None:
        _, cpu = harness.release(proc)
        return cpu * 1e9 / n, None, None
    att = p.attach(gobinary, proc.pid)
    fd = p._fns[att.slot].fd
    t0, c0 = run_stats(fd)
    reader, stop, got = drain_reader(p), threading.Event(), []
    drain = threading.Thread(target=lambda: [got.append(len(reader.poll(0.05)))
                                             for _ in iter(stop.is_set, True)], daemon=True)
    drain.start()
    try:
        _, cpu = harness.release(proc)
    finally:
        p.detach(att)
        stop.set()
        drain.join()
        reader.read()
        reader.close()
    t1, c1 = run_stats(fd)
    return cpu * 1e9 / n, (t1 - t0) / max(1, c1 - c0), (c1 - c0) / n


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="pingpong", choices=("pingpong", "spawn"))
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", default=",".join(CUTS),
                        help="comma-separated, among: " + ", ".join(CUTS))
    args = parser.parse_args(argv)
    chosen = [v for v in CUTS if v in set(args.variants.split(",")) | {"gotel", "count_only"}]
    from receiver.binary import GoBinary

    harness.pin_self()
    binary = harness.workload(args.workload)
    gobinary = GoBinary.open(str(binary))
    loaded = {name: load(name) for name in chosen}
    runs = {name: [] for name in ("untraced", *chosen)}
    with open("/proc/sys/kernel/bpf_stats_enabled") as f:
        stats_before = f.read().strip()
    started = time.monotonic()
    try:
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write("1")
        for _, name in harness.interleaved(list(runs), args.repeats):
            runs[name].append(one_run(loaded.get(name), binary, gobinary, args.ops))
    finally:
        with open("/proc/sys/kernel/bpf_stats_enabled", "w") as f:
            f.write(stats_before)
        for p in loaded.values():
            p.close()
    base = [r[0] for r in runs["untraced"]]
    print(f"{args.workload}: {args.ops} ops x {args.repeats} repetitions, untraced CPU "
          f"{statistics.median(base):.0f} ns/op ({time.monotonic() - started:.0f} s)")
    print(f"{'variant':>11} {'hits/op':>8} {'BPF ns/hit':>11} {'vs gotel':>9} {'CPU ns/hit':>11} "
          f"{'/ count_only':>13}")
    gotel_bpf = statistics.median(r[1] for r in runs["gotel"])
    cpu = {name: [(r[0] - b) / r[2] for r, b in zip(runs[name], base) if r[2]] for name in chosen}
    for name in chosen:
        bpf = statistics.median(r[1] for r in runs[name])
        # Pair by pair within a repetition, over the floor measured the same way.
        over = statistics.median(c / f for c, f in zip(cpu[name], cpu["count_only"]) if f > 0)
        print(f"{name:>11} {statistics.median(r[2] for r in runs[name]):8.2f} {bpf:11.0f} "
              f"{bpf - gotel_bpf:+9.0f} {statistics.median(cpu[name]):11.0f} {over:12.2f}x")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
