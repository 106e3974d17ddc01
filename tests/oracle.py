"""The Go runtime's own record of goroutines, from `go tool trace -d=parsed`, and its comparison with
what gotel saw.

A Go program that calls ``runtime/trace.Start`` logs every goroutine state transition itself:
``NotExist->Runnable`` under ``G=<creator>``, ``Running->Waiting`` with a ``Reason``. ``parse`` turns
that text into one ``Goroutine`` per goid created while the trace ran (its creator and its parks in
order); ``from_events`` builds the same view from gotel's events; ``compare`` checks, per goroutine,
the creator and the sequence of park reasons.

What is compared, and why some of gotel's parks are left out:
- Only goroutines created inside the trace window; ones alive at ``trace.Start`` appear as
  ``Undetermined`` and the tracer never says who made them.
- The tracer names a block by a coarse reason ("sync" covers ``sync.Mutex.Lock``, ``semacquire``,
  ``sync.WaitGroup.Wait``...). ``TRACE_REASON`` maps each Go waitReason name onto that vocabulary.
- Internal waits: the runtime sets a *running* goroutine to ``_Gwaiting`` so that the garbage
  collector (or the tracer) may take ownership of its stack while it runs on the system stack
  (``casGToWaitingForGC`` / ``casGToWaitingForSuspendG``: stop-the-world, GC assists, mark
  termination, the tracer's own status dumps), then sets it straight back to ``_Grunning``. No
  ``gopark``, no ready: the tracer does not log them, casgstatus does. Go names that set
  ``isWaitingForSuspendG`` (``isWaitingForGC`` in 1.22-1.24) in runtime/runtime2.go: "The G is always
  actually executing on the system stack in these cases". gotel's park is excluded when the
  goroutine's next transition is ``_Gwaiting -> _Grunning`` with no ready in between (the reason is
  not used to decide); the excluded parks are counted by reason and must all be in
  ``INTERNAL_WAITS``.
- The window's end: for traces of Go 1.25+ the Sync events relate trace time to CLOCK_MONOTONIC, so
  gotel's parks after the trace's last event are dropped; for older traces (no such relation),
  gotel's park sequence for a goroutine still alive at the end must start with the tracer's.
"""

import collections
import dataclasses
import re
import statistics
import subprocess

import numpy as np

from pipeline.app import gotool
from receiver.events import Kind

TRANSITION = re.compile(
    r"^M=-?\d+ P=-?\d+ G=(-?\d+) StateTransition Time=(-?\d+) GoID=(\d+) (\w+)->(\w+) Reason=\"(.*)\"$")
SYNC = re.compile(r"^M=-?\d+ P=-?\d+ G=-?\d+ Sync Time=-?\d+ N=\d+ Trace=(\d+) Mono=(\d+)")
EVENT_TIME = re.compile(r"^M=-?\d+ P=-?\d+ G=-?\d+ \w+ Time=(\d+)")

# Wait reasons Go uses for a running goroutine that only pretends to wait (see the docstring).
INTERNAL_WAITS = {
    "stopping the world", "GC mark termination", "garbage collection", "garbage collection scan",
    "trace goroutine status", "trace proc status", "page trace flush", "GC assist marking",
    "GC worker (active)", "flushing proc caches", "dumping heap", "debug call",
}

SYSTEM = "system goroutine wait"
# The goroutine reading the trace parks once more as trace.Stop flushes the last generation: that
# park races the tracer's own shutdown, and the tracer may not record it though it precedes the
# trace's last event (seen 2 times in 53 runs of test_window_is_complete_for_goroutines_alive_at_its_start).
READER_PARK = "trace reader (blocked)"
# Go waitReason names (runtime/runtime2.go, 1.21-1.27) -> the tracer's block reason.
TRACE_REASON = {
    "chan receive": "chan receive",
    "chan send": "chan send",
    "chan receive (nil chan)": "forever",
    "chan send (nil chan)": "forever",
    "select (no cases)": "forever",
    "select": "select",
    "sleep": "sleep",
    "IO wait": "network",
    "sync.Cond.Wait": "sync.(*Cond).Wait",
    "semacquire": "sync",
    "sync.Mutex.Lock": "sync",
    "sync.RWMutex.RLock": "sync",
    "sync.RWMutex.Lock": "sync",
    "sync.WaitGroup.Wait": "sync",
    "GC assist wait": "GC mark assist wait",
    "wait for GC cycle": "wait until GC ends",
    "debug call": "wait for debug call",
    "synctest.Run": "synctest",
    "synctest.Wait": "synctest",
    "chan receive (durable)": "chan receive",
    "chan send (durable)": "chan send",
    "select (durable)": "select",
    "synctest.Wait (durable)": "synctest",
    "preempted": "preempted",
}
# Reasons of goroutines the runtime runs for itself: the tracer says "system goroutine wait" (Go
# 1.22+) or "" (older traces) or names the GC phase.
SYSTEM_REASONS = {"", SYSTEM, "GC background sweeper wait", "GC mark assist wait", "forever"}


