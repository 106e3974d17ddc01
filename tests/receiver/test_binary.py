"""GoBinary against ground truth from tools gotel did not write.

One program (tests/go/inspectme) built with Go 1.19, 1.21, 1.23, 1.25 and 1.27, each as a default,
stripped (-s -w), PIE, externally linked (cgo) and -race build. Every field is checked against:
`go version -m` (build info), `go tool nm` (symbols), `go tool objdump` (instruction boundaries and
the prologue), `go tool addr2line` (pclntab lookups, also on stripped builds), binutils `readelf`
(DWARF of the binary or of its unstripped twin, program headers) and the toolchain's own
runtime/runtime2.go (wait reason names by number).
"""

import functools
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.app import gotool
from receiver.binary import PROBED_FUNCTIONS, GoBinary
from receiver.layout import G_FIELDS, M_FIELDS

VERSIONS = ["1.19", "1.21", "1.23", "1.25", "1.26", "1.27"]
VARIANTS = ["default", "stripped", "pie", "external", "race"]
MATRIX = [(v, k) for v in VERSIONS for k in VARIANTS]
# Functions present in every release tested (runtime.goready is inlined in some).
SPLIT_FUNCTIONS = ("runtime.newproc1", "runtime.gopark", "runtime.ready", "runtime.execute")


def go(version, *args, **kw):
    tool = gotool.toolchain(version)
    return subprocess.run([str(tool), *args], env=gotool.go_env(tool), capture_output=True, text=True,
                          check=True, timeout=120, **kw).stdout


@functools.lru_cache(maxsize=None)
def opened(path):
    return GoBinary.open(str(path))


# --- ground truth parsers ------------------------------------------------------------------------

def go_version_m(version, path):
    """`go version -m`: (go version, {"path", "mod", "mod_version"}, {build setting: value})."""
    lines = go(version, "version", "-m", str(path)).splitlines()
    gover = lines[0].split(": ", 1)[1].strip()
    info, settings = {}, {}
    for line in lines[1:]:
        parts = line.strip("\n").split("\t")[1:]
        if parts[0] == "path":
            info["path"] = parts[1]
        elif parts[0] == "mod":
            info["mod"], info["mod_version"] = parts[1], parts[2]
        elif parts[0] == "build":
            key, _, value = parts[1].partition("=")
            settings[key] = value[1:-1] if value.startswith('"') else value
    return gover, info, settings


def go_tool_nm(version, path):
    """{name: (address, size)} of the text symbols `go tool nm -size` lists."""
    out = {}
    for line in go(version, "tool", "nm", "-size", str(path)).splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[2] in "Tt":
            out.setdefault(fields[3], (int(fields[0], 16), int(fields[1])))
    return out


def go_objdump(version, path, name):
    """[(address, assembly)] of one function, by Go's own disassembler."""
    out = go(version, "tool", "objdump", "-s", f"^{re.escape(name)}$", str(path))
    return [(int(m.group(1), 16), m.group(2).strip())
            for m in re.finditer(r"\t+0x([0-9a-f]+)\t+[0-9a-f]+\t+([^\t\n]*)", out)]


def addr2line(version, path, pcs):
    """[(function, file, line)] for each PC, by `go tool addr2line` (reads pclntab, works stripped).

    The newest toolchain's: Go 1.19's own addr2line answers "?" for every PC of a 1.19 PIE."""
    out = go(VERSIONS[-1], "tool", "addr2line", str(path), input="".join(f"{pc:#x}\n" for pc in pcs))
    lines = out.splitlines()
    result = []
    for fn, where in zip(lines[0::2], lines[1::2]):
        file, _, line = where.rpartition(":")
        result.append((fn, file, int(line)))
    return result


