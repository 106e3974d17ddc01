"""Targets and the receiver stage end to end: PIDs, binary paths (processes started later too), a
command launched held and traced from its first instruction; goroutines alive at attach; a target
killed mid-run; a PID that does not exist; a process that is not Go. Traced programs must print
the same and exit the same as untraced ones."""

import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import wait_for

from collect import Collect, start_held, untraced
from receiver import processes, targets
from receiver.errors import ConfigError, TargetError
from receiver.events import Kind
from receiver.receiver import Config, GoroutineReceiver, run_command



def test_exits_are_described_by_signal_name():
    assert targets.describe_exit(-9) == "killed by SIGKILL"
    assert targets.describe_exit(3) == "exited with status 3"


def test_config_fails_fast_with_every_problem():
    with pytest.raises(ConfigError) as e:
        GoroutineReceiver(Config(kinds=("create", "teleport"), poll_interval_s=0))
    assert e.value.problems[0].startswith("receivers::goroutines: give at least one of pids")
    assert e.value.problems[1].startswith("receivers::goroutines::kinds: unknown ['teleport']")
    assert e.value.problems[2] == ("receivers::goroutines: poll_interval_s and check_interval_s "
                                   "must be > 0")


def test_start_time_is_a_recent_unix_time():
    assert abs(processes.start_time_ns(os.getpid()) - time.time_ns()) < 3600 * 10**9


# The main thread ends alone (pthread_exit, the GIL released by ctypes): the leader is a zombie
# while the other thread runs, as it is for the moment a Go program execs from another thread.
LEADER_EXITS_ALONE = """
import ctypes, sys, threading
threading.Thread(target=sys.stdin.readline).start()
print("ready", flush=True)
ctypes.CDLL(None).pthread_exit(None)
"""


