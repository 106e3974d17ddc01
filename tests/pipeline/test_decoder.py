"""EventDecoder: goroutine transitions in, a well-formed span tree out."""

import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import gosim
from gosim import CHAN_RECEIVE, SELECT, events
from pipeline import decoder
from pipeline.decoder import Config, EventDecoder
from pipeline.ids import predecessor
from pipeline.metrics import GoRuntimeMetrics
from pipeline.spans import SPAN_DTYPE, SpanFlag, SpanKind
from pipeline.stage import Stage
from receiver.errors import ConfigError
from receiver.events import EVENT_DTYPE, Kind

C, R, P, Y, X, E = Kind.CREATE, Kind.RUN, Kind.PARK, Kind.READY, Kind.EXIT, Kind.EXISTING
MS = 1_000_000


def run(ev, config=Config(), batch=None, metrics=None, flush=True):
    d = EventDecoder(config, metrics=metrics)
    out = [d.process(b) for b in (gosim.batches(ev, batch) if batch else [ev])]
    if flush:
        out.append(d.flush())
    return d, np.concatenate(out) if out else np.zeros(0, SPAN_DTYPE)


def one(spans, **where):
    m = np.ones(len(spans), bool)
    for k, v in where.items():
        m &= spans[k] == v
    assert m.sum() == 1, (where, m.sum())
    return spans[m][0]


def assert_tree(spans):
    """Every parent reference resolves to a goroutine span of the same trace; ids are unique and
    non-zero; children start no earlier than... their times are ordered."""
    real = spans[(spans["flags"] & SpanFlag.AS_EVENT) == 0]
    assert (real["span_id"] != 0).all()
    assert np.unique(real["span_id"]).size == real.size
    assert ((real["trace_hi"] != 0) | (real["trace_lo"] != 0)).all()
    assert (spans["start_ns"] <= spans["end_ns"]).all()
    g = real[real["kind"] == SpanKind.GOROUTINE]
    known = {(int(h), int(l), int(s)) for h, l, s in zip(g["trace_hi"], g["trace_lo"], g["span_id"])}
    for row in spans[spans["parent_span_id"] != 0]:
        assert (int(row["trace_hi"]), int(row["trace_lo"]), int(row["parent_span_id"])) in known, row


def test_goroutine_lifecycle_gives_span_and_park_children():
    ev = events([
        (0, 1, E, 0),                                # main, alive at attach
        (10, 10, C, 1), (20, 10, R),                 # go worker()
        (30, 10, P, 0, CHAN_RECEIVE), (130, 10, Y), (150, 10, R),
        (200, 10, P, 0, SELECT), (400, 10, R),       # resumed without ready (GC path)
        (500, 10, X),
    ])
    d, spans = run(ev)
    assert_tree(spans)
    main = one(spans, goid=1, kind=SpanKind.GOROUTINE)
    w = one(spans, goid=10, kind=SpanKind.GOROUTINE)
    assert main["flags"] == SpanFlag.STARTED_BEFORE_ATTACH | SpanFlag.ENDED_AT_SHUTDOWN | SpanFlag.TRACE_END
    assert w["parent_span_id"] == main["span_id"] and w["parent_goid"] == 1
    assert (w["trace_hi"], w["trace_lo"]) == (main["trace_hi"], main["trace_lo"])
    assert w["start_ns"] - gosim.T0 == 10 and w["end_ns"] - gosim.T0 == 500
    assert w["flags"] & SpanFlag.EXITED and w["n_parks"] == 1
    assert w["start_pc"] == 0x1001 and w["create_pc"] == 0x2001
    parks = spans[spans["kind"] == SpanKind.PARK]
    parks = parks[np.argsort(parks["start_ns"])]
    assert (parks["parent_span_id"] == w["span_id"]).all()
    assert [(int(p["start_ns"] - gosim.T0), int(p["end_ns"] - gosim.T0), int(p["blocked_ns"]),
             int(p["runnable_ns"]), int(p["wait_reason"])) for p in parks] == [
        (30, 150, 100, 20, CHAN_RECEIVE)]
    # Resumed without a ready: runtime work, not a wait (counted, no span).
    assert d.runtime_work == 1 and d.runtime_work_by == {(100, 0): (1, 200)}
    assert d.live_goroutines == 0


