"""EventDecoder: goroutine status transitions (EVENT_DTYPE) in, goroutine and park spans out.

Per batch, with no per-event Python loop:

1. Unknown kinds, and times that are zero or more than a minute ahead of the wall clock, are
   dropped and counted; stack copies carry no lifecycle meaning and are ignored.
2. A stable sort by ``ts_ns``. The reader's array is in order per CPU only (one buffer per CPU,
   read one after another; receiver/eventbuf.py); stable, so that records with equal timestamps
   keep the order they were written in, which on one CPU is the order they happened in.
3. A second stable sort groups events by goroutine (pid, goid) keeping time order inside a group.
   The live-goroutine table (goroutines.py) is touched once per distinct goroutine: one vectorized
   lookup, one insert of the goroutines first seen in the batch, one delete of those that exited.
4. The state machine runs as shifts and forward fills inside groups: for each event, the state,
   last park time, last other-transition time and wait reason *before* it come from the previous
   event of its goroutine, or from the table for the group's first event. A RUN that follows an open
   park and its ready (``_Grunning -> _Gwaiting -> _Grunnable``) closes a park span. A RUN straight
   from waiting is RUNTIME WORK, not a wait: the runtime lets the GC treat a goroutine running
   runtime code on the system stack as stopped (stop-the-world, GC assists and mark work, the
   tracer's status dumps) and sets it back to running itself; Go's tracer shows it Running. It
   makes no park span and no park metric point; it is counted by the reason its RUN read
   (``runtime_work_by``: Go 1.19 sets the reason only after the status change).
5. Goroutine spans are emitted at exit, when their trace is rolled over, and at ``flush()``.

Spans: one per goroutine, parent = its creator's span in the creator's trace. A creator that gotel
has no state for (created before attach and not synthesized as EXISTING) makes the goroutine the
root of a new trace, with PARENT_UNSEEN and the creator's goid in ``parent_goid``. Events of a
goroutine never seen create its state lazily (STARTED_BEFORE_ATTACH | PARENT_UNSEEN). Park intervals
are child spans of the goroutine span, or with ``park_mode="events"`` PARK rows flagged AS_EVENT,
held with their goroutine (at most ``max_park_events`` per goroutine part and
``max_held_park_events`` in all; later ones are dropped and counted; parks shorter than
``hold_min_park_ns`` are not held) and emitted in the same batch as its span.

Trace bounds: a creator whose trace holds ``max_spans_per_trace`` spans (emitted plus still open)
gives its new goroutines a new trace (SPLIT roots, each linked to its creator's span; they share
a spill trace per full trace until it fills up in turn; see ``_join``), counted goroutine by
goroutine, also within a batch. A trace that reaches the
bound through parks, or grows older than ``max_trace_duration_s``, is rolled over: every goroutine
part still open in it is ended (its span emitted, TRACE_END) and continues as a CONTINUED span in
one new trace, parent relations among them kept, each linked to its previous part. A trace rolls
over by span count only once its emitted spans are at least its open parts, so a trace holds at most
about twice the bound (plus one batch of overshoot, since bounds are checked once per batch); by
age, checked every ``sweep_interval_s`` of event time, a trace lives at most the duration plus the
interval. A roll by span count moves only the parts that had an event since they began: an idle
goroutine adds nothing to a full trace and is not re-emitted at every roll (a roll by age moves
all). A park still open at a roll-over ends up in the new part with its real start (before the
part's), so its span and ``blocked_ns``/``runnable_ns`` give its true length. A goroutine span
starts at its creation; only a CONTINUED part starts at its roll-over. A roll-over happens at the latest time
of its batch; an event of a rolled goroutine that comes later but carries an earlier time (records
of different CPUs interleave) is dated to the new part's start, off by at most that interleaving.

How goroutine state becomes span rows, trace membership, roll-over and the end of goroutine parts
are in ``pipeline/traceparts.py`` (``TraceParts``, which this class inherits).

Goroutines that exit unseen: between windows of full tracing (at the census level, or lifecycle
with its probes off under a budget) no probe sees an exit, so a goroutine held from an earlier
window would stay in the table for good, be re-emitted as a CONTINUED part at every roll-over by
age, and be ended at ``flush()`` as if alive then. Each window opens with a census of the process
(receiver/existing.py): EXISTING events numbered with the census (``tid``), then one CENSUS event
at its time T saying the list is complete. After the batch's events, before roll-overs, a
goroutine the decoder holds for that process that is on neither this list nor a later one of the
batch and has no event at or after T exited between its last sign of life and T: its span (and
an open park) ends at the last time it is known alive, its last event or the previous census
(which listed it, or it would have ended there), whichever is later, flagged EXIT_UNSEEN, and its
state is freed (counted in ``exits_unseen``; its lifetime is not recorded, as it is not known).
Events of those goroutines that arrive later (from before T, still in the kernel's buffers then) are
dropped as after their exit. Identity is (pid, goid): the runtime gives every new goroutine a
fresh goid (``newproc1``; only an extra M's g keeps its goid across cgo callbacks, and it is dead,
so off the list, between them), while g structs are reused: a reused g is a new goid, so a new
span, never the old one continued.

Runtime metrics (``metrics.GoRuntimeMetrics``) are fed here, from every event, before any filter or
sampler sees a span.

Cost: about a hundred numpy operations per batch, plus one step per level of goroutines created by
goroutines created in the same batch; no per-event Python. Throughput is row 3 of
benchmarks/RESULTS.md (``make bench``). Memory: ~93 bytes per live goroutine plus 52 per live trace
(goroutines.py; row 5, and ``pytest -s tests/pipeline/test_decoder.py -k million``). Not
thread-safe: one pipeline thread drives it.
"""

