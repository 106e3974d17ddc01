"""TraceParts: how the decoder's goroutine state becomes spans, and how traces stay bounded.

The span side of ``pipeline.decoder.EventDecoder`` (a mixin it inherits; it owns the tables these
methods read and write): trace membership of new goroutines and the spill traces of full ones
(``_join``), span rows of goroutines and parks (``_rows``, ``_goroutine_spans``, ``_parks``, park
events held with their goroutine in park_mode "events"), ending goroutine parts (``_close``,
``_end``) and rolling a trace over (``_roll``). See decoder.py for the rules; everything here is
vectorized over whole arrays of goroutine rows. Not thread-safe: the pipeline thread drives it.
"""

import numpy as np

from pipeline import goroutines as gt
from pipeline.goroutines import bump
from pipeline.ids import predecessor, successor
from pipeline.spans import SpanFlag, SpanKind, empty_spans

_HELD_DTYPE = np.dtype([("row", "<i8"), ("start", "<u8"), ("end", "<u8"), ("blocked", "<u8"),
                        ("runnable", "<u8"), ("wait_reason", "u1")])


class TraceParts:
    """The span-making half of EventDecoder (see the module docstring)."""

    def _join(self, creator_trace, start_ns):
        """(trace, split) for goroutines created by goroutines of traces ``creator_trace``, in
        event order. They join the creator's trace while it has room (``max_spans_per_trace``,
        counting spans emitted and parts open); the rest spill over, in the same order, into the
        full trace's spill trace and, once that has no room either, into new spill traces of
        ``max_spans_per_trace`` goroutines each. Spill traces link to the trace they spilled from;
        one per full trace at a time, so a busy creator does not cost a trace per goroutine."""
        t, cap = self.traces, self._max_spans
        uf, inv = np.unique(creator_trace, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        starts = np.flatnonzero(np.r_[True, inv[order][1:] != inv[order][:-1]])
        rank = np.empty(inv.size, np.int64)
        rank[order] = np.arange(inv.size) - np.repeat(starts, np.diff(np.r_[starts, inv.size]))

        def room(slots):
            return np.maximum(0, cap - t["n_emitted"][slots].astype(np.int64) - t["n_live"][slots])

        room_t = room(uf)
        spill = t["spill"][uf].astype(np.int64) - 1       # -1: none
        ok = spill >= 0
        so = spill[ok]
        ok[ok] = ((t["link_hi"][so] == t["hi"][uf[ok]]) & (t["link_lo"][so] == t["lo"][uf[ok]])
                  & (t["n_live"][so] > 0))
        room_s = np.where(ok, room(np.where(ok, spill, 0)), 0)
        trace = uf[inv].astype(np.int64)
        over = rank - room_t[inv]                        # >= 0: does not fit the creator's trace
        split = over >= 0
        to_spill = split & (over < room_s[inv])
        trace[to_spill] = spill[inv[to_spill]]
        rest = np.flatnonzero(split & ~to_spill)
        if rest.size:
            chunk = (over[rest] - room_s[inv[rest]]) // cap
            n_new = np.zeros(uf.size, np.int64)
            np.maximum.at(n_new, inv[rest], chunk + 1)
            base = np.r_[0, np.cumsum(n_new)[:-1]]
            which = base[inv[rest]] + chunk
            first = np.full(int(n_new.sum()), np.iinfo(np.uint64).max, np.uint64)
            np.minimum.at(first, which, start_ns[rest])
            new = self._new_traces(first.size, first)
            src = np.repeat(uf, n_new)
            t["link_hi"][new] = t["hi"][src]
            t["link_lo"][new] = t["lo"][src]
            grew = np.flatnonzero(n_new)
            t["spill"][uf[grew]] = new[base[grew] + n_new[grew] - 1] + 1
            trace[rest] = new[which]
            self.traces_split += int(first.size)
        return trace, split

    def _new_traces(self, n, start_ns):
        t = self.traces
        slots = t.alloc(n)
        hi, lo = self.ids.trace_ids(n)
        t["hi"][slots] = hi
        t["lo"][slots] = lo
        t["start_ns"][slots] = start_ns
        return slots

    # ---------------------------------------------------------------- span rows
    def _part_start(self, rows):
        """A goroutine span's start: its creation, or for a CONTINUED part the roll-over that began
        it (its trace's start). Never the trace's start otherwise: a goroutine joins a trace (a
        split root its spill trace) at its creation, whatever the trace's first time."""
        g = self.goroutines
        born = g["born_ns"][rows]
        cont = (g["flags"][rows] & SpanFlag.CONTINUED) != 0
        return np.where(cont, np.maximum(born, self.traces["start_ns"][g["trace"][rows]]), born)

    def _rows(self, rows, kind, span_ids, parent_span, start_ns, end_ns, flags):
        """Span rows for goroutines ``rows``: what goroutine and park rows share."""
        g, t = self.goroutines, self.traces
        out = empty_spans(rows.size)
        tr = g["trace"][rows]
        site = g["site"][rows]
        out["trace_hi"] = t["hi"][tr]
        out["trace_lo"] = t["lo"][tr]
        out["span_id"] = span_ids
        out["parent_span_id"] = parent_span
        out["start_ns"] = start_ns
        # A roll-over happens at the batch's latest time; another goroutine's next event may be a
        # little earlier (each CPU's buffer is read in turn), so a part can end "before" it
        # started by that much: such an end is moved up to the start.
        out["end_ns"] = np.maximum(end_ns, start_ns)
        out["goid"] = g["goid"][rows]
        out["parent_goid"] = g["parent_goid"][rows]
        out["start_pc"] = self.sites["start_pc"][site]
        out["create_pc"] = self.sites["create_pc"][site]
        out["pid"] = g["pid"][rows]
        out["kind"] = kind
        out["flags"] = flags
        out["born_ns"] = g["born_ns"][rows]
        return out, tr

    def _goroutine_spans(self, rows, end_ns, flags):
        g, t = self.goroutines, self.traces
        rf = g["flags"][rows]
        out, tr = self._rows(rows, SpanKind.GOROUTINE, g["span_id"][rows], g["parent_span"][rows],
                             self._part_start(rows), end_ns, rf | np.uint16(flags))
        out["n_parks"] = g["n_parks"][rows]
        cont = (rf & SpanFlag.CONTINUED) != 0
        split = ((rf & SpanFlag.SPLIT) != 0) & ~cont
        linked = cont | split
        if linked.any():
            lt = tr[linked]
            out["link_trace_hi"][linked] = t["link_hi"][lt]
            out["link_trace_lo"][linked] = t["link_lo"][lt]
            out["link_span_id"][cont] = predecessor(out["span_id"][cont])
            out["link_span_id"][split] = out["parent_span_id"][split]
            out["parent_span_id"][split] = 0
        return out

    def _park_rows(self, rows, start, end, blocked, runnable, reasons, flags=0):
        # A park keeps its real start, also one that began before its goroutine's part (a park
        # open across a roll-over): OTLP allows a child to start before its parent.
        out, _ = self._rows(rows, SpanKind.PARK, self.ids.span_ids(rows.size),
                            self.goroutines["span_id"][rows], start, end, flags)
        out["blocked_ns"] = blocked
        out["runnable_ns"] = runnable
        out["wait_reason"] = reasons
        return out

    def _parks(self, rows, gid, start, end, blocked, runnable, reasons):
        """Closed park intervals: PARK spans now, or (events mode) held for the goroutine's span."""
        t = self.traces
        if not self._events_mode:
            bump(t["n_emitted"], self.goroutines["trace"][rows])
            return self._park_rows(rows, start, end, blocked, runnable, reasons)
        # Short parks would only use up the goroutine's bound (the filter drops them anyway).
        long_ = blocked + runnable >= np.uint64(self.config.hold_min_park_ns)
        if not long_.all():
            self.park_events_short += int(rows.size - np.count_nonzero(long_))
            rows, gid, start, end = rows[long_], gid[long_], start[long_], end[long_]
            blocked, runnable, reasons = blocked[long_], runnable[long_], reasons[long_]
        # Rank of each park among its goroutine's parks in this batch (rows arrive grouped).
        new = np.ones(rows.size, bool)
        new[1:] = gid[1:] != gid[:-1]
        firsts = np.flatnonzero(new)
        rank = np.arange(rows.size) - firsts[np.cumsum(new) - 1]
        held = self.goroutines["n_held"]
        ok = held[rows].astype(np.int64) + rank < self.config.max_park_events
        room = self.config.max_held_park_events - self._n_held
        ok &= np.cumsum(ok) <= room
        self.park_events_dropped += int(rows.size - np.count_nonzero(ok))
        if ok.any():
            h = np.zeros(np.count_nonzero(ok), _HELD_DTYPE)
            h["row"], h["start"], h["end"] = rows[ok], start[ok], end[ok]
            h["blocked"], h["runnable"], h["wait_reason"] = blocked[ok], runnable[ok], reasons[ok]
            self._held.append(h)
            self._n_held += h.size
            bump(held, rows[ok])
            bump(t["n_emitted"], self.goroutines["trace"][rows[ok]])
        return None

    def _take_held(self, rows):
        """Held park events of these goroutines, as AS_EVENT PARK rows (removed from the hold)."""
        if not self._n_held:
            return None
        held = np.concatenate(self._held) if len(self._held) > 1 else self._held[0]
        mine = np.isin(held["row"], rows)
        if not mine.any():
            self._held = [held]
            return None
        h = held[mine]
        rest = held[~mine]
        self._held = [rest] if rest.size else []
        self._n_held = rest.size
        self.goroutines["n_held"][h["row"]] = 0
        return self._park_rows(h["row"], h["start"], h["end"], h["blocked"], h["runnable"],
                               h["wait_reason"], SpanFlag.AS_EVENT)

    def _close(self, rows, spans):
        """Account goroutine spans being emitted for parts that end now: trace sizes, TRACE_END,
        freeing traces with no open part, and the parts' held park events."""
        t = self.traces
        tr = self.goroutines["trace"][rows]
        bump(t["n_emitted"], tr)
        bump(t["n_live"], tr, -1)
        ended = t["n_live"][tr] == 0
        spans["flags"][ended] |= np.uint16(SpanFlag.TRACE_END)
        done = np.unique(tr[ended])
        held = self._take_held(rows) if self._events_mode else None
        if done.size:
            t.release(done)
        return spans if held is None else np.concatenate([spans, held])

    def _roll(self, slots, now, active_only=False):
        """End open goroutine parts in traces ``slots`` and continue them in new traces: every part
        (a roll by age), or only the parts that had an event since they began (a roll by span
        count, ``active_only``): a goroutine idle since its part began adds nothing to its full
        trace and stays there, so it is not re-emitted at every roll."""
        g, t = self.goroutines, self.traces
        slots = np.asarray(slots, np.int64)
        chosen = np.zeros(t.capacity, bool)
        chosen[slots] = True
        live = g.live_rows()
        rows = live[chosen[g["trace"][live]]]
        if rows.size:
            # A part that began at ``now`` (a goroutine created by the batch's last event) would
            # end with no length: it stays, and rolls next time.
            begun = self._part_start(rows)
            keep = begun < np.uint64(now)
            if active_only:
                keep &= np.maximum(g["t_park"][rows], g["t_other"][rows]) >= begun
            rows = rows[keep]
            slots = np.unique(g["trace"][rows])
        if rows.size == 0:
            return empty_spans()
        self.traces_rolled += int(slots.size)
        spans = self._goroutine_spans(rows, now, 0)
        # Moved parts leave the old trace: once its n_live drops to zero, _close frees it.
        n_live = np.bincount(np.searchsorted(slots, g["trace"][rows]), minlength=slots.size)
        link_hi, link_lo = t["hi"][slots].copy(), t["lo"][slots].copy()
        spans = self._close(rows, spans)
        new = self._new_traces(slots.size, np.full(slots.size, now, np.uint64))
        t["link_hi"][new], t["link_lo"][new] = link_hi, link_lo
        t["n_live"][new] = n_live
        remap = np.zeros(max(t.capacity, chosen.size), np.int64)
        remap[slots] = new
        old_span = g["span_id"][rows]
        g["span_id"][rows] = successor(old_span)
        ps = g["parent_span"][rows]
        # A parent among the parts rolled together is in the same trace, except a SPLIT root's
        # creator, which is in the trace it spilled from.
        inside = (ps != 0) & np.isin(ps, old_span) & ((g["flags"][rows] & SpanFlag.SPLIT) == 0)
        g["parent_span"][rows] = np.where(inside, successor(ps), np.uint64(0))
        g["trace"][rows] = remap[g["trace"][rows]]
        flags = g["flags"][rows] | np.uint16(SpanFlag.CONTINUED)
        g["flags"][rows] = flags & ~np.uint16(SpanFlag.SPLIT)
        g["n_parks"][rows] = 0
        g["n_held"][rows] = 0
        return spans


    def _end(self, rows, now, flag=SpanFlag.ENDED_AT_SHUTDOWN):
        """End goroutine parts ``rows`` without an exit event, at ``now`` (one time, or one per
        row), their open parks with them, all flagged ``flag``; returns the rows to emit."""
        g = self.goroutines
        if rows.size == 0:
            return empty_spans()
        now = np.broadcast_to(np.asarray(now, np.uint64), rows.shape)
        out = []
        st = g["state"][rows]
        open_ = ((st == gt.PARKED) | (st == gt.READY)) & (g["t_park"][rows] > 0)
        pr, end = rows[open_], now[open_]
        if pr.size:
            start = np.minimum(g["t_park"][pr], end)
            readied = g["state"][pr] == gt.READY
            ready = np.clip(np.where(readied, g["t_other"][pr], end), start, end)
            flags = flag | (SpanFlag.AS_EVENT if self._events_mode else 0)
            out.append(self._park_rows(pr, start, end.copy(), ready - start, end - ready,
                                       g["wait_reason"][pr], flags))
        spans = self._goroutine_spans(rows, now.copy(), flag)
        out.append(self._close(rows, spans))
        return np.concatenate(out)