def test_unseen_creator_starts_a_new_trace():
    ev = events([(10, 20, C, 7), (11, 21, C, 7), (12, 20, R), (13, 20, X), (14, 21, R), (15, 21, X)])
    _, spans = run(ev)
    a, b = one(spans, goid=20), one(spans, goid=21)
    for s in (a, b):
        assert s["parent_span_id"] == 0 and s["parent_goid"] == 7
        assert s["flags"] & SpanFlag.PARENT_UNSEEN
        assert s["flags"] & SpanFlag.TRACE_END
    assert a["trace_lo"] != b["trace_lo"]


def test_events_of_unknown_goroutines_create_state_lazily():
    ev = events([(10, 30, R), (20, 30, P, 0, CHAN_RECEIVE), (40, 30, Y), (50, 30, R), (60, 30, X)])
    d, spans = run(ev)
    g = one(spans, goid=30, kind=SpanKind.GOROUTINE)
    assert g["flags"] & SpanFlag.STARTED_BEFORE_ATTACH and g["flags"] & SpanFlag.PARENT_UNSEEN
    assert g["start_ns"] - gosim.T0 == 10
    assert one(spans, kind=SpanKind.PARK)["blocked_ns"] == 20
    assert d.lazily_created == 1


def test_bad_data_is_dropped_and_counted():
    d = EventDecoder()
    ev = events([(10, 40, C, 1), (20, 40, R), (30, 40, P, 0, CHAN_RECEIVE)])
    bad = np.concatenate([ev, ev])[:4]
    bad["kind"] = [0, 200, R, R]
    bad["ts_ns"][2:] = [0, time.time_ns() + 3600 * 10**9]
    d.process(np.concatenate([ev, bad]))
    assert d.dropped_bad_kind == 2 and d.dropped_bad_time == 2
    # Older than what the goroutine already did, a second creation, events after the exit.
    late = events([(25, 40, Y), (31, 40, C, 1), (35, 40, Y), (40, 40, R), (50, 40, X), (60, 40, R)])
    spans = d.process(late)
    assert d.dropped_out_of_order == 1
    assert d.dropped_duplicate_create == 1
    assert d.dropped_after_exit == 1
    g = one(spans, goid=40, kind=SpanKind.GOROUTINE)
    assert g["end_ns"] - gosim.T0 == 50
    assert one(spans, kind=SpanKind.PARK)["blocked_ns"] == 5
    assert d.process(np.zeros(0, EVENT_DTYPE)).size == 0


def test_goroutines_created_in_one_batch_by_each_other_share_the_trace():
    rows = [(0, 1, E, 0)]
    for depth in range(2, 40):     # 1 creates 2 creates 3 ... all in one batch
        rows += [(depth * 10, depth, C, depth - 1), (depth * 10 + 1, depth, R)]
    _, spans = run(events(rows))
    assert_tree(spans)
    by_goid = {int(s["goid"]): s for s in spans}
    assert np.unique(spans["trace_lo"]).size == 1
    for goid in range(2, 40):
        assert by_goid[goid]["parent_span_id"] == by_goid[goid - 1]["span_id"]


def test_creation_cycles_in_bad_data_do_not_hang():
    ev = events([(0, 5, E, 6), (1, 6, E, 5)])
    _, spans = run(ev)
    assert spans.size == 2 and (spans["parent_span_id"] == 0).all()


