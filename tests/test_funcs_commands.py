"""`gotel funcs count|latency` and `gotel trace --func` as a user runs them, on tests/go/funcs.

The program's own call counts are known (see tests/test_funcs_tracing.py); these tests check what
the commands print and export: per-function counts, latency histograms, function spans inside
their goroutine's trace, and the gotel.function.* metrics.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_funcs_tracing import fib_calls

REPO = Path(__file__).resolve().parent.parent
W, R = 3, 6


def gotel(*args, stdin="go\n", timeout=120):
    return subprocess.run([sys.executable, "-m", "pipeline.app.cli", *args], cwd=REPO, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def untraced(binary):
    """The program's own output line without probes (the traced run must print the same)."""
    p = subprocess.run([binary, str(W), str(R)], input="go\n", capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()[-1]


def records(path, key):
    for line in Path(path).read_text().splitlines():
        yield from json.loads(line)[key]


@pytest.mark.bpf
def test_funcs_count_and_latency(require_bpf, go_build):
    binary = str(go_build("funcs", "1.25", ("-buildmode=pie",)))
    p = gotel("funcs", "count", "main.*", "--", binary, str(W), str(R))
    assert p.returncode == 0, p.stderr
    assert untraced(binary) in p.stdout.splitlines()     # the program ran as usual
    counts = dict(re.findall(r"^(main\.\S+)\s+(\d+)$", p.stdout, re.M))
    assert int(counts["main.fib"]) == W * sum(fib_calls(r % 8) for r in range(R))
    assert int(counts["main.(*Counter).Inc"]) == int(counts["main.Point.Sum"]) == W * R
    assert "tracing 14 function(s)" in p.stderr and "0 lost" in p.stderr

    p = gotel("funcs", "latency", "main.block", "-i", "0.2", "--", binary, str(W), str(R))
    assert p.returncode == 0, p.stderr
    final = p.stdout.rsplit("Function = main.block", 1)[1]
    rows = re.findall(r"^\s*\d+ -> \d+\s*: (\d+)", final, re.M)
    assert sum(map(int, rows)) >= 1
    total = sum(int(c) for c in re.findall(r"Function = main.block  calls (\d+)", p.stdout))
    assert total == W * R                                   # interval summaries add up


@pytest.mark.bpf
def test_funcs_refusals_are_one_line(require_bpf, go_build):
    binary = str(go_build("funcs", "1.25"))
    for pattern, words in (("runtime.memmove", "assembly"), ("main.sumsq", "inlined everywhere"),
                           ("*", "more than the limit of 1000")):
        p = gotel("funcs", "count", pattern, "--", binary, "1", "1", stdin="")
        assert p.returncode == 2 and words in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
        assert "ready" not in p.stdout                       # refused before the program ran


@pytest.mark.bpf
def test_trace_func_spans_sit_in_their_goroutine(require_bpf, go_build, tmp_path):
    binary = str(go_build("funcs", "1.27", ("-buildmode=pie",)))
    out = tmp_path / "out"
    p = gotel("trace", "--out", str(out), "--func", "main.block", "--func", "main.fib", "--",
              binary, str(W), str(R))
    assert p.returncode == 0, p.stderr
    assert untraced(binary) in p.stdout.splitlines()
    spans = [s for rs in records(out / "traces.jsonl", "resourceSpans")
             for ss in rs["scopeSpans"] for s in ss["spans"]]
    by_id = {s["spanId"]: s for s in spans}

    def goid(s):
        return {a["key"]: a["value"] for a in s["attributes"]}["gotel.goroutine.id"]["intValue"]

    blocks = [s for s in spans if s["name"] == "main.block"]
    assert len(blocks) == W * R
    for s in blocks:
        parent = by_id[s["parentSpanId"]]                    # the goroutine's own span
        assert parent["name"] != "main.block" and goid(parent) == goid(s)
        assert parent["traceId"] == s["traceId"]
        assert parent["startTimeUnixNano"] <= s["startTimeUnixNano"]
    fibs = [s for s in spans if s["name"] == "main.fib"]
    assert len(fibs) == W * sum(fib_calls(r % 8) for r in range(R))
    nested = [s for s in fibs if by_id[s["parentSpanId"]]["name"] == "main.fib"]
    assert len(nested) == W * sum(fib_calls(r % 8) - 1 for r in range(R))

    metrics = {m["name"]: m for rm in records(out / "metrics.jsonl", "resourceMetrics")
               for sm in rm["scopeMetrics"] for m in sm["metrics"]}
    calls = {dp["attributes"][0]["value"]["stringValue"]: int(dp["asInt"])
             for dp in metrics["gotel.function.calls"]["sum"]["dataPoints"]}
    assert calls == {"main.block": W * R, "main.fib": len(fibs)}
    hist = {dp["attributes"][0]["value"]["stringValue"]: dp
            for dp in metrics["gotel.function.duration"]["histogram"]["dataPoints"]}
    assert int(hist["main.block"]["count"]) == W * R
    assert sum(map(int, hist["main.block"]["bucketCounts"])) == W * R


@pytest.mark.bpf
@pytest.mark.parametrize("stripped", [False, True], ids=["dwarf", "stripped"])
def test_trace_func_args_are_span_attributes(require_bpf, go_build, tmp_path, stripped):
    """main.add(v, w) is called by worker w with v = round: named a, b from DWARF (positional from
    the pattern's types when stripped); main.label("abc", r % 4) returns len("abc") == r % 4, and
    its string's bytes are copied (bounded) by the probe."""
    flags = ("-ldflags=-s -w",) if stripped else ()
    binary = str(go_build("funcs", "1.24", flags))
    out = tmp_path / "out"
    patterns = ["main.add(int, int)", "main.label(string, int)"] if stripped else ["main.add", "main.label"]
    p = gotel("trace", "--out", str(out), "--func-args", *[x for pat in patterns for x in ("--func", pat)],
              "--", binary, str(W), str(R))
    assert p.returncode == 0, p.stderr
    assert untraced(binary) in p.stdout.splitlines()
    spans = [s for rs in records(out / "traces.jsonl", "resourceSpans")
             for ss in rs["scopeSpans"] for s in ss["spans"]]

    def attrs(s):
        return {a["key"]: next(iter(a["value"].values())) for a in s["attributes"]}

    adds = [attrs(s) for s in spans if s["name"] == "main.add"]
    assert len(adds) == W * R
    a, b = ("arg0", "arg1") if stripped else ("a", "b")
    pairs = sorted((int(x[f"gotel.function.arg.{a}"]), int(x[f"gotel.function.arg.{b}"])) for x in adds)
    assert pairs == sorted((r, w) for w in range(W) for r in range(R))
    if not stripped:
        assert all(int(x["gotel.function.result.~r0"]) == int(x["gotel.function.arg.a"]) + int(x["gotel.function.arg.b"])
                   for x in adds)
    labels = [attrs(s) for s in spans if s["name"] == "main.label"]
    assert len(labels) == W * R
    s_key = "gotel.function.arg." + ("arg0" if stripped else "s")
    assert all(int(x[s_key + ".len"]) == 3 for x in labels)
    assert all(x[s_key] == "abc" for x in labels)          # the string's bytes, copied by the probe
    if not stripped:
        assert sorted(bool(x["gotel.function.result.~r0"]) for x in labels) == \
            sorted(r % 4 == 3 for _ in range(W) for r in range(R))


@pytest.mark.bpf
def test_funcs_count_on_a_running_pid(require_bpf, go_build):
    binary = str(go_build("funcs", "1.26"))
    prog = subprocess.Popen([binary, str(W), str(R)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert prog.stdout.readline().strip() == "ready"
        tracer = subprocess.Popen([sys.executable, "-m", "pipeline.app.cli", "funcs", "count", "main.fib",
                                   "-e", "main.block", "--pid", str(prog.pid)], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in tracer.stderr:                      # attached: let the program run
            if "tracing" in line:
                break
        out, _ = prog.communicate("go\n", timeout=60)
        assert out.splitlines()[-1] == untraced(binary)
        stdout, stderr = tracer.communicate(timeout=60)  # ends by itself once the process exited
    finally:
        prog.kill()
    assert tracer.returncode == 0, stderr
    counts = dict(re.findall(r"^(main\.\S+)\s+(\d+)$", stdout, re.M))
    assert counts == {"main.fib": str(W * sum(fib_calls(r % 8) for r in range(R))),
                      "main.block": str(W * R)}
