"""SummaryTap and Summary: the end-of-run report of ``gotel trace`` and ``gotel demo``.

``SummaryTap`` is a pass-through stage placed right after the decoder, before any filter or sampler,
so the report counts every goroutine and park, not just the exported ones. It keeps only small
aggregates, per (pid, start PC) and per (pid, wait reason), plus the few longest parks, updated with
vectorized numpy group-bys per batch. ``Summary.render()`` names them through ``names``
(``receiver.processes.Processes``: ``function(pid, pc)``, ``wait_reason(pid, number)``).

Not thread-safe: the pipeline thread updates it; render it after shutdown.
"""

import collections
import heapq

import numpy as np

from pipeline import overhead
from pipeline.goroutines import unique_pairs
from pipeline.spans import SpanFlag, SpanKind
from pipeline.stage import Stage

LONGEST = 5


class SummaryTap(Stage):
    """Counts goroutines and parks by start function and wait reason; forwards every batch."""

    def __init__(self, next_stage=None):
        super().__init__(next_stage)
        self.created = collections.Counter()      # (pid, start_pc) -> goroutines created
        self.started_before = 0                   # alive when gotel attached
        self.exited = 0
        self.alive_at_end = 0
        self.park_count = collections.Counter()   # (pid, wait_reason) -> parks
        self.park_ns = collections.Counter()      # (pid, wait_reason) -> total parked ns
        self.longest = []                         # heap of (ns, pid, wait_reason, start_pc, goid)
        self.spans = 0
        self.pids = set()

    def process(self, batch):
        if not len(batch):
            return batch
        self.spans += len(batch)
        self.pids.update(np.unique(batch["pid"]).tolist())
        kind, flags = batch["kind"], batch["flags"]
        goroutine = kind == SpanKind.GOROUTINE
        first_part = goroutine & ((flags & SpanFlag.CONTINUED) == 0)
        before = (flags & SpanFlag.STARTED_BEFORE_ATTACH) != 0
        self.started_before += int(np.count_nonzero(first_part & before))
        born = batch[first_part & ~before]
        self._count(self.created, born["pid"], born["start_pc"], np.ones(len(born), np.int64))
        self.exited += int(np.count_nonzero(goroutine & ((flags & SpanFlag.EXITED) != 0)))
        self.alive_at_end += int(np.count_nonzero(
            goroutine & ((flags & SpanFlag.ENDED_AT_SHUTDOWN) != 0) & ((flags & SpanFlag.EXITED) == 0)))
        parks = batch[kind == SpanKind.PARK]
        if len(parks):
            # A park's length is blocked + runnable: its span may be a piece of it only when its
            # trace rolled over while it was open (then the piece is all that is new).
            dur = (parks["blocked_ns"] + parks["runnable_ns"]).astype(np.int64)
            self._count(self.park_count, parks["pid"], parks["wait_reason"], np.ones(len(parks), np.int64))
            self._count(self.park_ns, parks["pid"], parks["wait_reason"], dur)
            top = np.argsort(dur)[-LONGEST:]
            for i in top.tolist():
                item = (int(dur[i]), int(parks["pid"][i]), int(parks["wait_reason"][i]),
                        int(parks["start_pc"][i]), int(parks["goid"][i]))
                if len(self.longest) < LONGEST:
                    heapq.heappush(self.longest, item)
                elif item > self.longest[0]:
                    heapq.heapreplace(self.longest, item)
        return batch

    @staticmethod
    def _count(counter, a, b, weights):
        if not len(a):
            return
        ua, ub, inverse = unique_pairs(a, b)   # PCs of a PIE need all 64 bits
        sums = np.bincount(inverse, weights=weights, minlength=len(ua))
        for x, y, total in zip(ua.tolist(), ub.tolist(), sums.tolist()):
            counter[(x, y)] += int(total)


