"""Levels, windows, triggers and the overhead budget (receiver/levels.py, receiver/lifecycle.py), on
real Go programs under real uprobes. The Go programs' own output is the oracle for counts."""

import collections
import logging
import re
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest

from collect import Sink
from receiver import lifecycle
from receiver.binary import GoBinary
from receiver.events import Kind
from receiver.receiver import run_command


@pytest.mark.parametrize("version", ["1.19", "1.21", "1.23", "1.25", "1.27"])
def test_lifecycle_probes_sit_on_emulated_instructions(go_build, version):
    """Creation and exit probes on instructions the kernel emulates (one trap a hit), the new g in
    an argument register the BPF side reads."""
    binary = GoBinary.open(str(go_build("spawner", version)))
    points = lifecycle.points(binary)
    assert points["create"].placement.emulated and points["exit"].placement.emulated
    assert points["create"].program in ("probe_create_ax", "probe_create_bx")
    assert points["create"].placement.instruction.startswith("call ")


@pytest.mark.parametrize("version", ["1.19", "1.25"])
def test_lifecycle_level_sees_each_goroutine_once_with_parent(require_bpf, go_build, version):
    binary = go_build("spawner", version)
    sink = Sink()
    rx, done = run_command([binary, "2000"], sink, timeout=120, level="lifecycle")
    assert done.returncode == 0 and "spawned 2000" in done.stdout
    ev = sink.events()
    kinds = collections.Counter(ev["kind"].tolist())
    assert set(kinds) <= {Kind.CREATE, Kind.EXIT}, kinds
    created = ev[ev["kind"] == Kind.CREATE]
    workers = created[created["aux_goid"] == 1]       # main.main made every worker
    assert len(np.unique(workers["goid"])) >= 2000
    assert (workers["pc_start"] != 0).all() and (workers["pc_create"] != 0).all()
    exited = np.unique(ev["goid"][ev["kind"] == Kind.EXIT])
    # The spawner waits until its 2000 workers have exited; the runtime's own helpers, which
    # main's goroutine also started, live on.
    assert np.isin(workers["goid"], exited).sum() >= 2000
    assert np.isin(exited, created["goid"]).all()     # every exit is of a goroutine seen created


def test_only_full_tracing_adds_the_stack_scan_stop_probe(require_bpf, go_build, blocked_program):
    """runtime.preemptPark's probe (GC stack-scan stops, reported as parks) goes with the full
    level's casgstatus probe, never with the lifecycle probes, which report no parks."""
    from receiver import probes

    proc = blocked_program()
    p = probes.Probes()
    try:
        binary = GoBinary.open(proc.pid)
        life = p.attach_lifecycle(binary, proc.pid)
        assert len(life) == 2 and all(a.extra == () for a in life), life
        full = p.attach(binary, proc.pid)
        assert len(full.extra) == 1, full
    finally:
        p.close()


def test_windows_trace_fully_and_introduce_goroutines_alive_at_their_start(require_bpf, go_build):
    """lifecycle between windows, full inside: parks appear only in windows, and every goroutine
    that parks in a window was created or introduced (with its parent) before."""
    binary = go_build("levels", "1.25")
    sink = Sink()
    rx, done = run_command([binary, "pingpong", "2000", "5"], sink, timeout=120,
                           level="lifecycle", window_s=0.5, period_s=1.5)
    assert done.returncode == 0
    status = rx.levels.status()
    assert status[0]["windows"] >= 2, status
    ev = sink.events()
    parks = ev[ev["kind"] == Kind.PARK]
    assert len(parks) > 100
    introduced = set(ev["goid"][(ev["kind"] == Kind.CREATE) | (ev["kind"] == Kind.EXISTING)].tolist())
    assert set(parks["goid"].tolist()) <= introduced
    # Outside windows only creations and exits: far fewer parks than ping-pong ops (2 per op).
    ops = int(done.stdout.split()[-1])
    assert len(parks) < ops


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_trigger_opens_a_window(require_bpf, go_build):
    binary = go_build("levels", "1.25")
    port = _free_port()
    sink = Sink()
    fired = []

    def poke():
        for _ in range(100):
            time.sleep(0.2)
            try:
                urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{port}/window", method="POST"), timeout=5).read()
                fired.append(True)
                return
            except OSError:
                continue

    threading.Thread(target=poke, daemon=True).start()
    rx, done = run_command([binary, "quiet", "4"], sink, timeout=120, level="lifecycle",
                           trigger_port=port, window_s=1.0)
    assert fired and rx.levels.triggers == {"http": 1}
    assert rx.levels.status()[0]["window_reasons"][0][0] == "http"


