"""Row 1: what tracing costs the traced Go program, per captured goroutine event.

Two workloads from benchmarks/go: ``pingpong`` (two goroutines bounce a token over unbuffered
channels: park, ready and run on both sides per op) and ``spawn`` (start a goroutine that exits at
once: create, run, exit per op). Each runs pinned to one CPU with GOMAXPROCS=1 while gotel runs on
the other, in five variants, interleaved within every repetition (untraced, runtime_trace,
naive_entry, naive_after_prologue, gotel, untraced, ...) so that noise from other tenants hits them
alike:

- ``untraced``;
- ``runtime_trace``: Go's own execution tracer writing to io.Discard (the in-process anchor: what
  the Go team accepts for always-on tracing, stacks included);
- ``naive_entry``: the probe set a tracer following the runtime's function names would use
  (newproc1, execute, gopark, ready, goexit1), each uprobe at the function's entry, which on x86 is
  the stack-check ``cmp`` the kernel must single-step (benchmarks/bpf/naive.c: the same event
  record, through a BPF ring buffer without wakeups, which costs 20-50 ns a hit more than gotel's
  per-CPU buffers: nothing next to the single-step);
- ``naive_after_prologue``: that set again, each probe moved past the prologue (the ``push rbp``
  the kernel emulates): separates the cost of the placement from the cost of the function choice;
- ``gotel``: gotel as shipped: ``GoroutineReceiver`` with its default kinds, one uprobe on
  ``runtime.casgstatus`` (nosplit: its entry is a ``push rbp``), the numpy reader of its per-CPU buffers and
  Unix-time conversion, feeding a stage that drops the batches (the pipeline after the reader runs
  on the other CPU and does not touch the traced program);
- ``gotel_trap_only``: the same probe with every kind these workloads produce dropped in the kernel
  (only ``stack_copy`` wanted): each casgstatus call still traps and runs the program up to its
  table lookup, nothing is written. Its cost per hit is the floor that the placement sets.
- ``gotel_perf_events``: gotel with its uprobes attached as perf events (``GOTEL_UPROBE_LINKS=0``,
  what kernels before 6.6 get) instead of BPF links: what the links save per event in a Go program.

gotel and the naive variants attach as receiver/uprobe.py does (BPF links on this kernel).

Beside them, once per repetition, row 6's measurement of the kernel's own floor
(``bench_uprobe_floor.measure``: a counting BPF program on the ``push %rbp`` of a C leaf function,
ns per hit): gotel's CPU ns per captured event over that floor, pair by pair, is what the BPF program
and the record add on top of the trap any uprobe tracer pays.

Each run yields the workload's own wall ns/op of its loop, and its CPU time (user + system of the
whole process, from wait4) per op: a uprobe's trap and BPF program are charged to the traced thread
as system time. Derived, pair by pair within a repetition: ns added per op = traced - untraced;
ns added per captured event = that / (events captured / ops), with the events counted from what
that very run delivered; the ratios of those per-event costs to gotel's.

Trust the CPU ``ns added per captured event`` of ``gotel`` and ``naive_entry`` and their per-pair
ratio: each divides one run's extra CPU time by the events that run really captured (0 lost), both
write the same record, so the ratio isolates where the probes sit; CPU time moves
less than wall time when other tenants take the CPU (on a quiet machine the wall figures agree).
For ``runtime_trace`` and ``gotel_trap_only`` the per-event figure divides by gotel's event count of
the same repetition (Go's tracer records the same transitions, plus stacks; every transition is one
casgstatus call): read them as ns per goroutine transition and ns per probe hit. ``gotel / the
kernel's floor`` divides gotel's CPU figure by row 6's ns per hit of the same repetition (wall time
of a C loop alone on its CPU, where wall and CPU time agree), taken minutes apart at most; ``gotel /
gotel_trap_only`` divides it by the trap that writes nothing, measured the same way as gotel (a CPU
average over a Go run, on the same casgstatus).
"""

import os
import threading
import time

from benchmarks import bench_uprobe_floor, harness
from receiver import uprobe
from receiver.events import BPF_DIR
from receiver.receiver import Config as ReceiverConfig
from receiver.receiver import GoroutineReceiver
from receiver.ringbuf import RingBufferReader

