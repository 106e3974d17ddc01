"""`gotel trace -- COMMAND` as a process: its exit status, its child's fate, its files, its signals.

gotel passes on the launched command's exit status; the command dies with gotel, even when gotel is
SIGKILLed (unless --keep-running), and no uprobe stays behind; metrics reach their file as they are
exported, so the files hold whole lines after SIGKILL and after a second SIGINT.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import otlp_server
from receiver import targets

REPO = Path(__file__).resolve().parent.parent
FAST_METRICS = """
receivers:
  goroutines:
    collection_interval: 300ms
processors:
  batch: {timeout: 100ms}
exporters:
  file/traces: {path: "${env:GOTEL_OUT}/traces.jsonl"}
  file/metrics: {path: "${env:GOTEL_OUT}/metrics.jsonl"}
service:
  pipelines:
    traces: {receivers: [goroutines], processors: [batch], exporters: [file/traces]}
    metrics: {receivers: [goroutines], exporters: [file/metrics]}
"""


def gotel(*argv, out=None, **kw):
    env = {**os.environ, **({"GOTEL_OUT": str(out)} if out else {})}
    return subprocess.Popen([sys.executable, "-m", "pipeline.app.cli", "-v", *map(str, argv)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


def wait_attached(proc, timeout=60):
    """Read gotel's stderr until it says it is tracing; return the child's pid from its stdout."""
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        if "tracing" in line:
            break
        assert time.monotonic() < deadline, "gotel did not attach"
    line = proc.stdout.readline()
    assert line.startswith("pid "), line
    return int(line.split()[1])


def whole_lines(path):
    """Every line of an OTLP/JSON file parses; returns how many there are."""
    text = Path(path).read_text()
    assert text == "" or text.endswith("\n"), "a torn last line"
    lines = text.splitlines()
    for line in lines:
        json.loads(line)
    return len(lines)


def gone(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while targets.is_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def gotel_uprobes(gotel_pid):
    try:
        text = Path("/sys/kernel/tracing/uprobe_events").read_text()
    except OSError:
        return []
    return [line for line in text.splitlines() if f"gotel_{gotel_pid}_" in line]


@pytest.mark.bpf
def test_the_commands_exit_status_is_passed_on(require_bpf, go_build, tmp_path):
    binary = go_build("lingerer")
    p = subprocess.run([sys.executable, "-m", "pipeline.app.cli", "trace", "--out", tmp_path, "--",
                        binary, "-for", "300ms", "-exit", "3"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 3, p.stderr
    assert "goroutines" in p.stdout                       # the summary is still printed


@pytest.mark.bpf
def test_sigkill_of_gotel_kills_the_command_and_leaves_no_probe_and_whole_files(
        require_bpf, go_build, tmp_path):
    binary = go_build("lingerer")
    config = tmp_path / "gotel.yaml"
    config.write_text(FAST_METRICS)
    out = tmp_path / "out"
    g = gotel("trace", "-c", config, "--", binary, "-for", "60s", out=out)
    try:
        child = wait_attached(g)
        time.sleep(1.5)                                   # several metric collections
        g.kill()
        g.wait(10)
        assert gone(child), "the launched command outlived gotel"
    finally:
        g.kill()
    assert gotel_uprobes(g.pid) == []
    assert whole_lines(out / "metrics.jsonl") >= 1         # exported before the kill: in the file
    assert whole_lines(out / "traces.jsonl") >= 1


@pytest.mark.bpf
def test_keep_running_leaves_the_command_healthy(require_bpf, go_build, tmp_path):
    binary = go_build("lingerer")
    g = gotel("trace", "--keep-running", "--out", tmp_path, "--", binary, "-for", "20s")
    child = None
    try:
        child = wait_attached(g)
        time.sleep(0.5)
        g.kill()
        g.wait(10)
        ticks = [g.stdout.readline() for _ in range(3)]   # its stdout is still gotel's pipe
        assert all(t.startswith("tick") for t in ticks), ticks
        assert targets.is_running(child)
        assert gotel_uprobes(g.pid) == []
    finally:
        g.kill()
        if child is not None and targets.is_running(child):
            os.kill(child, signal.SIGKILL)


@pytest.mark.bpf
def test_a_second_sigint_exits_at_once_with_whole_files(require_bpf, go_build, tmp_path):
    binary = go_build("lingerer")
    config = tmp_path / "gotel.yaml"
    # A collector that is down and a long drain time: the first SIGINT starts a slow shutdown.
    config.write_text(FAST_METRICS.replace("exporters: [file/traces]", "exporters: [file/traces, otlp]")
                      .replace("exporters:\n", f"exporters:\n  otlp: {{endpoint: '127.0.0.1:"
                               f"{otlp_server.free_port()}', tls: {{insecure: true}}, "
                               f"shutdown_timeout: 60s}}\n", 1))
    out = tmp_path / "out"
    g = gotel("trace", "-c", config, "--", binary, "-for", "60s", out=out)
    try:
        child = wait_attached(g)
        time.sleep(1.0)
        g.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert g.poll() is None                   # draining towards a collector that is down
        started = time.monotonic()
        g.send_signal(signal.SIGINT)
        g.wait(30)
        assert time.monotonic() - started < 10
        assert g.returncode == 128 + signal.SIGINT
        assert gone(child)
    finally:
        g.kill()
    assert whole_lines(out / "metrics.jsonl") >= 1
    whole_lines(out / "traces.jsonl")


@pytest.mark.bpf
def test_data_lost_gives_exit_status_1_and_one_line_why(require_bpf, go_build, tmp_path):
    """A collector that is down: without a queue on disk the spans are lost (exit 1, one line with
    how many and why); with one they are left on disk for the next start (exit 0, said so)."""
    binary = go_build("lingerer")
    port = otlp_server.free_port()
    for storage, status in ((None, 1), (tmp_path / "queue", 0)):
        queue = f", sending_queue: {{storage: '{storage}'}}" if storage else ""
        config = tmp_path / "gotel.yaml"
        config.write_text(FAST_METRICS.replace("exporters: [file/traces]",
                                               "exporters: [file/traces, otlp]")
                          .replace("exporters:\n", f"exporters:\n  otlp: {{endpoint: '127.0.0.1:"
                                   f"{port}', tls: {{insecure: true}}, shutdown_timeout: 500ms"
                                   f"{queue}}}\n", 1))
        p = subprocess.run([sys.executable, "-m", "pipeline.app.cli", "trace", "-c", config, "--",
                            binary, "-for", "1s"], cwd=REPO, capture_output=True, text=True,
                           timeout=120, env={**os.environ, "GOTEL_OUT": str(tmp_path / "out")})
        assert p.returncode == status, p.stderr
        lost = [line for line in p.stderr.splitlines() if line.startswith("gotel: data lost:")]
        if storage is None:
            assert len(lost) == 1 and "spans not delivered by exporter otlp" in lost[0]
            assert "UNAVAILABLE" in lost[0]
        else:
            assert lost == [] and "left on disk" in p.stderr
