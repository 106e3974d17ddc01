"""gotel's own faults: SIGKILLed while tracing (the target keeps running, unharmed: no breakpoint
stays in its code, no uprobe in tracefs; the files hold whole lines), and run as a non-root user
with exactly the least capability set (and with each capability of it missing: one clear line)."""

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from faultkit import ENV, REPO, wait_until
from receiver import privileges, targets
from receiver.binary import GoBinary

UPROBE_EVENTS = Path("/sys/kernel/tracing/uprobe_events")
USER = "gotel-lp"


def probe_byte(pid, binary_path):
    """(byte in the process's memory, byte in the file) at gotel's probe address: 0xCC in memory
    while a uprobe is installed there."""
    b = GoBinary.open(binary_path)
    addr = b.functions["runtime.casgstatus"].probe_address
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(addr)
        live = mem.read(1)[0]
    with open(binary_path, "rb") as f:
        f.seek(b.file_offset(addr))
        return live, f.read(1)[0]


def whole_lines(path):
    text = Path(path).read_text() if Path(path).exists() else ""
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.bpf
def test_gotel_sigkilled_leaves_the_target_healthy(require_bpf, go_build, tmp_path, figure):
    binary = go_build("lingerer")
    target = subprocess.Popen([str(binary), "-for", "60s"], stdout=subprocess.PIPE, text=True)
    out = tmp_path / "out"
    gotel = subprocess.Popen([sys.executable, "-m", "pipeline.app.cli", "-v", "trace", "--pid",
                              str(target.pid), "--out", str(out)], cwd=REPO, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in gotel.stderr:
            if "tracing" in line:
                break
        live, file_byte = probe_byte(target.pid, binary)
        assert live == 0xCC != file_byte                # the probe is in: the check can fail
        time.sleep(1.5)
        gotel.kill()
        gotel.wait(10)
        assert wait_until(lambda: probe_byte(target.pid, binary)[0] == file_byte, 10)
        target.stdout.readline()
        ticks = [target.stdout.readline() for _ in range(5)]
        assert all(t.startswith("tick") for t in ticks) and target.poll() is None
        with open(f"/proc/{target.pid}/status") as f:
            assert "State:\tS" in f.read() or targets.is_running(target.pid)
    finally:
        gotel.kill()
        target.kill()
        target.wait()
    assert not [l for l in UPROBE_EVENTS.read_text().splitlines() if f"gotel_{gotel.pid}_" in l]
    lines = whole_lines(out / "traces.jsonl")
    figure("gotel SIGKILLed: trace requests in the file (whole)", len(lines))
    figure("gotel SIGKILLed: breakpoint left in the target", 0)


# --- least privilege ----------------------------------------------------------------------------
def ensure_user():
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        USER], check=True)


