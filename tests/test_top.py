"""``gotel top`` in a real terminal (tmux): it draws every watched process and its groups in place,
refreshes, marks the leaking group, toggles the runtime's goroutines on ``s`` and quits on ``q``,
leaving the terminal as it found it. The watched programs are never stopped or probed."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

GOTEL = Path(sys.executable).parent / "gotel"


def tmux(*args):
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30)


def screen(session):
    return tmux("capture-pane", "-p", "-t", session).stdout


def wait_screen(session, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = screen(session)
        if predicate(text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"screen never matched:\n{text}")


@pytest.fixture
def blocked(blocked_program):
    return blocked_program


@pytest.mark.bpf
def test_top_in_a_real_terminal(require_bpf, blocked):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: run 'make setup'")
    leaky, quiet = blocked("-leak"), blocked()
    session = f"gotel-top-{leaky.pid}"
    tmux("kill-session", "-t", session)
    cmd = (f"{GOTEL} top --pid {leaky.pid} {quiet.pid} --interval 0.5s --leak-after 200ms; "
           f"echo TOP-EXITED-$?; sleep 30")
    assert tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "50", cmd).returncode == 0
    tmux("resize-window", "-t", session, "-x", "160", "-y", "50")
    try:
        text = wait_screen(session, lambda t: "LEAK?" in t and str(quiet.pid) in t, timeout=40)
        assert "gotel top" in text and "census, no probe" in text
        rows = [line for line in text.splitlines() if "main.leakyWorker" in line]
        assert rows and all("LEAK?" in r and "chan send" in r for r in rows)
        assert not any("LEAK?" in line for line in text.splitlines()
                       if line.strip().startswith(str(quiet.pid)))
        # The leaking process's line: its count rises and it creates goroutines, every refresh.
        first = wait_screen(session, lambda t: "main.leakyWorker" in t)
        assert "runtime.gcBgMarkWorker" not in first or "shown" in first
        tmux("send-keys", "-t", session, "s")
        shown = wait_screen(session, lambda t: "runtime goroutines shown" in t)
        assert "runtime." in "\n".join(shown.splitlines()[5:])
        tmux("send-keys", "-t", session, "q")
        done = wait_screen(session, lambda t: "TOP-EXITED-" in t, timeout=15)
        assert "TOP-EXITED-0" in done
        assert leaky.poll() is None and quiet.poll() is None       # both still running
    finally:
        tmux("kill-session", "-t", session)


@pytest.mark.bpf
def test_top_prints_frames_without_a_terminal(require_bpf, blocked):
    proc = blocked()
    out = subprocess.run([str(GOTEL), "top", "--pid", str(proc.pid), "--iterations", "2",
                          "--interval", "0.2s"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("gotel top - ") == 2
    assert "main.recvForever" in out.stdout or "main.main" in out.stdout
    bad = subprocess.run([str(GOTEL), "top", "--pid", "999999999"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and len(bad.stderr.splitlines()) == 1
