"""Function spans inside ``gotel trace``: each probed call a span in its goroutine's trace.

``receivers::goroutines::functions`` in the YAML (``gotel trace --func PATTERN``) names the
functions. ``FunctionCalls`` is a stage of the goroutines receiver, right after the decoder:

    GoroutineReceiver (poller thread) ─▶ ... ─▶ EventDecoder ─▶ FunctionCalls ─▶ next
                                                 function ring buffer ─┘ (read at each tick)

It attaches ``receiver.funcs`` probes to the receiver's targets *before* the receiver starts (to
the binary's file for every process, keeping only the traced PIDs' events, so that a launched
command is covered from its first instruction). At each ``tick()``, on the poller thread, it reads
the function ring buffer and emits the calls it finished as span rows of kind FUNCTION; goroutine
spans pass through it unchanged. No lock: one thread drives it, as every stage.

Parents: the enclosing probed call on the same goroutine, else the goroutine's current span from
the decoder's table (so a call shows inside its goroutine), else the root of a trace of its own.
Function events are processed one tick after they are read, so that the decoder has seen the
goroutine's creation by then; a goroutine that has exited since is still found among the recent
exits this stage saw pass (``RecentExits``). Calls still open when their goroutine exits end with
it; the rest end at shutdown, flagged.

Metrics: ``gotel.function.calls`` (sum) and ``gotel.function.duration`` (histogram, seconds, log2
bucket bounds) by ``code.function.name``, cumulative since start; ``metrics()`` may be called from
the service's metrics thread (the counters are copied under a lock).
"""

import dataclasses
import threading

import numpy as np

from pipeline import funcs as pf
from pipeline.spans import SpanFlag, SpanKind, empty_spans
from pipeline.stage import Stage
from receiver import funcs as rf
from receiver.clock import MonotonicClock
from receiver.errors import TargetError


@dataclasses.dataclass(frozen=True)
class Config:
    """receivers::goroutines::functions."""

    patterns: tuple = ()                 # globs over Go function names; empty: no function probes
    max_functions: int = rf.DEFAULT_LIMIT
    arguments: bool = False              # record arguments and results as span attributes
    max_held_arguments: int = 65536      # spans whose attributes wait for the encoder, at most

    def validate(self, path="receivers::goroutines::functions"):
        problems = []
        if self.max_functions <= 0:
            problems.append(f"{path}::max_functions must be > 0")
        for p in self.patterns:
            try:
                rf.Pattern.parse(p)
            except rf.FunctionError as e:
                problems.append(f"{path}::patterns: {e}")
        if self.max_held_arguments < 0:
            problems.append(f"{path}::max_held_arguments must be >= 0")
        return problems


def to_span_rows(calls, functions, bias_of):
    """SPAN_DTYPE rows (kind FUNCTION) for CALL_DTYPE rows; ``start_pc`` is the function's entry in
    the process (so exporters name the span by it), ``create_pc`` 0."""
    out = empty_spans(len(calls))
    for name in ("trace_hi", "trace_lo", "span_id", "parent_span_id", "start_ns", "end_ns", "goid", "pid"):
        out[name] = calls[name]
    entries = np.array([f.address for f in functions], np.uint64)
    out["start_pc"] = entries[calls["function"]]
    for pid in np.unique(calls["pid"]).tolist():
        bias = bias_of(pid)
        if bias:
            sel = out["pid"] == pid
            out["start_pc"][sel] += np.uint64(bias)
    out["kind"] = int(SpanKind.FUNCTION)
    flags = np.zeros(len(calls), np.uint16)
    flags[(calls["flags"] & pf.UNWOUND) != 0] |= int(SpanFlag.UNWOUND)
    flags[(calls["flags"] & pf.ENDED_AT_SHUTDOWN) != 0] |= int(SpanFlag.ENDED_AT_SHUTDOWN)
    flags[(calls["flags"] & pf.ENDED_AT_EXIT) != 0] |= int(SpanFlag.UNWOUND)
    flags[calls["parent_span_id"] == 0] |= int(SpanFlag.PARENT_UNSEEN)
    out["flags"] = flags
    out["born_ns"] = calls["start_ns"]
    return out


