"""Target faults: processes SIGKILLed mid-trace, 50 processes at once, a PID reused by another
program. gotel keeps tracing what lives, ends what died, and never mixes two processes up."""

import collections
import os
import subprocess
import time

import pytest

from faultkit import config_text, file_spans, lingerers, service_for, wait_until


@pytest.mark.bpf
def test_targets_sigkilled_mid_trace(require_bpf, go_build, tmp_path, figure):
    binary = go_build("lingerer")
    service = service_for(config_text(tmp_path), paths=[str(binary)])
    service.start()
    procs = lingerers(binary, 3, 30)
    try:
        time.sleep(2)
        for p in procs[:2]:
            p.kill()
            p.wait()
        killed_at = time.time_ns()
        time.sleep(2)
        assert service.receiver.source._thread.is_alive()
        assert wait_until(lambda: not any(service.processes.get(p.pid) and
                                          service.processes.get(p.pid).alive for p in procs[:2]), 10)
        assert service.processes.get(procs[2].pid).alive
    finally:
        for p in procs:
            p.kill()
            p.wait()
        service.shutdown(10)
    by_pid = collections.Counter(pid for pid, _, _ in file_spans(tmp_path / "traces.jsonl"))
    for p in procs:
        figure(f"process {'killed' if p in procs[:2] else 'survivor'}: spans", by_pid[p.pid])
        assert by_pid[p.pid] > 0
    figure("events lost", service.receiver.source.refused)
    assert service.receiver.source.refused == 0
    assert killed_at  # the survivor went on being traced after the kills (checked alive above)


@pytest.mark.bpf
def test_fifty_targets_at_once(require_bpf, go_build, tmp_path, figure):
    binary = go_build("lingerer")
    service = service_for(config_text(tmp_path), paths=[str(binary)])
    service.start()
    procs = lingerers(binary, 50, 3, workers=2)
    try:
        for p in procs:
            assert p.wait(120) == 0
        assert wait_until(lambda: all(service.processes.get(p.pid) is not None and
                                      not service.processes.get(p.pid).alive for p in procs), 30)
    finally:
        for p in procs:
            p.kill()
        service.shutdown(20)
    by_pid = collections.Counter(pid for pid, _, _ in file_spans(tmp_path / "traces.jsonl"))
    traced = [p.pid for p in procs if by_pid[p.pid] > 0]
    figure("50 targets: processes with spans", len(traced))
    figure("50 targets: spans", sum(by_pid[p.pid] for p in procs))
    figure("50 targets: events received / lost", f"{service.receiver.source.events} / {service.receiver.source.refused}")
    assert len(traced) == 50
    assert service.receiver.source.refused == 0


def spawn_with_pid(argv, pid, tries=200, **kw):
    """Start argv as process ``pid`` (a PID that was just freed) by setting ns_last_pid; None if
    another process on the machine took it first every time."""
    for _ in range(tries):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, **kw)
        if p.pid == pid:
            return p
        p.kill()
        p.wait()
    return None


@pytest.mark.bpf
def test_a_pid_reused_by_another_program(require_bpf, go_build, tmp_path, figure):
    """A lingerer exits; a spawner (another program) gets its PID. Every span of that PID is named
    from the right program's symbols and carries the right executable."""
    if not os.access("/proc/sys/kernel/ns_last_pid", os.W_OK):
        pytest.skip("needs a writable /proc/sys/kernel/ns_last_pid (CAP_SYS_ADMIN) to reuse a PID")
    first, second = go_build("lingerer"), go_build("spawner")
    service = service_for(config_text(tmp_path), paths=[str(first), str(second)])
    service.start()
    try:
        a = subprocess.Popen([str(first), "-for", "1s"], stdout=subprocess.DEVNULL)
        pid = a.pid
        assert a.wait(60) == 0
        assert wait_until(lambda: service.processes.get(pid) is not None
                          and not service.processes.get(pid).alive, 10)
        # The spawner waits on stdin after its runtime started (gotel sees it, as it would a
        # service), then spawns its 200 workers.
        b = spawn_with_pid([str(second), "200"], pid, stdin=subprocess.PIPE,
                           env={**os.environ, "WAIT_STDIN": "1"})
        if b is None:
            pytest.skip(f"PID {pid} was taken by another process each time")
        time.sleep(0.5)
        b.communicate(b"\n", timeout=60)
        assert b.returncode == 0
        time.sleep(1)
    finally:
        service.shutdown(10)
    spans = [(exe, name) for p, exe, name in file_spans(tmp_path / "traces.jsonl") if p == pid]
    exes = collections.Counter(exe for exe, _ in spans)
    workers = [exe for exe, name in spans if name == "main.worker"]
    figure("PID reused: spans of the first program", exes[str(first)])
    figure("PID reused: spans of the second program", exes[str(second)])
    assert set(exes) == {str(first), str(second)}
    assert len(workers) == 200 and set(workers) == {str(second)}
    assert not any(name == "main.worker" for exe, name in spans if exe == str(first))