def trace_reason(wait_reason_name):
    """The tracer's reason for a Go waitReason name; unknown names are system waits."""
    return TRACE_REASON.get(wait_reason_name, SYSTEM)


def same_reason(tracer, gotel_name):
    mapped = trace_reason(gotel_name)
    if mapped == "GC mark assist wait" and tracer == "GC mark assist wait for work":   # Go 1.22+
        return True
    if mapped == "preempted" and tracer == "":    # before Go 1.22 a GC stop is an unnamed block
        return True
    return mapped == tracer or (mapped == SYSTEM and tracer in SYSTEM_REASONS)


@dataclasses.dataclass
class Goroutine:
    goid: int
    parent: int = None          # creator's goid (None: created outside the window)
    parks: list = dataclasses.field(default_factory=list)   # reasons, in order
    exited: bool = False
    blocked: list = dataclasses.field(default_factory=list)  # ns from each park to its ready (None: open)
    schedules: int = 0          # runnable -> running transitions
    start: str = ""             # start function (the tracer's TransitionStack of its creation)
    wakers: list = dataclasses.field(default_factory=list)  # goid that readied it, each time (0: none)


@dataclasses.dataclass
class Trace:
    goroutines: dict            # goid -> Goroutine, created inside the window only
    mono_end: int = None        # CLOCK_MONOTONIC ns of the last event (Go 1.22+ traces)


def parse(text):
    """Trace from the text of `go tool trace -d=parsed`."""
    gs, offset, last = {}, None, 0
    parked = {}                 # goid -> time of its open park
    naming = None               # the goroutine whose creation's TransitionStack comes next
    for line in text.splitlines():
        if naming is not None and line.startswith("\t") and not line.startswith("\t\t"):
            naming.start = line.strip().split(" @ ")[0]
            naming = None
            continue
        if not line.startswith("M="):
            if line.startswith("Stack="):
                naming = None
            continue
        naming = None
        m = TRANSITION.match(line)
        if m is None:
            s = SYNC.match(line)
            if s is not None:
                offset = int(s.group(2)) - int(s.group(1))
            t = EVENT_TIME.match(line)
            if t is not None:
                last = max(last, int(t.group(1)))
            continue
        creator, time, goid, old, new, reason = m.groups()
        last = max(last, int(time))
        goid = int(goid)
        if old == "NotExist":
            # G=-1: created with no goroutine running (by the runtime itself); gotel reads parentGoid 0.
            gs[goid] = Goroutine(goid, parent=max(int(creator), 0))
            naming = gs[goid]
        g = gs.get(goid)
        if g is None:
            continue
        if old == "Running" and new == "Waiting":
            g.parks.append(reason)
            g.blocked.append(None)
            parked[goid] = int(time)
        elif old == "Waiting" and goid in parked:
            g.blocked[-1] = int(time) - parked.pop(goid)
        if old == "Waiting" and new == "Runnable":
            g.wakers.append(max(int(creator), 0))     # G= of a ready: the goroutine running then
        elif old == "Runnable" and new == "Running":
            g.schedules += 1
        if new == "NotExist":
            g.exited = True
    return Trace(gs, last + offset if offset is not None else None)