def readelf_dwarf(path):
    """({struct: {member: offset}}, {constant: value}) for runtime.g/m/gobuf and runtime._G*, parsed
    from binutils' `readelf --debug-dump=info`."""
    text = subprocess.run(["readelf", "--debug-dump=info", str(path)], capture_output=True, text=True,
                          check=True).stdout
    structs, constants = {}, {}
    current = None  # (level, tag, attrs)
    die_re = re.compile(r"^\s*<(\d+)><[0-9a-f]+>: Abbrev Number: \d+ \((DW_TAG_\w+)\)")
    attr_re = re.compile(r"^\s*<[0-9a-f]+>\s+(DW_AT_\w+)\s*: (.*)$")
    dies = []
    for line in text.splitlines():
        m = die_re.match(line)
        if m:
            current = [int(m.group(1)), m.group(2), {}]
            dies.append(current)
            continue
        m = attr_re.match(line)
        if m and current is not None:
            current[2][m.group(1)] = m.group(2).strip()
    owner = None
    for level, tag, attrs in dies:
        name = attrs.get("DW_AT_name", "")
        if level == 1:
            owner = None
            if tag == "DW_TAG_structure_type" and name in ("runtime.g", "runtime.m", "runtime.gobuf") \
                    and name not in structs:
                owner = structs.setdefault(name, {})
            elif tag == "DW_TAG_constant" and re.match(r"runtime\._G(scan)?[a-z]", name) \
                    and not name.startswith("runtime._Goid"):
                constants[name[len("runtime."):]] = int(attrs["DW_AT_const_value"].split()[0])
        elif level == 2 and owner is not None and tag == "DW_TAG_member":
            owner[name] = int(attrs["DW_AT_data_member_location"].split()[0])
    return structs, constants


def wait_reasons_from_source(version):
    """runtime.waitReasonStrings by number, from the toolchain's runtime/runtime2.go."""
    src = (Path(gotool.toolchain(version)).parents[1] / "src/runtime/runtime2.go").read_text()
    block = src[src.index("waitReasonZero"):]
    block = block[:block.index("\n)")]
    order = [line.split()[0] for line in block.splitlines() if line.strip() and not line.strip().startswith("//")]
    table = src[src.index("var waitReasonStrings"):]
    table = table[:table.index("\n}")]
    strings = dict(re.findall(r"(\w+):\s*\"([^\"]*)\"", table))
    count = max(order.index(k) for k in strings) + 1
    return [strings.get(order[i], "") for i in range(count)]


def load_segments(path):
    """[(vaddr, offset, filesz)] of the PT_LOAD segments, from `readelf -lW`."""
    out = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True, check=True).stdout
    return [(int(m.group(2), 16), int(m.group(1), 16), int(m.group(3), 16))
            for m in re.finditer(r"^\s*LOAD\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x[0-9a-f]+\s+0x([0-9a-f]+)",
                                 out, re.M)]


def twin(inspectme, version, variant):
    """The build whose DWARF and symbols are ground truth: the default build for a stripped one."""
    return inspectme(version, "default" if variant == "stripped" else variant)


# --- the matrix ----------------------------------------------------------------------------------

@pytest.mark.parametrize("version,variant", MATRIX)
def test_build_info_matches_go_version_m(inspectme, version, variant):
    path = inspectme(version, variant)
    binary = opened(path)
    gover, info, settings = go_version_m(version, path)
    assert binary.go_version == gover
    assert binary.module == info["mod"] == "example.com/gotel/inspectme"
    assert binary.info.path == info["path"]
    assert binary.info.module_version == info["mod_version"]
    assert binary.build_settings == settings
    assert binary.goarch == "amd64"
    assert binary.stripped == (variant == "stripped")
    assert binary.has_dwarf == (variant != "stripped")
    assert binary.pie == (variant == "pie")
    if variant == "race":
        assert settings["-race"] == "true"


