"""Function calls from function-probe events: entries matched to returns per goroutine, as spans.

Input: ``receiver.funcs.FUNC_EVENT_DTYPE`` records (one per entry probe or RET probe hit) and the
function index of each (``receiver.funcs.AddressMap.lookup``). Output: ``CALL_DTYPE`` rows, one per
finished call, each a span: ``span_id``, ``parent_span_id`` (the enclosing probed call on the same
goroutine, else the goroutine's span when a lookup for it is given, else 0: the root of a trace of
its own), trace ids, start and end.

Matching, per batch, with no per-event Python:

1. Events are keyed by goroutine (pid, goid), never by thread: a goroutine that blocks or yields
   mid-call often returns on another thread.
2. A frame is told apart by ``stack_off`` = g.stack.hi - SP, the same at a call's entry (corrected
   by what the prologue pushed before the probe) and at its RET, even when the runtime has copied
   the stack to grow it. Sorting by (goroutine, stack_off, time), a RET matches the entry just before
   it when both are of the same function: recursion, closures and methods need nothing special.
3. An entry left without its RET either is still running, or was left by a panic (recovered
   further up), ``runtime.Goexit`` or a jump: its frame is gone as soon as the goroutine shows an
   event at the same or a shallower frame. It then ends there, flagged UNWOUND. Open calls carry over
   to the next batch; at goroutine exit (``goroutines_exited``) or at ``flush`` they end, flagged
   ENDED_AT_EXIT or ENDED_AT_SHUTDOWN.
4. Parents: entries and ends of every open or finished call form, per goroutine, a properly nested
   sequence; the parent of a call at depth d is the last call to start before it at depth d-1 (one
   lexsort and one searchsorted). Trace ids flow from roots to leaves by pointer jumping.

A RET without a seen entry (the call began before the probes were attached) is dropped and
counted in ``unmatched_returns``. Cost: ~1.2 M events per CPU second in batches of 16384 (2000
goroutines, calls nested two deep, measured here); the probes themselves cannot produce that many
(see benchmarks/bench_funcs.py). Not thread-safe: one pipeline thread drives it.
"""

import numpy as np

from pipeline.ids import IdGenerator
from receiver.funcs import ENTRY, HAS_STR, NUM_REGS, STR_BYTES

UNWOUND = 1             # left without a RET (panic, Goexit, a jump): ended at the next shallower event
ENDED_AT_EXIT = 2       # still open when its goroutine exited
ENDED_AT_SHUTDOWN = 4   # still open when tracing stopped
MAX_NS = np.uint64(np.iinfo(np.uint64).max)

CALL_DTYPE = np.dtype(
    [
        ("trace_hi", "<u8"),
        ("trace_lo", "<u8"),
        ("span_id", "<u8"),
        ("parent_span_id", "<u8"),   # 0: root
        ("start_ns", "<u8"),
        ("end_ns", "<u8"),
        ("goid", "<u8"),
        ("stack_off", "<u8"),
        ("args", "<u8", (NUM_REGS,)),     # registers at entry (zero unless captured)
        ("results", "<u8", (NUM_REGS,)),  # registers at RET
        ("pid", "<u4"),
        ("function", "<i4"),         # index into the resolved function list
        ("tid_start", "<u4"),
        ("tid_end", "<u4"),
        ("depth", "<u2"),            # 1: outermost probed call on its goroutine
        ("flags", "<u2"),
        ("str_flags", "u1"),         # 1: arg_str copied at entry; 2: result_str copied at the RET
        ("arg_str", "u1", (STR_BYTES,)),
        ("result_str", "u1", (STR_BYTES,)),
    ]
)


def empty_calls(n=0):
    return np.zeros(n, dtype=CALL_DTYPE)


def _group_ids(pid, goid):
    """Dense id per (pid, goid) pair."""
    _, inv = np.unique(np.stack([pid.astype(np.uint64), goid.astype(np.uint64)], 1), axis=0,
                       return_inverse=True)
    return inv.reshape(-1)