NAIVE_SOURCE = harness.REPO / "benchmarks" / "bpf" / "naive.c"
NAIVE_FUNCTIONS = {
    "runtime.newproc1": "naive_newproc1",
    "runtime.execute": "naive_execute",
    "runtime.gopark": "naive_gopark",
    "runtime.ready": "naive_ready",
    "runtime.goexit1": "naive_goexit1",
}
VARIANTS = ("untraced", "runtime_trace", "naive_entry", "naive_after_prologue", "gotel",
            "gotel_trap_only", "gotel_perf_events")
TRACED = ("naive_entry", "naive_after_prologue", "gotel", "gotel_perf_events")
RATIOS = (("naive_entry", "naive entry / gotel"),
          ("naive_after_prologue", "naive after prologue / gotel"),
          ("runtime_trace", "runtime/trace / gotel"),
          ("gotel_trap_only", "trap alone / gotel"),
          ("gotel_perf_events", "uprobes as perf events / as BPF links (gotel)"))
# Variants whose cost is divided by gotel's event count of the same repetition, and what it counts.
PER_GOTEL_EVENT = {"runtime_trace": "goroutine transition", "gotel_trap_only": "casgstatus hit"}
WORKLOADS = ("pingpong", "spawn")
FLOOR_RATIO_GOAL = 1.25   # gotel's ns per captured event / the kernel's floor per hit (issue 12)


class NaiveProbes:
    """benchmarks/bpf/naive.c compiled once for a Go layout; ``attach(binary, pid, where)`` puts
    its five uprobes on one process at the functions' entries (``where="entry"``) or after their
    prologues (``"after_prologue"``); ``detach()`` removes them. Events go to ``events_fd``."""

    def __init__(self, binary):
        from bcc import BPF

        layout = binary.layout
        cflags = [f"-I{BPF_DIR}", f"-DNAIVE_G_GOID={layout.g['goid']}",
                  f"-DNAIVE_G_M={layout.g['m']}", f"-DNAIVE_M_CURG={layout.m['curg']}"]
        self.bpf = BPF(src_file=str(NAIVE_SOURCE).encode(), cflags=cflags)
        self.links = uprobe.links_available()      # attached as gotel's probes are
        self.fns = {name: uprobe.load(self.bpf, prog, self.links)
                    for name, prog in NAIVE_FUNCTIONS.items()}
        self.events_fd = self.bpf["events"].map_fd
        self.attached = []

    @staticmethod
    def places(binary, where):
        """{function: virtual address} of the probes for one binary."""
        from receiver import placement

        found = binary.image.symbols(NAIVE_FUNCTIONS) or binary.pclntab.lookup(NAIVE_FUNCTIONS)
        out = {}
        for name in NAIVE_FUNCTIONS:
            address, size = found[name]
            if where == "entry":
                out[name] = address
            else:
                code = binary.image.read(address, size)
                out[name] = placement.place(code, address, name).probe_address
        return out

    def attach(self, binary, pid, where):
        for name, address in self.places(binary, where).items():
            offset = binary.file_offset(address)
            self.attached.append(uprobe.Uprobe(self.fns[name].fd, str(binary.path), offset, pid,
                                               f"gotel_naive_{os.getpid()}_{pid}_{offset:x}", self.links))

    def detach(self):
        for probe in self.attached:
            probe.close()
        self.attached.clear()

    def lost(self):
        table = self.bpf["lost"]
        return int(sum(table[table.Key(0)]))

    def close(self):
        self.detach()
        self.bpf.cleanup()


class Drain(threading.Thread):
    """Empties a ring buffer while a run goes on, counting the records."""

    def __init__(self, fd):
        super().__init__(daemon=True)
        self.reader = RingBufferReader(fd)
        self.events = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.events += len(self.reader.poll(0.05))

    def finish(self):
        self.stop.set()
        self.join()
        self.events += len(self.reader.read())
        self.reader.close()
        return self.events


