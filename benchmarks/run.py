"""``make bench``: runs every benchmark row and writes benchmarks/results.json and benchmarks/RESULTS.md.

Each row (``benchmarks/bench_*.py``, listed in ROWS) runs in a process of its own, so its memory,
BPF programs and threads never leak into the next row and its peak RSS is its own; a row that fails
is reported as failed and the others still run. Every figure is given as min/median/max over the
row's repetitions, and every ratio is computed pair by pair within one repetition (see each row's
docstring, quoted in RESULTS.md, for which figure to trust and why). No figure is checked here:
goals are reported as met or missed, with what limits a missed one, or as unresolved where the
row's own noise (e.g. two untraced runs side by side) is wider than the goal's tolerance.

Usage: ``python benchmarks/run.py [--quick] [--rows 1,3] [--out-dir DIR]``. ``--quick`` runs tiny
sizes in about half a minute per row to check the harness itself; its figures mean nothing.
Needs root (uprobes), bcc, the Go toolchains of ``make setup`` and ``wrk``.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import harness  # noqa: E402

# (row number, module, time budget in seconds for a full run)
ROWS = (
    (1, "benchmarks.bench_probe_cost", 300),
    (2, "benchmarks.bench_http", 300),
    (3, "benchmarks.bench_pipeline", 300),
    (4, "benchmarks.bench_loss", 240),
    (5, "benchmarks.bench_memory", 600),
    (6, "benchmarks.bench_uprobe_floor", 120),
    (7, "benchmarks.bench_inspect", 300),
    (8, "benchmarks.bench_census", 420),
    (9, "benchmarks.bench_runtime_metrics", 180),
    (10, "benchmarks.bench_levels", 1200),
    (11, "benchmarks.bench_agent", 300),
    (12, "benchmarks.bench_funcs", 420),
)
QUICK_BUDGET_S = 120
LOG_DIR = REPO / "benchmarks" / ".work" / "logs"   # git-ignored


def run_row(number, module, budget, quick, log_dir):
    """The row's result dict, or {"row", "module", "error"} when it failed or overran its budget."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    log = Path(log_dir) / f"row{number}.log"
    cmd = [sys.executable, "-m", module, "--out", str(out)] + (["--quick"] if quick else [])
    started = time.monotonic()
    try:
        with open(log, "w") as err:
            proc = subprocess.run(cmd, cwd=REPO, stdout=err, stderr=subprocess.STDOUT,
                                  timeout=QUICK_BUDGET_S if quick else budget)
        if proc.returncode != 0:
            raise RuntimeError(f"exited {proc.returncode}")
        result = json.loads(out.read_text())
    except (RuntimeError, subprocess.TimeoutExpired, ValueError, OSError) as e:
        tail = log.read_text()[-2000:] if log.exists() else ""
        result = {"row": number, "module": module, "error": f"{type(e).__name__}: {e}", "log": tail}
    finally:
        out.unlink(missing_ok=True)
    result["module"] = module
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def peak_rss(rows):
    """gotel's peak RSS during rows 1-3, as each row measured it."""
    by = {r["row"]: r for r in rows if "error" not in r}
    out = {}
    if 1 in by:
        out["row 1 (receiver in the benchmark process)"] = by[1]["peak_rss_bytes"]
    if 2 in by:
        out["row 2 (`gotel trace` process, VmHWM)"] = int(by[2]["figures"]["gotel.peak_rss_mb"]["max"] * 1e6)
    if 3 in by:
        out["row 3 (replays, recorded stream and SDK in one process)"] = by[3]["peak_rss_bytes"]
    return out