def go_tool_trace(trace_path):
    """Trace of a trace file, parsed by the newest toolchain's `go tool trace` (it reads older
    formats too: Go 1.21's traces are converted by its internal/trace)."""
    go = list(gotool.toolchains().values())[-1]
    out = subprocess.run([str(go), "tool", "trace", "-d=parsed", str(trace_path)],
                         env=gotool.go_env(go), capture_output=True, text=True, check=True)
    return parse(out.stdout)


@dataclasses.dataclass
class View:
    goroutines: dict                                   # goid -> Goroutine
    internal: collections.Counter                      # internal waits excluded, by reason
    park_times: dict                                   # goid -> [monotonic ns of each park]
    run_times: dict = None                             # goid -> [monotonic ns of each schedule]


def start_names(proc, events):
    """Start PC -> the name gotel gives it (the service's symbolization), for ``from_events``."""
    pcs = np.unique(events["pc_start"][events["kind"] == Kind.CREATE])
    file_pcs = proc.binary.start_pcs(pcs - np.uint64(proc.pc_bias()))
    return dict(zip(pcs.tolist(), proc.binary.symbolizer().function_names(file_pcs).tolist()))


def from_events(events, layout, pid, start_names=None):
    """View of one process from gotel's events (in ring order, ts still monotonic).

    A park ended by a run with no ready in between is runtime work (the decoder's rule), named by
    the reason the run read. A schedule is a run after a creation, a ready or a preemption (the
    decoder's go.schedule.duration). ``start_names`` maps a start PC to its name."""
    events = events[events["pid"] == pid]
    events = events[np.argsort(events["ts_ns"], kind="stable")]
    gs, times, runs, internal = {}, {}, {}, collections.Counter()
    open_park, last_kind = {}, {}                      # goid -> index in its parks list; last kind
    names = layout.wait_reasons

    def name(wr):
        return names[wr] if wr < len(names) else f"waitReason({wr})"

    for e in events.tolist():
        ts, _g, goid, aux, ps, _pc, _pid, _tid, kind, wr, old, _new, _cpu = e
        if kind == Kind.CREATE:
            gs[goid] = Goroutine(goid, parent=aux, start=(start_names or {}).get(ps, ""))
            times[goid], runs[goid] = [], []
            last_kind[goid] = kind
            continue
        g = gs.get(goid)
        if g is None:
            continue
        if kind == Kind.PARK:
            g.parks.append(name(wr))
            g.blocked.append(None)
            times[goid].append(ts)
            open_park[goid] = len(g.parks) - 1
        elif kind == Kind.READY and goid in open_park:
            i = open_park.pop(goid)
            g.blocked[i] = ts - times[goid][i]
        if kind == Kind.READY:
            g.wakers.append(aux)
        elif kind == Kind.RUN and last_kind.get(goid) == Kind.PARK and goid in open_park:
            i = open_park.pop(goid)
            internal[name(wr)] += 1
            g.parks[i] = None
        elif kind == Kind.EXIT:
            g.exited = True
        if kind == Kind.RUN and last_kind.get(goid) in (Kind.CREATE, Kind.READY, Kind.PREEMPT):
            g.schedules += 1
            runs[goid].append(ts)
        last_kind[goid] = kind
    for goid, g in gs.items():
        keep = [i for i, r in enumerate(g.parks) if r is not None]
        g.parks = [g.parks[i] for i in keep]
        g.blocked = [g.blocked[i] for i in keep]
        times[goid] = [times[goid][i] for i in keep]
    return View(gs, internal, times, runs)


@dataclasses.dataclass
class Comparison:
    compared: int
    agreed: int
    mismatches: list            # (goid, what the tracer says, what gotel says)
    internal: collections.Counter

    @property
    def agreement(self):
        return self.agreed / self.compared if self.compared else 0.0