import time
import dataclasses
from dataclasses import dataclass

import numpy as np

from pipeline import goroutines as gt
from pipeline.goroutines import GoroutineTable, RowStore, SiteTable, TRACE_COLUMNS, bump
from pipeline.ids import IdGenerator
from pipeline.spans import SPAN_DTYPE, SpanFlag, empty_spans
from pipeline.stage import Stage
from pipeline.traceparts import TraceParts
from receiver.events import DECODED_STATUSES, Kind

PARK_MODES = ("spans", "events")
_SCAN = 0x1000
# Raw Go statuses that EXISTING and SYSCALL_EXIT events carry (checked per target at attach).
_G_RUNNABLE, _G_RUNNING, _G_SYSCALL, _G_WAITING, _G_PREEMPTED = (
    DECODED_STATUSES[n] for n in ("_Grunnable", "_Grunning", "_Gsyscall", "_Gwaiting", "_Gpreempted"))

# State a goroutine is in after an event of each kind (EXISTING and SYSCALL_EXIT refined below).
_STATE_AFTER = np.full(256, gt.UNKNOWN, np.uint8)
_STATE_AFTER[[Kind.CREATE, Kind.RUN, Kind.PARK, Kind.READY, Kind.EXIT, Kind.SYSCALL_ENTER,
              Kind.SYSCALL_EXIT, Kind.PREEMPT]] = [gt.RUNNABLE, gt.RUNNING, gt.PARKED, gt.READY,
                                                   gt.DEAD, gt.SYSCALL, gt.RUNNING, gt.RUNNABLE]
_EXISTING_STATE = np.full(1 << 16, gt.RUNNING, np.uint8)
_EXISTING_STATE[[_G_RUNNABLE, _G_RUNNING, _G_SYSCALL, _G_WAITING, _G_PREEMPTED]] = [
    gt.RUNNABLE, gt.RUNNING, gt.SYSCALL, gt.PARKED, gt.RUNNABLE]
_NS = 1_000_000_000
_FUTURE_NS = 60 * _NS