def _canonical(spans):
    """Span rows without their random ids, to compare decodings of one stream."""
    by_span = {int(s["span_id"]): int(s["goid"]) for s in spans}
    return sorted((int(s["goid"]), int(s["kind"]), int(s["start_ns"]), int(s["end_ns"]),
                   by_span.get(int(s["parent_span_id"]), -1), int(s["blocked_ns"]),
                   int(s["runnable_ns"]), int(s["wait_reason"]), int(s["flags"]))
                  for s in spans)


@pytest.mark.parametrize("mode", ["spans", "events"])
@settings(max_examples=10, deadline=None)
@given(st.integers(1, 5000), st.integers(0, 2**32))
def test_any_batching_and_cpu_interleaving_gives_the_same_spans(mode, batch, seed):
    ev, truth = gosim.workload(300, parks=2, seed=seed, spread_ns=5 * MS, cpus=4)
    main = events([(0, 1, E, 0)])
    ev = np.concatenate([main, ev])
    config = Config(park_mode=mode, hold_min_park_ns=0)
    whole = _canonical(run(np.sort(ev, order="ts_ns"), config)[1])
    d, spans = run(ev, config, batch=batch)
    assert _canonical(spans) == whole
    assert sum(d.counters().values()) == d.runtime_work == truth["direct"]
    assert_tree(spans)
    assert (spans["kind"] == SpanKind.GOROUTINE).sum() == truth["n"] + 1
    assert (spans["kind"] == SpanKind.PARK).sum() == truth["parks"]


def assert_links(spans):
    """CONTINUED parts link to the goroutine's previous part; SPLIT roots to their creator."""
    by_id = {int(s["span_id"]): s for s in spans}
    for s in spans[(spans["flags"] & SpanFlag.CONTINUED) != 0]:
        prev = by_id[int(s["link_span_id"])]
        assert prev["goid"] == s["goid"] and prev["end_ns"] == s["start_ns"]
        assert (prev["trace_hi"], prev["trace_lo"]) == (s["link_trace_hi"], s["link_trace_lo"])
    for s in spans[(spans["flags"] & SpanFlag.SPLIT) != 0]:
        creator = by_id[int(s["link_span_id"])]
        assert creator["goid"] == s["parent_goid"] and s["parent_span_id"] == 0


def test_trace_span_bound_rolls_and_splits():
    ev, truth = gosim.workload(1000, parks=1, seed=3, spread_ns=50 * MS)
    ev = np.concatenate([events([(0, 1, E, 0)]), ev])
    d, spans = run(ev, Config(max_spans_per_trace=100), batch=512)
    assert_tree(spans)
    assert_links(spans)
    assert d.traces_rolled > 0
    sizes = np.unique(spans["trace_lo"], return_counts=True)[1]
    assert sizes.max() <= 2 * 100 + 512
    assert (spans["kind"] == SpanKind.GOROUTINE).sum() >= 1001


def test_creator_with_a_full_trace_gives_new_goroutines_new_traces():
    first = [(0, 1, E, 0)] + [(10 + i, 100 + i, C, 1) for i in range(150)]
    more = [(1000 + i, 300 + i, C, 1) for i in range(10)]
    d = EventDecoder(Config(max_spans_per_trace=100))
    d.process(events(first))        # main and 99 children fill main's trace, even in one batch
    d.process(events(more))
    spans = d.flush()
    assert d.traces_split == 1                     # the other 61 share one spill trace
    assert_tree(spans)
    assert_links(spans)
    main = one(spans, goid=1)
    assert (spans["trace_lo"] == main["trace_lo"]).sum() == 100
    split = spans[(spans["flags"] & SpanFlag.SPLIT) != 0]
    assert sorted(split["goid"]) == list(range(199, 250)) + list(range(300, 310))
    assert (split["link_span_id"] == main["span_id"]).all()
    assert (split["link_trace_lo"] == main["trace_lo"]).all()
    assert np.unique(split["trace_lo"]).size == 1 and split["trace_lo"][0] != main["trace_lo"]


