"""How long inspection takes on a real ~30 MB Go binary: the Go 1.27 compiler (symbols, no DWARF, as
Go distributions ship it). The budget is "well under a second" for the whole `gotel inspect`."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import gotool
from receiver import layout
from receiver.binary import GoBinary

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compiler():
    go = gotool.toolchain("1.27")
    path = go.parents[1] / "pkg/tool/linux_amd64/compile"
    if path.stat().st_size < 20e6:
        pytest.skip(f"{path} is only {path.stat().st_size} bytes")
    return path


def best_of(n, fn):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def test_open_large_binary_without_dwarf(compiler):
    binary = GoBinary.open(compiler)
    assert not binary.has_dwarf and binary.layout.source == "table"
    assert best_of(3, lambda: GoBinary.open(compiler)) < 0.25


def test_inspect_command_large_binary_without_dwarf(compiler):
    def run():
        subprocess.run([sys.executable, "-m", "pipeline.cli", "inspect", "--json", str(compiler)],
                       cwd=REPO, check=True, capture_output=True, timeout=60)

    assert best_of(3, run) < 1.0


def test_dwarf_fast_path_equals_full_walk(inspectme, monkeypatch):
    binary = GoBinary.open(inspectme("1.23"))
    fast = layout.read_dwarf(binary.image.elffile())
    monkeypatch.setattr(layout, "_WANTED_NAMES", layout.re.compile(rb"(?!x)x"))
    assert layout.read_dwarf(binary.image.elffile()) == fast
