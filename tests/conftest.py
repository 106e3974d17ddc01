"""Shared fixtures: Go toolchains, built test programs, and the checks real tracing needs."""

import os
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.app import gotool

GO_PROGRAMS = Path(__file__).resolve().parent / "go"


@pytest.fixture(scope="session")
def go_build(tmp_path_factory):
    """build(program, version="1.25", flags=(), cgo=False) -> path of the built binary.

    program names a folder under tests/go. Builds are cached for the session.
    """
    out_dir = tmp_path_factory.mktemp("gobin")

    def build(program, version="1.25", flags=(), cgo=False):
        return gotool.build(GO_PROGRAMS / program, out_dir, version=version, flags=flags, cgo=cgo)

    return build


@pytest.fixture(scope="session")
def require_bpf():
    """Fail (not skip) where tracing should work: gotel's machines run as root with bcc installed."""
    if os.geteuid() != 0:
        pytest.skip("real tracing needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE)")
    import bcc  # noqa: F401  (an ImportError here is a set-up defect, so it fails the test)


def run_go(binary, *args, env=None, stdin=None, timeout=60):
    """Run a Go program to completion; return CompletedProcess with text output."""
    return subprocess.run(
        [str(binary), *map(str, args)], env={**os.environ, **(env or {})}, input=stdin,
        capture_output=True, text=True, timeout=timeout,
    )


# Build variants of tests/go/inspectme that binary inspection is checked on: {name: (flags, cgo)}.
INSPECTME_VARIANTS = {
    "default": ((), False),
    "stripped": (("-ldflags=-s -w",), False),
    "pie": (("-buildmode=pie",), False),
    "external": (("-ldflags=-linkmode=external",), True),
    "race": (("-race",), True),
}


@pytest.fixture(scope="session")
def inspectme(go_build):
    """inspectme(version, variant="default") -> path of tests/go/inspectme built that way (cached)."""

    def build(version, variant="default"):
        flags, cgo = INSPECTME_VARIANTS[variant]
        return go_build("inspectme", version, flags, cgo)

    return build


@pytest.fixture
def blocked_program(go_build, require_bpf):
    """start(*args, version="1.25") -> a running tests/go/blocked, once every goroutine is parked
    (it prints its pprof address, kept as ``.pprof``, then "ready"); killed after the test."""
    procs = []

    def start(*args, version="1.25"):
        p = subprocess.Popen([str(go_build("blocked", version)), *args], stdout=subprocess.PIPE,
                             text=True)
        procs.append(p)
        p.pprof = p.stdout.readline().strip()
        assert p.stdout.readline().strip() == "ready"
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def wait_for(predicate, timeout=20.0, every=0.02):
    """True once predicate() is, False after timeout seconds of trying."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


# --- the fault suite's figures (tests/faults) ---------------------------------------------------
FIGURES = []


@pytest.fixture
def figure(request):
    """figure(what, value, unit=""): one line of the run's reliability figures, under this test's
    name; printed at the end of the run ("Reliability figures") and copied by hand into
    benchmarks/RESULTS.md."""

    def record(what, value, unit=""):
        FIGURES.append((request.node.name, what, value, unit))

    return record


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("Reliability figures")
    for test, what, value, unit in FIGURES:
        v = f"{value:,}" if isinstance(value, int) else (f"{value:.3g}" if isinstance(value, float)
                                                         else str(value))
        terminalreporter.write_line(f"{test}: {what}: {v} {unit}".rstrip())
