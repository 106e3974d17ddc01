"""Generate receiver/layouts.json: the runtime layout of every Go release the project has a toolchain for.

For each toolchain (``pipeline.app.gotool.toolchains()``), build a small probe program with DWARF, read
its ``runtime.g`` / ``runtime.m`` offsets and goroutine status constants from the DWARF and its
``runtime.waitReasonStrings`` from its data, exactly as gotel does for an unstripped binary; likewise
the runtime structures runtime metrics read (``receiver.runtime_structs``) and the size class table.
gotel uses the table only for binaries without DWARF, and only for a release it holds exactly.

Each release is also the proof that gotel can find the runtime globals without ``.symtab``: the probe
program is stripped with ``strip`` (same addresses, no symbols) and every instruction pattern of
``receiver.globals`` must give the address ``.symtab`` gives in the unstripped file, else no table is
written. Extra toolchains (e.g. every patch release): GOTEL_CACHE=DIR with DIR/go/<version>/go/bin/go.

Usage: .venv/bin/python scripts/gen_layouts.py [--check]   (--check: fail if the file would change)
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.app import gotool  # noqa: E402
from receiver import globals as globals_mod, layout  # noqa: E402
from receiver.binary import GoBinary  # noqa: E402

PROBE_GO_MOD = "module example.com/gotel/layoutprobe\n\ngo 1.19\n"
PROBE_MAIN = """// layoutprobe links the whole scheduler; gen_layouts.py reads its DWARF.
package main

import "sync"

func main() {
	var wg sync.WaitGroup
	ch := make(chan int)
	wg.Add(1)
	go func() { defer wg.Done(); ch <- 1 }()
	<-ch
	wg.Wait()
}
"""


def probe(version, src, out):
    """The table entry of one toolchain: {"g", "m", "statuses", "wait_reasons"}."""
    binary = GoBinary.open(gotool.build(src, out, version=version, name="layoutprobe"))
    if binary.layout.source != "dwarf":
        raise SystemExit(f"{version}: the probe program has no DWARF")
    lay = binary.layout
    entry = {"g": lay.g, "m": lay.m, "statuses": lay.statuses, "wait_reasons": lay.wait_reasons,
             "structs": lay.structs, "class_to_size": list(lay.class_to_size)}
    check_globals(binary)
    return binary.go_version, entry


def check_globals(binary):
    """Raise SystemExit unless every instruction pattern finds, in a stripped copy of ``binary``,
    the address its .symtab names."""
    stripped_path = Path(str(binary.image.path) + ".stripped")
    subprocess.run(["strip", "-o", str(stripped_path), str(binary.image.path)], check=True)
    stripped = GoBinary.open(stripped_path)
    if not stripped.stripped:
        raise SystemExit(f"{stripped_path}: strip left a .symtab")
    for name in globals_mod.PATTERNS:
        want = globals_mod.symtab_address(binary, name)
        got = globals_mod.pattern_address(stripped, name, verified=True)
        if want is None or got != want:
            raise SystemExit(f"{binary.go_version}: the pattern for {name} gives {got:#x}, .symtab says "
                             f"{want if want is None else hex(want)}; fix receiver/globals.py")


def generate():
    layouts = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "layoutprobe")
        src.mkdir()
        (src / "go.mod").write_text(PROBE_GO_MOD)
        (src / "main.go").write_text(PROBE_MAIN)
        for version in gotool.toolchains():
            go_version, entry = probe(version, src, tmp)
            layouts[go_version] = entry
            print(f"{go_version}: goid {entry['g']['goid']}, {len(entry['wait_reasons'])} wait reasons",
                  file=sys.stderr)
    return {
        "about": "Go runtime layouts by release, read from DWARF by scripts/gen_layouts.py; "
                 "used for binaries without DWARF. Do not edit by hand.",
        "layouts": dict(sorted(layouts.items(), key=lambda kv: layout._release_key(kv[0]))),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if layouts.json is out of date")
    args = parser.parse_args()
    text = json.dumps(generate(), indent=1) + "\n"
    if args.check:
        if layout.TABLE_PATH.read_text() != text:
            raise SystemExit(f"{layout.TABLE_PATH} is out of date; run scripts/gen_layouts.py")
        return
    layout.TABLE_PATH.write_text(text)
    print(f"wrote {layout.TABLE_PATH}", file=sys.stderr)


if __name__ == "__main__":
    main()
