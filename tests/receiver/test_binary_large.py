"""Inspection of a real ~30 MB Go binary: the Go 1.27 compiler (symbols, no DWARF, as Go
distributions ship it). Timings live in benchmarks/bench_inspect.py, not here."""

import pytest

from pipeline.app import gotool
from receiver import layout
from receiver.binary import GoBinary


@pytest.fixture(scope="module")
def compiler():
    go = gotool.toolchain("1.27")
    path = go.parents[1] / "pkg/tool/linux_amd64/compile"
    if path.stat().st_size < 20e6:
        pytest.skip(f"{path} is only {path.stat().st_size} bytes")
    return path


def test_large_binary_without_dwarf_opens_from_the_table(compiler):
    """The ~30 MB case of the timing budget; benchmarks/bench_inspect.py measures how long it takes."""
    binary = GoBinary.open(compiler)
    assert not binary.has_dwarf and binary.layout.source == "table"
    assert binary.functions["runtime.casgstatus"].probe_address


def test_dwarf_fast_path_equals_full_walk(inspectme, monkeypatch):
    binary = GoBinary.open(inspectme("1.23"))
    fast = layout.read_dwarf(binary.image.elffile())
    monkeypatch.setattr(layout, "_WANTED_NAMES", layout.re.compile(rb"(?!x)x"))
    assert layout.read_dwarf(binary.image.elffile()) == fast