class RecentExits:
    """The last ``capacity`` goroutines the decoder saw exit: (pid, goid) -> their span and exit time.

    Function events are processed a little later than goroutine events, so a short-lived
    goroutine has often left the decoder's table by the time its calls are matched; its span is
    still found here. A ring of numpy columns, looked up with one sort per batch."""

    def __init__(self, capacity=1 << 16):
        self.capacity = capacity
        self.key = np.zeros(capacity, np.uint64)
        self.cols = {c: np.zeros(capacity, np.uint64) for c in ("hi", "lo", "span", "end")}
        self.n = 0

    @staticmethod
    def keys(pid, goid):
        return (np.asarray(pid, np.uint64) << np.uint64(40)) ^ np.asarray(goid, np.uint64)

    def add(self, spans):
        k = len(spans)
        if not k:
            return
        spans = spans[-self.capacity:]
        at = (self.n + np.arange(len(spans))) % self.capacity
        self.key[at] = self.keys(spans["pid"], spans["goid"])
        for c, src in (("hi", "trace_hi"), ("lo", "trace_lo"), ("span", "span_id"), ("end", "end_ns")):
            self.cols[c][at] = spans[src]
        self.n += len(spans)

    def find(self, pid, goid):
        """Index into the ring of each (pid, goid), -1 where absent (the latest entry wins)."""
        live = min(self.n, self.capacity)
        want = self.keys(pid, goid)
        if not live or not len(want):
            return np.full(len(want), -1, np.int64)
        order = np.argsort(self.key[:live], kind="stable")
        sk = self.key[:live][order]
        pos = np.searchsorted(sk, want, side="right") - 1
        ok = (pos >= 0) & (sk[np.clip(pos, 0, None)] == want)
        return np.where(ok, order[np.clip(pos, 0, None)], -1)


def goroutine_span_lookup(decoder, recent=None):
    """(pid, goid) arrays -> (trace_hi, trace_lo, span_id) of the goroutine's current span in the
    decoder's table, or of its last span if it exited recently (zeros where the goroutine is not
    known). Call under the service lock."""

    def lookup(pid, goid):
        g = decoder.goroutines
        rows = g.lookup(np.asarray(pid, np.uint32), np.asarray(goid, np.uint64))
        known = rows >= 0
        hi = np.zeros(len(rows), np.uint64)
        lo = np.zeros(len(rows), np.uint64)
        span = np.zeros(len(rows), np.uint64)
        if known.any():
            r = rows[known]
            tr = g["trace"][r]
            hi[known], lo[known] = decoder.traces["hi"][tr], decoder.traces["lo"][tr]
            span[known] = g["span_id"][r]
        if recent is not None and not known.all():
            miss = np.flatnonzero(~known)
            at = recent.find(np.asarray(pid)[miss], np.asarray(goid)[miss])
            ok = at >= 0
            hit, at = miss[ok], at[ok]
            hi[hit], lo[hit] = recent.cols["hi"][at], recent.cols["lo"][at]
            span[hit] = recent.cols["span"][at]
        return hi, lo, span

    return lookup