def compare(trace, view, offset_ns=0):
    """Per goroutine of the trace: same creator, same park reasons (see the module docstring).

    offset_ns is what was added to gotel's timestamps (Unix minus monotonic), if anything."""
    mismatches, agreed = [], 0
    for goid, t in sorted(trace.goroutines.items()):
        g = view.goroutines.get(goid)
        if g is None:
            mismatches.append((goid, t, "never seen created"))
            continue
        parks = g.parks
        if trace.mono_end is not None:
            parks = [r for r, ts in zip(parks, view.park_times[goid]) if ts - offset_ns <= trace.mono_end]
        elif not t.exited:
            parks = parks[:len(t.parks)]
        if len(parks) > len(t.parks) and set(parks[len(t.parks):]) == {READER_PARK}:
            parks = parks[:len(t.parks)]      # see READER_PARK
        ok = g.parent == t.parent and len(parks) == len(t.parks) and all(
            same_reason(a, b) for a, b in zip(t.parks, parks))
        if ok:
            agreed += 1
        else:
            mismatches.append((goid, t, Goroutine(goid, g.parent, parks, g.exited)))
    return Comparison(len(trace.goroutines), agreed, mismatches, view.internal)


def compare_wakers(trace, view):
    """(readies compared, readies whose waker agrees, first mismatches): per goroutine of the
    trace that gotel saw created, its readies in order, as far as both sides recorded them."""
    compared = agreed = 0
    mismatches = []
    for goid, t in sorted(trace.goroutines.items()):
        g = view.goroutines.get(goid)
        if g is None:
            continue
        for a, b in zip(t.wakers, g.wakers):
            compared += 1
            agreed += a == b
            if a != b and len(mismatches) < 10:
                mismatches.append((goid, a, b))
    return compared, agreed, mismatches


@dataclasses.dataclass
class Fidelity:
    """gotel against the tracer over the goroutines created inside the trace window (see
    ``fidelity``): each figure with what it was computed from."""

    tracer_parks: int
    recalled: int               # tracer parks gotel also saw (per goroutine, up to its count)
    extra: int                  # parks gotel saw beyond the tracer's count
    aligned: int                # parks compared position by position (same count both sides)
    same_reason: int
    durations: list             # |gotel - tracer| blocked ns of aligned parks that agree
    tracer_schedules: int
    gotel_schedules: int
    named: int                  # goroutines whose start function both name
    same_name: int
    zero_length: int            # goroutines that lived whose gotel span has no length (spans given)
    name_mismatches: collections.Counter
    reason_mismatches: collections.Counter
    internal: collections.Counter
    opaque_names: int = 0       # goroutines the tracer names by an opaque wrapper

    @property
    def recall(self):
        return self.recalled / self.tracer_parks if self.tracer_parks else 1.0

    @property
    def reason_agreement(self):
        return self.same_reason / self.aligned if self.aligned else 1.0

    @property
    def median_duration_diff_ns(self):
        return statistics.median(self.durations) if self.durations else 0

    @property
    def schedule_ratio(self):
        return self.gotel_schedules / self.tracer_schedules if self.tracer_schedules else 1.0

    @property
    def name_agreement(self):
        return self.same_name / self.named if self.named else 1.0

    def line(self):
        return (f"park recall {self.recall:.4f} ({self.recalled}/{self.tracer_parks}, {self.extra} "
                f"extra), wait reasons {self.reason_agreement:.4f} ({self.same_reason}/"
                f"{self.aligned}), median |park duration diff| "
                f"{self.median_duration_diff_ns / 1000:.1f} us over {len(self.durations)}, "
                f"schedules {self.gotel_schedules}/{self.tracer_schedules} "
                f"({self.schedule_ratio:.3f}), start names {self.name_agreement:.4f} "
                f"({self.same_name}/{self.named}, {self.opaque_names} of them by an opaque wrapper), "
                f"zero-length spans {self.zero_length}, "
                f"runtime work {dict(self.internal)}")


def wrappers(binary):
    """Names of every compiler-made wrapper (funcID wrapper) of the binary."""
    tab, sym = binary.pclntab, binary.symbolizer()
    return {tab.name(i) for i in np.flatnonzero(tab.func_ids() == sym.wrapper_func_id).tolist()}


def opaque_wrappers(binary):
    """Names of the binary's compiler-made wrappers (funcID wrapper) that carry no WrapInfo: Go
    1.19-1.21 wrap a closure called with arguments (``go func(x T){...}(v)``) so, and call the
    closure through its context, so what they wrap is known only at run time. Go's tracer of those
    versions names such goroutines by the wrapper (``startPCforTrace`` has nothing to follow);
    ``/debug/pprof/goroutine`` shows the closure, from the stack."""
    from receiver import pclntab as pcln

    tab, sym = binary.pclntab, binary.symbolizer()
    ids = tab.func_ids()
    out = set()
    for i in np.flatnonzero(ids == sym.wrapper_func_id).tolist():
        if tab.funcdata_offset(i, pcln.FUNCDATA_WRAPINFO) is None:
            out.add(tab.name(i))
    return out