def test_long_lived_goroutine_continues_in_linked_traces():
    rows = [(0, 1, E, 0), (MS, 50, C, 1), (2 * MS, 50, R)]
    t = 2 * MS
    for i in range(60):            # a ticker loop: 60 parks of one second each
        rows += [(t + 1000, 50, P, 0, 19), (t + 1000 + 1000 * MS, 50, Y), (t + 2000 + 1000 * MS, 50, R)]
        t += 1000 * MS + 2000
    rows += [(t + 10, 50, X)]
    d, spans = run(events(rows), Config(max_trace_duration_s=20, sweep_interval_s=1), batch=6)
    assert_tree(spans)
    parts = spans[(spans["kind"] == SpanKind.GOROUTINE) & (spans["goid"] == 50)]
    parts = parts[np.argsort(parts["start_ns"])]
    assert 3 <= parts.size <= 4
    for prev, cur in zip(parts[:-1], parts[1:]):
        assert cur["flags"] & SpanFlag.CONTINUED
        assert (cur["link_trace_hi"], cur["link_trace_lo"], cur["link_span_id"]) == (
            prev["trace_hi"], prev["trace_lo"], prev["span_id"])
        assert predecessor(np.array([cur["span_id"]]))[0] == prev["span_id"]
        assert cur["start_ns"] == prev["end_ns"]
        assert prev["flags"] & SpanFlag.TRACE_END
    assert parts[-1]["flags"] & SpanFlag.EXITED and parts[0]["start_ns"] - gosim.T0 == MS
    for lo in np.unique(spans["trace_lo"]):
        tr = spans[spans["trace_lo"] == lo]
        assert tr["end_ns"].max() - tr["start_ns"].min() <= (20 + 1 + 2) * 1000 * MS  # + sweep, batch
    assert (spans["kind"] == SpanKind.PARK).sum() == 60
    assert parts["n_parks"].sum() == 60


def test_count_roll_overs_move_only_busy_goroutines_and_parks_keep_their_start():
    """A trace full by span count rolls over only the goroutines that did something since their
    part began: 10 idle waiters (one 5 s park each) are emitted once, not at every roll, while a
    busy goroutine (goid 90) parks 300 times; each waiter's park keeps its real start and length."""
    rows = [(0, 1, E, 0)]
    for w in range(10):
        rows += [(10 + w, 60 + w, C, 1), (20 + w, 60 + w, R), (30 + w, 60 + w, P, 0, CHAN_RECEIVE)]
    rows += [(40, 90, C, 1), (50, 90, R)]
    t = MS
    for i in range(300):
        rows += [(t, 90, P, 0, SELECT), (t + 1000, 90, Y), (t + 2000, 90, R)]
        t += 10_000
    end = 5000 * MS
    for w in range(10):
        rows += [(end + w, 60 + w, Y), (end + 100 + w, 60 + w, R), (end + 200 + w, 60 + w, X)]
    rows += [(end + 300, 90, X)]
    d, spans = run(events(rows), Config(max_spans_per_trace=20), batch=30)
    assert_tree(spans)
    assert d.traces_rolled >= 5
    g = spans[spans["kind"] == SpanKind.GOROUTINE]
    waiters = g[(g["goid"] >= 60) & (g["goid"] < 70)]
    assert waiters.size <= 20                      # each at most its first part and one roll
    assert (g[g["goid"] == 90].size) >= 5          # the busy one rolls with its trace
    parks = spans[(spans["kind"] == SpanKind.PARK) & (spans["goid"] >= 60) & (spans["goid"] < 70)]
    assert parks.size == 10
    assert ((parks["start_ns"] - gosim.T0) == 30 + parks["goid"] - 60).all()
    assert (parks["end_ns"] - parks["start_ns"] == parks["blocked_ns"] + parks["runnable_ns"]).all()
    first = g[(g["flags"] & SpanFlag.CONTINUED) == 0]
    assert (first["start_ns"] == first["born_ns"]).all()