@pytest.mark.parametrize("version,variant", MATRIX)
def test_functions_match_go_tools(inspectme, version, variant):
    path = inspectme(version, variant)
    binary = opened(path)
    assert "runtime.casgstatus" in binary.functions
    assert set(SPLIT_FUNCTIONS) <= set(binary.functions)
    # addr2line reads pclntab with Go's own debug/gosym: each address is that function's entry.
    names = list(binary.functions)
    entries = [binary.functions[n].address for n in names]
    at_entry = addr2line(version, path, entries)
    before = addr2line(version, path, [a - 1 for a in entries])
    for name, (fn, _, _), (prev_fn, _, _) in zip(names, at_entry, before):
        assert fn == name
        assert prev_fn != name
    truth = go_tool_nm(version, twin(inspectme, version, variant))
    for name, f in binary.functions.items():
        if variant == "stripped":
            # The code is the twin's: same entry, and the same probe offset into it.
            twin_f = opened(twin(inspectme, version, variant)).functions[name]
            assert (f.address, f.probe_address) == (twin_f.address, twin_f.probe_address)
        else:
            assert (f.address, f.size) == truth[name]


@pytest.mark.parametrize("version,variant", MATRIX)
def test_probe_placement_agrees_with_go_objdump(inspectme, version, variant):
    path = twin(inspectme, version, variant)
    binary = opened(inspectme(version, variant))
    for name, f in binary.functions.items():
        insns = go_objdump(version, path, name)
        addresses = [a for a, _ in insns]
        assert f.probe_address in addresses, f"{name}: probe not on an instruction boundary"
        k = addresses.index(f.probe_address)
        asm = dict(insns)
        where = binary.placement(name)
        assert where.emulated
        # The prologue: a stack check (cmp; jbe) unless nosplit (casgstatus).
        split = 0 if name == "runtime.casgstatus" else 2
        if split:
            assert "0x10(R14)" in insns[0][1] and insns[0][1].startswith("CMPQ")
            assert insns[1][1].startswith("JBE")
        if version == "1.19":
            # Frames start with sub rsp, which the kernel single-steps: the probe moved on along the
            # straight-line frame set-up to a nop or jcc, which it emulates.
            assert insns[split][1].startswith("SUBQ $") and k > split
            assert asm[f.probe_address].split()[0] in ("NOPL", "NOPW", "JE", "JNE", "JB", "JAE", "JA", "JBE")
            assert where.kind == "after-frame-setup"
        else:
            # Go 1.21+: the push rbp right after the prologue, or the entry of a nosplit function.
            assert k == split and asm[f.probe_address].startswith("PUSHQ BP")
            assert where.kind == ("after-prologue" if split else "entry")
        assert binary.ret_sites(name)
        assert all(asm[r].startswith("RET") for r in binary.ret_sites(name))


@pytest.mark.parametrize("version,variant", MATRIX)
def test_layout_matches_readelf_dwarf(inspectme, version, variant):
    binary = opened(inspectme(version, variant))
    structs, constants = readelf_dwarf(twin(inspectme, version, variant))
    lay = binary.layout
    assert lay.source == ("table" if variant == "stripped" else "dwarf")
    g, m = structs["runtime.g"], structs["runtime.m"]
    for field in G_FIELDS:
        if field == "parentGoid" and version == "1.19":
            assert field not in lay.g and field not in g
            assert any("parentGoid" in note for note in lay.notes)
            continue
        assert lay.g[field] == g[field], field
    assert lay.g["sched.sp"] == g["sched"] + structs["runtime.gobuf"]["sp"]
    for field in M_FIELDS:
        assert lay.m[field] == m[field], field
    assert lay.statuses == constants
    assert lay.wait_reasons == wait_reasons_from_source(version)


@pytest.mark.parametrize("version,variant", MATRIX)
def test_file_offsets_follow_readelf_segments(inspectme, version, variant):
    path = inspectme(version, variant)
    binary = opened(path)
    data = Path(path).read_bytes()
    segments = load_segments(path)
    for f in binary.functions.values():
        vaddr = f.probe_address
        expected = [vaddr - va + off for va, off, size in segments if va <= vaddr < va + size]
        assert binary.file_offset(vaddr) == expected[0]
        assert data[expected[0]:expected[0] + 1] == binary.image.read(vaddr, 1)