# --- RESULTS.md ----------------------------------------------------------------------------------
HEADLINES = (
    (1, "pingpong.gotel.ns_per_event", "ping-pong: CPU ns gotel adds per captured event"),
    (1, "pingpong.gotel_trap_only.ns_per_event", "ping-pong: CPU ns per casgstatus hit, nothing written"),
    (1, "pingpong.ratio.naive_entry_vs_gotel", "ping-pong: naive entry placement / gotel, per event"),
    (1, "pingpong.ratio.runtime_trace_vs_gotel", "ping-pong: runtime/trace / gotel, per transition"),
    (1, "pingpong.ratio.gotel_vs_floor", "ping-pong: gotel per captured event / the kernel's floor per hit"),
    (1, "spawn.gotel.ns_per_event", "spawn: CPU ns gotel adds per captured event"),
    (1, "spawn.ratio.gotel_vs_floor", "spawn: gotel per captured event / the kernel's floor per hit"),
    (1, "spawn.ratio.naive_entry_vs_gotel", "spawn: naive entry placement / gotel, per event"),
    (1, "spawn.ratio.runtime_trace_vs_gotel", "spawn: runtime/trace / gotel, per transition"),
    (2, "throughput_loss_pct", "net/http under wrk: throughput lost when traced"),
    (2, "gotel.cpu_pct", "net/http under wrk: gotel's own CPU"),
    (3, "pipeline_default.events_per_s", "pipeline, default config: events/s on one core"),
    (3, "pipeline_all.events_per_s", "pipeline, every span encoded: events/s on one core"),
    (3, "ratio.pipeline_vs_sdk", "pipeline (every span) / OpenTelemetry SDK, spans/s"),
    (3, "ratio.pipeline_vs_bcc_callback", "pipeline (default) / bcc per-event callback, events/s"),
    (4, "max_lossless_rate", "highest offered rate with 0 events lost (default buffers)"),
    (5, "decoder_bytes_per_goroutine", "bytes per live goroutine tracked"),
    (6, "push.ns_per_hit", "the kernel's floor: one uprobe hit on `push %rbp`, in C"),
    (7, "symbolizer.pcs_per_s", "symbolizer: PCs named per second"),
    (10, "http.full.estimate_vs_measured", "net/http, full: gotel's estimated / measured overhead"),
    (10, "pingpong.full.estimate_vs_measured", "ping-pong, full: estimated / measured (out of sample)"),
    (10, "spawn.full.estimate_vs_measured", "spawn, full: estimated / measured (out of sample)"),
    (10, "http.lifecycle.estimate_vs_measured", "net/http, lifecycle: gotel's estimated / measured overhead"),
    (10, "http.budget_2.measured_overhead_pct", "net/http, max_overhead 2%: share of the server's CPU added"),
    (10, "http.budget_2_long.measured_overhead_pct",
     "net/http, max_overhead 2% over 40 s, windows included: share of the server's CPU added"),
    (10, "http.census_long.while_on_pct",
     "net/http, census: share of the server's CPU added while gotel ran (stopped and running in turn)"),
)


def headlines(rows):
    by = {r["row"]: r for r in rows if "error" not in r}
    out = []
    for n, key, text in HEADLINES:
        f = by.get(n, {}).get("figures", {}).get(key)
        if f and f["n"]:
            u = f["unit"]
            out.append(f"- {text}: **{_num(f['median'], u)} {u}** (min {_num(f['min'], u)}, "
                       f"max {_num(f['max'], u)}; row {n})")
    return out


def verdict(goal):
    """A goal's last column: met, missed, or unresolved (the row's noise is wider than its tolerance)."""
    if goal.get("unresolved"):
        return "**unresolved**"
    return "met" if goal["met"] else "**missed**"


def _num(v, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, float) and abs(v) < 100 and v != int(v):
        return f"{v:,.2f}" if unit == "x" or abs(v) < 10 else f"{v:,.1f}"
    return f"{v:,.0f}"