class Summary:
    """The report: a SummaryTap's aggregates plus what the service knows (lost events, outputs)."""

    def __init__(self, tap, names=None, lost_events=0, events=0, outputs=(), exported=None,
                 processes=(), top=10, levels=None, dropped=None, anomalies_kept=0,
                 runtime_work=None):
        self.tap = tap
        self.names = names
        self.lost_events = lost_events
        self.events = events
        self.outputs = list(outputs)
        self.exported = dict(exported or {})
        self.processes = list(processes)
        self.top = top
        self.levels = levels          # receiver.levels.LevelController, or None
        self.dropped = dict(dropped or {})            # processor -> spans dropped on purpose
        self.anomalies_kept = anomalies_kept
        self.runtime_work = dict(runtime_work or {})  # (pid, wait reason) -> (count, ns)
        self.census_lines = []     # goruntime receivers: leaks and biggest groups

    @classmethod
    def of(cls, service):
        """The report of a Service that ran (``pipeline.service.Service``): what its receiver
        saw and lost, what each exporter sent, what the processors dropped on purpose."""
        sent = {}
        for signal, item, eids in (("traces", "spans", service.traces_exporters),
                                   ("metrics", "metric_points", service.metrics_exporters)):
            for eid in eids:
                c = service.exporters[eid].counters
                s = sent.setdefault(f"{signal} ({eid})", [0, 0])
                s[0] += c.get(f"sent_{item}", signal)
                s[1] += c.get(f"send_failed_{item}", signal) + c.get(f"enqueue_failed_{item}", signal)
        for eid in {e for p in service.config.pipelines_for("logs") for e in p.exporters}:
            c = service.exporters[eid].counters
            sent[f"logs ({eid})"] = (c.get("sent_log_records", "logs"), c.get(
                "send_failed_log_records", "logs") + c.get("enqueue_failed_log_records", "logs"))
        source = getattr(service.receiver, "source", None)
        # What processors dropped on purpose, per processor (pipeline/processor id), and the
        # anomalies the samplers kept although their traces were dropped.
        dropped, anomalies = {}, 0
        for pipeline_id, pid, stage in service.processors:
            n = stage.items_in - stage.items_out
            if n > 0:
                dropped[f"{pipeline_id}/{pid}"] = n
            anomalies += getattr(stage, "anomalies_kept", 0)
        decoder = getattr(service.receiver, "decoder", None)
        summary = cls(service.tap, service.processes, lost_events=getattr(source, "refused", 0),
                      events=getattr(source, "events", 0), outputs=service.output_paths(),
                      exported={k: tuple(v) for k, v in sent.items()},
                      processes=list(service.processes), levels=getattr(source, "levels", None),
                      dropped=dropped, anomalies_kept=anomalies,
                      runtime_work=getattr(decoder, "runtime_work_by", {}))
        summary.census_lines = [line for c in service.census_receivers for line in c.summary_lines()]
        return summary

    def _function(self, pid, pc):
        if self.names is None or not pc:
            return f"0x{pc:x}" if pc else "?"
        return self.names.function(pid, pc) or f"0x{pc:x}"

    def _reason(self, pid, number):
        return self.names.wait_reason(pid, number) if self.names else f"waitReason({number})"

    def top_functions(self):
        by_name = collections.Counter()
        for (pid, pc), n in self.tap.created.items():
            by_name[self._function(pid, pc)] += n
        return by_name.most_common(self.top)

    def top_wait_reasons(self):
        count, total = collections.Counter(), collections.Counter()
        for (pid, reason), n in self.tap.park_count.items():
            name = self._reason(pid, reason)
            count[name] += n
            total[name] += self.tap.park_ns[(pid, reason)]
        return [(name, count[name], ns) for name, ns in total.most_common(self.top)]

    def top_runtime_work(self):
        count, total = collections.Counter(), collections.Counter()
        for (pid, reason), (n, ns) in self.runtime_work.items():
            # Go 1.19 sets no reason for some of this work (stop-the-world): the g's last one shows.
            name = self._reason(pid, reason) or "(no reason set)"
            count[name] += n
            total[name] += ns
        return [(name, count[name], ns) for name, ns in total.most_common(self.top)]

    def render(self):
        t = self.tap
        created = sum(t.created.values())
        lines = ["gotel summary"]
        for proc in self.processes:
            lines.append(f"  process     {proc}")
        lines.append(f"  goroutines  {created} created, {t.exited} exited, {t.alive_at_end} still "
                     f"alive at the end, {t.started_before} alive when tracing began")
        if self.events:
            lost = f", {self.lost_events} lost" if self.lost_events else ", none lost"
            lines.append(f"  events      {self.events} received{lost}")
        elif self.lost_events:
            lines.append(f"  events      {self.lost_events} lost")
        top = self.top_functions()
        if top:
            lines.append("  top start functions (goroutines created)")
            width = max(len(str(n)) for _, n in top)
            lines += [f"    {n:>{width}}  {name}" for name, n in top]
        reasons = self.top_wait_reasons()
        if reasons:
            lines.append("  parks by wait reason (count, total time parked)")
            width = max(len(str(n)) for _, n, _ in reasons)
            lines += [f"    {n:>{width}}  {_fmt_ns(ns):>9}  {name}" for name, n, ns in reasons]
        work = self.top_runtime_work()
        if work:
            lines.append("  runtime work that is not waiting (count, total time; no park spans)")
            width = max(len(str(n)) for _, n, _ in work)
            lines += [f"    {n:>{width}}  {_fmt_ns(ns):>9}  {name}" for name, n, ns in work]
        if t.longest:
            lines.append("  longest parks")
            for ns, pid, reason, pc, goid in sorted(t.longest, reverse=True):
                lines.append(f"    {_fmt_ns(ns):>9}  {self._reason(pid, reason)}  pid {pid} goroutine "
                             f"{goid} ({self._function(pid, pc)})")
        spans = f"  spans       {t.spans} made"
        if self.dropped:
            spans += ", " + ", ".join(f"{n} dropped by {name}" for name, n in sorted(self.dropped.items()))
            if self.anomalies_kept:
                spans += f" ({self.anomalies_kept} anomalies kept from dropped traces)"
        else:
            spans += ", none sampled or filtered away"
        lines.append(spans)
        if self.levels is not None:
            for unit in self.levels.status():
                lines.append(f"  cost        {overhead.describe(unit)}")
            if self.levels.triggers:
                lines.append("  triggers    " + ", ".join(
                    f"{reason} x{n}" for reason, n in sorted(self.levels.triggers.items())))
        if self.census_lines:
            lines.append("  goroutine census (last one)")
            lines += self.census_lines
        for signal, (sent, failed) in sorted(self.exported.items()):
            lines.append(f"  exported    {signal}: {sent} sent" + (f", {failed} failed" if failed else ""))
        for path in self.outputs:
            lines.append(f"  wrote       {path}")
        return "\n".join(lines)


def _fmt_ns(ns):
    if ns >= 1e9:
        return f"{ns / 1e9:.2f}s"
    if ns >= 1e6:
        return f"{ns / 1e6:.1f}ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f}us"
    return f"{ns}ns"
