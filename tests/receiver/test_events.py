"""struct gotel_event (bpf/gotel_event.h) and EVENT_DTYPE (receiver/events.py) agree byte for byte.

The decoder's reading of raw goroutine statuses agrees with every Go version's numbering.

The header is compiled twice: by the host C compiler (offsetof/sizeof printed by a tiny program) and
by bcc's clang as BPF (offsets proved with _Static_assert, so a mismatch fails the compile).
"""

import subprocess

import pytest

from receiver.events import EVENT_DTYPE, EVENT_HEADER, EVENT_SIZE, Kind

FIELDS = EVENT_DTYPE.names


def c_layout_program():
    prints = "\n".join(
        f'    printf("{name} %zu %zu\\n", offsetof(struct gotel_event, {name}), '
        f"sizeof(((struct gotel_event *)0)->{name}));" for name in FIELDS)
    return f"""#include <stddef.h>
#include <stdio.h>
#include <linux/types.h>
#include "{EVENT_HEADER}"
int main(void) {{
    printf("sizeof %zu 0\\n", sizeof(struct gotel_event));
{prints}
    return 0;
}}
"""


def test_header_matches_dtype_with_host_compiler(tmp_path):
    src = tmp_path / "layout.c"
    src.write_text(c_layout_program())
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-Wall", "-Werror", "-o", str(exe), str(src)], check=True)
    rows = dict((line.split()[0], tuple(map(int, line.split()[1:])))
                for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                           check=True).stdout.splitlines())
    assert rows.pop("sizeof")[0] == EVENT_SIZE == 64
    assert rows == {name: (EVENT_DTYPE.fields[name][1], EVENT_DTYPE.fields[name][0].itemsize)
                    for name in FIELDS}


@pytest.mark.bpf
def test_header_matches_dtype_in_bpf(require_bpf):
    from bcc import BPF

    asserts = "\n".join(
        f"_Static_assert(offsetof(struct gotel_event, {name}) == {EVENT_DTYPE.fields[name][1]}, "
        f'"{name}");' for name in FIELDS)
    text = f"""#include <uapi/linux/ptrace.h>
#include "{EVENT_HEADER}"
{asserts}
int probe(struct pt_regs *ctx) {{ return 0; }}
"""
    BPF(text=text).cleanup()


def test_kinds_match_header():
    defines = {}
    for line in EVENT_HEADER.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "#define" and parts[1].startswith("GOTEL_KIND_"):
            defines[parts[1][len("GOTEL_KIND_"):]] = int(parts[2])
    assert defines == {k.name: k.value for k in Kind}


def test_dtype_is_little_endian_and_aligned():
    for name in FIELDS:
        dt, offset = EVENT_DTYPE.fields[name][:2]
        assert dt == dt.newbyteorder("<"), f"{name} is not little-endian"
        assert offset % dt.itemsize == 0, f"{name} is not naturally aligned"


def test_monotonic_timestamps_become_unix_ns_in_place_once_per_batch():
    import time

    import numpy as np

    from receiver.clock import MonotonicClock, measure_offset

    now = [0.0]
    clock = MonotonicClock(refresh_s=1.0, now=lambda: now[0])
    start = time.monotonic_ns()
    ts = np.array([start, start + 1000], dtype="<u8")
    mono = ts.copy()
    out = clock.to_unix(ts)
    assert out is ts                                      # in place, no copy
    assert abs(int(ts[0]) - time.time_ns()) < 10**9
    assert int(ts[1] - ts[0]) == 1000
    assert np.all(ts - mono == np.uint64(clock.offset_ns))
    first = clock.offset_ns
    now[0] = 0.5
    clock.to_unix(np.zeros(0, dtype="<u8"))
    assert clock.offset_ns == first                       # not re-measured before refresh_s
    assert abs(measure_offset() - first) < 10**7


def test_every_known_go_version_numbers_statuses_as_the_decoder_reads_them():
    """The decoder reads raw statuses of EXISTING/SYSCALL_EXIT events; each version's layout
    (the committed table, generated from each toolchain's DWARF) must agree, or attach refuses."""
    import json

    from receiver.events import DECODED_STATUSES

    versions = json.loads((EVENT_HEADER.parents[1] / "receiver" / "layouts.json").read_text())["layouts"]
    assert len(versions) >= 5
    for version, entry in versions.items():
        statuses = entry["statuses"]
        assert {n: statuses[n] for n in DECODED_STATUSES} == DECODED_STATUSES, version


def test_a_binary_that_renumbers_statuses_is_refused(inspectme):
    import dataclasses

    from receiver.binary import GoBinary
    from receiver.errors import UnsupportedGoVersion
    from receiver.events import check_statuses

    binary = GoBinary.open(inspectme("1.25"))
    check_statuses(binary)
    renumbered = dataclasses.replace(binary.layout, statuses={**binary.layout.statuses, "_Gwaiting": 5})
    binary.__dict__["layout"] = renumbered
    with pytest.raises(UnsupportedGoVersion, match="numbers goroutine statuses differently"):
        check_statuses(binary)
