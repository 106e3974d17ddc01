"""The goroutine census against the Go runtime's own goroutine dump.

A real Go program (tests/go/blocked) parks goroutines on channels, select, a mutex, a WaitGroup, a
Cond, a sleep and a socket, some under inlined calls, and serves net/http/pprof. The oracle is its
own ``/debug/pprof/goroutine?debug=2`` (``runtime.Stack(all)``): `gotel dump` must print the same
goroutines with the same header (status, wait reason), the same frames (function, file:line,
+offset) and the same creation site, for every goroutine the runtime reports the same way before
and after gotel reads it (the pprof request's own goroutines move and are left out).
"""

import gzip
from pathlib import Path
import io
import os
import re
import subprocess
import urllib.request

import numpy as np
import pytest

from pipeline.app import gotool
from receiver import census as census_mod, dump
from receiver.binary import GoBinary
from receiver.errors import TargetError

VERSIONS = ["1.21", "1.22", "1.23", "1.24", "1.25", "1.26", "1.27"]
VARIANTS = {"pie": (("-buildmode=pie",), False), "external": (("-ldflags=-linkmode=external",), True),
            "race": (("-race",), True)}
BLOCKED_FUNCS = {"main.recvForever", "main.sendForever", "main.selectForever", "main.lockForever",
                 "main.waitForever", "main.condForever", "main.recvOn", "main.readForever", "time.Sleep"}