def run_variant(variant, binary, gobinary, n, naive):
    """(wall ns/op, CPU ns/op, events captured per op, lost) of one run.

    ``naive_entry`` runs a tenth of the ops: at tens of microseconds per op it would take most of
    the row's time budget, and its cost per op is two orders of magnitude above the process's
    start-up share, which the untraced baseline subtracts only for the full n."""
    if variant == "naive_entry":
        n = max(1000, n // 10)
    args = ["-n", n] + (["-trace"] if variant == "runtime_trace" else [])
    proc = harness.start_waiting(binary, args)
    events = lost = 0
    if variant in ("untraced", "runtime_trace"):
        out, cpu = harness.release(proc)
    elif variant.startswith("gotel"):
        kinds = ("stack_copy",) if variant == "gotel_trap_only" else ReceiverConfig.kinds
        rx = GoroutineReceiver(ReceiverConfig(pids=(proc.pid,), existing=False, kinds=kinds),
                               harness.Discard())
        perf = variant == "gotel_perf_events"
        os.environ["GOTEL_UPROBE_LINKS"] = "0" if perf else "1"   # read when the probes load
        try:
            rx.start()
        finally:
            os.environ.pop("GOTEL_UPROBE_LINKS")
        if rx.probes.links == perf:
            raise RuntimeError(f"{variant}: uprobes attached as {'links' if perf else 'perf events'}")
        try:
            out, cpu = harness.release(proc)
        finally:
            rx.shutdown()
        events, lost = rx.events, rx.lost
    else:
        lost_before = naive.lost()
        naive.attach(gobinary, proc.pid, "entry" if variant == "naive_entry" else "after_prologue")
        drain = Drain(naive.events_fd)
        drain.start()
        try:
            out, cpu = harness.release(proc)
        finally:
            naive.detach()
            events = drain.finish()
        lost = naive.lost() - lost_before
    return harness.ns_per_op(out), cpu * 1e9 / n, events / n, lost


def measure(workload, n, repeats, floor_calls):
    """{variant: [run of repetition i]} for one workload, and {"floor": [ns per hit of
    repetition i]}: row 6's floor, measured after each repetition's variants."""
    from receiver.binary import GoBinary

    binary = harness.workload(workload)
    gobinary = GoBinary.open(str(binary))
    naive = NaiveProbes(gobinary)
    runs = {v: [None] * repeats for v in VARIANTS}
    runs["floor"] = [None] * repeats
    try:
        for i, variant in harness.interleaved(VARIANTS, repeats):
            runs[variant][i] = run_variant(variant, binary, gobinary, n, naive)
            if variant == VARIANTS[-1]:
                runs["floor"][i] = bench_uprobe_floor.measure(1, floor_calls)["push"][0]
    finally:
        naive.close()
    return runs


def derive(workload, runs):
    """Figures of one workload; every difference and ratio is taken within a repetition."""
    figs = {}
    for v in VARIANTS:
        figs[f"{workload}.{v}.ns_per_op"] = harness.figure(
            f"{workload}: {v}, wall ns/op", "ns", [r[0] for r in runs[v]])
        figs[f"{workload}.{v}.cpu_ns_per_op"] = harness.figure(
            f"{workload}: {v}, CPU ns/op", "ns", [r[1] for r in runs[v]])
    for v in TRACED:
        figs[f"{workload}.{v}.events_per_op"] = harness.figure(
            f"{workload}: {v}, events captured per op", "events", [r[2] for r in runs[v]], 2)
        figs[f"{workload}.{v}.lost"] = harness.figure(
            f"{workload}: {v}, events lost", "events", [r[3] for r in runs[v]], 0)
    events_per_op = {v: [r[2] for r in runs[v]] for v in TRACED}
    events_per_op.update({v: events_per_op["gotel"] for v in PER_GOTEL_EVENT})
    for col, suffix, what in ((1, "", "CPU"), (0, "_wall", "wall")):
        added = {v: [r[col] - b[col] for r, b in zip(runs[v], runs["untraced"])] for v in VARIANTS}
        per_event = {v: [a / e if e else None for a, e in zip(added[v], events_per_op[v])]
                     for v in (*TRACED, *PER_GOTEL_EVENT)}
        for v, values in per_event.items():
            unit = PER_GOTEL_EVENT.get(v, "captured event")
            figs[f"{workload}.{v}.ns_per_event{suffix}"] = harness.figure(
                f"{workload}: {v}, {what} ns added per {unit}", "ns", values)
        for v, label in RATIOS:
            figs[f"{workload}.ratio.{v}_vs_gotel{suffix}"] = harness.figure(
                f"{workload}: {what} ns added per event, {label}", "x",
                [a / g if a is not None and g and g > 0 else None
                 for a, g in zip(per_event[v], per_event["gotel"])], 2)
        if col == 1:
            figs[f"{workload}.ratio.gotel_vs_floor"] = harness.figure(
                f"{workload}: CPU ns added per captured event by gotel / the kernel's floor per hit "
                f"(row 6, same repetition)", "x",
                [g / f if g is not None and f and f > 0 else None
                 for g, f in zip(per_event["gotel"], runs["floor"])], 2)
            # The same floor measured the way gotel is: a hit of the same probe on the same
            # casgstatus in the same Go loop that writes nothing, as a CPU average over a run (row 6
            # takes the fastest block of a C loop, which runs below a whole run's average).
            figs[f"{workload}.ratio.gotel_vs_trap"] = harness.figure(
                f"{workload}: CPU ns added per captured event by gotel / per hit of gotel_trap_only "
                f"(the floor measured the same way, same repetition)", "x",
                [g / t if g is not None and t and t > 0 else None
                 for g, t in zip(per_event["gotel"], per_event["gotel_trap_only"])], 2)
    figs[f"{workload}.floor.ns_per_hit"] = harness.figure(
        f"{workload} repetitions: the kernel's floor, one uprobe hit on `push %rbp` in C (row 6)",
        "ns", runs["floor"], 0)
    return figs


def run(quick=False):
    n = 2000 if quick else 200_000
    repeats = 1 if quick else 5
    floor_calls = 100_000 if quick else 1_000_000
    started = time.monotonic()
    figs = {}
    for w in WORKLOADS:
        figs.update(derive(w, measure(w, n, repeats, floor_calls)))
    goals = []
    for w in WORKLOADS:
        ev = figs[f"{w}.gotel.ns_per_event"]["median"]
        ratio = figs[f"{w}.ratio.naive_entry_vs_gotel"]["median"]
        trap = figs[f"{w}.gotel_trap_only.ns_per_event"]["median"]
        goals.append(harness.goal(
            f"{w}: <= 250 ns added per captured event", f"{w}.gotel.ns_per_event", ev, 250,
            ev is not None and ev <= 250,
            f"every casgstatus call is a uprobe trap (int3, kernel entry and exit around the BPF "
            f"program); on this machine the trap with nothing written costs {trap or 0:.0f} ns per hit "
            f"(gotel_trap_only; row 6 gives the kernel's own floor for one hit, in a C program), "
            f"the event's clock, reads and write the rest"))
        over = figs[f"{w}.ratio.gotel_vs_floor"]["median"]
        floor = figs[f"{w}.floor.ns_per_hit"]["median"]
        goals.append(harness.goal(
            f"{w}: <= {FLOOR_RATIO_GOAL}x the kernel's uprobe floor per captured event",
            f"{w}.ratio.gotel_vs_floor", over, FLOOR_RATIO_GOAL,
            over is not None and over <= FLOOR_RATIO_GOAL,
            f"the floor is {floor or 0:.0f} ns per hit here, the fastest block of a C loop; over "
            f"the trap that writes nothing, measured the same way as gotel, gotel is at "
            f"{figs[f'{w}.ratio.gotel_vs_trap']['median'] or 0:.2f}x. What gotel's program adds per "
            f"event is the clock (a helper call), the write to its CPU's buffer, and a creation's or "
            f"a park's read of the g; benchmarks/bpf_parts.py measures each, and the least any "
            f"event can do"))
        goals.append(harness.goal(
            f"{w}: >= 10x below the naive entry placement, per captured event",
            f"{w}.ratio.naive_entry_vs_gotel", ratio, 10, ratio is not None and ratio >= 10,
            "the ratio is bounded by the cost of the emulated trap that both placements pay"))
    lost = sum(sum(figs[f"{w}.{v}.lost"]["values"]) for w in WORKLOADS for v in TRACED)
    notes = [f"Each run: n={n} ops (naive_entry: {max(1000, n // 10)}), GOMAXPROCS=1, workload pinned to CPU {harness.TARGET_CPU}, gotel "
             f"and the naive reader on CPU {harness.GOTEL_CPU}; {repeats} repetitions; events lost "
             f"in all traced runs: {int(lost)}.",
             f"Row wall time {time.monotonic() - started:.0f} s."]
    return harness.row(1, "Cost to the traced program per captured event", __doc__, figs, goals,
                       notes, {"n": n, "repeats": repeats, "variants": VARIANTS,
                               "workloads": WORKLOADS, "floor_calls": floor_calls})


if __name__ == "__main__":
    raise SystemExit(harness.main(run, __doc__))