@pytest.mark.parametrize("program,fires", [(["grow", "3000", "4"], True), (["quiet", "4"], False)])
def test_goroutine_growth_trigger(require_bpf, go_build, program, fires):
    binary = go_build("levels", "1.25")
    rx, done = run_command([binary, *program], Sink(), timeout=120, level="lifecycle",
                           trigger_goroutine_rate=500.0)
    assert done.returncode == 0
    assert bool(rx.levels.triggers.get("goroutines rising")) == fires, rx.levels.triggers


@pytest.mark.parametrize("program,fires", [(["stuck", "10", "6"], True), (["quiet", "6"], False)])
def test_oldest_wait_trigger(require_bpf, go_build, program, fires):
    """Goroutines blocked for good trip the oldest-wait trigger (once for their group); a program
    whose only waits are short sleeps (and the runtime's own goroutines) does not."""
    binary = go_build("levels", "1.25")
    rx, done = run_command([binary, *program], Sink(), timeout=120, level="lifecycle",
                           trigger_oldest_wait_s=1.0)
    assert done.returncode == 0
    reasons = [r for r in rx.levels.triggers if r.startswith("oldest wait of ")]
    assert bool(reasons) == fires, rx.levels.triggers
    if fires:
        assert reasons == [r for r in reasons if "main.main.func" in r] and len(reasons) == 1
        assert rx.levels.triggers[reasons[0]] == 1


def _covered(opened, closed, start, end):
    """Share of [start, end) (Unix ns) inside windows [opened, closed)."""
    inside = sum(max(0, min(int(c), end) - max(int(o), start)) for o, c in zip(opened, closed))
    return inside / (end - start)


def test_budget_holds_when_the_event_rate_changes_thirtyfold(require_bpf, go_build):
    """max_overhead 3% on a program (half a core of its own work) doing 1,000 ping-pong ops/s, then
    30,000, then 1,000 again: the probes' cost as gotel estimates it stays within the budget over
    the run (with a quarter of it to spare for the start), and the duty cycle of full tracing follows
    the rate both ways: nearly always on at the low rate, mostly off at the high one, on again once
    the rate falls back (memory's guess, at the scale the probe measured, sees the fall within half
    a second; the measured high rate alone kept full tracing off for 2-3.5 s more, until the bucket
    could pay for a window at that rate).

    At the low rate the probes cost ~7,000 hits/s (0.7-2% of the program's CPU at 0.5-1.5 us a hit,
    under the 80% of the budget at which full tracing stays on); at the high rate ~200,000 hits/s.
    The rates must outrun the fastest host, since the budget is kept over the whole run and the
    low phase's savings are spent in the high one: where a hit cost 0.5 us, 5,000 ops/s cost 1.6%
    and full tracing rightly stayed on, and with hits of a ~465 ns floor (BPF links) 10,000 ops/s
    kept it on 70% of the high phase."""
    binary = go_build("levels", "1.25")
    rx, done = run_command([binary, "pingpong", "1000", "6", "30000", "6", "1000", "6"], Sink(),
                           timeout=120, level="full", max_overhead="3%", window_s=0.5)
    assert done.returncode == 0, done.stderr
    (unit,) = rx.levels.status()
    # At least one window over the first low phase and one reopened after the high phase (more
    # where the controller lets one lapse and reopens it, or opens one in the high phase).
    assert unit["cpu_ns"] > 0 and unit["windows"] >= 2
    assert unit["cost_ns"] <= 0.03 * 1.25 * unit["cpu_ns"], unit

    marks = [int(line.split()[1]) for line in done.stdout.splitlines()
             if line.startswith(("phase ", "end "))]
    assert len(marks) == 4, done.stdout
    _numbers, opened, closed = rx.levels.windows_of(unit["pid"])
    closed = np.minimum(closed, np.uint64(marks[-1]))
    # Each phase judged from its second second on: the controller reacts to a rate it has seen.
    low1, high, low2 = (_covered(opened, closed, a + 1_000_000_000, b)
                        for a, b in zip(marks, marks[1:]))
    assert low1 > 0.7 and low2 > 0.7 and high < 0.5, (low1, high, low2, unit)
    assert high < low1 - 0.3 and high < low2 - 0.2, (low1, high, low2, unit)


