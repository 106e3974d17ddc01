"""CallMatcher on recorded-shape events: matching by goroutine and frame across batches, unwound
frames, calls open at goroutine exit and at shutdown, parents, and the log2 histograms."""

import numpy as np

from pipeline import funcs as pf
from pipeline.ids import IdGenerator
from receiver.funcs import ENTRY, FUNC_EVENT_DTYPE, RETURN

HI = 1 << 20   # stack top; stack_off = HI - SP is what the kernel side records


def ev(rows):
    """rows: (ts, goid, fn, kind, stack_off, tid)."""
    out = np.zeros(len(rows), FUNC_EVENT_DTYPE)
    for i, (ts, goid, fn, kind, off, tid) in enumerate(rows):
        out[i]["ts_ns"], out[i]["goid"], out[i]["ip"] = ts, goid, fn
        out[i]["kind"], out[i]["stack_off"], out[i]["tid"], out[i]["pid"] = kind, off, tid, 7
    return out, out["ip"].astype(np.int32)


def matcher(n=3):
    return pf.CallMatcher(np.zeros(n, np.uint64), ids=IdGenerator(seed=1))


def test_interleaved_goroutines_on_swapping_threads_match_by_goroutine():
    # Goroutines 1 and 2 both call fn 0; each returns on the other's thread (thread-keyed matching
    # would pair 1's entry with 2's return).
    e, f = ev([(10, 1, 0, ENTRY, 100, 501), (20, 2, 0, ENTRY, 100, 502),
               (30, 2, 0, RETURN, 100, 501), (45, 1, 0, RETURN, 100, 502)])
    calls = matcher().process(e, f)
    got = {int(c["goid"]): (int(c["start_ns"]), int(c["end_ns"]), int(c["tid_start"]), int(c["tid_end"]))
           for c in calls}
    assert got == {1: (10, 45, 501, 502), 2: (20, 30, 502, 501)}


def test_calls_span_batches_and_keep_their_parent():
    m = matcher()
    e, f = ev([(10, 1, 0, ENTRY, 100, 1), (20, 1, 1, ENTRY, 200, 1)])
    assert len(m.process(e, f)) == 0 and len(m.open) == 2
    e, f = ev([(30, 1, 1, RETURN, 200, 1), (40, 1, 2, ENTRY, 200, 1), (50, 1, 2, RETURN, 200, 1)])
    inner = m.process(e, f)
    e, f = ev([(60, 1, 0, RETURN, 100, 1)])
    outer = m.process(e, f)
    assert len(inner) == 2 and len(outer) == 1 and not len(m.open)
    assert (inner["parent_span_id"] == outer["span_id"][0]).all()
    assert (inner["trace_lo"] == outer["trace_lo"][0]).all() and outer["parent_span_id"][0] == 0
    assert inner["depth"].tolist() == [2, 2] and outer["depth"].tolist() == [1]


def test_recursion_matches_frames_not_depth_counts():
    m = matcher()
    rows = [(i, 1, 0, ENTRY, 100 + 50 * i, 1) for i in range(4)]
    rows += [(10 + i, 1, 0, RETURN, 100 + 50 * (3 - i), 1) for i in range(4)]
    calls = m.process(*ev(rows))
    by_start = {int(c["start_ns"]): int(c["end_ns"]) for c in calls}
    assert by_start == {0: 13, 1: 12, 2: 11, 3: 10}
    spans = {int(c["span_id"]): c for c in calls}
    for c in calls:
        if c["depth"] > 1:
            assert spans[int(c["parent_span_id"])]["depth"] == c["depth"] - 1


def test_a_frame_left_by_panic_ends_at_the_next_shallower_event():
    # fn0 (off 100) calls fn1 (off 200), which panics; fn0 recovers and returns.
    calls = matcher().process(*ev([(10, 1, 0, ENTRY, 100, 1), (20, 1, 1, ENTRY, 200, 1),
                                   (40, 1, 0, RETURN, 100, 1)]))
    c = {int(x["function"]): x for x in calls}
    assert c[1]["flags"] == pf.UNWOUND and c[1]["end_ns"] == 40
    assert c[0]["flags"] == 0 and c[1]["parent_span_id"] == c[0]["span_id"]


def test_open_calls_end_at_goroutine_exit_and_shutdown():
    m = matcher()
    m.process(*ev([(10, 1, 0, ENTRY, 100, 1), (12, 2, 0, ENTRY, 100, 1), (15, 3, 0, RETURN, 100, 1)]))
    assert m.unmatched_returns == 1
    ended = m.goroutines_exited(np.array([7]), np.array([1]), np.array([99]))
    assert ended["goid"].tolist() == [1] and ended["end_ns"].tolist() == [99]
    assert ended["flags"].tolist() == [pf.ENDED_AT_EXIT]
    rest = m.flush()
    assert rest["goid"].tolist() == [2] and rest["flags"].tolist() == [pf.ENDED_AT_SHUTDOWN]
    assert rest["end_ns"].tolist() == [15]


def test_goroutine_span_is_the_parent_of_outermost_calls():
    def lookup(pid, goid):
        n = len(pid)
        return np.full(n, 5, np.uint64), np.full(n, 6, np.uint64), np.where(goid == 1, 77, 0).astype(np.uint64)

    m = pf.CallMatcher(np.zeros(1, np.uint64), ids=IdGenerator(seed=2), goroutine_span=lookup)
    calls = m.process(*ev([(1, 1, 0, ENTRY, 100, 1), (2, 1, 0, RETURN, 100, 1),
                           (3, 2, 0, ENTRY, 100, 1), (4, 2, 0, RETURN, 100, 1)]))
    c = {int(x["goid"]): x for x in calls}
    assert (c[1]["parent_span_id"], c[1]["trace_hi"], c[1]["trace_lo"]) == (77, 5, 6)
    assert c[2]["parent_span_id"] == 0 and c[2]["trace_lo"] != 6


def test_log2_histogram_buckets():
    st = pf.FunctionStats(["f"])
    calls = pf.empty_calls(4)
    calls["end_ns"] = [1, 2, 3, 1024]
    st.add(calls)
    assert st.hist[0, 1] == 1 and st.hist[0, 2] == 2 and st.hist[0, 11] == 1
    assert "1024 -> 2047" in st.format_latency()
