"""Goroutines that exit between windows of full tracing (pipeline/decoder.py, "Goroutines that
exit unseen"), on a real Go program traced at the census level with short windows. The program's
own record (each round's goids, when they had all parked and when they were released to exit) is
the oracle."""

import numpy as np

from collect import Sink
from pipeline import decoder
from pipeline.spans import SpanFlag, SpanKind
from receiver.events import Kind
from receiver.receiver import run_command

ROUNDS, SPAWN = 8, 200


def _rounds(stdout):
    """{goid: (parked Unix ns, released Unix ns)} from the program's "round" lines."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("round "):
            f = line.split()
            parked, released = int(f[3]), int(f[5])
            out.update({int(g): (parked, released) for g in f[7].split(",")})
    return out


def test_goroutines_that_exit_between_windows_end_and_are_freed(require_bpf, go_build):
    """Census level, 0.3 s windows every second, rounds of 200 goroutines that park for 0.75 s
    and exit: those seen in a window and gone by the next one's census end there, flagged
    exit_unseen, no later than their release (the program's clock), never re-emitted as
    continued parts or ended at shutdown; the decoder's table holds about one round, not all of
    them; a g struct the runtime reused for a new goroutine gives that goroutine its own span."""
    binary = go_build("levels", "1.25")
    sink = Sink()
    rx, done = run_command([binary, "churn", str(ROUNDS), str(SPAWN), "12"], sink, timeout=120,
                           level="census", window_s=0.3, period_s=1.0)
    assert done.returncode == 0 and "churned" in done.stdout
    truth = _rounds(done.stdout)
    assert len(truth) == ROUNDS * SPAWN
    assert rx.levels.status()[0]["windows"] >= 8
    events = np.concatenate(sink.batches)
    assert (events["kind"] == Kind.CENSUS).sum() >= 8

    # Rolling traces over every second would re-emit a goroutine held after its exit.
    spans_out, live = [], []
    dec = decoder.create(decoder.Config(max_trace_duration_s=1.0, sweep_interval_s=0.25))
    for batch in sink.batches:
        spans_out.append(dec.process(batch))
        live.append(dec.live_goroutines)
    held_at_end = dec.live_goroutines
    spans_out.append(dec.flush())
    spans = np.concatenate(spans_out)
    goroutine = spans[spans["kind"] == SpanKind.GOROUTINE]
    parts = goroutine[np.isin(goroutine["goid"], list(truth))]
    parts = parts[np.lexsort((parts["start_ns"], parts["goid"]))]
    last = np.r_[parts["goid"][1:] != parts["goid"][:-1], True]
    churn = parts[last]               # each goroutine's final part (earlier ones rolled over)
    flags = churn["flags"]
    assert len(churn) >= SPAWN        # the windows saw several rounds
    ending = SpanFlag.EXITED | SpanFlag.EXIT_UNSEEN | SpanFlag.ENDED_AT_SHUTDOWN
    assert not (parts["flags"][~last] & ending).any()
    unseen = (flags & SpanFlag.EXIT_UNSEEN) != 0
    exited = (flags & SpanFlag.EXITED) != 0
    at_end = (flags & SpanFlag.ENDED_AT_SHUTDOWN) != 0
    assert (unseen.astype(int) + exited + at_end == 1).all()
    # Only goroutines that lived past the last census can be held until the end.
    last_census = int(events["ts_ns"][events["kind"] == Kind.CENSUS].max())
    assert all(truth[g][1] > last_census for g in churn["goid"][at_end].tolist())
    assert unseen.sum() >= SPAWN and exited.sum() >= 1, (unseen.sum(), exited.sum())
    assert dec.exits_unseen == unseen.sum()
    # Ended when last known alive: not after the goroutine was released to exit (its exit comes
    # after the release; allow the print's few microseconds), and the goroutines a window saw
    # exit ended at their exit, after their release. No part of one begins after its release
    # (a goroutine held after its exit would be continued at every roll-over).
    released = np.array([truth[g][1] for g in churn["goid"].tolist()], np.uint64)
    assert (churn["end_ns"][unseen] <= released[unseen] + 2_000_000).all()
    assert (churn["end_ns"][exited] >= released[exited]).all()
    assert (churn["end_ns"] >= churn["start_ns"]).all()
    assert all(int(s["start_ns"]) <= truth[int(s["goid"])][1] + 2_000_000 for s in parts)
    # Parks open at an unseen exit end with it, flagged too.
    parks = spans[(spans["kind"] == SpanKind.PARK) & np.isin(spans["goid"], churn["goid"][unseen])]
    end_of = dict(zip(churn["goid"].tolist(), churn["end_ns"].tolist()))
    assert all(p["end_ns"] <= end_of[int(p["goid"])] for p in parks)

    # State does not grow across windows: at most about two rounds plus the runtime's own.
    assert max(live) < 2 * SPAWN + 50, max(live)
    assert held_at_end < at_end.sum() + 50, held_at_end

    # g structs are reused by new goroutines (new goids): each goid its own span, the old one
    # ended before the new one began.
    known = events[(events["kind"] == Kind.EXISTING) & np.isin(events["goid"], list(truth))]
    by_g = {}
    for g, goid in zip(known["g"].tolist(), known["goid"].tolist()):
        by_g.setdefault(g, set()).add(goid)
    reused = {g: goids for g, goids in by_g.items() if len(goids) > 1}
    assert reused
    first = parts[np.r_[True, parts["goid"][1:] != parts["goid"][:-1]]]
    span_of = {int(s["goid"]): s for s in first}
    for goids in reused.values():
        ordered = sorted((span_of[g] for g in goids if g in span_of), key=lambda s: s["start_ns"])
        for a, b in zip(ordered, ordered[1:]):
            assert a["span_id"] != b["span_id"] and end_of[int(a["goid"])] <= b["start_ns"]
