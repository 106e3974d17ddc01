"""Levels side by side on one Go program (tests/go/levels: ping-pong bursts at a fixed rate beside
half a core of its own work): ping-pong ops done and the target's CPU time at census (no probe),
lifecycle, full, and full under max_overhead 1%, 2%, 5%, with gotel's estimated overhead.

Not yet a `make bench` row (no wrk HTTP service here): run alone with
``.venv/bin/python -m benchmarks.bench_levels``.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [("census", {"level": "census"}), ("lifecycle", {"level": "lifecycle"}),
         ("full", {"level": "full"}), ("budget 1%", {"level": "full", "max_overhead": "1%"}),
         ("budget 2%", {"level": "full", "max_overhead": "2%"}),
         ("budget 5%", {"level": "full", "max_overhead": "5%"})]


def main(rate=20000, seconds=6):
    from pipeline.app import gotool
    from receiver.receiver import run_command

    binary = gotool.build(ROOT / "tests" / "go" / "levels", ROOT / "benchmarks" / ".work", version="1.25")
    rows = []
    for name, settings in CASES:
        rx, done = run_command([binary, "pingpong", str(rate), str(seconds)], None, timeout=120,
                               **settings)
        ops = int(done.stdout.split()[-1])
        (unit,) = rx.levels.status() or [{"cost_ns": 0, "cpu_ns": 0, "windows": 0, "window_s": 0}]
        rows.append({"case": name, "ops": ops, "cpu_s": unit["cpu_ns"] / 1e9,
                     "estimated_overhead": unit["cost_ns"] / unit["cpu_ns"] if unit["cpu_ns"] else 0,
                     "windows": unit["windows"], "full_s": unit["window_s"],
                     "floor_ns": rx.levels.calibration.floor_ns})
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
