"""What gotel reports is what happened, goroutine by goroutine, against Go's own tracer, on
tests/go/fidelity: GC stack-scan stops of a spinning goroutine, Gosched loops, GC assists, long
waits across trace roll-overs, split traces, wrapped and inlined start functions.

Per build (Go 1.19, 1.21, 1.25, 1.27; stripped, PIE, race), over the goroutines created inside the
trace window (tests/oracle.py ``fidelity``): park recall >= 99%, wait-reason agreement >= 99%,
median |park duration difference| <= 50 us, schedule count (runnable -> running) within 5%, start
function names equal for >= 99%, no zero-length span for a goroutine that ran. The decoder runs on
the receiver's own batches with small traces (200 spans), so roll-overs and splits happen."""

import numpy as np
import pytest

import oracle
from collect import Collect
from pipeline.decoder import Config, EventDecoder
from pipeline.spans import SpanFlag, SpanKind
from receiver.receiver import run_command

BUILDS = {
    "1.19": ("1.19", ()),
    "1.21": ("1.21", ()),
    "1.25": ("1.25", ()),
    "1.27": ("1.27", ()),
    "1.19-stripped": ("1.19", ("-ldflags=-s -w",)),
    "1.25-stripped": ("1.25", ("-ldflags=-s -w",)),
    "1.25-pie": ("1.25", ("-buildmode=pie",)),
    "1.25-race": ("1.25", ("-race",)),
}
MAX_SPANS = 200


@pytest.mark.bpf
@pytest.mark.slow
@pytest.mark.parametrize("build", list(BUILDS))
def test_gotel_reports_what_the_go_tracer_saw(require_bpf, go_build, tmp_path, build):
    version, flags = BUILDS[build]
    binary = go_build("fidelity", version, flags=flags, cgo="-race" in flags)
    trace_file = tmp_path / "trace.out"
    sink = Collect()
    rx, traced = run_command([binary, "-trace", trace_file], sink, timeout=120)
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout.split() == ["gcspin", "1", "gosched", "2000", "assist", "1", "longwait",
                                     "20", "split", "600", "names", "24"]
    assert rx.lost == 0
    proc = rx.registry.get(rx.command.pid)
    events = sink.events
    mine = [b[b["pid"] == proc.pid].copy() for b in sink.batches]
    decoder = EventDecoder(Config(max_spans_per_trace=MAX_SPANS))
    spans = np.concatenate([decoder.process(b) for b in mine] + [decoder.flush()])

    trace = oracle.go_tool_trace(trace_file)
    view = oracle.from_events(events, proc.binary.layout, proc.pid, oracle.start_names(proc, events))
    f = oracle.fidelity(trace, view, rx.clock.offset_ns, spans,
                         opaque=oracle.opaque_wrappers(proc.binary))
    print(f"\n{build}: {f.line()}")
    assert f.tracer_parks >= 1000, f.line()
    assert f.recall >= 0.99 and f.extra <= 0.01 * f.tracer_parks, f.line()
    assert f.reason_agreement >= 0.99, f.reason_mismatches.most_common(5)
    assert f.median_duration_diff_ns <= 50_000, f.line()
    assert f.tracer_schedules >= 2000 and abs(f.schedule_ratio - 1) <= 0.05, f.line()
    assert f.named >= 600 and f.name_agreement >= 0.99, f.name_mismatches.most_common(5)
    goroutines = spans[spans["kind"] == SpanKind.GOROUTINE]
    zero = goroutines[(goroutines["start_ns"] == goroutines["end_ns"])
                      & ((goroutines["flags"] & SpanFlag.CONTINUED) == 0)]
    assert f.zero_length == 0, [(int(z["goid"]), SpanFlag(int(z["flags"])), trace.goroutines.get(
        int(z["goid"]))) for z in zero]
    if version not in ("1.19", "1.21"):
        # The spinning goroutine was stopped by the GC (Go 1.22+ traces name it "preempted").
        stops = sum(t.parks.count("preempted") for t in trace.goroutines.values())
        assert stops > 0 and f.recall >= 0.99

    # Roll-overs and splits happened; a park open across one keeps its real start and length,
    # and an idle goroutine is not re-emitted at every roll.
    assert decoder.traces_rolled > 0 and decoder.traces_split > 0
    parks = spans[spans["kind"] == SpanKind.PARK]
    long_ = parks[parks["blocked_ns"] >= 250_000_000]
    assert long_.size >= 20
    assert (long_["end_ns"] - long_["start_ns"] == long_["blocked_ns"] + long_["runnable_ns"]).all()
    waiters = [goid for goid, t in trace.goroutines.items() if t.start == "main.longwait.func1"]
    assert len(waiters) == 20
    _, parts = np.unique(goroutines["goid"][np.isin(goroutines["goid"], waiters)],
                         return_counts=True)
    # Its first part, at most two rolls by span count (one while it ran; one more when a roll
    # came between its start and its park, which is then an event of the new part), and one roll
    # by age per max_trace_duration the run lasted (age rolls still re-emit idle goroutines: a
    # slow -race run on a loaded machine outlives 20 s); never one part per roll of its trace.
    lasted_s = (int(spans["end_ns"].max()) - int(spans["start_ns"].min())) / 1e9
    age_rolls = int(lasted_s // Config().max_trace_duration_s)
    assert parts.max() <= 3 + age_rolls, (parts, lasted_s, decoder.traces_rolled)
    # Runtime work is not reported as parking: no park span names a reason the runtime uses for
    # a running goroutine, none is unnamed.
    names = proc.binary.layout.wait_reasons
    reasons = {names[r] if r < len(names) else f"waitReason({r})" for r in np.unique(parks["wait_reason"])}
    assert not reasons & oracle.INTERNAL_WAITS, reasons
    assert not any(r.startswith("waitReason(") for r in reasons), reasons
    assert decoder.runtime_work > 0
    first = goroutines[(goroutines["flags"] & SpanFlag.CONTINUED) == 0]
    assert (first["start_ns"] == first["born_ns"]).all()