def _state(path):
    with open(path) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_a_process_whose_leader_thread_is_a_zombie_is_still_running():
    proc = subprocess.Popen([sys.executable, "-c", LEADER_EXITS_ALONE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        assert wait_for(lambda: _state(f"/proc/{proc.pid}/stat") == "Z", timeout=5)
        assert targets.is_running(proc.pid)
        proc.stdin.write("\n")
        proc.stdin.flush()                        # the other thread ends: the process is gone
        assert wait_for(lambda: not targets.is_running(proc.pid), timeout=5)
    finally:
        proc.kill()
        proc.wait()
    assert not targets.is_running(proc.pid)


@pytest.mark.bpf
def test_launched_command_is_traced_from_its_first_instruction(require_bpf, go_build):
    binary = go_build("oracle", "1.25")
    args = ("-exit", "3", "chan", "select", "timer")
    sink = Collect()
    rx, done = run_command([binary, *args], sink, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == untraced(binary, *args)
    assert done.returncode == 3
    ev = sink.events
    proc = rx.registry.get(rx.command.pid)
    assert proc.exe == os.path.realpath(binary) and not proc.alive and proc.exit_status == 3
    created = ev[ev["kind"] == Kind.CREATE]
    assert created["goid"][0] == 1 and created["aux_goid"][0] == 0     # main, from the very start
    assert rx.lost == 0 and sink.shut
    assert np.all(np.diff(ev["ts_ns"].astype(np.int64)) > -10**7)     # Unix ns, roughly ordered
    assert abs(int(ev["ts_ns"][-1]) - time.time_ns()) < 60 * 10**9


@pytest.mark.bpf
@pytest.mark.parametrize("flags", [(), ("-buildmode=pie",), ("-ldflags=-s -w",)],
                         ids=["allgs", "allgs-pie", "stripped-lazy"])
def test_goroutines_alive_at_attach_are_reported(require_bpf, go_build, flags, caplog):
    """With symbols, runtime.allgs is read at attach; stripped, each unknown goroutine is read from
    its g when its first event arrives. Either way main (goid 1) shows up as EXISTING before any
    other event of it, with its start PC, and nothing is unknown."""
    binary = go_build("oracle", "1.25", flags)
    args = ("-repeat", "5", "timer", "chan")
    proc = start_held(binary, *args)
    sink = Collect()
    rx = GoroutineReceiver(Config(pids=(proc.pid,)), sink).start()
    try:
        out, err = proc.communicate("go\n", timeout=60)
        assert wait_for(lambda: not rx.registry.get(proc.pid).alive)
    finally:
        proc.kill()
        rx.shutdown()
    assert (proc.returncode, out, err) == untraced(binary, *args)
    ev = sink.events
    existing = ev[ev["kind"] == Kind.EXISTING]
    assert 1 in existing["goid"].tolist()
    first_of_main = np.flatnonzero(ev["goid"] == 1)[0]
    assert ev["kind"][first_of_main] == Kind.EXISTING
    assert existing[existing["goid"] == 1]["pc_start"][0] != 0
    introduced = set(ev[np.isin(ev["kind"], [Kind.CREATE, Kind.EXISTING])]["goid"].tolist())
    assert set(ev["goid"].tolist()) <= introduced
    if "-ldflags=-s -w" not in flags:
        # Read from runtime.allgs at attach: all of them come first (the pipeline may take them
        # in one batch with the first events), including the runtime's own goroutines that have
        # no event of their own here.
        kinds = ev["kind"]
        lead = int(np.argmax(kinds != Kind.EXISTING)) if (kinds != Kind.EXISTING).any() else len(kinds)
        assert lead >= 3 and lead == len(existing)
        assert not any("not read" in r.getMessage() for r in caplog.records)


@pytest.mark.bpf
def test_path_target_traces_processes_started_later(require_bpf, go_build):
    binary = go_build("spawner", "1.21")
    sink = Collect()
    rx = GoroutineReceiver(Config(paths=(str(binary),)), sink).start()
    try:
        procs = [start_held(binary, 200) for _ in range(2)]
        outs = [p.communicate("go\n", timeout=60) for p in procs]
        assert wait_for(lambda: all(p.pid in rx.registry for p in procs))
        assert wait_for(lambda: not any(rx.registry.get(p.pid).alive for p in procs))
        assert not rx.finished.is_set()            # a path target keeps gotel listening
    finally:
        rx.shutdown()
    expected = untraced(binary, 200)
    ev = sink.events
    for p, (out, err) in zip(procs, outs):
        assert (p.returncode, out, err) == expected
        mine = ev[ev["pid"] == p.pid]
        assert (mine["kind"] == Kind.CREATE).sum() >= 200
        assert rx.registry.get(p.pid).binary.go_version.startswith("go1.21")


@pytest.mark.bpf
def test_sigkilled_target_is_retired_and_the_others_still_traced(require_bpf, go_build, caplog):
    caplog.set_level(logging.INFO, logger="gotel.receiver")
    binary = go_build("oracle", "1.25")
    victim = start_held(binary, "-repeat", "0", "chan", "timer")
    survivor = start_held(binary, "-repeat", "0", "chan", "timer")
    sink = Collect()
    rx = GoroutineReceiver(Config(pids=(victim.pid, survivor.pid)), sink).start()
    try:
        victim.stdin.write("go\n"), victim.stdin.flush()
        survivor.stdin.write("go\n"), survivor.stdin.flush()
        assert wait_for(lambda: (sink.events["pid"] == victim.pid).sum() > 1000)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert wait_for(lambda: not rx.registry.get(victim.pid).alive)
        gone = rx.registry.get(victim.pid).attachment
        assert gone not in rx.probes.attachments.values() and not gone.uprobe.open
        before = (sink.events["pid"] == survivor.pid).sum()
        assert wait_for(lambda: (sink.events["pid"] == survivor.pid).sum() > before + 1000)
        assert rx.registry.get(survivor.pid).alive and not rx.finished.is_set()
    finally:
        for p in (victim, survivor):
            p.kill()
            p.wait()
        rx.shutdown()
    assert rx.lost == 0
    assert any(f"process {victim.pid}" in r.getMessage() for r in caplog.records)


@pytest.mark.bpf
def test_nonexistent_pid_is_a_clear_error(require_bpf):
    pid = 4_000_000 - 7
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    with pytest.raises(TargetError, match=f"process {pid} does not exist"):
        GoroutineReceiver(Config(pids=(pid,)), Collect()).start()


@pytest.mark.bpf
def test_non_go_pid_is_a_clear_error_and_nothing_stays_attached(require_bpf, go_build):
    sleeper = subprocess.Popen(["sleep", "30"])
    binary = go_build("spawner", "1.25")
    go = start_held(binary, 10)
    try:
        rx = GoroutineReceiver(Config(pids=(go.pid, sleeper.pid)), Collect())
        with pytest.raises(TargetError, match=f"process {sleeper.pid} is not a Go program"):
            rx.start()
        assert rx.probes is None                   # torn down: the Go target was detached again
        out, err = go.communicate("go\n", timeout=30)
        assert (go.returncode, out, err) == untraced(binary, 10)
    finally:
        sleeper.kill()
        go.kill()


@pytest.mark.bpf
def test_a_failing_next_stage_does_not_stop_the_receiver(require_bpf, go_build):
    class Flaky(Collect):
        def consume(self, batch):
            if not self.batches:
                self.batches.append(batch[:0])
                raise RuntimeError("first batch refused")
            super().consume(batch)

    binary = go_build("oracle", "1.25")
    sink = Flaky()
    # Long enough (~0.3 s) for several polls: the refused first batch must not be all there is.
    rx, done = run_command([binary, "-repeat", "30", "chan", "timer"], sink, timeout=60)
    assert done.returncode == 0 and rx.failed_batches == 1
    assert len(sink.events) > 0 and rx.lost == 0


@pytest.mark.bpf
def test_launched_command_killed_mid_run(require_bpf, go_build, caplog):
    binary = go_build("oracle", "1.25")
    sink = Collect()
    rx = GoroutineReceiver(Config(command=(str(binary), "-repeat", "0", "chan")), sink,
                           launch_options={"stdout": subprocess.DEVNULL})
    rx.start()
    try:
        assert wait_for(lambda: len(sink.batches) > 0)
        rx.command.popen.send_signal(signal.SIGKILL)
        assert rx.wait(10) == -signal.SIGKILL
        assert wait_for(rx.finished.is_set)
    finally:
        rx.command.kill()
        rx.shutdown()
    proc = rx.registry.get(rx.command.pid)
    assert not proc.alive and proc.exit_status == -signal.SIGKILL
    assert any("killed by SIGKILL" in r.getMessage() for r in caplog.records)
    assert rx.lost == 0 and len(sink.events) > 0
