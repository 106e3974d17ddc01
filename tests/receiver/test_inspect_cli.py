"""`gotel inspect` end to end: the JSON report, the readable report, and one clear line for every
input gotel must refuse (garbage, non-Go, unsupported Go), never a traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.app import gotool
from receiver.binary import GoBinary

REPO = Path(__file__).resolve().parents[2]


def gotel(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.app.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def assert_refused(result, *words):
    """Exit status 2, nothing on stdout, exactly one line on stderr that mentions every word."""
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gotel: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("version", ["1.19", "1.25"])
def test_json_report(inspectme, version):
    path = inspectme(version)
    result = gotel("inspect", "--json", path)
    assert result.returncode == 0, result.stderr
    rep = json.loads(result.stdout)
    binary = GoBinary.open(path)
    assert rep["go_version"] == binary.go_version and rep["go_version"].startswith("go" + version)
    assert rep["goarch"] == "amd64" and rep["module"] == "example.com/gotel/inspectme"
    assert rep["stripped"] is False and rep["has_dwarf"] is True
    for name, f in binary.functions.items():
        assert rep["functions"][name]["address"] == f.address
        assert rep["functions"][name]["probe_address"] == f.probe_address
        assert rep["functions"][name]["probe_file_offset"] == binary.file_offset(f.probe_address)
    assert rep["layout"]["runtime.g"] == binary.layout.g
    assert rep["layout"]["runtime.m"] == binary.layout.m
    assert {"goid", "gopc", "startpc", "waitreason", "atomicstatus", "m"} <= set(rep["layout"]["runtime.g"])
    assert ("parentGoid" in rep["layout"]["runtime.g"]) == (version != "1.19")
    assert rep["statuses"]["_Grunnable"] == 1 and rep["statuses"]["_Gscan"] == 0x1000
    assert rep["wait_reasons"] == binary.layout.wait_reasons and "chan receive" in rep["wait_reasons"]


def test_readable_report(inspectme):
    path = inspectme("1.27", "stripped")
    result = gotel("inspect", path)
    assert result.returncode == 0, result.stderr
    binary = GoBinary.open(path)
    out = result.stdout
    assert binary.go_version in out and "stripped: yes" in out and "layout (from table)" in out
    for f in binary.functions.values():
        assert f"{f.name}" in out and f"probe {f.probe_address:#x}" in out


def test_inspect_by_pid(inspectme):
    proc = subprocess.Popen([str(inspectme("1.23"))], env={"INSPECTME_WAIT": "1"},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        result = gotel("inspect", "--json", proc.pid)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["path"] == f"/proc/{proc.pid}/exe"
    finally:
        proc.kill()
        proc.wait()


# --- garbage and refusals -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def c_binary(tmp_path_factory):
    d = tmp_path_factory.mktemp("c")
    (d / "hello.c").write_text("#include <stdio.h>\nint main(void) { puts(\"hi\"); return 0; }\n")
    subprocess.run(["gcc", "-o", d / "hello", d / "hello.c"], check=True)
    return d / "hello"


def patched(src, dst, old, new):
    """A copy of src with the bytes old replaced by new (same length), e.g. a different Go version."""
    data = Path(src).read_bytes()
    assert len(old) == len(new) and old in data
    dst.write_bytes(data.replace(old, new))
    return dst


def test_garbage_inputs(tmp_path, inspectme, c_binary):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert_refused(gotel("inspect", empty), "empty")
    noise = tmp_path / "noise"
    noise.write_bytes(os.urandom(4096))
    assert_refused(gotel("inspect", noise), "not an ELF")
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    assert_refused(gotel("inspect", script), "not an ELF")
    assert_refused(gotel("inspect", tmp_path), "directory")
    assert_refused(gotel("inspect", tmp_path / "missing"), "no such file")
    assert_refused(gotel("inspect", c_binary), "not a Go binary")
    data = Path(inspectme("1.25")).read_bytes()
    for size in (16, 100, 4096, len(data) // 3, len(data) - 100):
        cut = tmp_path / f"cut{size}"
        cut.write_bytes(data[:size])
        assert_refused(gotel("inspect", cut))


def test_dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert_refused(gotel("inspect", proc.pid), str(proc.pid), "does not exist")


def test_refuses_old_and_unknown_go(tmp_path, inspectme):
    default, stripped = inspectme("1.25"), inspectme("1.25", "stripped")
    version = GoBinary.open(default).go_version.encode()
    old = patched(default, tmp_path / "old", version, b"go1.16." + b"9" * (len(version) - 7))
    assert_refused(gotel("inspect", old), "Go 1.17 or newer")
    unknown = patched(stripped, tmp_path / "unknown", version, version[:-1] + b"9")
    assert_refused(gotel("inspect", unknown), "no DWARF", "not in gotel's table")


def test_refuses_arm64(tmp_path, monkeypatch):
    monkeypatch.setenv("GOARCH", "arm64")
    path = gotool.build(REPO / "tests/go/inspectme", tmp_path, version="1.25")
    assert_refused(gotel("inspect", path), "arm64", "amd64 only")


def test_refuses_gccgo_and_linkshared(tmp_path, c_binary, inspectme):
    # gccgo binaries carry .go_export and need libgo; -linkshared ones need the Go runtime's libstd.so.
    gccgo = tmp_path / "gccgo"
    (tmp_path / "export").write_bytes(b"v3;\npackage main\n")
    subprocess.run(["objcopy", "--add-section", f".go_export={tmp_path / 'export'}", c_binary, gccgo],
                   check=True)
    assert_refused(gotel("inspect", gccgo), "gccgo")

    (tmp_path / "std.c").write_text("int std_marker(void) { return 1; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", tmp_path / "libstd.so", tmp_path / "std.c"], check=True)
    (tmp_path / "main.c").write_text("int std_marker(void);\nint main(void) { return std_marker(); }\n")
    linked = tmp_path / "linked"
    subprocess.run(["gcc", "-o", linked, tmp_path / "main.c", f"-L{tmp_path}", "-lstd"], check=True)
    info = tmp_path / "buildinfo"
    subprocess.run(["objcopy", "-O", "binary", "--only-section=.go.buildinfo", inspectme("1.25"), info],
                   check=True)
    shared = tmp_path / "shared"
    subprocess.run(["objcopy", "--add-section", f".go.buildinfo={info}", linked, shared], check=True)
    assert_refused(gotel("inspect", shared), "-linkshared")
