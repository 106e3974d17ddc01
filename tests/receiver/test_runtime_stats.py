"""Runtime globals in stripped binaries, and Go runtime metrics read from memory, against the
program's own ``runtime/metrics`` read at the same moment (tests/go/rtmetrics)."""

import json
import os
import subprocess

import numpy as np
import pytest

from pipeline.app import gotool
from receiver import globals as globals_mod
from receiver.binary import GoBinary
from receiver.errors import UnsupportedGoVersion
from receiver.runtime_stats import SCHED_GOIDGEN_OFFSET, RuntimeStatsReader

ALL_VERSIONS = list(gotool.toolchains())
METRIC_VERSIONS = ["1.19", "1.21", "1.23", "1.25", "1.27"]


def _strip(path, tmp_path):
    out = tmp_path / (path.name + ".strip")
    subprocess.run(["strip", "-o", str(out), str(path)], check=True)
    return out


@pytest.mark.parametrize("variant", ["default", "pie"])
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_stripped_globals_equal_symtab(inspectme, tmp_path, version, variant):
    path = inspectme(version, variant)
    twin = GoBinary.open(path)
    stripped = GoBinary.open(_strip(path, tmp_path))   # same link, same addresses, no .symtab
    assert stripped.stripped and not twin.stripped
    for name in globals_mod.PATTERNS:
        want = globals_mod.symtab_address(twin, name)
        assert want is not None, name
        assert globals_mod.global_address(stripped, name) == want, (version, variant, name)
        assert globals_mod.pattern_address(twin, name) == want, (version, variant, name)


@pytest.mark.parametrize("version", ["1.19", "1.27"])
@pytest.mark.parametrize("variant", ["external", "race"])
def test_stripped_globals_equal_symtab_cgo_race(inspectme, tmp_path, version, variant):
    test_stripped_globals_equal_symtab(inspectme, tmp_path, version, variant)


def test_unverified_release_is_refused(inspectme, tmp_path, monkeypatch):
    stripped = GoBinary.open(_strip(inspectme("1.25"), tmp_path))
    from receiver import layout
    table = dict(layout.table())
    table.pop(stripped.go_version)
    monkeypatch.setattr(layout, "_TABLE", table)
    with pytest.raises(UnsupportedGoVersion, match="verified"):
        globals_mod.pattern_address(stripped, "runtime.allgs")


