"""`gotel trace -- COMMAND` as a user runs it, on builds users ship: default and PIE.

A PIE runs at an address chosen at exec, so every PC gotel reads must be rebased before it is
named; the spawner exits within milliseconds, before its memory map can be read afterwards.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SPAWNED = 300


def spans(path):
    for line in Path(path).read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                yield from ss["spans"]


@pytest.mark.bpf
@pytest.mark.parametrize("flags", [(), ("-buildmode=pie",)], ids=["default", "pie"])
def test_trace_names_goroutines_by_their_start_function(require_bpf, go_build, tmp_path, flags):
    binary = go_build("spawner", "1.25", flags=flags)
    out = tmp_path / "out"
    p = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "trace", "--out", str(out), "--", str(binary),
         str(SPAWNED)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert f"spawned {SPAWNED}" in p.stdout
    assert f"{SPAWNED}  main.worker" in p.stdout, p.stdout      # the summary's top start function
    workers = [s for s in spans(out / "traces.jsonl") if s["name"] == "main.worker"]
    assert len(workers) == SPAWNED
    sites = {a["key"]: a["value"] for a in workers[0]["attributes"]}
    assert sites["code.file.path"]["stringValue"].endswith("spawner/main.go")
