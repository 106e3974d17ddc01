"""Function probes on real Go programs: every call counted, each matched to its goroutine.

tests/go/funcs counts its own calls (every function is called a known number of times per round)
and times its own calls of main.block per goroutine (CLOCK_MONOTONIC, the clock of the BPF
timestamps, read just before and just after each call, keyed by the goroutine id runtime.Stack
prints): each call gotel reports for a goroutine must lie inside the matching call the goroutine
timed itself, which holds however loaded the machine is. main.block yields, sleeps and blocks on a channel mid-call, so
with GOMAXPROCS=2 a goroutine often returns on another thread than it entered on: gotel, matching by
goroutine, must agree with the program; matching by thread (what bcc's funclatency does) does not.
Recursion (fib), panics recovered mid-call (thrower, unwound), deferred closures, closures called
through a func value, value and pointer receivers are all counted. The program's output is the same
with and without probes.
"""

import os
import subprocess

import numpy as np
import pytest

from pipeline import funcs as pf
from pipeline.functrace import FunctionTracer
from tests.conftest import run_go

WORKERS, ROUNDS = 6, 25
VARIANTS = [  # (Go version, go build flags, cgo)
    ("1.21", (), False),
    ("1.23", ("-ldflags=-s -w",), False),       # goid at another offset; no symbols, no DWARF
    ("1.24", ("-buildmode=pie",), False),
    ("1.25", ("-race",), True),
    ("1.26", ("-buildmode=pie", "-ldflags=-s -w"), False),
    ("1.27", (), False),
]


def fib_calls(n):
    return 1 if n < 2 else 1 + fib_calls(n - 1) + fib_calls(n - 2)


def expected_counts():
    per_round = {name: 1 for name in (
        "main.(*Counter).Inc", "main.Point.Sum", "main.add", "main.label", "main.thrower",
        "main.guarded", "main.guarded.func1", "main.block", "main.call", "main.main.func1.1")}
    out = {name: WORKERS * ROUNDS * n for name, n in per_round.items()}
    out["main.fib"] = WORKERS * sum(fib_calls(r % 8) for r in range(ROUNDS))
    out["main.goid"] = WORKERS
    out["main.main.func1"] = WORKERS
    return out


def trace(binary, tmp_path):
    """Run binary under function probes; returns (stdout, calls, names, raw events, own timings)."""
    times = tmp_path / "times.txt"
    raw = []
    tracer = FunctionTracer(
        ["main.*"], command=[str(binary), str(WORKERS), str(ROUNDS)],
        launch_options=dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "FUNCS_TIMES": str(times), "GOMAXPROCS": "2"}))
    consume = tracer.consume

    def keep(events):
        raw.append(events.copy())
        return consume(events)

    tracer.consume = keep
    calls = []
    try:
        popen = tracer.command.popen
        assert popen.stdout.readline().strip() == "ready"
        popen.stdin.write("go\n")
        popen.stdin.flush()
        while popen.poll() is None:
            calls.append(tracer.poll(0.05))
        out = popen.stdout.read()
    finally:
        calls.append(tracer.close())
    own = np.array([list(map(int, line.split())) for line in times.read_text().splitlines()], np.int64)
    return out, np.concatenate(calls), tracer, np.concatenate(raw), own


def thread_keyed_block_durations(events, fn_index, block):
    """What matching by thread id gives (bcc funclatency): entry time per thread, return by thread."""
    sel = fn_index == block
    ev = events[sel]
    ev = ev[np.argsort(ev["ts_ns"], kind="stable")]
    started, out, unmatched = {}, [], 0
    for ts, tid, kind in zip(ev["ts_ns"].tolist(), ev["tid"].tolist(), ev["kind"].tolist()):
        if kind == 1:
            started[tid] = ts
        elif tid in started:
            out.append(ts - started.pop(tid))
        else:
            unmatched += 1
    return out, unmatched