@pytest.mark.parametrize("version,variant", [(v, k) for v, k in MATRIX if k != "stripped"])
def test_symtab_and_pclntab_agree(inspectme, version, variant):
    binary = opened(inspectme(version, variant))
    tab = binary.pclntab
    # Go 1.26+ leaves pcHeader.textStart 0: the start must come from moduledata, and be runtime.text.
    header_text_start = int.from_bytes(tab.raw[24:32], "little")
    assert (header_text_start == 0) == (version >= "1.26")
    assert tab.text_start == binary.image.symbols(["runtime.text"], functions_only=False)["runtime.text"][0]
    lo, hi = int(tab.entries[0]), int(tab.entries[-1])
    from_pcln = {(_normal(n), a) for n, a in zip(tab.names(), tab.entries[:-1].tolist())}
    from_symtab = {(_normal(n), a) for n, (a, _) in binary.image.function_symbols().items()
                   if lo <= a < hi and n != "runtime.text" and "(.text" not in n}
    # Same functions at the same addresses; names agree except for generated type equality
    # functions, which Go 1.19's linker dedups by content and then names differently in each table.
    assert {a for _, a in from_pcln} == {a for _, a in from_symtab}
    generated = ("type..eq.", "type:.eq.")
    assert {x for x in from_pcln if not x[0].startswith(generated)} == \
        {x for x in from_symtab if not x[0].startswith(generated)}
    assert binary.image.symbols(PROBED_FUNCTIONS) == {
        n: v for n, v in binary.image.function_symbols().items() if n in PROBED_FUNCTIONS}


def _normal(name):
    # .symtab spells ABI0 assembly functions "x.abi0", the middle dot ".", and array types' lengths
    # "[N]" where pclntab writes "·" and "[...]".
    name = name.removesuffix(".abi0").replace("·", ".")
    return re.sub(r"\[\d+\]", "[...]", name)


@pytest.mark.parametrize("version,variant", [("1.19", "stripped"), ("1.25", "pie"), ("1.27", "stripped"),
                                             ("1.27", "external")])
def test_symbolizer_matches_addr2line(inspectme, version, variant):
    path = inspectme(version, variant)
    binary = opened(path)
    tab = binary.pclntab
    rng = np.random.default_rng(7)
    pcs = np.concatenate([rng.integers(int(tab.entries[0]), int(tab.entries[-1]), 400, dtype=np.uint64),
                          np.array([f.probe_address for f in binary.functions.values()], np.uint64)])
    frames = binary.symbolizer().symbolize(pcs)
    truth = addr2line(version, path, pcs.tolist())
    for i, (fn, file, line) in enumerate(truth):
        assert frames.function[i] == fn
        if line > 0:   # -1: a PC in the padding after a function's last instruction
            assert (frames.file[i], frames.line[i]) == (file, line)
        else:
            assert frames.line[i] == 0
    outside = binary.symbolizer().symbolize([0, 1, 2**63])
    assert list(outside.function) == ["?"] * 3 and list(outside.line) == [0] * 3


def test_symbolizer_is_shared_and_takes_whole_vectors(inspectme):
    """500,000 PCs in one call (benchmarks/bench_inspect.py measures the rate)."""
    binary = opened(inspectme("1.25", "stripped"))
    sym = binary.symbolizer()
    assert binary.symbolizer() is sym
    entries = binary.pclntab.entries[:-1]
    pcs = np.random.default_rng(1).choice(entries[:500], 500_000) + np.uint64(3)
    frames = sym.symbolize(pcs)
    assert len(frames.function) == len(pcs)
    one_by_one = {int(pc): sym.symbolize(np.array([pc], np.uint64)).function[0] for pc in pcs[:50]}
    assert [one_by_one[int(pc)] for pc in pcs[:50]] == list(frames.function[:50])