def as_user(caps, argv, cwd, extra_env=None):
    """Run argv as USER with exactly ``caps`` (names without CAP_), nothing else."""
    spec = ",".join(["-all"] + [f"+{c.lower()}" for c in caps])
    return subprocess.run(["setpriv", "--reuid", USER, "--regid", USER, "--clear-groups",
                           f"--inh-caps={spec}", f"--ambient-caps={spec}", f"--bounding-set={spec}",
                           *argv], cwd=cwd, env={**ENV, "HOME": str(cwd), **(extra_env or {})},
                          capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def lp_dir(go_build):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run gotel as another user with given capabilities")
    ensure_user()
    d = Path(tempfile.mkdtemp(prefix="gotel-lp-"))
    d.chmod(0o777)
    binary = d / "lingerer"
    shutil.copy(go_build("lingerer"), binary)
    binary.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


LEAST = [c.removeprefix("CAP_") for c in privileges.LEAST]


@pytest.mark.bpf
def test_least_privilege_run(require_bpf, lp_dir, figure):
    """gotel with only the least capabilities, as a user whose cache it cannot write (the uprobe
    cost calibration then builds its program in a private directory, removed at exit)."""
    out = lp_dir / "out"
    cache = lp_dir / "cache-not-writable"
    cache.mkdir(mode=0o755, exist_ok=True)
    private = set(Path(tempfile.gettempdir()).glob("gotel-calibrate-*"))
    p = as_user(LEAST, [sys.executable, "-m", "pipeline.app.cli", "trace", "--out", str(out), "--",
                        str(lp_dir / "lingerer"), "-for", "1s"], REPO, {"XDG_CACHE_HOME": str(cache)})
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""                              # no stray bcc line, no warning
    assert set(Path(tempfile.gettempdir()).glob("gotel-calibrate-*")) == private
    spans = sum(len(ss["spans"]) for r in whole_lines(out / "traces.jsonl")
                for rs in r["resourceSpans"] for ss in rs["scopeSpans"])
    figure(f"least privilege ({' + '.join(LEAST)}): spans", spans)
    assert spans > 10


def least(links):
    """The least capability set (names without CAP_) with uprobes as links ("1") or perf events."""
    return LEAST + ([] if links == "1" else [privileges.PERF_EVENT_UPROBES.removeprefix("CAP_")])


@pytest.mark.bpf
@pytest.mark.parametrize("missing,links", [(c, "1") for c in LEAST] + [("DAC_OVERRIDE", "0")])
def test_each_missing_capability_is_named(require_bpf, lp_dir, missing, links):
    caps = [c for c in least(links) if c != missing]
    p = as_user(caps, [sys.executable, "-m", "pipeline.app.cli", "trace", "--out",
                       str(lp_dir / f"out-{missing}"), "--", str(lp_dir / "lingerer"), "-for", "1s"],
                REPO, {"GOTEL_UPROBE_LINKS": links})
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gotel: cannot trace: "), p.stderr
    assert f"CAP_{missing} is missing" in lines[0]
    assert "Failed to compile" not in p.stderr


@pytest.mark.bpf
@pytest.mark.parametrize("links", ["1", "0"], ids=["bpf-links", "perf-events"])
def test_least_privilege_gotel_sigkilled_leaves_no_breakpoint_and_its_uprobe_event_is_removed(
        require_bpf, lp_dir, figure, links):
    """A SIGKILLed gotel leaves no breakpoint. Its BPF links leave nothing else; as perf events
    (older kernels, or GOTEL_UPROBE_LINKS=0), without CAP_SYS_ADMIN each uprobe is a tracefs event,
    left listed in uprobe_events (inert: the breakpoint goes with the perf event), and the next
    gotel removes it."""
    env = {**ENV, "HOME": str(lp_dir), "GOTEL_UPROBE_LINKS": links}
    spec = ",".join(["-all"] + [f"+{c.lower()}" for c in least(links)])
    target = subprocess.Popen([str(lp_dir / "lingerer"), "-for", "60s"], stdout=subprocess.DEVNULL,
                              user=USER, group=USER, extra_groups=[])     # gotel's user's own
    gotel = subprocess.Popen(["setpriv", "--reuid", USER, "--regid", USER, "--clear-groups",
                              f"--inh-caps={spec}", f"--ambient-caps={spec}",
                              f"--bounding-set={spec}", sys.executable, "-m", "pipeline.app.cli",
                              "-v", "trace", "--pid", str(target.pid), "--out",
                              str(lp_dir / "out-killed")], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        said = []
        for line in gotel.stderr:
            said.append(line)
            if "tracing" in line:
                break
        assert probe_byte(target.pid, lp_dir / "lingerer")[0] == 0xCC, said
        gotel.kill()
        gotel.wait(10)
        stale = [l for l in UPROBE_EVENTS.read_text().splitlines() if f"_bcc_{gotel.pid} " in l]
        live, file_byte = probe_byte(target.pid, lp_dir / "lingerer")
        assert live == file_byte and target.poll() is None
        p = as_user(least(links), [sys.executable, "-m", "pipeline.app.cli", "trace", "--out",
                                   str(lp_dir / "out-next"), "--", str(lp_dir / "lingerer"), "-for",
                                   "1s"], REPO, {"GOTEL_UPROBE_LINKS": links})
        assert p.returncode == 0, p.stderr
    finally:
        gotel.kill()
        target.kill()
        target.wait()
    left = [l for l in UPROBE_EVENTS.read_text().splitlines() if f"_bcc_{gotel.pid} " in l]
    figure(f"least privilege, gotel SIGKILLed ({'links' if links == '1' else 'perf events'}): "
           f"tracefs uprobe events left / after the next run", f"{len(stale)} / {len(left)}")
    assert left == []
    if links == "0":
        assert stale                 # one event per uprobe gotel had (casgstatus, preemptPark)
    else:
        assert stale == []


def test_a_kernel_without_bpf_compare_and_swap_is_named():
    """The event buffers are claimed by a BPF compare-and-swap (Linux 5.12): an older kernel gets
    one line saying so before bcc is touched, whatever the capabilities."""
    caps = {"CAP_SYS_ADMIN", "CAP_SYS_PTRACE"}
    [line] = privileges.problems(caps=caps, writable=True, release="5.10.0-28-amd64")
    assert line == ("Linux 5.10.0-28-amd64 is too old: gotel's probes need 5.12 or later "
                    "(BPF compare-and-swap)")
    assert privileges.problems(caps=caps, writable=True, release="5.12.0") == []
    assert privileges.problems(caps=caps, writable=True, release="6.18.44-fc-v657") == []