def fidelity(trace, view, offset_ns=0, spans=None, opaque=frozenset()):
    """Compare per goroutine created inside the trace window. gotel's parks and schedules after the
    window are cut: by time where the trace relates its clock to CLOCK_MONOTONIC (Go 1.22+), else
    by the tracer's count for goroutines still alive at its end (schedules are compared only for
    goroutines that exited inside the window then). Goroutines the tracer names by an ``opaque``
    wrapper (see ``opaque_wrappers``) are counted in ``opaque_names``: gotel names them so too.
    ``spans`` (SPAN_DTYPE, gotel's decoder output)
    adds the count of zero-length goroutine spans of goroutines that ran (first parts: a CONTINUED
    part begins at a roll-over, and one ended by the end of tracing at that instant has no length)."""
    f = Fidelity(0, 0, 0, 0, 0, [], 0, 0, 0, 0, 0, collections.Counter(), collections.Counter(),
                 view.internal)
    for goid, t in trace.goroutines.items():
        g = view.goroutines.get(goid)
        f.tracer_parks += len(t.parks)
        if g is None:
            continue
        parks, blocked, runs = g.parks, g.blocked, g.schedules
        if trace.mono_end is not None:
            cut = [ts - offset_ns <= trace.mono_end for ts in view.park_times[goid]]
            parks = [r for r, c in zip(parks, cut) if c]
            blocked = [b for b, c in zip(blocked, cut) if c]
            runs = sum(ts - offset_ns <= trace.mono_end for ts in view.run_times[goid])
        elif not t.exited:
            parks, blocked = parks[:len(t.parks)], blocked[:len(t.parks)]
            runs = None
        f.recalled += min(len(parks), len(t.parks))
        f.extra += max(0, len(parks) - len(t.parks))
        if len(parks) == len(t.parks):
            for a, b, da, db in zip(t.parks, parks, t.blocked, blocked):
                f.aligned += 1
                if same_reason(a, b):
                    f.same_reason += 1
                    if da is not None and db is not None:
                        f.durations.append(abs(da - db))
                else:
                    f.reason_mismatches[(a, b)] += 1
        if runs is not None:
            f.tracer_schedules += t.schedules
            f.gotel_schedules += runs
        if t.start in opaque:
            f.opaque_names += 1
        if t.start:
            f.named += 1
            if g.start == t.start:
                f.same_name += 1
            else:
                f.name_mismatches[(t.start, g.start)] += 1
    if spans is not None:
        from pipeline.spans import SpanFlag, SpanKind

        gs = spans[(spans["kind"] == SpanKind.GOROUTINE) & ((spans["flags"] & SpanFlag.CONTINUED) == 0)]
        lived = {goid for goid, t in trace.goroutines.items() if t.schedules}
        zero = gs[(gs["start_ns"] == gs["end_ns"]) & np.isin(gs["goid"], list(lived) or [-1])]
        f.zero_length = int(zero.size)
    return f


GOROUTINE_HEADER = re.compile(r"^goroutine (\d+) \[")


def pprof_start_functions(text):
    """{goid: start function} from ``/debug/pprof/goroutine?debug=2``: the bottom frame of each
    goroutine's stack, as the runtime prints it (wrapper frames elided, inlined frames expanded)."""
    out = {}
    for block in text.split("\n\n"):
        lines = block.strip("\n").splitlines()
        m = GOROUTINE_HEADER.match(lines[0]) if lines else None
        if m is None:
            continue
        frames = [line for line in lines[1:] if line and not line.startswith("\t")
                  and not line.startswith("created by ") and not line.startswith("...")
                  and not line.startswith("runtime.goexit(")]
        if frames:
            last = frames[-1]
            cut = last.rfind("(")
            out[int(m.group(1))] = last[:cut] if cut > 0 and last.endswith(")") else last
    return out