class Program:
    """tests/go/rtmetrics running, with gotel's reader on it."""

    def __init__(self, path, env):
        self.proc = subprocess.Popen([str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, **env})
        assert self.proc.stdout.readline().strip() == "ready"
        self.binary = GoBinary.open(self.proc.pid)
        self.reader = RuntimeStatsReader(self.binary, self.proc.pid)

    def ask(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline()

    def close(self):
        self.reader.close()
        self.proc.kill()
        self.proc.wait()


def _compare(path, env):
    prog = Program(path, env)
    try:
        prog.ask("quiesce")
        before = prog.reader.read()
        theirs = json.loads(prog.ask("metrics"))
        after = prog.reader.read()
    finally:
        prog.close()
    assert before.rejected == [] and after.rejected == []

    def between(name, ours_before, ours_after, value, slack=0):
        lo, hi = min(ours_before, ours_after) - slack, max(ours_before, ours_after) + slack
        assert lo <= value <= hi, f"{name}: runtime/metrics {value}, gotel {ours_before}..{ours_after}"

    # Settings: exact.
    assert before.gomaxprocs == theirs["/sched/gomaxprocs:threads"] == int(env["GOMAXPROCS"])
    assert before.gogc == theirs.get("/gc/gogc:percent", int(env["GOGC"])) == int(env["GOGC"])
    limit = int(env.get("GOMEMLIMIT", (1 << 63) - 1))
    assert before.memory_limit == theirs.get("/gc/gomemlimit:bytes", limit) == limit
    # Moving values: the program allocates nothing between the reads but its own metrics.Read and
    # JSON encoding, so theirs lies between gotel's read before and after.
    between("allocations", before.allocations, after.allocations, theirs["/gc/heap/allocs:objects"])
    between("allocated", before.allocated_bytes, after.allocated_bytes, theirs["/gc/heap/allocs:bytes"])
    used = theirs["/memory/classes/total:bytes"] - theirs["/memory/classes/heap/released:bytes"]
    # Memory used is not monotonic (the background scavenger returns memory at any time): 1 MiB slack.
    between("memory used", before.memory_stack + before.memory_other, after.memory_stack + after.memory_other,
            used, slack=1 << 20)
    stack = theirs["/memory/classes/heap/stacks:bytes"] + theirs["/memory/classes/os-stacks:bytes"]
    between("memory stack", before.memory_stack, after.memory_stack, stack)
    between("gc cycles", before.gc_cycles, after.gc_cycles, theirs["/gc/cycles/total:gc-cycles"])
    between("goroutines", before.goroutines, after.goroutines, theirs["/sched/goroutines:goroutines"])
    if "/cpu/classes/user:cpu-seconds" in theirs:   # Go 1.20+: the snapshot of the last GC
        for state, name in (("gc", "gc/total"), ("scavenge", "scavenge/total"), ("idle", "idle"), ("user", "user")):
            value = theirs[f"/cpu/classes/{name}:cpu-seconds"]
            lo, hi = sorted((before.cpu_ns[state] / 1e9, after.cpu_ns[state] / 1e9))
            assert lo - 1e-9 <= value <= hi + 1e-9, (state, value, lo, hi)
    else:
        assert before.cpu_ns is None
    # Under a binding memory limit the goal follows the runtime's mapped memory, which moves with the
    # program's own reply: 256 KiB slack then.
    between("heap goal", before.heap_goal, after.heap_goal, theirs["/gc/heap/goal:bytes"],
            slack=(256 << 10) if "GOMEMLIMIT" in env else 0)
    for ours_b, ours_a, name in (
            (before.sched_latency, after.sched_latency, "/sched/latencies:seconds"),
            (before.gc_pauses, after.gc_pauses, "/sched/pauses/total/gc:seconds"
             if "/sched/pauses/total/gc:seconds" in theirs else "/gc/pauses:seconds")):
        hist = theirs[name]
        assert np.allclose(np.clip(ours_b.bounds, -1e300, 1e300), hist["buckets"]), name
        counts = np.array(hist["counts"], dtype=np.uint64)
        assert np.all(ours_b.counts <= counts) and np.all(counts <= ours_a.counts), name
    return before


@pytest.mark.parametrize("version", METRIC_VERSIONS)
def test_runtime_metrics_match_runtime(go_build, version):
    stats = _compare(go_build("rtmetrics", version), {"GOGC": "150", "GOMAXPROCS": "3"})
    assert stats.gc_cycles >= 1 and stats.goroutines >= 26


@pytest.mark.parametrize("version,flags", [("1.21", ("-ldflags=-s -w",)), ("1.27", ("-ldflags=-s -w",)),
                                           ("1.23", ("-buildmode=pie",)),
                                           ("1.25", ("-buildmode=pie", "-ldflags=-s -w"))])
def test_runtime_metrics_stripped_and_pie(go_build, version, flags):
    path = go_build("rtmetrics", version, flags)
    binary = GoBinary.open(path)
    if "-ldflags=-s -w" in flags:
        assert binary.stripped and binary.layout.source == "table"
    _compare(path, {"GOGC": "80", "GOMAXPROCS": "2"})


@pytest.mark.parametrize("version,flags", [("1.27", ("-ldflags=-linkmode=external",)), ("1.25", ("-race",))],
                         ids=["cgo-external", "race"])
def test_runtime_metrics_cgo_and_race(go_build, version, flags):
    _compare(go_build("rtmetrics", version, flags, cgo=True), {"GOGC": "100", "GOMAXPROCS": "2"})


@pytest.mark.parametrize("version", ["1.19", "1.25"])
@pytest.mark.parametrize("limit", [3 << 30, 8 << 20], ids=["far", "binding"])
def test_memory_limit_and_the_goal_under_it(go_build, version, limit):
    """A limit far above the heap leaves the GOGC goal (4 MiB at least); one near it (8 MiB: the
    runtime's own memory is 4-10 MiB) sets a lower goal from the memory-limit formula."""
    stats = _compare(go_build("rtmetrics", version), {"GOGC": "100", "GOMAXPROCS": "2", "GOMEMLIMIT": str(limit)})
    assert (stats.heap_goal < 4 << 20) == (limit == 8 << 20), stats.heap_goal


def _readelf_structs(path, names):
    """{struct: {member: offset, "$size": n}} of top-level DWARF structure types, parsed from binutils'
    `readelf --debug-dump=info` (an oracle independent of pyelftools)."""
    import re
    text = subprocess.run(["readelf", "--debug-dump=info", str(path)], capture_output=True, text=True,
                          check=True).stdout
    die_re = re.compile(r"^\s*<(\d+)><[0-9a-f]+>: Abbrev Number: \d+ \((DW_TAG_\w+)\)")
    attr_re = re.compile(r"^\s*<[0-9a-f]+>\s+(DW_AT_\w+)\s*: (.*)$")
    structs, owner, current = {}, None, None
    for line in text.splitlines():
        m = die_re.match(line)
        if m:
            current = [int(m.group(1)), m.group(2), {}]
            if current[0] <= 1:
                owner = None
            continue
        m = attr_re.match(line)
        if not m or current is None:
            continue
        level, tag, attrs = current
        attrs[m.group(1)] = m.group(2).strip()
        name = attrs.get("DW_AT_name", "")
        if level == 1 and tag == "DW_TAG_structure_type" and m.group(1) == "DW_AT_byte_size" \
                and name in names and name not in structs:
            owner = structs.setdefault(name, {"$size": int(attrs["DW_AT_byte_size"].split()[0])})
        elif level == 2 and owner is not None and tag == "DW_TAG_member" \
                and m.group(1) == "DW_AT_data_member_location":
            owner[name] = int(m.group(2).split()[0])
    return structs


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_runtime_structs_match_readelf_and_the_table(inspectme, version):
    from receiver.runtime_structs import STRUCT_FIELDS

    path = inspectme(version)
    lay = GoBinary.open(path).layout
    oracle = _readelf_structs(path, set(STRUCT_FIELDS))
    core = set(STRUCT_FIELDS) - {"runtime.cpuStats", "runtime.workType"}   # cpuStats: Go 1.20+
    assert core <= set(lay.structs) <= set(STRUCT_FIELDS)
    assert ("runtime.cpuStats" in lay.structs) == (version != "1.19")
    for struct, fields in lay.structs.items():
        for field_path, value in fields.items():
            if "." not in field_path:
                assert oracle[struct][field_path] == value, (struct, field_path)
    assert oracle["runtime.schedt"]["goidgen"] == SCHED_GOIDGEN_OFFSET
    # The table (what a binary without DWARF gets) holds exactly what DWARF says.
    stripped = GoBinary.open(inspectme(version, "stripped")).layout
    assert stripped.source == "table"
    assert stripped.structs == lay.structs and stripped.class_to_size == lay.class_to_size
    assert len(lay.class_to_size) == lay.structs["runtime.heapStatsDelta"]["smallAllocCount.$len"]


def test_inspect_shows_where_each_global_was_found(inspectme, tmp_path):
    from receiver import inspect

    path = inspectme("1.27")
    plain = inspect.report(str(path))["globals"]
    stripped = inspect.report(str(_strip(path, tmp_path)))
    assert {g["source"] for g in plain.values()} == {"symtab"}
    assert {g["source"] for g in stripped["globals"].values()} == {"instructions"}
    assert {k: g["address"] for k, g in stripped["globals"].items()} == {k: g["address"] for k, g in plain.items()}
    assert "runtime.allgs" in inspect.render(stripped)