def test_goroutines_open_at_shutdown_are_ended_then():
    ev = events([(0, 1, E, 0), (10, 60, C, 1), (20, 60, R), (30, 60, P, 0, CHAN_RECEIVE)])
    d, spans = run(ev)
    g = one(spans, goid=60, kind=SpanKind.GOROUTINE)
    assert g["flags"] & SpanFlag.ENDED_AT_SHUTDOWN and not g["flags"] & SpanFlag.EXITED
    p = one(spans, kind=SpanKind.PARK)
    assert p["flags"] & SpanFlag.ENDED_AT_SHUTDOWN and p["wait_reason"] == CHAN_RECEIVE
    assert d.live_goroutines == 0 and d.flush().size == 0


def test_park_events_mode_holds_parks_until_the_goroutine_span():
    rows = [(0, 70, C, 1), (1, 70, R)]
    t = 10
    for i in range(12):
        length = 10 if i < 2 else MS     # the first two are too short to hold
        rows += [(t, 70, P, 0, CHAN_RECEIVE), (t + length, 70, Y), (t + length + 50, 70, R)]
        t += 2 * MS
    ev = events(rows + [(t, 70, X)])
    d = EventDecoder(Config(park_mode="events", max_park_events=4))
    first = d.process(ev[:20])
    assert first.size == 0
    spans = d.process(ev[20:])
    g = one(spans, kind=SpanKind.GOROUTINE)
    parks = spans[spans["kind"] == SpanKind.PARK]
    assert parks.size == 4 and d.park_events_dropped == 6 and d.park_events_short == 2
    assert (parks["flags"] & SpanFlag.AS_EVENT).all()
    assert (parks["parent_span_id"] == g["span_id"]).all()
    assert g["n_parks"] == 12


def test_park_events_always_arrive_with_their_goroutine_span():
    ev, truth = gosim.workload(2000, parks=3, seed=11, spread_ns=20 * MS, park_ns=(200_000, 900_000))
    d = EventDecoder(Config(park_mode="events", max_trace_duration_s=0.001, sweep_interval_s=0.0005))
    n_events = 0
    for b in gosim.batches(ev, 1500) + [None]:
        out = d.flush() if b is None else d.process(b)
        events_ = out[(out["flags"] & SpanFlag.AS_EVENT) != 0]
        spans = out[out["kind"] == SpanKind.GOROUTINE]
        assert np.isin(events_["parent_span_id"], spans["span_id"]).all()
        n_events += events_.size
    assert d.traces_rolled > 0          # roll-overs also take their parts' events along
    assert n_events == truth["parks"] and d.park_events_dropped == 0


def test_decoder_feeds_runtime_metrics_from_every_event():
    ev, truth = gosim.workload(500, parks=2, seed=5, spread_ns=10 * MS)
    m = GoRuntimeMetrics()
    run(ev, metrics=m, batch=700, flush=False)
    snap = m.snapshot()
    assert snap["go.goroutine.created"][(100, "0x401000")] == 500
    assert snap["go.goroutine.exited"][(100, "0x401000")] == 500
    assert snap["go.goroutine.count"][(100, None)] == 0
    lifetimes = snap["go.goroutine.lifetime"][(100, "0x401000")]
    assert lifetimes["count"] == 500
    assert lifetimes["sum"] == pytest.approx((truth["exit"] - truth["born"]).sum() / 1e9)
    parks = sum(v["count"] for v in snap["go.goroutine.park.duration"].values())
    assert parks == truth["parks"]
    assert snap["go.schedule.duration"][(100, None)]["count"] == 500 + truth["parks"]


def test_config_validation_lists_every_problem():
    problems = Config(park_mode="x", max_spans_per_trace=0, max_trace_duration_s=0).validate()
    assert problems == ["decoder::park_mode must be one of spans, events, got 'x'",
                        "decoder::max_spans_per_trace must be >= 2",
                        "decoder::max_trace_duration_s must be > 0"]
    with pytest.raises(ConfigError):
        decoder.create(Config(park_mode="x"))