@pytest.mark.bpf
@pytest.mark.parametrize("version,flags,cgo", VARIANTS, ids=[f"{v[0]}{''.join(v[1])}" for v in VARIANTS])
def test_counts_and_per_goroutine_latency(require_bpf, go_build, tmp_path, version, flags, cgo):
    binary = go_build("funcs", version, flags, cgo)
    plain = run_go(binary, WORKERS, ROUNDS, stdin="go\n", env={"GOMAXPROCS": "2"})
    assert plain.returncode == 0, plain.stderr
    out, calls, tracer, raw, own = trace(binary, tmp_path)
    names = tracer.names

    # The traced program behaves exactly as the untraced one.
    assert out == plain.stdout.split("\n", 1)[1]
    c = tracer.counters()
    assert c["lost"] == 0 and c["bad_g"] == 0 and c["unmapped"] == 0
    assert c["unmatched_returns"] <= 1        # main.main's return: entered before the probes

    # Counts equal the program's own, function by function.
    got = {names[i]: int(n) for i, n in enumerate(np.bincount(calls["function"], minlength=len(names)))}
    want = expected_counts()
    assert {k: got.get(k, 0) for k in want} == want

    # Recovered panics: thrower's frame is left without a RET; flagged, ended when guarded returns.
    fn = {n: i for i, n in enumerate(names)}
    thrower = calls[calls["function"] == fn["main.thrower"]]
    unwound = thrower[(thrower["flags"] & pf.UNWOUND) != 0]
    assert len(unwound) == WORKERS * len(range(0, ROUNDS, 5))
    guarded = calls[calls["function"] == fn["main.guarded"]]
    assert not (guarded["flags"] & pf.UNWOUND).any()
    by_span = dict(zip(guarded["span_id"].tolist(), guarded["end_ns"].tolist()))
    assert all(u["parent_span_id"] in by_span and u["end_ns"] <= by_span[u["parent_span_id"]]
               for u in unwound)

    # Recursion: every fib call but the outermost is the child of a fib call one level up.
    fibs = calls[calls["function"] == fn["main.fib"]]
    fib_spans = dict(zip(fibs["span_id"].tolist(), fibs["depth"].tolist()))
    inner = fibs[np.isin(fibs["parent_span_id"], fibs["span_id"])]
    assert len(inner) == WORKERS * sum(fib_calls(r % 8) - 1 for r in range(ROUNDS))
    assert all(fib_spans[p] == d - 1 for p, d in zip(inner["parent_span_id"].tolist(), inner["depth"].tolist()))

    # Per goroutine, call by call, gotel's [entry, return] lies inside the goroutine's own
    # [before, after] of the same call; the difference is the probes' and the clock reads' cost.
    block = calls[calls["function"] == fn["main.block"]]
    assert set(block["goid"].tolist()) == set(own[:, 0].tolist())
    slack = []
    for goid in np.unique(own[:, 0]).tolist():
        mine = np.sort(block[block["goid"] == goid], order="start_ns")
        theirs = own[own[:, 0] == goid]
        theirs = theirs[np.argsort(theirs[:, 1])]
        assert len(mine) == len(theirs) == ROUNDS
        start, end = mine["start_ns"].astype(np.int64), mine["end_ns"].astype(np.int64)
        assert (theirs[:, 1] <= start).all() and (start < end).all() and (end <= theirs[:, 2]).all()
        slack.extend(((theirs[:, 2] - theirs[:, 1]) - (end - start)).tolist())
    print(f"median outside the probes per call: {np.median(slack) / 1000:.1f} us")

    # Goroutines did change threads mid-call; matching by thread would be wrong for them.
    migrated = block["tid_start"] != block["tid_end"]
    assert migrated.sum() > 0
    fn_index = tracer._function_index(raw)
    by_thread, unmatched = thread_keyed_block_durations(raw, fn_index, fn["main.block"])
    truth = sorted((block["end_ns"] - block["start_ns"]).tolist())
    assert unmatched > 0 or sorted(by_thread) != truth