class CallMatcher:
    """Turns batches of function events into finished calls (CALL_DTYPE), carrying open calls.

    ``goroutine_span(pid, goid) -> (trace_hi, trace_lo, span_id)`` arrays, when given, makes the
    goroutine's span (from the goroutine decoder) the parent of its outermost calls; a zero span id
    means the goroutine is not traced there."""

    def __init__(self, sp_delta, ids=None, goroutine_span=None):
        self.sp_delta = np.asarray(sp_delta, np.uint64)
        self.ids = ids or IdGenerator()
        self.goroutine_span = goroutine_span
        self.open = empty_calls()
        self.unmatched_returns = 0
        self.unmapped = 0
        self.last_ns = 0

    def process(self, events, function):
        """Finished calls of this batch (and of earlier open ones now known to be finished)."""
        function = np.asarray(function, np.int32)
        keep = function >= 0
        self.unmapped += int((~keep).sum())
        ev, fn = events[keep], function[keep]
        if len(ev):
            self.last_ns = max(self.last_ns, int(ev["ts_ns"].max()))
        is_entry = ev["kind"] == ENTRY
        off = ev["stack_off"].copy()
        off[is_entry] -= self.sp_delta[fn[is_entry]]
        # Working set: open calls carried over (as entries) followed by this batch's events.
        n_open, n = len(self.open), len(ev)
        pid = np.concatenate([self.open["pid"], ev["pid"]])
        goid = np.concatenate([self.open["goid"], ev["goid"]])
        ts = np.concatenate([self.open["start_ns"], ev["ts_ns"]])
        offs = np.concatenate([self.open["stack_off"], off])
        fns = np.concatenate([self.open["function"], fn])
        entry = np.concatenate([np.ones(n_open, bool), is_entry])
        if not len(pid):
            return empty_calls()
        grp = _group_ids(pid, goid)

        # 2. match RETs to entries by (goroutine, frame).
        order = np.lexsort((ts, offs, grp))
        same = np.zeros(len(order), bool)
        same[1:] = (grp[order[1:]] == grp[order[:-1]]) & (offs[order[1:]] == offs[order[:-1]])
        prev_entry = np.zeros(len(order), bool)
        prev_entry[1:] = entry[order[:-1]] & (fns[order[1:]] == fns[order[:-1]])
        is_match = same & prev_entry & ~entry[order]
        ret_idx = order[is_match]
        ent_idx = order[np.flatnonzero(is_match) - 1]
        end = np.full(len(pid), MAX_NS, np.uint64)
        end[ent_idx] = ts[ret_idx]
        ret_of = np.full(len(pid), -1, np.int64)
        ret_of[ent_idx] = ret_idx
        matched_ret = np.zeros(len(pid), bool)
        matched_ret[ret_idx] = True
        self.unmatched_returns += int((~entry & ~matched_ret).sum())

        # 3. entries without their RET: gone at the goroutine's next event at the same or a
        # shallower frame, if any (a loop over these only: panics, Goexit, calls still running).
        flags = np.zeros(len(pid), np.uint16)
        lost = np.flatnonzero(entry & (end == MAX_NS))
        if len(lost):
            torder = np.lexsort((ts, grp))
            tgrp, tts, toff = grp[torder], ts[torder], offs[torder]
            g_lo = np.searchsorted(tgrp, grp[lost], side="left")
            g_hi = np.searchsorted(tgrp, grp[lost], side="right")
            for k, i in enumerate(lost.tolist()):
                lo = g_lo[k] + np.searchsorted(tts[g_lo[k]:g_hi[k]], ts[i], side="right")
                later = np.flatnonzero(toff[lo:g_hi[k]] <= offs[i])
                if len(later):
                    end[i] = tts[lo + later[0]]
                    flags[i] = UNWOUND

        # 4. depth and parents over the entries of the working set.
        ents = np.flatnonzero(entry)
        m = len(ents)
        e_grp, e_start, e_end, e_off = grp[ents], ts[ents], end[ents], offs[ents]
        # Events: starts (+1) and ends (-1); ties: ends first, deeper frames' ends first.
        t = np.concatenate([e_start, e_end])
        typ = np.concatenate([np.ones(m, np.int8), np.zeros(m, np.int8)])
        g2 = np.concatenate([e_grp, e_grp])
        tie = np.concatenate([e_off.astype(np.int64), -e_off.astype(np.int64)])
        who = np.concatenate([np.arange(m), np.arange(m)])
        o = np.lexsort((tie, typ, t, g2))
        delta = np.where(typ[o] == 1, 1, -1).astype(np.int64)
        csum = np.cumsum(delta)
        g_sorted = g2[o]
        first = np.ones(len(o), bool)
        first[1:] = g_sorted[1:] != g_sorted[:-1]
        base = np.maximum.accumulate(np.where(first, np.arange(len(o)), 0))
        depth_all = csum - csum[base] + delta[base]
        starts = typ[o] == 1
        s_pos = np.flatnonzero(starts)
        s_who = who[o][starts]
        depth = np.empty(m, np.int64)
        depth[s_who] = depth_all[starts]
        span = np.concatenate([self.open["span_id"], np.zeros(n, np.uint64)])[ents]
        parent = np.concatenate([self.open["parent_span_id"], np.zeros(n, np.uint64)])[ents]
        thi = np.concatenate([self.open["trace_hi"], np.zeros(n, np.uint64)])[ents]
        tlo = np.concatenate([self.open["trace_lo"], np.zeros(n, np.uint64)])[ents]
        new = np.arange(m) >= n_open
        span[new] = self.ids.span_ids(int(new.sum()))
        # Parent = last start before it in the same goroutine at depth - 1.
        maxd = int(depth.max()) + 2 if m else 2
        key = (e_grp[s_who].astype(np.int64) * maxd + depth[s_who]) * (len(o) + 1) + s_pos
        korder = np.argsort(key, kind="stable")
        skey = key[korder]
        want = (e_grp[s_who].astype(np.int64) * maxd + depth[s_who] - 1) * (len(o) + 1) + s_pos
        pos = np.searchsorted(skey, want, side="left") - 1
        ok = pos >= 0
        ok[ok] = skey[pos[ok]] // (len(o) + 1) == want[ok] // (len(o) + 1)
        parent_who = np.full(m, -1, np.int64)
        has = ok & (depth[s_who] > 1)
        parent_who[s_who[has]] = s_who[korder[pos[has]]]
        fresh = new & (parent_who >= 0)
        parent[fresh] = span[parent_who[fresh]]
        # Roots: the goroutine's span, if traced, else a new trace.
        roots = new & (parent_who < 0)
        if roots.any():
            r = np.flatnonzero(roots)
            hi, lo = self.ids.trace_ids(len(r))
            if self.goroutine_span is not None:
                ghi, glo, gspan = self.goroutine_span(pid[ents[r]], goid[ents[r]])
                traced = gspan != 0
                hi = np.where(traced, ghi, hi)
                lo = np.where(traced, glo, lo)
                parent[r] = np.where(traced, gspan, 0)
            thi[r], tlo[r] = hi, lo
        # Trace ids from roots down (pointer jumping over new calls whose parent is also new).
        up = np.where(fresh, parent_who, -1)
        need = up >= 0
        hop = up.copy()
        for _ in range(64):
            if not need.any():
                break
            src = hop[need]
            done = thi[src] != 0
            idx = np.flatnonzero(need)
            thi[idx[done]], tlo[idx[done]] = thi[src[done]], tlo[src[done]]
            need[idx[done]] = False
            still = idx[~done]
            hop[still] = np.where(up[hop[still]] >= 0, up[hop[still]], hop[still])

        rows = empty_calls(m)
        rows["trace_hi"], rows["trace_lo"], rows["span_id"], rows["parent_span_id"] = thi, tlo, span, parent
        rows["start_ns"], rows["end_ns"], rows["goid"], rows["pid"] = e_start, e_end, goid[ents], pid[ents]
        rows["stack_off"], rows["function"], rows["depth"] = e_off, fns[ents], depth.clip(0, 65535)
        rows["flags"] = np.concatenate([self.open["flags"], np.zeros(n, np.uint16)])[ents] | flags[ents]
        carried = ents < n_open
        rows["tid_start"][carried] = self.open["tid_start"]
        rows["args"][carried] = self.open["args"]
        rows["arg_str"][carried] = self.open["arg_str"]
        rows["str_flags"][carried] = self.open["str_flags"]
        ev_idx = ents[~carried] - n_open
        rows["tid_start"][~carried] = ev["tid"][ev_idx]
        rows["args"][~carried] = ev["regs"][ev_idx]
        rows["arg_str"][~carried] = ev["str"][ev_idx]
        rows["str_flags"][~carried] = (ev["flags"][ev_idx] & HAS_STR) != 0
        r_of = ret_of[ents]
        has_ret = r_of >= 0
        rows["tid_end"][has_ret] = ev["tid"][r_of[has_ret] - n_open]
        rows["results"][has_ret] = ev["regs"][r_of[has_ret] - n_open]
        rows["result_str"][has_ret] = ev["str"][r_of[has_ret] - n_open]
        rows["str_flags"][has_ret] |= np.where((ev["flags"][r_of[has_ret] - n_open] & HAS_STR) != 0, 2, 0
                                               ).astype(np.uint8)
        finished = rows["end_ns"] != MAX_NS
        self.open = rows[~finished]
        return rows[finished]

    def goroutines_exited(self, pid, goid, ts):
        """End the open calls of goroutines that exited (arrays), flagged ENDED_AT_EXIT."""
        if not len(self.open) or not len(pid):
            return empty_calls()
        key = (np.asarray(pid, np.uint64) << np.uint64(40)) ^ np.asarray(goid, np.uint64)
        okey = (self.open["pid"].astype(np.uint64) << np.uint64(40)) ^ self.open["goid"]
        hit = np.isin(okey, key)
        out = self.open[hit].copy()
        when = dict(zip(key.tolist(), np.asarray(ts, np.uint64).tolist()))
        out["end_ns"] = [max(when[k], s) for k, s in zip(okey[hit].tolist(), out["start_ns"].tolist())]
        out["flags"] |= ENDED_AT_EXIT
        self.open = self.open[~hit]
        return out

    def flush(self, now_ns=None):
        """End every open call (ENDED_AT_SHUTDOWN) at now_ns (default: the last event seen)."""
        out = self.open.copy()
        end = np.uint64(now_ns if now_ns is not None else self.last_ns)
        out["end_ns"] = np.maximum(out["start_ns"], end)
        out["flags"] |= ENDED_AT_SHUTDOWN
        self.open = empty_calls()
        return out


