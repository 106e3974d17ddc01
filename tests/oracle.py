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
import subprocess

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
}
# Reasons of goroutines the runtime runs for itself: the tracer says "system goroutine wait" (Go
# 1.22+) or "" (older traces) or names the GC phase.
SYSTEM_REASONS = {"", SYSTEM, "GC background sweeper wait", "GC mark assist wait", "forever"}


def trace_reason(wait_reason_name):
    """The tracer's reason for a Go waitReason name; unknown names are system waits."""
    return TRACE_REASON.get(wait_reason_name, SYSTEM)


def same_reason(tracer, gotel_name):
    mapped = trace_reason(gotel_name)
    return mapped == tracer or (mapped == SYSTEM and tracer in SYSTEM_REASONS)


@dataclasses.dataclass
class Goroutine:
    goid: int
    parent: int = None          # creator's goid (None: created outside the window)
    parks: list = dataclasses.field(default_factory=list)   # reasons, in order
    exited: bool = False


@dataclasses.dataclass
class Trace:
    goroutines: dict            # goid -> Goroutine, created inside the window only
    mono_end: int = None        # CLOCK_MONOTONIC ns of the last event (Go 1.22+ traces)


def parse(text):
    """Trace from the text of `go tool trace -d=parsed`."""
    gs, offset, last = {}, None, 0
    for line in text.splitlines():
        if not line.startswith("M="):
            continue
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
        g = gs.get(goid)
        if g is None:
            continue
        if old == "Running" and new == "Waiting":
            g.parks.append(reason)
        elif new == "NotExist":
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


def from_events(events, layout, pid):
    """View of one process from gotel's events (in ring order, ts still monotonic)."""
    events = events[events["pid"] == pid]
    waiting = layout.statuses["_Gwaiting"] & 0xF
    gs, times, internal = {}, {}, collections.Counter()
    open_park = {}                                     # goid -> index in its parks list
    names = layout.wait_reasons
    for e in events.tolist():
        ts, _g, goid, aux, _ps, _pc, _pid, _tid, kind, wr, old, _new, _cpu = e
        if kind == Kind.CREATE:
            gs[goid] = Goroutine(goid, parent=aux)
            times[goid] = []
            continue
        g = gs.get(goid)
        if g is None:
            continue
        if kind == Kind.PARK:
            g.parks.append(names[wr] if wr < len(names) else f"waitReason({wr})")
            times[goid].append(ts)
            open_park[goid] = len(g.parks) - 1
        elif kind == Kind.READY:
            open_park.pop(goid, None)
        elif kind == Kind.RUN and (old & 0xF) == waiting and goid in open_park:
            i = open_park.pop(goid)
            internal[g.parks[i]] += 1
            g.parks[i] = None
        elif kind == Kind.EXIT:
            g.exited = True
    for goid, g in gs.items():
        keep = [i for i, r in enumerate(g.parks) if r is not None]
        g.parks = [g.parks[i] for i in keep]
        times[goid] = [times[goid][i] for i in keep]
    return View(gs, internal, times)


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
        ok = g.parent == t.parent and len(parks) == len(t.parks) and all(
            same_reason(a, b) for a, b in zip(t.parks, parks))
        if ok:
            agreed += 1
        else:
            mismatches.append((goid, t, Goroutine(goid, g.parent, parks, g.exited)))
    return Comparison(len(trace.goroutines), agreed, mismatches, view.internal)

