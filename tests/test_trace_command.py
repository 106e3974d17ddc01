"""`gotel trace -- COMMAND` as a user runs it, on builds users ship: default and PIE.

A PIE runs at an address chosen at exec, so every PC gotel reads must be rebased before it is
named; the spawner exits within milliseconds, before its memory map can be read afterwards.
"""

import json
import os
import re
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
        [sys.executable, "-m", "pipeline.app.cli", "trace", "--out", str(out), "--", str(binary),
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


@pytest.mark.bpf
def test_binary_target_names_processes_started_later(require_bpf, go_build, tmp_path):
    """`--binary` traces processes that start after gotel attached; these short-lived PIEs are gone
    before gotel could read their memory maps, and their goroutines are still named."""
    binary = go_build("spawner", "1.25", flags=("-buildmode=pie",))
    out = tmp_path / "out"
    gotel = subprocess.Popen(
        [sys.executable, "-m", "pipeline.app.cli", "-v", "trace", "--binary", str(binary), "--duration", "6",
         "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        for line in gotel.stderr:                       # attached: start the processes now
            if "tracing every process running" in line:
                break
        runs = [subprocess.run([str(binary), str(n)], capture_output=True, text=True, timeout=60)
                for n in (SPAWNED, 100)]
        assert [r.stdout.split()[1] for r in runs] == [str(SPAWNED), "100"]
        summary, _ = gotel.communicate(timeout=60)
    finally:
        gotel.kill()
    assert gotel.returncode == 0
    assert f"{SPAWNED + 100}  main.worker" in summary, summary
    workers = [s for s in spans(out / "traces.jsonl") if s["name"] == "main.worker"]
    assert len(workers) == SPAWNED + 100


# Every span goes out: the processors that keep a share of them (filter, sampler) are left out.
EVERY_SPAN = """
receivers:
  goroutines: {ring_bytes: 67108864}
processors:
  batch: {send_batch_size: 8192, timeout: 200ms}
exporters:
  file/traces: {path: OUT/traces.jsonl}
service:
  pipelines:
    traces: {receivers: [goroutines], processors: [batch], exporters: [file/traces]}
"""


@pytest.mark.bpf
@pytest.mark.slow
def test_what_was_collected_before_the_end_is_all_exported(require_bpf, go_build, tmp_path):
    """A program that ends right after 200,000 goroutines: gotel still has most of their spans to
    make and write when it ends, far more than its 5 s of shutdown could write at a fixed
    deadline (52,253 spans were lost that way). It drains them all while they go out."""
    binary = go_build("spawner", "1.25")
    config = tmp_path / "every-span.yaml"
    config.write_text(EVERY_SPAN.replace("OUT", str(tmp_path)))
    p = subprocess.run(
        [sys.executable, "-m", "pipeline.app.cli", "trace", "-c", str(config), "--", str(binary),
         "200000"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "GOMAXPROCS": "1"},
    )
    assert p.returncode == 0, p.stderr
    assert "data lost" not in p.stderr and "none lost" in p.stdout, p.stderr
    made = int(re.search(r"^  spans +(\d+) made", p.stdout, re.M).group(1))
    written = sum(1 for _ in spans(tmp_path / "traces.jsonl"))
    assert written == made > 200_000, p.stdout       # a span per goroutine, and its parks
