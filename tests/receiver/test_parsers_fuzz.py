"""The binary parsers raise only gotel's own errors, whatever bytes they are given.

hypothesis feeds random and mutated inputs to the build info, pclntab, ELF and whole-binary parsers
and to the symbolizer; anything but a ``GotelError`` (an IndexError, a struct.error, a numpy error...)
would reach a user as a traceback.
"""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver import buildinfo, pclntab
from receiver.binary import GoBinary
from receiver.errors import GotelError
from receiver.symbolizer import Symbolizer

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def stripped(inspectme):
    """(bytes of a stripped Go 1.25 binary, its GoBinary)."""
    path = inspectme("1.25", "stripped")
    return Path(path).read_bytes(), GoBinary.open(path)


def mutate(data, edits, start=0, end=None):
    """data with bytes overwritten at (position, value) pairs, positions scaled into [start, end)."""
    buf = bytearray(data)
    end = len(buf) if end is None else end
    for pos, value in edits:
        buf[start + pos % max(1, end - start)] = value
    return bytes(buf)


EDITS = st.lists(st.tuples(st.integers(0, 2**32), st.integers(0, 255)), min_size=1, max_size=24)


def only_gotel_errors(fn, *args):
    try:
        return fn(*args)
    except GotelError:
        return None


@FUZZ
@given(st.binary(max_size=512), st.integers(0, 255), st.integers(0, 255))
def test_buildinfo_record(tail, ptr_size, flags):
    only_gotel_errors(buildinfo.parse_record, buildinfo.MAGIC + bytes([ptr_size, flags]) + bytes(16) + tail,
                      lambda addr, n: bytes(n))
    only_gotel_errors(buildinfo.parse_record, tail)


@FUZZ
@given(st.text(max_size=300))
def test_modinfo_text(text):
    info = buildinfo.parse_modinfo("go1.25.5", text)
    assert isinstance(info.settings, dict)


@FUZZ
@given(st.binary(max_size=2048), st.integers(0, 2**64 - 1))
def test_pclntab_random(body, text_start):
    words = [int.from_bytes(body[i:i + 8].ljust(8, b"\0"), "little") % 4096 for i in range(0, 64, 8)]
    header = pclntab.HEADER.pack(pclntab.MAGIC_120, 0, 0, 1, 8, *words)
    tab = only_gotel_errors(pclntab.PcLnTab, header + body, 0x1000, text_start or 1)
    if tab is not None:
        exercise(tab)


@FUZZ
@given(EDITS)
def test_pclntab_mutated(stripped, edits):
    _, binary = stripped
    good = binary.pclntab
    tab = only_gotel_errors(pclntab.PcLnTab, mutate(good.raw, edits), good.vaddr, good.text_start)
    if tab is not None:
        exercise(tab)


def exercise(tab):
    """Everything the symbolizer and GoBinary ask of a table; must end in GotelError or an answer."""
    only_gotel_errors(tab.lookup, ["runtime.casgstatus", "main.main"])
    for i in (0, tab.nfunc // 2, tab.nfunc - 1):
        only_gotel_errors(tab.name, i)
        only_gotel_errors(tab.pcvalue_table, i, 6)
        only_gotel_errors(tab.file_name, i, 0)
    edges = np.array([0, 2**64 - 1], np.uint64)
    pcs = np.concatenate([tab.entries[:50], tab.entries[:50] + np.uint64(5), edges])
    frames = Symbolizer(tab).symbolize(pcs)
    assert len(frames.line) == len(pcs)


@FUZZ
@given(EDITS, st.sampled_from(["header", "buildinfo", "pclntab", "anywhere"]))
def test_whole_binary_mutated(stripped, edits, region):
    data, binary = stripped
    start, end = {
        "header": (0, 4096),
        "buildinfo": _section(binary, ".go.buildinfo"),
        "pclntab": _section(binary, ".gopclntab"),
        "anywhere": (0, len(data)),
    }[region]
    only_gotel_errors(GoBinary.from_bytes, mutate(data, edits, start, end))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 2**31))
def test_whole_binary_truncated(stripped, size):
    data, _ = stripped
    only_gotel_errors(GoBinary.from_bytes, data[:size % len(data)])


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    only_gotel_errors(GoBinary.from_bytes, data)
    only_gotel_errors(GoBinary.from_bytes, b"\x7fELF\x02\x01\x01" + data)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(EDITS)
def test_dwarf_mutated(inspectme, edits):
    path = inspectme("1.25")
    data = Path(path).read_bytes()
    image = GoBinary.open(path).image
    s = image.sections[".debug_info"]
    only_gotel_errors(GoBinary.from_bytes, mutate(data, edits, s.offset, s.offset + s.size))


def _section(binary, name):
    s = binary.image.sections[name]
    return s.offset, s.offset + s.size