def test_a_million_live_goroutines_fit_in_100_mb(capsys):
    """A server-like load: main spawns a million goroutines that all stay parked."""
    d = EventDecoder()
    d.process(events([(0, 1, E, 0)]))
    n, step = 1_000_000, 1 << 16
    for first in range(0, n, step):
        goid = np.arange(first + 2, min(first + step, n) + 2, dtype=np.uint64)
        ev = np.zeros((goid.size, 3), EVENT_DTYPE)
        ev["pid"], ev["goid"] = 100, goid[:, None]
        ev["ts_ns"] = gosim.T0 + 10 * goid[:, None] + np.arange(3)
        ev["kind"] = [C, R, P]
        ev["aux_goid"][:, 0], ev["pc_start"][:, 0], ev["wait_reason"][:, 2] = 1, 0x401000, 3
        d.process(ev.reshape(-1))
    assert d.live_goroutines == n + 1 and sum(d.counters().values()) == d.traces_split
    with capsys.disabled():
        print(f"\ndecoder state: {d.live_goroutines} live goroutines, {d.nbytes / 1e6:.1f} MB, "
              f"{d.nbytes / d.live_goroutines:.1f} bytes each, {d.traces.live} traces")
    assert d.nbytes <= 100e6
    live = d.traces.live_rows()
    assert d.traces["n_live"][live].max() <= Config().max_spans_per_trace   # bounded traces