class FunctionCalls(Stage):
    """The stage: see the module docstring. ``attach()`` before the receiver starts."""

    def __init__(self, config, targets, processes, next_stage=None):
        super().__init__(next_stage)
        self.config = config
        self.processes = processes
        self.clock = MonotonicClock()
        self._held = None
        self._lock = threading.Lock()      # guards self.stats against the metrics thread
        self._closed = False
        pids, paths = list(targets.pids), list(targets.paths)
        if not (pids or paths or targets.command):
            raise TargetError("function probes (receivers::goroutines::functions) follow the pids, "
                              "paths or command of the receiver, not discovery rules; name the "
                              "binary with --binary or paths")
        if targets.command:
            import os
            import shutil

            program = shutil.which(targets.command[0])
            if program is None:
                raise TargetError(f"{targets.command[0]}: command not found")
            paths.append(os.path.realpath(program))
        self.filter_pids = not pids
        self.tracer = pf_tracer(config, pids, paths)
        self.matcher = self.tracer.matcher
        self.recent = RecentExits()
        self.stats = {}   # pid -> FunctionStats (metrics are per process: each has its Resource)
        self.values = self.tracer.values if config.arguments else None
        self.held = {}            # span_id -> serialized argument attributes, until encoded
        self.dropped_arguments = 0

    def set_decoder(self, decoder):
        self.matcher.goroutine_span = goroutine_span_lookup(decoder, self.recent)

    # goroutine spans from the decoder
    def process(self, spans):
        # An exit a census found (EXIT_UNSEEN) ends a goroutine's open calls too.
        ended = int(SpanFlag.EXITED | SpanFlag.EXIT_UNSEEN)
        done = (spans["kind"] == int(SpanKind.GOROUTINE)) & ((spans["flags"] & ended) != 0)
        if done.any():
            # Calls still open in them end at the next tick, once the function events up to the
            # exit are read (a RET may still wait in the ring or in the held read).
            self.recent.add(spans[done])
        return spans

    # function events
    def tick(self):
        if not self._closed:
            fresh = self.tracer.reader.read()
            held, self._held = self._held, fresh.copy() if len(fresh) else None
            if held is not None:
                self.emit(self._calls(held))
            self.emit(self._ended_by_exits())
        super().tick()

    def _calls(self, events):
        """Span rows of the calls a batch of function events finished."""
        if self.filter_pids and len(events):
            pids = np.unique(events["pid"])
            known = np.array([p in self.processes for p in pids.tolist()], bool)
            events = events[np.isin(events["pid"], pids[known])]
        if not len(events):
            return empty_spans()
        index = self.tracer._function_index(events)
        self.clock.to_unix(events["ts_ns"])
        return self._rows(self.matcher.process(events, index))

    def _ended_by_exits(self):
        """Calls still open in goroutines that exited before every function event not processed
        yet (the held read): they will not return; they end at the exit, flagged."""
        o = self.matcher.open
        if not len(o):
            return empty_spans()
        at = self.recent.find(o["pid"], o["goid"])
        ok = at >= 0
        if self._held is not None and ok.any():
            horizon = np.uint64(int(self._held["ts_ns"].min()) + self.clock.offset_ns)
            ok[ok] = self.recent.cols["end"][at[ok]] < horizon
        if not ok.any():
            return empty_spans()
        return self._rows(self.matcher.goroutines_exited(o["pid"][ok], o["goid"][ok],
                                                         self.recent.cols["end"][at[ok]]))

    def _rows(self, calls):
        if not len(calls):
            return empty_spans()
        with self._lock:
            for pid in np.unique(calls["pid"]).tolist():
                st = self.stats.get(pid)
                if st is None:
                    st = self.stats[pid] = pf.FunctionStats(self.tracer.names)
                st.add(calls[calls["pid"] == pid])
        if self.values is not None:
            self._hold_arguments(calls)
        return to_span_rows(calls, self.tracer.functions, self._bias)

    def _bias(self, pid):
        proc = self.processes.get(int(pid))
        return proc.pc_bias() if proc is not None else 0

    def flush(self):
        """At shutdown (after the decoder's last spans passed): every function event left, then
        every call still open, ended and flagged."""
        if self._closed:
            return None
        out = []
        for batch in (self._held, self.tracer.reader.read()):
            if batch is not None and len(batch):
                out.append(self._calls(batch.copy()))
        self._held = None
        out.append(self._ended_by_exits())
        out.append(self._rows(self.matcher.flush()))
        self.close()
        return np.concatenate(out)

    def close(self):
        """Remove the probes (idempotent)."""
        if not self._closed:
            self._closed = True
            self.tracer.reader.close()
            self.tracer.probes.close()

    def _hold_arguments(self, calls):
        """Serialize the arguments/results of calls (opt-in: one small dict per call)."""
        from pipeline.exporters.encode import attribute
        from receiver import funcargs

        # Spans a sampler or filter drops are never encoded: the oldest held attributes give way.
        over = len(self.held) + len(calls) - self.config.max_held_arguments
        for _ in range(max(0, over)):
            if not self.held:
                break
            del self.held[next(iter(self.held))]
            self.dropped_arguments += 1
        returned = (calls["flags"] & (pf.UNWOUND | pf.ENDED_AT_EXIT | pf.ENDED_AT_SHUTDOWN)) == 0
        for c, ret in zip(calls, returned.tolist()):
            values = self.values[int(c["function"])]
            if values:
                sf = int(c["str_flags"])
                kv = funcargs.decode(values, c["args"], c["results"] if ret else None,
                                     arg_str=bytes(c["arg_str"]) if sf & 1 else None,
                                     result_str=bytes(c["result_str"]) if ret and sf & 2 else None)
                self.held[int(c["span_id"])] = b"".join(attribute(k, v) for k, v in kv.items())

    def take_arguments(self, span_id):
        """The argument attributes of a FUNCTION span, once (the encoder's extra_attributes; any
        thread: a dict pop)."""
        return self.held.pop(span_id, b"")

    def counters(self):
        c = self.tracer.counters()
        return {"function_events": c["events"], "function_events_lost": c["lost"],
                "function_unmatched_returns": c["unmatched_returns"]}

    # metrics
    def metrics(self, start_ns, now_ns):
        """{pid: [Metric]}: ``gotel.function.calls`` and ``gotel.function.duration`` by
        ``code.function.name``, cumulative since start (call under the lock)."""
        from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
        from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb

        # FunctionStats bucket b holds durations in [2**(b-1), 2**b - 1] ns (bucket 0: 0 ns).
        bounds = [((1 << b) - 1) / 1e9 for b in range(pf.HIST_BUCKETS - 1)]
        out = {}
        with self._lock:
            stats = {pid: (st.names, st.calls.copy(), st.hist.copy(), st.total_ns.copy())
                     for pid, st in self.stats.items()}
        for pid, (names, ncalls, hists, totals) in stats.items():
            calls = pb.Metric(name="gotel.function.calls", unit="{call}",
                              description="Calls of probed Go functions")
            calls.sum.aggregation_temporality = pb.AGGREGATION_TEMPORALITY_CUMULATIVE
            calls.sum.is_monotonic = True
            dur = pb.Metric(name="gotel.function.duration", unit="s",
                            description="Duration of returned calls of probed Go functions, entry to RET")
            dur.histogram.aggregation_temporality = pb.AGGREGATION_TEMPORALITY_CUMULATIVE
            for i in np.flatnonzero(ncalls).tolist():
                attrs = [KeyValue(key="code.function.name", value=AnyValue(string_value=names[i]))]
                calls.sum.data_points.add(attributes=attrs, as_int=int(ncalls[i]),
                                          start_time_unix_nano=start_ns, time_unix_nano=now_ns)
                h = hists[i]
                dur.histogram.data_points.add(
                    attributes=attrs, count=int(h.sum()), sum=float(totals[i]) / 1e9,
                    bucket_counts=h.tolist(), explicit_bounds=bounds,
                    start_time_unix_nano=start_ns, time_unix_nano=now_ns)
            out[pid] = [calls, dur]
        return out


def pf_tracer(config, pids, paths):
    from pipeline.functrace import FunctionTracer

    return FunctionTracer(list(config.patterns), pids=pids, paths=paths, limit=config.max_functions,
                          config=rf.Config(capture_registers=config.arguments))


def add_to_request(request, per_pid, resource_for):
    """Append per-process function metrics to an ExportMetricsServiceRequest (a ResourceMetrics per
    pid: the one already there for that process, else a new one)."""
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope

    by_resource = {rm.resource.SerializeToString(): rm for rm in request.resource_metrics}
    for pid, metrics in per_pid.items():
        resource = resource_for(pid)
        rm = by_resource.get(resource.SerializeToString()) if resource is not None else None
        if rm is None:
            rm = request.resource_metrics.add()
            if resource is not None:
                rm.resource.CopyFrom(resource)
        sm = rm.scope_metrics.add()
        sm.scope.CopyFrom(InstrumentationScope(name="gotel.functions"))
        sm.metrics.extend(metrics)
