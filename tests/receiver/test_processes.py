"""Processes, the one owner of per-process facts: membership, names, descriptions, and a PID that
a new process takes over after a traced one exited (recycled for real with ns_last_pid)."""

import os
import subprocess

import pytest

from conftest import wait_for

from collect import Collect, start_held, untraced
from receiver import processes, targets
from receiver.events import Kind
from receiver.processes import Process, Processes
from receiver.receiver import Config, GoroutineReceiver




def test_processes_are_kept_by_pid_and_a_new_one_under_an_old_pid_forgets_the_old():
    forgotten = []
    reg = Processes(host_name="h")
    reg.on_forget(forgotten.append)
    p = reg.add(Process(42, binary=None, exe="/x", start_time_ns=1, target=targets.Target.pid(42)))
    assert reg.get(42) is p and 42 in reg and len(reg) == 1 and reg.alive() == [p]
    assert reg.describe(42)["service.instance.id"]
    assert reg.mark_exited(42, -9) is p and not p.alive and p.exit_status == -9
    assert reg.alive() == [] and reg.get(7) is None and forgotten == []
    q = reg.add(Process(42, binary=None, exe="/y", start_time_ns=2, target=targets.Target.pid(42)))
    assert reg.get(42) is q and forgotten == []          # hooks wait for the pipeline's thread
    reg.settle()
    assert forgotten == [42]
    assert reg.describe(42)["process.executable.path"] == "/y"     # not the cached /x
    assert reg.names(42, [0x1234]) == [("", "", 0)]                # no binary: unknown, no error
    assert reg.names(7, [1]) == [("", "", 0)]


@pytest.mark.bpf
def test_names_and_description_of_a_real_process(require_bpf, go_build):
    binary = go_build("spawner", "1.25")
    proc = start_held(binary, 10)
    try:
        reg = Processes()
        p = reg.add(Process.found(proc.pid, targets.open_binary(proc.pid),
                                  targets.Target.pid(proc.pid)))
        entry = p.binary.pclntab.lookup(["main.worker"])["main.worker"][0]
        (fn, file, line), = reg.names(proc.pid, [entry + p.pc_bias()])
        assert fn == "main.worker" and file.endswith("spawner/main.go") and line > 0
        attrs = reg.describe(proc.pid)
        assert attrs["process.pid"] == proc.pid and attrs["process.runtime.version"] == "go1.25.5"
        assert attrs["process.command_args"] == [str(binary), "10"]
        assert "chan receive" in reg.wait_reasons(proc.pid)
    finally:
        proc.communicate("go\n", timeout=30)


def _start_with_pid(binary, pid, *args, tries=200):
    """start_held(binary), forked as `pid` through /proc/sys/kernel/ns_last_pid (root), or None."""
    for _ in range(tries):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        p = start_held(binary, *args)
        if p.pid == pid:
            return p
        p.kill()
        p.communicate()
    return None


@pytest.mark.bpf
def test_a_recycled_pid_under_a_binary_target_is_traced_as_the_new_process(require_bpf, go_build):
    binary = go_build("spawner", "1.25")
    sink = Collect()
    rx = GoroutineReceiver(Config(paths=(str(binary),)), sink)
    forgotten = []
    rx.registry.on_forget(forgotten.append)
    rx.start()
    try:
        first = start_held(binary, 50)
        out1 = first.communicate("go\n", timeout=60)
        pid = first.pid
        assert wait_for(lambda: pid in rx.registry and not rx.registry.get(pid).alive)
        old = rx.registry.get(pid)
        second = _start_with_pid(binary, pid, 70)
        assert second is not None, f"could not fork a process as PID {pid} again"
        # Its runtime starts goroutines before it reads stdin: adopted while it waits there.
        assert wait_for(lambda: rx.registry.get(pid) is not old)
        out2 = second.communicate("go\n", timeout=60)
        new = rx.registry.get(pid)
        assert new.start_time_ns >= old.start_time_ns and forgotten == [pid]
        assert wait_for(lambda: not rx.registry.get(pid).alive)
    finally:
        rx.shutdown()
    assert (first.returncode, *out1) == untraced(binary, 50)
    assert (second.returncode, *out2) == untraced(binary, 70)
    ev = sink.events
    mine = ev[ev["pid"] == pid]
    creates = mine[mine["kind"] == Kind.CREATE]
    # Both lives of the PID were traced: 50 workers, then 70 (plus the runtime's own).
    assert len(creates) >= 120
    assert rx.lost == 0 and os.path.exists(binary)


def test_command_args_come_from_proc():
    p = subprocess.Popen(["sleep", "5"])
    try:
        assert wait_for(lambda: processes.read_cmdline(p.pid) == ("sleep", "5"), timeout=5)
    finally:
        p.kill()
        p.wait()
    assert processes.read_cmdline(p.pid) == ()