def render(results):
    m = results["machine"]
    lines = [
        "# gotel benchmarks",
        "",
        f"Generated by `make bench` (`benchmarks/run.py`{' --quick' if results['quick'] else ''}) on "
        f"{m['date_utc']}, in {results['wall_s'] / 60:.1f} min. Do not edit: rerun it.",
        "",
        f"- Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_bytes'] / 2**30:.0f} GiB; {m['os']}; "
        f"{'a virtual machine' if m['vm'] else 'bare metal'}"
        f"{', in a ' + m['container'] + ' container' if m['container'] else ''}; a getppid system "
        f"call round trip takes "
        f"~{m['syscall_ns']} ns here (every uprobe hit enters the kernel too)",
        f"- Kernel: {m['kernel']}; Python {m['python']}; {m['go']}",
        f"- Load average when the run started: {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}",
        "",
        "Every figure is min / median / max over the row's repetitions; every ratio is computed pair "
        "by pair within one repetition (both sides measured seconds apart), then summarized. Each "
        "row says which figure to trust and why.",
        "",
    ]
    if results["quick"]:
        lines += ["**Quick mode: tiny sizes that only check the harness. These figures mean nothing.**", ""]
    lines += ["## Headline figures", "", *headlines(results["rows"]), ""]
    lines += ["## Goals", "", "| row | goal | measured (median) | target | |", "|---|---|---|---|---|"]
    for r in results["rows"]:
        if "error" in r:
            lines.append(f"| {r['row']} | row failed: {r['error']} | | | FAILED |")
            continue
        for g in r["goals"]:
            unit = r["figures"].get(g["figure"], {}).get("unit", "")
            lines.append(f"| {r['row']} | {g['goal']} | {_num(g['value'], unit)} {unit} | "
                         f"{_num(g['target'], unit)} | {verdict(g)} |")
    judged = [(r["row"], g) for r in results["rows"] if "error" not in r for g in r["goals"] if not g["met"]]
    missed = [(n, g) for n, g in judged if not g.get("unresolved")]
    unresolved = [(n, g) for n, g in judged if g.get("unresolved")]
    if missed:
        lines += ["", "Missed goals, and what limits them:", ""]
        lines += [f"- Row {n}, {g['goal']}: {g['limit']}." for n, g in missed]
    if unresolved:
        lines += ["", "Goals this run could not judge, and why:", ""]
        lines += [f"- Row {n}, {g['goal']}: {g['limit']}." for n, g in unresolved]
    for r in results["rows"]:
        lines += ["", f"## Row {r['row']}: {r.get('title', r['module'])}", ""]
        if "error" in r:
            lines += [f"This row failed ({r['error']}); last lines of its log:", "", "```",
                      r.get("log", "").strip()[-1500:], "```"]
            continue
        lines += [f"`{r['module']}`, {r['wall_s']:.0f} s. {r['trust']}", "",
                  "| figure | unit | min | median | max |", "|---|---|---|---|---|"]
        for f in r["figures"].values():
            u = f["unit"]
            lines.append(f"| {f['label']} | {u} | {_num(f['min'], u)} | {_num(f['median'], u)} | "
                         f"{_num(f['max'], u)} |")
        lines.append("")
        lines += [f"- {n}" for n in r["notes"]]
        if r["row"] == 5 and results.get("peak_rss"):
            lines += ["", "gotel's peak RSS during rows 1-3 (a large part is what starting gotel "
                      "adds, bcc's in-process compiler above all: see the figure above):", ""]
            lines += [f"- {k}: {v / 1e6:,.0f} MB" for k, v in results["peak_rss"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the harness only")
    parser.add_argument("--rows", help="comma-separated row numbers to run (default: all)")
    parser.add_argument("--out-dir", default=str(REPO / "benchmarks"),
                        help="where results.json and RESULTS.md go (row logs: benchmarks/.work/logs/)")
    args = parser.parse_args(argv)
    wanted = {int(x) for x in args.rows.split(",")} if args.rows else {n for n, _, _ in ROWS}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir = LOG_DIR / ("quick" if args.quick else "full")
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = {"machine": harness.machine(), "quick": args.quick, "rows": []}
    # Build every Go workload up front: a fresh clone's first build is slow and belongs to no row.
    for source in sorted(p for p in harness.GO_DIR.iterdir() if (p / "main.go").exists()):
        harness.workload(source.name)
    for number, module, budget in ROWS:
        if number not in wanted:
            continue
        print(f"row {number}: {module} ...", flush=True)
        r = run_row(number, module, budget, args.quick, log_dir)
        print(f"row {number}: {'FAILED: ' + r['error'] if 'error' in r else 'done'} ({r['wall_s']:.0f} s)",
              flush=True)
        results["rows"].append(r)
    results["peak_rss"] = peak_rss(results["rows"])
    results["wall_s"] = round(time.monotonic() - started, 1)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out_dir / "RESULTS.md").write_text(render(results))
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'RESULTS.md'} "
          f"({results['wall_s'] / 60:.1f} min)")
    return 1 if any("error" in r for r in results["rows"]) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