class Sink(Stage):
    """The last stage: keeps every span batch."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def process(self, batch):
        self.batches.append(batch)

    @property
    def spans(self):
        return np.concatenate(self.batches) if self.batches else np.zeros(0, SPAN_DTYPE)


@pytest.mark.bpf
def test_real_go_program_gives_a_complete_goroutine_tree(require_bpf, go_build):
    """tests/go/spawner, launched and traced from its first instruction by the real receiver, through
    the decoder: main's span is the root, each of its N workers is a child in main's trace, every
    parent reference resolves, and nothing was dropped as bad data."""
    import subprocess

    from receiver.receiver import Config as ReceiverConfig, GoroutineReceiver

    n = 300
    binary = go_build("spawner", "1.25")
    sink = Sink()
    dec = EventDecoder(metrics=GoRuntimeMetrics(), next_stage=sink)
    rx = GoroutineReceiver(ReceiverConfig(command=(str(binary), str(n))), dec,
                           launch_options={"stdout": subprocess.PIPE, "stderr": subprocess.PIPE,
                                           "text": True})
    rx.start()
    try:
        out, _ = rx.command.popen.communicate(timeout=60)
        rx.wait(10)
    finally:
        rx.shutdown()
    assert out.startswith(f"spawned {n}") and rx.lost == 0
    spans = sink.spans
    assert_tree(spans)
    assert dec.dropped_bad_kind == dec.dropped_out_of_order == dec.dropped_after_exit == 0
    g = spans[spans["kind"] == SpanKind.GOROUTINE]
    main = one(g, goid=1)
    assert main["parent_span_id"] == 0 and main["parent_goid"] == 0
    assert not main["flags"] & SpanFlag.STARTED_BEFORE_ATTACH
    by_main = g[g["parent_goid"] == 1]
    pcs, counts = np.unique(by_main["start_pc"], return_counts=True)
    workers = by_main[by_main["start_pc"] == pcs[np.argmax(counts)]]
    assert workers.size == n
    assert (workers["parent_span_id"] == main["span_id"]).all()
    assert (workers["trace_lo"] == main["trace_lo"]).all()
    assert (workers["flags"] & SpanFlag.EXITED).all()
    assert (workers["start_ns"] >= main["start_ns"]).all()
    assert (workers["end_ns"] <= main["end_ns"]).all()
    parks = spans[spans["kind"] == SpanKind.PARK]
    assert np.isin(parks["parent_span_id"], g["span_id"]).all()
    assert dec.metrics.snapshot()["go.goroutine.created"][(rx.command.pid, f"0x{pcs[np.argmax(counts)]:x}")] == n


def test_a_process_that_exits_has_its_goroutines_ended_and_forgotten():
    d = EventDecoder()
    d.process(np.concatenate([events([(0, 1, E, 0), (10, 2, C, 1), (20, 2, R), (30, 2, P, 0, 14)], pid=7),
                              events([(0, 1, E, 0)], pid=8)]))
    spans = d.end_process(7)
    assert sorted(spans["goid"].tolist()) == [1, 2, 2] and (spans["pid"] == 7).all()
    assert (spans["flags"] & SpanFlag.ENDED_AT_SHUTDOWN).all()
    assert d.live_goroutines == 1 and d.end_process(7).size == 0
    # The pid is reused by a new process: its goroutine 1 is a new goroutine, not a duplicate.
    d.process(events([(100, 1, C, 0)], pid=7))
    assert d.dropped_duplicate_create == 0 and d.live_goroutines == 2


# Everything but an exit, which ends a sequence if anything (goids are never reused, so what would
# follow an exit is ambiguous: in the same batch it is dropped, in a later one a new goroutine).
_ANY = [R, P, Y, Kind.PREEMPT, Kind.SYSCALL_ENTER, Kind.SYSCALL_EXIT, Kind.STACK_COPY, C]


def _reference(per_goroutine):
    """A per-event model of the decoder's state machine: park intervals, scheduling latencies and
    goroutine lifetimes, from each goroutine's events in order."""
    parks, sched, spans = [], [], []
    for goid, evs in per_goroutine.items():
        state, t_park, t_other, is_open, reason = "unknown", 0, 0, False, 0
        born = None
        for i, (ts, kind, status, wr) in enumerate(evs):
            if kind in (C, E) and i > 0:
                continue                                   # a second creation: dropped
            if kind == Kind.STACK_COPY:
                continue
            born = ts if born is None else born
            if kind == R:
                if state in ("runnable", "ready") and t_other > 0:
                    sched.append(ts - t_other)
                if is_open and t_park > 0 and state == "ready":   # else runtime work
                    parks.append((goid, t_park, ts, t_other - t_park, ts - t_other, reason))
            parked = kind == P or (kind == E and status == gosim.WAITING)
            if parked:
                t_park, reason, is_open = ts, wr, True
            else:
                t_other = ts
                if kind != Y:
                    is_open = False
            state = {C: "runnable", R: "running", P: "parked", Y: "ready", X: "dead",
                     Kind.SYSCALL_ENTER: "syscall", Kind.PREEMPT: "runnable",
                     Kind.SYSCALL_EXIT: "runnable" if status == 1 else "running",
                     E: {1: "runnable", 4: "parked", 3: "syscall", 9: "runnable"}.get(status, "running"),
                     }[kind]
            if kind == X:
                spans.append((goid, born, ts))
                break
    return sorted(parks), sorted(sched), sorted(spans)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 200))