@pytest.mark.parametrize("version", ["1.19", "1.27"])
def test_budget_prices_full_tracing_from_memory_before_paying_for_it(require_bpf, go_build, caplog,
                                                                     version):
    """max_overhead 1% on a ping-pong at ~100,000 round trips/s, where full tracing would cost
    tens of percent: gotel's guess of full tracing's hit rate, from the runtime's own count of
    runs (sched.timeToRun), is within 2x of what the program's own op count implies (6 hits a
    round trip: two parks, two wakeups, two runs), and no window opens: nothing is paid to learn
    that full tracing is unaffordable. Without the guess, a first 0.25 s window measured it."""
    binary = go_build("levels", version)
    seconds = 3
    with caplog.at_level(logging.INFO, logger="gotel.levels"):
        rx, done = run_command([binary, "pingpong", "100000", str(seconds)], Sink(), timeout=120,
                               level="full", max_overhead="1%")
    assert done.returncode == 0, done.stderr
    ops = int(re.search(r"^ops (\d+)$", done.stdout, re.M).group(1))
    guess = re.search(r"full tracing would take about (\d+) hits/s", caplog.text)
    assert guess is not None, caplog.text
    implied = 6 * ops / seconds
    assert implied / 2 <= float(guess.group(1)) <= 2 * implied, (guess.group(0), ops)
    (unit,) = rx.levels.status()
    assert unit["windows"] == 0, unit


def test_a_low_budget_on_a_busy_program_still_opens_a_short_window(require_bpf, go_build,
                                                                   monkeypatch):
    """max_overhead 2% on a ping-pong that keeps a core busy, with a bucket of 8 s of budget: it
    holds ~0.16 s of a core, so the longest window it can pay for is ~0.16 s, and one opens once
    0.9 of it has filled (~7 s). Two things used to keep it shut: memory's guess of full tracing's
    cost is the untraced rate (millions of hits/s, many cores' worth), where a window can cost at
    most the core the program runs on; and no budget window shorter than 0.25 s was opened. The
    cost stays within the budget (a quarter of it to spare for the start)."""
    from receiver import levels

    monkeypatch.setattr(levels, "BUCKET_S", 8.0)
    binary = go_build("levels", "1.25")
    rx, done = run_command([binary, "pingpong", "100000000", "14"], Sink(), timeout=120,
                           level="full", max_overhead="2%")
    assert done.returncode == 0, done.stderr
    (unit,) = rx.levels.status()
    assert unit["windows"] >= 1, unit
    assert unit["cost_ns"] <= 0.02 * 1.25 * unit["cpu_ns"], unit


def _tracer_parks(text):
    """{goid: [park reasons]} for every goroutine in `go tool trace -d=parsed` output, those alive
    at trace.Start included (the oracle module keeps only goroutines created in the trace), and
    the CLOCK_MONOTONIC span of the trace."""
    import oracle

    parks, offset, times = collections.defaultdict(list), None, []
    for line in text.splitlines():
        s = oracle.SYNC.match(line)
        if s is not None:
            offset = int(s.group(2)) - int(s.group(1))
        t = oracle.EVENT_TIME.match(line)
        if t is not None:
            times.append(int(t.group(1)))
        m = oracle.TRANSITION.match(line)
        if m is not None:
            _creator, time_, goid, old, new, reason = m.groups()
            times.append(int(time_))
            if old == "Running" and new == "Waiting":
                parks[int(goid)].append(reason)
    return parks, min(times) + offset, max(times) + offset


