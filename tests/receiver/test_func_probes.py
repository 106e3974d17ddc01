"""Function probes, without a kernel: struct gotel_func_event agrees with FUNC_EVENT_DTYPE, patterns
select the functions they name, and what cannot be probed is refused with one clear line."""

import subprocess

import numpy as np
import pytest

from receiver import funcs
from receiver.binary import GoBinary
from receiver.funcs import FUNC_EVENT_DTYPE, FunctionError, Pattern

FIELDS = FUNC_EVENT_DTYPE.names


def test_header_matches_dtype_with_host_compiler(tmp_path):
    prints = "\n".join(
        f'    printf("{n} %zu %zu\\n", offsetof(struct gotel_func_event, {n}), '
        f"sizeof(((struct gotel_func_event *)0)->{n}));" for n in FIELDS)
    src = tmp_path / "layout.c"
    src.write_text(f"""#include <stddef.h>
#include <stdio.h>
#include <linux/types.h>
#include "{funcs.HEADER}"
int main(void) {{
    printf("sizeof %zu 0\\n", sizeof(struct gotel_func_event));
{prints}
    return 0;
}}
""")
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-Wall", "-Werror", "-o", str(exe), str(src)], check=True)
    rows = dict((line.split()[0], tuple(map(int, line.split()[1:])))
                for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                           check=True).stdout.splitlines())
    assert rows.pop("sizeof")[0] == FUNC_EVENT_DTYPE.itemsize == 160
    assert rows == {n: (FUNC_EVENT_DTYPE.fields[n][1], FUNC_EVENT_DTYPE.fields[n][0].itemsize)
                    for n in FIELDS}


def test_kinds_match_header():
    text = funcs.HEADER.read_text()
    assert f"#define GOTEL_FUNC_ENTRY   {funcs.ENTRY}" in text
    assert f"#define GOTEL_FUNC_RETURN  {funcs.RETURN}" in text
    assert f"#define GOTEL_FUNC_NUM_REGS {funcs.NUM_REGS}" in text
    assert f"#define GOTEL_FUNC_STR_BYTES {funcs.STR_BYTES}" in text
    assert f"#define GOTEL_FUNC_HAS_STR {funcs.HAS_STR}" in text


def test_patterns_parse_methods_and_argument_types():
    assert Pattern.parse("main.(*Server).handle*") == Pattern("main.(*Server).handle*")
    assert Pattern.parse("main.add(int, int)") == Pattern("main.add", ("int", "int"))
    assert Pattern.parse("main.(*T).M(string)") == Pattern("main.(*T).M", ("string",))
    assert Pattern.parse("main.(*T).M(string)").matches("main.(*T).M")
    with pytest.raises(FunctionError, match="unknown argument type"):
        Pattern.parse("main.add(complex128)")


@pytest.fixture(scope="module")
def funcs_binary(go_build):
    return GoBinary.open(go_build("funcs", "1.25"))


def test_a_glob_selects_go_functions_with_their_ret_sites(funcs_binary):
    selection = funcs.select(funcs_binary, ["main.*"])
    found = {f.name: f for f in selection.functions}
    for name in ("main.(*Counter).Inc", "main.Point.Sum", "main.fib", "main.block", "main.guarded"):
        assert name in found
    fib = found["main.fib"]
    assert fib.address < fib.probe_address < fib.address + fib.size
    assert len(fib.ret_addresses) >= 1
    code = funcs_binary.image.read(fib.address, fib.size)
    for r in fib.ret_addresses:
        assert code[r - fib.address] == 0xC3      # each is a RET the disassembler found
    assert fib.sp_delta == 0                      # Go 1.25: the probe sits before `push rbp`
    # Compiler-generated wrappers (go statement, defer) are special functions: skipped, said so.
    assert any("gowrap" in s for s in selection.skipped)


def test_refusals(funcs_binary):
    with pytest.raises(FunctionError, match="assembly"):
        funcs.resolve(funcs_binary, ["runtime.memmove"])
    with pytest.raises(FunctionError, match=r"match \d+ functions, more than the limit of 1000"):
        funcs.resolve(funcs_binary, ["*"])
    with pytest.raises(FunctionError, match="more than the limit of 3"):
        funcs.resolve(funcs_binary, ["main.*"], limit=3)
    with pytest.raises(FunctionError, match=r"inlined everywhere \(into main.main.func1\)"):
        funcs.resolve(funcs_binary, ["main.sumsq"])
    with pytest.raises(FunctionError, match="no function .* matches 'main.nothere'"):
        funcs.resolve(funcs_binary, ["main.nothere"])


def test_stripped_binaries_resolve_from_pclntab(go_build):
    stripped = GoBinary.open(go_build("funcs", "1.25", ("-ldflags=-s -w",)))
    plain = GoBinary.open(go_build("funcs", "1.25"))
    a = [(f.name, f.probe_address, f.ret_addresses) for f in funcs.resolve(stripped, ["main.*"])]
    b = [(f.name, f.probe_address, f.ret_addresses) for f in funcs.resolve(plain, ["main.*"])]
    assert [x[0] for x in a] == [x[0] for x in b]
    # No DWARF: the inline records in the function name table still say it was inlined.
    with pytest.raises(FunctionError, match="main.sumsq was inlined everywhere"):
        funcs.resolve(stripped, ["main.sumsq"])
    with pytest.raises(FunctionError, match="absent, or inlined and optimized away"):
        funcs.resolve(stripped, ["main.nothere"])


def test_address_map_takes_the_load_bias(funcs_binary):
    fs = funcs.resolve(funcs_binary, ["main.fib", "main.add"])
    am = funcs.AddressMap(fs, bias=0x1000)
    ips = np.array([fs[0].probe_address + 0x1000, fs[1].ret_addresses[0] + 0x1000,
                    fs[0].probe_address, 12345], np.uint64)
    assert am.lookup(ips).tolist() == [0, 1, -1, -1]


@pytest.mark.bpf
def test_header_matches_dtype_in_bpf(require_bpf):
    from bcc import BPF

    asserts = "\n".join(
        f"_Static_assert(offsetof(struct gotel_func_event, {n}) == {FUNC_EVENT_DTYPE.fields[n][1]}, "
        f'"{n}");' for n in FIELDS)
    BPF(text=f"""#include <uapi/linux/ptrace.h>
#include "{funcs.HEADER}"
{asserts}
int probe(struct pt_regs *ctx) {{ return 0; }}
""").cleanup()