@pytest.fixture
def blocked(go_build, require_bpf):
    """start(version, flags=(), cgo=False, *args) -> (Popen, pprof address); killed afterwards."""
    procs = []

    def start(version, flags=(), cgo=False, args=()):
        binary = go_build("blocked", version, flags, cgo)
        p = subprocess.Popen([str(binary), *args], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        addr = p.stdout.readline().strip()
        assert p.stdout.readline().strip() == "ready"
        return p, addr

    yield start
    for p in procs:
        p.kill()
        p.wait()


def fetch(addr, debug=2):
    with urllib.request.urlopen(f"http://{addr}/debug/pprof/goroutine?debug={debug}", timeout=30) as r:
        return r.read().decode()


_FRAME = re.compile(r"^(.*)\((.*)\)$")


def parse(text):
    """{goid: {"header": "chan receive", "frames": [(func, "file:line +0x..")], "created": ...}}."""
    out = {}
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        m = re.match(r"goroutine (\d+) (?:gp=\S+ m=\S+ (?:mp=\S+ )?)?\[(.*)\]:$", lines[0])
        if not m:
            continue
        g = {"header": m.group(2), "frames": [], "created": None}
        k = 1
        while k < len(lines):
            line = lines[k]
            if line.startswith("created by "):
                g["created"] = (line, lines[k + 1].strip() if k + 1 < len(lines) else "")
                k += 2
                continue
            fm = _FRAME.match(line)
            if fm and k + 1 < len(lines) and lines[k + 1].startswith("\t"):
                g["frames"].append((fm.group(1), lines[k + 1].strip()))
                k += 2
                continue
            k += 1
        out[int(m.group(1))] = g
    return out


def run_dump(pid, **kw):
    out = io.StringIO()
    assert dump.command(pid, out=out, **kw) == 0
    return out.getvalue()


def check_agrees(proc, addr):
    before = parse(fetch(addr))
    ours_text = run_dump(proc.pid)
    after = parse(fetch(addr))
    ours = parse(ours_text)
    stable = {goid: g for goid, g in before.items() if after.get(goid) == g and g["header"] != "running"}
    named = {f for g in stable.values() for f, _ in g["frames"]}
    assert BLOCKED_FUNCS <= named, f"the oracle lost the program's parked goroutines: {sorted(named)}"
    for goid, g in stable.items():
        assert goid in ours, f"goroutine {goid} [{g['header']}] missing from gotel dump:\n{ours_text}"
        assert ours[goid]["header"] == g["header"], goid
        assert ours[goid]["frames"] == g["frames"], f"goroutine {goid}"
        assert ours[goid]["created"] == g["created"], goid
    # Nothing invented: every goroutine gotel printed existed for the runtime around that moment,
    # or serves the pprof requests themselves.
    extra = set(ours) - set(before) - set(after)
    for goid in extra:
        assert "net/http.(*Server).Serve" in (ours[goid]["created"] or ("",))[0], ours[goid]


@pytest.mark.parametrize("version", VERSIONS)
def test_dump_agrees_with_the_runtimes_own_goroutine_dump(blocked, version):
    proc, addr = blocked(version)
    check_agrees(proc, addr)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_dump_agrees_on_pie_cgo_and_race_builds(blocked, variant):
    flags, cgo = VARIANTS[variant]
    proc, addr = blocked("1.25", flags, cgo)
    check_agrees(proc, addr)


def test_inlined_calls_are_expanded_from_the_inline_tree(blocked):
    proc, addr = blocked("1.25")
    ours = parse(run_dump(proc.pid))
    g = next(g for g in ours.values() if any(f == "main.recvOn" for f, _ in g["frames"]))
    names = [f for f, _ in g["frames"]]
    at = names.index("main.recvOn")
    assert names[at:at + 4] == ["main.recvOn", "main.inlinedInner", "main.inlinedOuter", "main.nested"]
    # inlined frames carry no +offset, physical ones do (as Go prints them)
    assert "+0x" not in g["frames"][at + 1][1] and "+0x" in g["frames"][at + 3][1]


def test_census_rows_agree_with_the_runtime(blocked):
    proc, addr = blocked("1.25")
    binary = GoBinary.open(proc.pid)
    c = census_mod.CensusReader(binary, proc.pid).read()
    rows = c.goroutines
    oracle = parse(fetch(addr, 2))
    reasons = binary.layout.wait_reasons
    by_goid = {int(r["goid"]): r for r in rows}
    for goid, g in oracle.items():
        if g["header"] in ("chan receive", "chan send", "select", "sync.Mutex.Lock", "sleep"):
            r = by_goid[goid]
            assert reasons[r["wait_reason"]] == g["header"]
            assert r["unwind"] == census_mod.UNWIND_COMPLETE
            assert r["stack_lo"] < r["sched_sp"] < r["stack_hi"]
    assert c.dropped == {"unreadable": 0, "inconsistent": 0, "moved": 0}
    # main.main created the goroutines of main.spawn: parent goid 1
    sym = binary.symbolizer()
    starts = sym.function_names(rows["gopc"], bias=c.bias)
    assert set(rows["parent_goid"][starts == "main.spawn"].tolist()) == {1}


def test_many_goroutines_and_a_depth_bound(blocked):
    proc, _ = blocked("1.25", args=("-n", "5000", "-depth", "80"))
    binary = GoBinary.open(proc.pid)
    c = census_mod.CensusReader(binary, proc.pid).read(max_depth=16)
    sym = binary.symbolizer()
    in_deep = [i for i in range(len(c.goroutines))
               if "main.deep" in sym.function_names(c.frames(i), bias=c.bias).tolist()]
    deep = c.goroutines[in_deep]
    assert len(deep) == 5000
    assert set(deep["frames_len"].tolist()) == {16}
    assert set(deep["unwind"].tolist()) == {census_mod.UNWIND_TRUNCATED}
    full = census_mod.CensusReader(binary, proc.pid).read(max_depth=200)
    names = binary.symbolizer().function_names(full.pcs, bias=full.bias)
    assert (names == "main.deep").sum() >= 5000 * 80


def test_pprof_file_opens_in_go_tool_pprof(blocked, tmp_path):
    proc, _ = blocked("1.25")
    path = tmp_path / "goroutines.pb.gz"
    text = run_dump(proc.pid, pprof=str(path))
    assert text == ""
    gzip.decompress(path.read_bytes())
    go = gotool.toolchain("1.25")
    top = subprocess.run([str(go), "tool", "pprof", "-top", str(path)], capture_output=True, text=True,
                         env=gotool.go_env(go), timeout=120)
    assert top.returncode == 0, top.stderr
    n = len(parse(run_dump(proc.pid)))
    assert f"of {n} total" in top.stdout
    assert re.search(r"\b1\s+\S+%\s+main\.recvForever", top.stdout), top.stdout


def test_group_folds_identical_stacks(blocked):
    proc, _ = blocked("1.25", args=("-n", "50", "-depth", "3"))
    text = run_dump(proc.pid, group=True)
    assert text.startswith("goroutine profile: total ")
    counts = [int(m) for m in re.findall(r"^(\d+) @ ", text, re.M)]
    assert counts[0] == 50 and sum(counts) == int(text.split()[3])
    assert "main.deep+0x" in text


def test_json_lists_every_goroutine(blocked):
    import json

    proc, addr = blocked("1.25")
    before = parse(fetch(addr))
    doc = json.loads(run_dump(proc.pid, as_json_out=True))
    after = parse(fetch(addr))
    goids = {g["goid"] for g in doc["goroutines"]}
    assert {goid for goid, g in before.items() if after.get(goid) == g} <= goids
    g = next(g for g in doc["goroutines"] if g["start_function"] == "main.spawn.func1"
             and g["wait_reason"] == "chan send")
    assert g["frames"][0]["function"] == "runtime.gopark" and g["parent_goid"] == 1


@pytest.mark.parametrize("version", ["1.21", "1.25", "1.27"])
def test_stripped_binary_gives_the_same_dump_as_its_twin(blocked, version):
    """-s -w: no .symtab, no DWARF. runtime.allgs is found from the runtime's code and the g
    layout from gotel's release table; the dump must equal the unstripped twin's, line for line
    (goids aside: both programs run the same code, so they park the same goroutines)."""
    plain, _ = blocked(version)
    stripped, addr = blocked(version, ("-ldflags=-s -w",))
    assert GoBinary.open(stripped.pid).stripped
    check_agrees(stripped, addr)
    a, b = parse(run_dump(plain.pid)), parse(run_dump(stripped.pid))
    strip = lambda gs: sorted((g["header"], g["frames"], g["created"]) for g in gs.values()  # noqa: E731
                              if g["header"] != "IO wait")
    assert strip(a) == strip(b)


def test_gone_process_is_a_target_error(go_build, require_bpf):
    p = subprocess.Popen([str(go_build("blocked", "1.25"))], stdout=subprocess.PIPE, text=True)
    p.stdout.readline()
    reader = census_mod.CensusReader(GoBinary.open(p.pid), p.pid)
    p.kill()
    p.wait()
    with pytest.raises(TargetError):
        reader.read()


def test_process_memory_checks_every_address(require_bpf):
    from receiver.procmem import ProcessMemory

    buf = np.arange(4096, dtype=np.uint8)
    mem = ProcessMemory(os.getpid())
    base = buf.ctypes.data
    recs, ok = mem.read_many(np.array([base, 0, base + 4000, 1 << 63], np.uint64), 96)
    assert ok.tolist() == [True, False, True, False]
    assert recs[0].tolist() == list(range(96)) and recs[2][:96].tolist() == buf[4000:4096].tolist()
    with pytest.raises(ValueError):
        mem.read_many(np.array([base], np.uint64), 1 << 21)


def test_trace_starts_goroutines_blocked_at_attach_at_their_wait_start(blocked, tmp_path):
    """Trace mode takes a census at attach: a goroutine parked before gotel came gets a park span
    from its wait start (stamped by the GCs run here through /debug/pprof/heap?gc=1) to the end of
    tracing, with its wait reason, not a zero-length one at the attach time."""
    import json
    import sys
    import time

    proc, addr = blocked("1.25")
    # Two GCs: the second one's stack scan stamps waitsince with the first one's end time.
    for _ in range(2):
        urllib.request.urlopen(f"http://{addr}/debug/pprof/heap?gc=1", timeout=30).read()
    gc_done_ns = time.time_ns()
    time.sleep(1.0)
    out = tmp_path / "out"
    repo = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-m", "pipeline.app.cli", "trace", "--pid", str(proc.pid),
                        "--duration", "2", "--out", str(out)], cwd=repo, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    spans = [s for line in (out / "traces.jsonl").read_text().splitlines()
             for rs in json.loads(line)["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
    attrs = lambda s: {a["key"]: next(iter(a["value"].values())) for a in s["attributes"]}  # noqa: E731
    parks = [s for s in spans if attrs(s).get("gotel.wait_reason") == "chan send"]
    assert parks, [s["name"] for s in spans]
    start = int(parks[0]["startTimeUnixNano"])
    assert start <= gc_done_ns            # from the stamped wait start, before gotel attached
    assert int(parks[0]["endTimeUnixNano"]) - start >= 2.5e9