def test_window_is_complete_for_goroutines_alive_at_its_start(require_bpf, go_build, tmp_path):
    """Lifecycle level, then a window opened on demand: goroutines created (and parked) before it
    are known with their parent, and inside it gotel sees the same parks as Go's own tracer, for
    them and for the goroutines they create in the window."""
    import subprocess

    import oracle
    from receiver.receiver import Config, GoroutineReceiver

    binary = go_build("levels", "1.25")
    flag, trace_file = tmp_path / "go", tmp_path / "window.trace"
    sink = Sink()
    rx = GoroutineReceiver(Config(command=(str(binary), "window", str(flag), str(trace_file)),
                                  level="lifecycle", window_s=60.0), sink,
                           launch_options={"stdout": subprocess.PIPE, "text": True})
    rx.start()
    try:
        time.sleep(0.5)                        # the 8 goroutines are made and parked
        rx.open_window("test")
        deadline = time.monotonic() + 30
        while not rx.levels.status()[0]["window_open"] and time.monotonic() < deadline:
            time.sleep(0.05)
        flag.write_text("go")
        out, _ = rx.command.popen.communicate(timeout=60)
        rx.wait(30)
    finally:
        rx.shutdown()
    assert "woken 40" in out
    assert rx.levels.triggers == {"test": 1}
    proc = rx.registry.get(rx.command.pid)
    ev = sink.events()
    # Timestamps were turned into Unix ns; the oracle compares in CLOCK_MONOTONIC.
    ev["ts_ns"] -= np.uint64(rx.clock.offset_ns)
    view = oracle.from_events(ev, proc.binary.layout, proc.pid, oracle.start_names(proc, ev))
    text = subprocess.run([str(list(__import__("pipeline.app.gotool", fromlist=["x"]).toolchains()
                                    .values())[-1]), "tool", "trace", "-d=parsed", str(trace_file)],
                          capture_output=True, text=True, check=True).stdout
    parks, start, end = _tracer_parks(text)
    trace = oracle.parse(text)
    # The runtime's own goroutines of parent 1 (the background scavenger) may park in the window too.
    sleepers = [g for g in view.goroutines.values() if g.parent == 1 and g.start.startswith("main.")
                and g.goid not in trace.goroutines and parks.get(g.goid)]
    assert len(sleepers) == 8, [(g.goid, g.parent, g.start) for g in view.goroutines.values()]
    for g in sleepers:
        seen = [r for r, ts in zip(g.parks, view.park_times[g.goid]) if start <= ts <= end]
        assert len(seen) == len(parks[g.goid]) and all(
            oracle.same_reason(a, b) for a, b in zip(parks[g.goid], seen)), (g.goid, parks[g.goid], seen)
    result = oracle.compare(trace, view)
    assert result.compared >= 20 and result.agreement >= 0.99, result.mismatches[:5]

    # As spans: each of the 8 begins the window parked (since before it, on "chan receive"), and
    # that wait ends in a park span of its goroutine, parented, like the parks inside the window.
    from pipeline import decoder
    from pipeline.spans import SpanKind

    spans = Sink()
    dec = decoder.create(decoder.Config(), spans)
    ev["ts_ns"] += np.uint64(rx.clock.offset_ns)
    dec.consume(ev)
    spans.consume(dec.flush())
    out = spans.events()
    names = proc.binary.layout.wait_reasons
    for g in sleepers:
        mine = out[out["goid"] == g.goid]
        goroutine = mine[mine["kind"] == SpanKind.GOROUTINE]
        parks_ = np.sort(mine[mine["kind"] == SpanKind.PARK], order="start_ns")
        assert len(goroutine) >= 1 and goroutine["parent_goid"][0] == 1
        assert len(parks_) >= len(parks[g.goid]) + 1, (g.goid, len(parks_))
        first = parks_[0]
        assert first["start_ns"] - rx.clock.offset_ns < start <= first["end_ns"] - rx.clock.offset_ns
        assert names[first["wait_reason"]] == "chan receive"
        # Dated from the census's g.waitsince (the program ran GCs while they waited), so from
        # before the window opened, not from its opening.
        opened = rx.levels.status()[0]["opened_unix_ns"][0]
        assert first["start_ns"] < opened - 200_000_000, (first["start_ns"], opened)