def test_vectorized_state_machine_matches_a_per_event_model(seed, batch):
    rng = np.random.default_rng(seed)
    per, rows = {}, []
    for goid in range(10, 10 + int(rng.integers(1, 30))):
        n = int(rng.integers(1, 25))
        first = [C, E, R, P, Y][int(rng.integers(0, 5))]
        kinds = [first] + [_ANY[i] for i in rng.integers(0, len(_ANY), n - 1)]
        if n > 1 and rng.random() < 0.6:
            kinds[-1] = X
        ts = np.cumsum(rng.integers(1, 1000, n)) + int(rng.integers(0, 5000))
        status = rng.choice([1, 2, 3, 4, 9], n)
        reasons = rng.integers(0, 40, n)
        per[goid] = list(zip(ts.tolist(), kinds, status.tolist(), reasons.tolist()))
        rows += [(goid, i) for i in range(n)]
    # Interleave goroutines at random, each one's events staying in order (as the reader delivers them).
    order = rng.permutation(len(rows))
    seq = sorted(range(len(rows)), key=lambda j: order[j])
    counters = {g: 0 for g in per}
    ev = np.zeros(len(rows), EVENT_DTYPE)
    for j, idx in enumerate(seq):
        goid = rows[idx][0]
        ts, kind, status, wr = per[goid][counters[goid]]
        counters[goid] += 1
        ev[j] = (gosim.T0 + ts, 0, goid, 1, 0x10, 0x20, 100, 0, kind, wr, 0, status, j % 3)
    metrics = GoRuntimeMetrics()
    d = EventDecoder(metrics=metrics)
    out = [d.process(b) for b in gosim.batches(ev, batch)]
    spans = np.concatenate(out) if out else np.zeros(0, SPAN_DTYPE)
    parks, sched, lives = _reference(per)
    p = spans[spans["kind"] == SpanKind.PARK]
    got = sorted(zip(p["goid"].tolist(), (p["start_ns"] - gosim.T0).tolist(),
                     (p["end_ns"] - gosim.T0).tolist(), p["blocked_ns"].tolist(),
                     p["runnable_ns"].tolist(), p["wait_reason"].tolist()))
    assert got == [tuple(x) for x in parks]
    g = spans[spans["kind"] == SpanKind.GOROUTINE]
    assert sorted(zip(g["goid"].tolist(), (g["start_ns"] - gosim.T0).tolist(),
                      (g["end_ns"] - gosim.T0).tolist())) == lives
    snap = metrics.snapshot()["go.schedule.duration"]
    assert snap.get((100, None), {"count": 0})["count"] == len(sched)
    if sched:
        assert snap[(100, None)]["sum"] == pytest.approx(sum(sched) / 1e9)


@pytest.mark.parametrize("mode", ["spans", "events"])
@settings(max_examples=12, deadline=None)
@given(st.integers(0, 2**32), st.integers(50, 3000), st.integers(3, 40))
def test_bounded_traces_stay_well_formed_under_any_batching(mode, seed, batch, max_spans):
    """Goroutines created by random earlier goroutines, tight trace bounds (by count and by
    duration): splits, spills and roll-overs mix, and the span tree stays whole."""
    ev, truth = gosim.workload(800, parks=2, seed=seed, spread_ns=40 * MS, park_ns=(10_000, 3 * MS))
    rng = np.random.default_rng(seed)
    creates = np.flatnonzero(ev["kind"] == C)
    goids = ev["goid"][creates]
    creator = np.where(rng.random(goids.size) < 0.8, goids - rng.integers(1, 30, goids.size), 1)
    ev["aux_goid"][creates] = np.maximum(creator, 1)
    ev = np.concatenate([events([(0, 1, E, 0)]), ev])
    config = Config(park_mode=mode, max_spans_per_trace=max_spans, max_trace_duration_s=0.004,
                    sweep_interval_s=0.001, hold_min_park_ns=0)
    d, spans = run(ev, config, batch=batch)
    assert_tree(spans)
    assert_links(spans)
    g = spans[spans["kind"] == SpanKind.GOROUTINE]
    assert np.unique(g["goid"]).size == truth["n"] + 1
    assert np.count_nonzero(g["flags"] & SpanFlag.EXITED) == truth["n"]
    assert (spans["kind"] == SpanKind.PARK).sum() == truth["parks"]
    assert d.traces.live == 0 and d.live_goroutines == 0
    assert d.dropped_out_of_order == d.dropped_after_exit == d.dropped_duplicate_create == 0
    # Every trace's rows end with one TRACE_END batch: its last parts carry the flag.
    ended = np.unique(spans["trace_lo"][(spans["flags"] & SpanFlag.TRACE_END) != 0])
    assert set(ended.tolist()) == set(np.unique(spans["trace_lo"]).tolist())
