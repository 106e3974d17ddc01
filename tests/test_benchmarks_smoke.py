"""The benchmark harness itself: ``benchmarks/run.py --quick`` runs every row at tiny sizes and
writes well-formed results. No figure is checked here (figures are measured, not asserted)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run import ROWS

REPO = Path(__file__).resolve().parent.parent
ROW_NUMBERS = [number for number, *_ in ROWS]


@pytest.mark.bpf
@pytest.mark.slow
def test_quick_run_writes_results(require_bpf, tmp_path):
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed: run 'make setup' (scripts/setup-system.sh installs it)")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick",
                           "--out-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    results = json.loads((tmp_path / "results.json").read_text())
    failed = [(r["row"], r["error"], r.get("log")) for r in results["rows"] if "error" in r]
    assert proc.returncode == 0 and not failed, (proc.stdout, proc.stderr, failed)
    assert results["quick"] is True
    for key in ("kernel", "go", "date_utc", "cpu", "cpus"):
        assert results["machine"][key], key
    assert [r["row"] for r in results["rows"]] == ROW_NUMBERS
    for row in results["rows"]:
        assert "error" not in row, row
        assert row["title"] and row["trust"].startswith("Trust"), row["module"]
        assert row["figures"], row["module"]
        for key, fig in row["figures"].items():
            assert {"label", "unit", "min", "median", "max", "values", "n"} <= set(fig), key
            if fig["n"]:
                assert fig["min"] <= fig["median"] <= fig["max"], key
        for goal in row["goals"]:
            assert goal["figure"] in row["figures"], goal
            assert isinstance(goal["met"], bool)
            assert goal["met"] or goal["limit"], goal
    assert results["peak_rss"]

    md = (tmp_path / "RESULTS.md").read_text()
    assert "## Goals" in md and "Quick mode" in md
    for n in ROW_NUMBERS:
        assert f"## Row {n}:" in md
    assert results["machine"]["kernel"] in md