# --- summaries: counts and log2 latency histograms per function (bcc funccount / funclatency) ---

HIST_BUCKETS = 64


class FunctionStats:
    """Calls and a log2 histogram of durations (ns) per function (calls that returned; the others
    are counted in ``unfinished``)."""

    def __init__(self, names):
        self.names = list(names)
        k = len(self.names)
        self.calls = np.zeros(k, np.int64)
        self.hist = np.zeros((k, HIST_BUCKETS), np.int64)
        self.total_ns = np.zeros(k, np.int64)
        self.unfinished = np.zeros(k, np.int64)

    def add(self, calls):
        if not len(calls):
            return
        fn = calls["function"]
        done = (calls["flags"] & (UNWOUND | ENDED_AT_EXIT | ENDED_AT_SHUTDOWN)) == 0
        dur = (calls["end_ns"] - calls["start_ns"]).astype(np.int64)
        self.calls += np.bincount(fn, minlength=len(self.names))
        self.unfinished += np.bincount(fn[~done], minlength=len(self.names))
        self.total_ns += np.bincount(fn[done], weights=dur[done], minlength=len(self.names)).astype(np.int64)
        bucket = np.zeros(len(dur), np.int64)
        pos = dur > 0
        bucket[pos] = np.floor(np.log2(dur[pos])).astype(np.int64) + 1
        np.add.at(self.hist, (fn[done], bucket[done].clip(0, HIST_BUCKETS - 1)), 1)

    def reset(self):
        self.__init__(self.names)

    def format_counts(self):
        lines = [f"{'FUNC':<60} {'COUNT':>10}"]
        for i in np.argsort(-self.calls, kind="stable"):
            if self.calls[i]:
                lines.append(f"{self.names[i]:<60} {self.calls[i]:>10}")
        return "\n".join(lines)

    def format_latency(self):
        """bcc funclatency-style log2 histograms, in nanoseconds."""
        out = []
        for i in np.flatnonzero(self.calls):
            h = self.hist[i]
            nz = np.flatnonzero(h)
            if not len(nz):
                continue
            out.append(f"\nFunction = {self.names[i]}  calls {self.calls[i]}, avg "
                       f"{self.total_ns[i] / max(1, h.sum()):.0f} ns"
                       + (f", {self.unfinished[i]} not returned" if self.unfinished[i] else ""))
            out.append(f"{'nsecs':>24}{'':<4}: count     distribution")
            top = h.max()
            for b in range(nz[0], nz[-1] + 1):
                lo = 0 if b == 0 else 1 << (b - 1)
                hi = (1 << b) - 1
                bar = "*" * int(round(40 * h[b] / top))
                out.append(f"{lo:>12} -> {hi:<12}: {h[b]:<9} |{bar:<40}|")
        return "\n".join(out)