# --- targets: PIDs, deleted binaries, containers ------------------------------------------------

@pytest.fixture
def running(inspectme, tmp_path):
    """A started inspectme (held before its work) and its copy's path; killed at the end."""
    copy = tmp_path / "inspectme"
    copy.write_bytes(Path(inspectme("1.25")).read_bytes())
    copy.chmod(0o755)
    proc = subprocess.Popen([str(copy)], env={"INSPECTME_WAIT": "1"}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    yield proc, copy
    proc.kill()
    proc.wait()


def test_open_by_pid_even_when_deleted(running):
    from receiver.binary import container_path

    proc, copy = running
    by_path = GoBinary.open(str(copy))
    by_pid = GoBinary.open(proc.pid)
    assert by_pid.path == f"/proc/{proc.pid}/exe" and by_pid.pid == proc.pid
    assert by_pid.functions == by_path.functions
    assert GoBinary.open(str(proc.pid)).functions == by_path.functions
    assert container_path(proc.pid) == Path(f"/proc/{proc.pid}/root") / str(copy).lstrip("/")
    copy.unlink()   # like `go run`'s temporary binaries
    assert GoBinary.open(proc.pid).functions == by_path.functions
    assert container_path(proc.pid) is None


@pytest.mark.parametrize("version,variant", [("1.25", "stripped"), ("1.27", "stripped"), ("1.27", "pie")])
def test_without_section_headers(inspectme, version, variant):
    """With the section header table gone (as after sstrip), build info, pclntab and Go 1.26+'s
    moduledata are found by their contents in the loadable segments."""
    path = inspectme(version, variant)
    data = bytearray(Path(path).read_bytes())
    data[0x28:0x30] = bytes(8)      # e_shoff
    data[0x3C:0x40] = bytes(4)      # e_shnum, e_shstrndx
    binary = GoBinary.from_bytes(bytes(data))
    assert not binary.image.sections
    # Sizes come from pclntab now (to the next function, padding included), not from .symtab.
    assert {(f.name, f.address, f.probe_address) for f in binary.functions.values()} == \
        {(f.name, f.address, f.probe_address) for f in opened(path).functions.values()}
    assert binary.go_version == opened(path).go_version


def test_layout_table_covers_every_toolchain():
    from receiver import layout

    # `go version` prints "go version go1.19.8 linux/amd64"; Debian's toolchain is named "1.19" only.
    installed = {go(v, "version").split()[2] for v in gotool.toolchains()}
    assert installed <= set(layout.table())


def test_missing_function_is_a_clear_error(inspectme):
    from receiver.errors import UnsupportedBinary

    binary = opened(inspectme("1.25"))
    with pytest.raises(UnsupportedBinary, match="runtime.goready.*available: runtime.casgstatus"):
        binary.function("runtime.goready")
    assert binary.function("runtime.casgstatus") is binary.functions["runtime.casgstatus"]


def test_damaged_dwarf_falls_back_to_the_table(inspectme):
    path = inspectme("1.25")
    data = bytearray(Path(path).read_bytes())
    info = opened(path).image.sections[".debug_info"]
    data[info.offset:info.offset + info.size] = bytes(info.size)
    binary = GoBinary.from_bytes(bytes(data))
    assert binary.layout.source == "table"
    dwarf_g = opened(path).layout.g
    assert binary.layout.g == {k: dwarf_g[k] for k in binary.layout.g}
    assert binary.layout.wait_reasons == opened(path).layout.wait_reasons   # still read from .symtab


def test_symbolizer_takes_a_pie_load_bias(inspectme):
    binary = opened(inspectme("1.25", "pie"))
    f = binary.functions["runtime.newproc1"]
    bias = 0x7F0000000000
    frames = binary.symbolizer().symbolize([f.probe_address + bias], bias=bias)
    assert frames.function[0] == "runtime.newproc1"
    assert binary.symbolizer().function_names([f.address + bias], bias=bias)[0] == "runtime.newproc1"