def test_trace_command_reports_the_level_and_its_estimated_overhead(require_bpf, go_build, tmp_path):
    """`gotel trace --level lifecycle`: the summary's cost line and the gotel.target.overhead gauge
    (with gotel.level) in the exported metrics."""
    import json
    import subprocess
    import sys

    binary = go_build("levels", "1.25")
    out = subprocess.run([sys.executable, "-m", "pipeline.app.cli", "trace", "--level", "lifecycle",
                          "--out", str(tmp_path), "--", str(binary), "pingpong", "2000", "2"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "cost        process" in out.stdout and "lifecycle now, estimated overhead" in out.stdout
    points = []
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        for rm in json.loads(line)["resourceMetrics"]:
            for sm in rm["scopeMetrics"]:
                for m in sm["metrics"]:
                    if m["name"] == "gotel.target.overhead":
                        points += m["gauge"]["dataPoints"]
    assert points and all(0 <= p["asDouble"] < 1 for p in points)
    assert {p["attributes"][0]["value"]["stringValue"] for p in points} == {"lifecycle"}


def test_the_estimate_over_the_run_reaches_up_to_the_stop(require_bpf, go_build):
    """The controller samples once more when it stops, so the target's CPU time and the probes'
    cost over the run cover the whole run, however long ago its last tick was (a detach under
    load can hold the controller thread for seconds; a summary then priced the run on its first
    fraction of a second). No controller thread runs here: one tick, a second with none, stop."""
    import subprocess

    from receiver import levels, probes
    from receiver.receiver import Config

    # 30,000 round trips/s: ~180,000 hits/s, tens of ms of system time a second even where a hit
    # costs 0.5 us (at 3,000, the 1 s run's system time could round to 0 ticks of /proc/PID/stat,
    # which bounds the cost).
    proc = subprocess.Popen([go_build("levels", "1.25"), "pingpong", "30000", "20"],
                            stdout=subprocess.DEVNULL)
    p = probes.Probes()
    try:
        controller = levels.LevelController(Config(pids=(proc.pid,), level="full"), p)
        controller.calibrate()
        controller.add(GoBinary.open(proc.pid), proc.pid)
        controller.tick()                                  # the first sample
        cpu0, _ = levels.cpu_times(proc.pid)
        hits0 = p.hits(proc.pid)["casgstatus"]
        time.sleep(1.0)
        controller.stop()
        cpu1, _ = levels.cpu_times(proc.pid)
        hits1 = p.hits(proc.pid)["casgstatus"]
        (unit,) = controller.status()
        # /proc/PID/stat counts CPU time in 10 ms ticks.
        assert abs(unit["cpu_ns"] - (cpu1 - cpu0)) <= 30e6, (unit, cpu1 - cpu0)
        assert hits1 - hits0 > 1000 and unit["cost_ns"] > 0, unit
        assert unit["rates"]["casgstatus"] > 1000, unit
    finally:
        p.close()
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("version", ["1.19", "1.21", "1.27"])
def test_sched_latency_p99_is_the_runtimes_own(go_build, version):
    """What the schedule-latency trigger computes, checked against the program's own
    runtime/metrics: between two quiet moments (the program blocked on stdin) sched.timeToRun as
    read from memory equals /sched/latencies:seconds bucket for bucket, and the p99 of the
    difference (bucket upper bounds) equals the one the program computes itself."""
    import subprocess

    from receiver.levels import SCHED_MIN_SAMPLES
    from receiver.runtime_stats import RuntimeStatsReader, quantile_of_delta

    binary = go_build("levels", version)
    p = subprocess.Popen([str(binary), "schedlat", "10", "2"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        own_before = [int(c) for c in p.stdout.readline().split()[1:]]
        reader = RuntimeStatsReader(GoBinary.open(str(binary)), p.pid)
        before = reader.sched_latency()
        p.stdin.write("\n")
        p.stdin.flush()
        own_after = [int(c) for c in p.stdout.readline().split()[1:]]
        _, own_p99, own_n = p.stdout.readline().split()
        after = reader.sched_latency()
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.wait(30) == 0
        reader.close()
    finally:
        p.kill()
    # Read from memory a moment after the program's own reads: the same counts, plus at most the
    # few scheduling events of printing and blocking on stdin in between.
    for mine, own in ((before, own_before), (after, own_after)):
        extra = mine.counts.astype(np.int64) - np.array(own)
        assert extra.min() >= 0 and extra.sum() <= 4, extra
    # The same arithmetic as the program's (bucket upper bounds) over its own counts...
    from receiver.runtime_stats import Histogram

    own = quantile_of_delta(Histogram(before.bounds, np.array(own_before, np.uint64)),
                            Histogram(after.bounds, np.array(own_after, np.uint64)))
    assert own == (float(own_p99), int(own_n))
    # ...and over what was read from memory, the same p99.
    p99, n = quantile_of_delta(before, after)
    assert p99 == float(own_p99) and abs(n - int(own_n)) <= 4
    assert p99 > 0.004 and n >= SCHED_MIN_SAMPLES       # 10 goroutines on one P: ms of waiting


@pytest.mark.parametrize("version,program,fires", [
    ("1.21", ["spin", "10", "4", "5", "4"], 2), ("1.27", ["spin", "10", "4", "5", "4"], 2),
    ("1.25", ["quiet", "8"], 0)])
def test_sched_latency_trigger(require_bpf, go_build, caplog, version, program, fires):
    """Runnable goroutines waiting for their turn on one P trip the schedule-latency trigger once
    per crossing (no cooldown here: it does not fire again while the p99 stays above, and fires
    again after a quiet spell); a program that mostly sleeps does not trip it."""
    binary = go_build("levels", version)
    with caplog.at_level("WARNING", logger="gotel.levels"):
        rx, done = run_command([binary, *program], Sink(), timeout=120, level="lifecycle",
                               trigger_sched_latency_p99_s=0.02, trigger_cooldown_s=0.0)
    assert done.returncode == 0
    assert rx.levels.triggers.get("schedule latency p99", 0) == fires, rx.levels.triggers
    logged = [r.getMessage() for r in caplog.records if "schedule latency p99" in r.getMessage()]
    assert len(logged) == fires and all("ms over the last" in m for m in logged), logged
    reasons = [r for r, _ in rx.levels.status()[0]["window_reasons"]]
    assert reasons.count("schedule latency p99") == fires, reasons