@dataclass(frozen=True)
class Config:
    park_mode: str = "spans"              # "spans": PARK child spans; "events": span events
    max_park_events: int = 64             # park_mode "events": per goroutine part
    # park_mode "events": shorter parks are not held
    hold_min_park_ns: int = dataclasses.field(default=100_000, metadata={"duration": "ns"})
    max_held_park_events: int = 262_144   # park_mode "events": held for all open goroutines
    max_spans_per_trace: int = 2000       # a trace holds at most ~2x this; Tempo caps at 5 MB
    # below Tempo's ~30 s live-trace window
    max_trace_duration_s: float = dataclasses.field(default=20.0, metadata={"duration": "s"})
    # how often (event time) trace ages are checked
    sweep_interval_s: float = dataclasses.field(default=1.0, metadata={"duration": "s"})
    initial_capacity: int = 4096          # live goroutines before the first growth

    def validate(self, path="decoder"):
        """Every problem with this config, as 'path::field ...' strings (empty when valid)."""
        problems = []
        if self.park_mode not in PARK_MODES:
            problems.append(f"{path}::park_mode must be one of {', '.join(PARK_MODES)}, "
                            f"got {self.park_mode!r}")
        if not 1 <= self.max_park_events <= 255:
            problems.append(f"{path}::max_park_events must be in 1..255")
        if self.hold_min_park_ns < 0:
            problems.append(f"{path}::hold_min_park_ns must be >= 0")
        if self.max_held_park_events < 0:
            problems.append(f"{path}::max_held_park_events must be >= 0")
        if self.max_spans_per_trace < 2:
            problems.append(f"{path}::max_spans_per_trace must be >= 2")
        if not self.max_trace_duration_s > 0:
            problems.append(f"{path}::max_trace_duration_s must be > 0")
        if not self.sweep_interval_s > 0:
            problems.append(f"{path}::sweep_interval_s must be > 0")
        if self.initial_capacity < 1:
            problems.append(f"{path}::initial_capacity must be >= 1")
        return problems


def _before_after(setter, values, seed, first, group_start):
    """Forward fill within groups. after[i]: value of the last setter at or before i in i's group,
    else the group's seed; before[i]: the same strictly before i."""
    n = setter.size
    pos = np.where(setter, np.arange(n), -1)
    np.maximum.accumulate(pos, out=pos)
    after = np.where(pos >= group_start, values[np.maximum(pos, 0)], seed)
    before = np.empty_like(after)
    before[1:] = after[:-1]
    before[first] = seed[first]
    return before, after


def _group_order(pid, goid):
    """The stable sort of positions by (pid, goid): each goroutine's events together, in the order
    they had. Packs (pid rank, goid offset, position) into one unique 64-bit key where it fits, so
    a fast unstable sort gives the stable order; else falls back to a stable lexsort."""
    n = pid.size
    pos_bits = n.bit_length()
    g = goid - goid.min()
    g_bits = int(g.max()).bit_length()
    if pid[0] == pid.min() == pid.max():
        key, k_bits = g, g_bits
    else:
        _, rank = np.unique(pid, return_inverse=True)
        key = (rank.astype(np.uint64) << np.uint64(g_bits)) | g
        k_bits = int(rank.max()).bit_length() + g_bits
    if k_bits + pos_bits <= 64:
        return np.argsort((key << np.uint64(pos_bits)) | np.arange(n, dtype=np.uint64))
    return np.lexsort((goid, pid))


class EventDecoder(TraceParts, Stage):
    """Turns event batches into span batches, keeping the state of every live goroutine."""

    COUNTERS = ("dropped_bad_kind", "dropped_bad_time", "dropped_out_of_order",
                "dropped_duplicate_create", "dropped_after_exit", "ignored_stack_copy",
                "park_events_dropped", "park_events_short", "lazily_created", "traces_split",
                "traces_rolled", "runtime_work", "exits_unseen")

    def __init__(self, config=Config(), next_stage=None, metrics=None, ids=None):
        super().__init__(next_stage, config)
        self.metrics = metrics
        self.ids = ids or IdGenerator()
        self.goroutines = GoroutineTable(config.initial_capacity)
        self.traces = RowStore(TRACE_COLUMNS, 1024)
        self.sites = SiteTable()
        self.runtime_work_by = {}  # (pid, wait reason) -> (count, ns): see RUNTIME_WORK
        self._held = []           # _HELD_DTYPE arrays (park_mode "events")
        self._n_held = 0
        self._now = self._stop_ns = 0    # last event's time; when tracing stops (stop_at)
        self._next_sweep = 0
        self._max_spans = config.max_spans_per_trace
        self._max_age = int(config.max_trace_duration_s * _NS)
        self._sweep = int(config.sweep_interval_s * _NS)
        self._events_mode = config.park_mode == "events"
        self._ended_unseen = {}   # pid -> goids the last census ended (their late events dropped)
        self._census_ns = {}      # pid -> time of the last census applied

    @property
    def live_goroutines(self):
        return len(self.goroutines)

    @property
    def nbytes(self):
        """Memory held for live state: goroutines, traces, sites, held park events."""
        held = sum(h.nbytes for h in self._held)
        return (self.goroutines.nbytes + self.traces.nbytes + self.sites.rows.nbytes
                + self.sites.index.nbytes + held)

    # ---------------------------------------------------------------- the batch
    def process(self, events):
        if len(events) == 0:
            return empty_spans()
        kind, ts = events["kind"], events["ts_ns"]
        good = (kind >= Kind.CREATE) & (kind <= Kind.EXISTING)
        stack = kind == Kind.STACK_COPY
        # A time from the future (or zero) would drag the decoder's clock along: bad data.
        sane = (ts > 0) & (ts < np.uint64(time.time_ns() + _FUTURE_NS))
        out = []
        census = kind == Kind.CENSUS
        self.dropped_bad_kind += int(events.size - np.count_nonzero(good | census))
        self.dropped_bad_time += int(np.count_nonzero(good & ~sane))
        self.ignored_stack_copy += int(np.count_nonzero(stack))
        keep = good & sane & ~stack
        ev = events if keep.all() else events[keep]
        # Applied after this batch's events (its EXISTING events among them), before roll-overs.
        censuses = self._censuses(events[census & sane], events[(kind == Kind.EXISTING)
                                                                 & (events["tid"] != 0)]) \
            if census.any() else []
        if ev.size == 0:
            return self._join_out(self._apply_censuses(censuses))

        # 2, 3: time order, then goroutine groups (both stable: see the module docstring).
        order = np.argsort(ev["ts_ns"], kind="stable")
        order = order[_group_order(ev["pid"][order], ev["goid"][order])]
        e = {name: ev[name][order] for name in
             ("ts_ns", "pid", "goid", "kind", "aux_goid", "pc_start", "pc_create", "wait_reason",
              "new_status")}
        if census.any():
            e["tid"] = ev["tid"][order]     # census EXISTING events of known goroutines: no dups
        e = self._drop_bad(e)
        if e["ts_ns"].size:
            out += self._transitions(e)
        out += self._apply_censuses(censuses)
        now = self._now
        if now >= self._next_sweep:
            self._next_sweep = now + self._sweep
            t = self.traces
            live = t.live_rows()
            old = live[(t["n_live"][live] > 0) & (t["start_ns"][live] + np.uint64(self._max_age)
                                                  <= np.uint64(now))]
            if old.size:
                out.append(self._roll(old, now))
        return self._join_out(out)

    @staticmethod
    def _join_out(out):
        out = [o for o in out if len(o)]
        if not out:
            return empty_spans()
        return out[0] if len(out) == 1 else np.concatenate(out)

    # ---------------------------------------------------------------- goroutines that exit unseen
    @staticmethod
    def _censuses(ends, listed):
        """[(pid, time, goids listed)] of a batch's censuses (CENSUS events ``ends``, their
        EXISTING events among ``listed``), oldest first."""
        out = []
        for pid, number, at in zip(ends["pid"].tolist(), ends["tid"].tolist(),
                                   ends["ts_ns"].tolist()):
            mine = listed[(listed["pid"] == pid) & (listed["tid"] == number)]
            out.append((pid, at, np.unique(mine["goid"])))
        return sorted(out, key=lambda c: c[1])

    def _apply_censuses(self, censuses):
        out = []
        ended = {}
        for i, (pid, at, _) in enumerate(censuses):
            # On a later census of the batch: alive at this one's time too, whatever its event
            # times say (an EXISTING event is dated by g.waitsince, as coarse as GC cycles).
            listed = np.concatenate([goids for p, _, goids in censuses[i:] if p == pid])
            spans, gone = self._apply_census(pid, at, listed)
            out.append(spans)
            ended.setdefault(pid, []).append(gone)
        for pid, gone in ended.items():
            gone = np.concatenate(gone)
            if gone.size:
                self._ended_unseen[pid] = gone
        return out

    def _apply_census(self, pid, at, listed):
        """End the goroutines of process pid that a census at ``at`` listing ``listed`` shows
        exited unseen (module docstring) and free their state; returns (spans, their goids)."""
        g = self.goroutines
        live = g.live_rows()
        rows = live[g["pid"][live] == pid]
        born = g["born_ns"][rows]
        last = np.maximum(born, np.maximum(g["t_park"][rows], g["t_other"][rows]))
        gone = ~np.isin(g["goid"][rows], listed) & (last < np.uint64(at))
        previous = np.uint64(self._census_ns.get(pid, 0))
        self._census_ns[pid] = max(at, int(previous))
        rows, born, last = rows[gone], born[gone], last[gone]
        if rows.size == 0:
            return empty_spans(), np.zeros(0, np.uint64)
        # Alive at the previous census: listed there, or it would have been ended then.
        end = np.where(born <= previous, np.maximum(last, previous), last)
        self.exits_unseen += int(rows.size)
        if self.metrics is not None:
            self.metrics.record_exit(g["pid"][rows], self.sites["start_pc"][g["site"][rows]],
                                     end - born, np.zeros(rows.size, bool))
        spans = self._end(rows, end, SpanFlag.EXIT_UNSEEN)
        goids = g["goid"][rows].copy()
        g.delete(rows)
        return spans, goids

    def _groups(self, e):
        n = e["ts_ns"].size
        first = np.ones(n, bool)
        first[1:] = (e["pid"][1:] != e["pid"][:-1]) | (e["goid"][1:] != e["goid"][:-1])
        starts = np.flatnonzero(first)
        gid = np.cumsum(first) - 1
        return first, starts, gid

    def _drop_bad(self, e):
        """Drop what cannot be applied: times before the goroutine's last known transition, a second
        creation of a known goroutine, anything after its exit. Sets e["row"] (-1: not yet
        known)."""
        g = self.goroutines
        first, starts, gid = self._groups(e)
        rows_u = g.lookup(e["pid"][starts], e["goid"][starts])
        row = rows_u[gid]
        kind, ts = e["kind"], e["ts_ns"]
        known = row >= 0
        rk = row[known]
        stale = np.zeros(ts.size, bool)
        stale[known] = ts[known] < np.maximum(g["t_park"][rk], g["t_other"][rk])
        creation = (kind == Kind.CREATE) | (kind == Kind.EXISTING)
        dup = creation & (known | ~first)
        listed = dup & (e["tid"] != 0) if "tid" in e else None
        exits = kind == Kind.EXIT
        pos = np.where(exits, np.arange(ts.size), -1)
        np.maximum.accumulate(pos, out=pos)
        after_exit = np.zeros(ts.size, bool)
        after_exit[1:] = pos[:-1] >= starts[gid[1:]]
        if self._ended_unseen:
            # A late event (from before the census, still in the ring then) of a goroutine a
            # census ended: applied, it would make a new span of a goroutine that is gone.
            for pid, goids in self._ended_unseen.items():
                late = (rows_u < 0) & (e["pid"][starts] == pid) & np.isin(e["goid"][starts], goids)
                after_exit |= late[gid]
        bad = stale | dup | after_exit
        if bad.any():
            self.dropped_out_of_order += int(np.count_nonzero(stale))
            self.dropped_duplicate_create += int(np.count_nonzero(dup & ~stale)) - (
                0 if listed is None else int(np.count_nonzero(listed & ~stale)))
            self.dropped_after_exit += int(np.count_nonzero(after_exit & ~stale & ~dup))
            ok = ~bad
            e = {k: v[ok] for k, v in e.items()}
            row = row[ok]
        e["row"] = row
        return e

    def _transitions(self, e):
        g = self.goroutines
        ts, kind = e["ts_ns"], e["kind"]
        n = ts.size
        self._now = max(self._now, int(ts.max()))
        first, starts, gid = self._groups(e)
        row_u = e["row"][starts]
        new_u = np.flatnonzero(row_u < 0)
        if new_u.size:
            row_u[new_u] = self._new_goroutines(e, starts[new_u])
        row = row_u[gid]
        group_start = starts[gid]
        last = np.empty_like(starts)
        last[:-1] = starts[1:] - 1
        last[-1] = n - 1

        status = e["new_status"] & ~np.uint16(_SCAN)
        state_after = _STATE_AFTER[kind]
        existing = kind == Kind.EXISTING
        state_after[existing] = _EXISTING_STATE[status[existing]]
        sysexit = kind == Kind.SYSCALL_EXIT
        state_after[sysexit & (status == _G_RUNNABLE)] = gt.RUNNABLE
        parks = (kind == Kind.PARK) | (existing & (state_after == gt.PARKED))

        seed_state = g["state"][row]
        prev_state = np.empty_like(seed_state)
        prev_state[1:] = state_after[:-1]
        prev_state[first] = seed_state[first]
        seed_open = ((seed_state == gt.PARKED) | (seed_state == gt.READY)).astype(np.uint8)
        open_before, open_after = _before_after(
            kind != Kind.READY, parks.astype(np.uint8), seed_open, first, group_start)
        park_before, park_after = _before_after(parks, ts, g["t_park"][row], first, group_start)
        other_before, other_after = _before_after(~parks, ts, g["t_other"][row], first, group_start)
        reason_before, reason_after = _before_after(
            parks, e["wait_reason"], g["wait_reason"][row], first, group_start)

        runs = kind == Kind.RUN
        out = []
        metrics = self.metrics
        # Runnable -> running: the scheduling latency.
        sched = runs & ((prev_state == gt.RUNNABLE) | (prev_state == gt.READY)) & (other_before > 0)
        if metrics is not None and sched.any():
            metrics.record_schedule(e["pid"][sched], ts[sched] - other_before[sched])
        # A run that ends an open park: one park interval. A park that ends by running again
        # without a ready in between was runtime work, not a wait (see RUNTIME_WORK).
        closes = np.flatnonzero(runs & (open_before == 1) & (park_before > 0))
        work_rows = closes
        if closes.size:
            readied = prev_state[closes] == gt.READY
            work = closes[~readied]
            work_rows = row[work]
            if work.size:
                self._runtime_work(e["pid"][work], e["wait_reason"][work],
                                   ts[work] - park_before[work])
            closes = closes[readied]
        if closes.size:
            start = park_before[closes]
            end = ts[closes]
            ready = other_before[closes]
            blocked = ready - start
            reasons = reason_before[closes]
            if metrics is not None:
                metrics.record_park(e["pid"][closes], reasons, blocked)
            parks_out = self._parks(row[closes], gid[closes], start, end, blocked, end - ready,
                                    reasons)
            if parks_out is not None:
                out.append(parks_out)

        # Write the state after each goroutine's last event back to the table.
        rl = row[last]
        st = state_after[last]
        st[(st == gt.READY) & (open_after[last] == 0)] = gt.RUNNABLE
        g["state"][rl] = st
        g["t_park"][rl] = park_after[last]
        g["t_other"][rl] = other_after[last]
        g["wait_reason"][rl] = reason_after[last]
        n_parks = np.add.reduceat((kind == Kind.PARK).astype(np.uint32), starts)
        g["n_parks"][rl] += n_parks
        if work_rows.size:
            wr, cnt = np.unique(work_rows, return_counts=True)
            g["n_parks"][wr] = np.maximum(g["n_parks"][wr].astype(np.int64) - cnt, 0)

        exits = np.flatnonzero(kind == Kind.EXIT)
        if exits.size:
            xr = row[exits]
            spans = self._goroutine_spans(xr, ts[exits], SpanFlag.EXITED)
            if metrics is not None:
                born = g["born_ns"][xr]
                known = (g["flags"][xr] & SpanFlag.STARTED_BEFORE_ATTACH) == 0
                metrics.record_exit(e["pid"][exits], self.sites["start_pc"][g["site"][xr]],
                                    ts[exits] - born, known)
            out.append(self._close(xr, spans))
            g.delete(xr)

        # Traces that reached their span bound through this batch roll over.
        if self.traces.live:
            touched = np.unique(g["trace"][rl[st != gt.DEAD]])
            t = self.traces
            em, lv = t["n_emitted"][touched], t["n_live"][touched]
            full = touched[(em + lv >= self._max_spans) & (em >= lv) & (lv > 0)]
            if full.size:
                out.append(self._roll(full, self._now, active_only=True))
        return out

    def _runtime_work(self, pid, reasons, ns):
        """Count runtime work that passed as a park: (pid, wait reason read at its end) -> count, ns."""
        self.runtime_work += int(pid.size)
        key = (pid.astype(np.uint64) << np.uint64(8)) | reasons.astype(np.uint64)
        uk, inv = np.unique(key, return_inverse=True)
        counts = np.bincount(inv, minlength=uk.size)
        total = np.bincount(inv, weights=ns.astype(np.float64), minlength=uk.size)
        for k, c, t in zip(uk.tolist(), counts.tolist(), total.tolist()):
            n, sum_ns = self.runtime_work_by.get((k >> 8, k & 0xFF), (0, 0))
            self.runtime_work_by[(k >> 8, k & 0xFF)] = (n + c, sum_ns + int(t))

    # ---------------------------------------------------------------- goroutines first seen
    def _new_goroutines(self, e, at):
        """Create state for goroutines whose first event in the batch is at indexes ``at``."""
        g, t = self.goroutines, self.traces
        pid, goid, kind = e["pid"][at], e["goid"][at], e["kind"][at]
        k = at.size
        rows = g.insert(pid, goid)
        creation = (kind == Kind.CREATE) | (kind == Kind.EXISTING)
        zero = np.zeros(k, np.uint64)
        sites = self.sites.intern(np.where(creation, e["pc_start"][at], zero),
                                  np.where(creation, e["pc_create"][at], zero))
        parent_goid = np.where(creation, e["aux_goid"][at], zero)
        flags = np.zeros(k, np.uint16)
        flags[kind == Kind.EXISTING] = np.uint16(SpanFlag.STARTED_BEFORE_ATTACH)
        lazy = ~creation
        flags[lazy] = np.uint16(SpanFlag.STARTED_BEFORE_ATTACH | SpanFlag.PARENT_UNSEEN)
        self.lazily_created += int(np.count_nonzero(lazy))
        span_ids = self.ids.span_ids(k)
        g["born_ns"][rows] = e["ts_ns"][at]
        g["site"][rows] = sites
        g["parent_goid"][rows] = parent_goid
        g["span_id"][rows] = span_ids
        g["state"][rows] = gt.UNKNOWN
        if self.metrics is not None:
            self.metrics.record_new(pid, self.sites["start_pc"][sites], kind == Kind.CREATE)

        # Creators: known before this batch (old), created in it (new, resolved below), or unseen.
        prow = np.full(k, -1, np.int64)
        if creation.any():
            c = np.flatnonzero(creation & (parent_goid != 0))
            prow[c] = g.lookup(pid[c], parent_goid[c])
        prow[prow == rows] = -1
        by_row = np.argsort(rows)
        pos = np.searchsorted(rows[by_row], prow)
        pos = np.minimum(pos, k - 1)
        in_batch = (prow >= 0) & (rows[by_row][pos] == prow)
        anc = np.where(in_batch, by_row[pos], -1)
        old = (prow >= 0) & ~in_batch
        trace = np.full(k, -1, np.int64)
        parent_span = np.zeros(k, np.uint64)
        has_parent = prow >= 0
        parent_span[has_parent] = g["span_id"][prow[has_parent]]
        ts = e["ts_ns"][at]
        root = ~has_parent
        flags[root & creation & (parent_goid != 0)] |= np.uint16(SpanFlag.PARENT_UNSEEN)
        need = np.flatnonzero(root)
        if need.size:
            trace[need] = self._new_traces(need.size, ts[need])
            g["trace"][rows[need]] = trace[need]
            bump(t["n_live"], trace[need])
        # Then level by level: goroutines whose creator already has its trace join it (or spill
        # over, see _join), so a chain of creations inside one batch is bounded like any other.
        level = old
        for _ in range(256):
            li = np.flatnonzero(level)
            if li.size:
                # A SPLIT root keeps its creator's span in parent_span: emitted as its link.
                trace[li], split = self._join(g["trace"][prow[li]], ts[li])
                flags[li[split]] |= np.uint16(SpanFlag.SPLIT)
                g["trace"][rows[li]] = trace[li]
                bump(t["n_live"], trace[li])
            level = (trace < 0) & (anc >= 0)
            level[level] = trace[anc[level]] >= 0
            if not level.any():
                break
        cyclic = np.flatnonzero(trace < 0)      # bad data: a creation cycle
        if cyclic.size:
            flags[cyclic] |= np.uint16(SpanFlag.PARENT_UNSEEN)
            parent_span[cyclic] = 0
            trace[cyclic] = self._new_traces(cyclic.size, ts[cyclic])
            bump(t["n_live"], trace[cyclic])
        g["trace"][rows] = trace
        g["parent_span"][rows] = parent_span
        g["flags"][rows] = flags
        return rows

    # ---------------------------------------------------------------- shutdown
    def stop_at(self, now_ns):
        """When tracing stops (Unix ns; control thread): ``flush`` ends open goroutines then."""
        self._stop_ns = int(now_ns)

    def flush(self):
        """End every goroutine still open (ENDED_AT_SHUTDOWN), with its open park; forget all."""
        g = self.goroutines
        spans = self._end(g.live_rows(), max(self._now, self._stop_ns))
        self._census_ns, self._ended_unseen = {}, {}
        self.goroutines = GoroutineTable(self.config.initial_capacity)
        self.traces = RowStore(TRACE_COLUMNS, 1024)
        self._held, self._n_held = [], 0
        return spans

    def end_process(self, pid, now_ns=None):
        """End the open goroutines of a process that exited (ENDED_AT_SHUTDOWN, at ``now_ns`` or the
        last event time) and free their state; returns their spans for the caller to forward.
        Without this, a process that dies leaves its goroutines in the table until ``flush()``."""
        self._ended_unseen.pop(pid, None)
        self._census_ns.pop(pid, None)
        g = self.goroutines
        live = g.live_rows()
        rows = live[g["pid"][live] == pid]
        spans = self._end(rows, self._now if now_ns is None else max(int(now_ns), 0))
        g.delete(rows)
        return spans

def create(config=Config(), next_stage=None, metrics=None):
    return EventDecoder(config, next_stage, metrics=metrics)


__all__ = ["Config", "EventDecoder", "SPAN_DTYPE", "create"]
