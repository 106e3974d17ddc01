"""Function spans' pieces without a kernel: the config key, span rows of kind FUNCTION, the recent
exits that let late function events still find their goroutine's span."""

import numpy as np

from pipeline import funcs as pf
from pipeline import funcspans
from pipeline.config import loads
from pipeline.spans import SpanFlag, SpanKind, empty_spans
from receiver.funcs import ProbedFunction

YAML = """
receivers:
  goroutines:
    pids: [1]
    functions: {patterns: ["%s"], max_functions: %d, arguments: true}
exporters: {debug: {}}
service: {pipelines: {traces: {receivers: [goroutines], exporters: [debug]}}}
"""


def test_config_key_and_its_problems():
    cfg = loads(YAML % ("main.(*S).handle*", 10))
    fc = cfg.receivers["goroutines"].config.functions
    assert fc.patterns == ("main.(*S).handle*",) and fc.max_functions == 10 and fc.arguments
    try:
        loads(YAML % ("main.add(complex64)", 0))
    except Exception as e:  # noqa: BLE001
        text = str(e)
    assert "functions::max_functions must be > 0" in text and "unknown argument type" in text


def test_span_rows_are_named_by_the_biased_entry_and_flagged():
    fns = [ProbedFunction("main.a", 0x1000, 16, 0x1004, (0x100f,), 0),
           ProbedFunction("main.b", 0x2000, 16, 0x2004, (0x200f,), 0)]
    calls = pf.empty_calls(3)
    calls["function"] = [0, 1, 1]
    calls["pid"] = [5, 5, 6]
    calls["span_id"] = [1, 2, 3]
    calls["parent_span_id"] = [0, 1, 9]
    calls["flags"] = [0, pf.UNWOUND, pf.ENDED_AT_SHUTDOWN]
    rows = funcspans.to_span_rows(calls, fns, lambda pid: 0x7000 if pid == 6 else 0)
    assert rows["kind"].tolist() == [SpanKind.FUNCTION] * 3
    assert rows["start_pc"].tolist() == [0x1000, 0x2000, 0x9000]
    assert rows["flags"].tolist() == [SpanFlag.PARENT_UNSEEN, SpanFlag.UNWOUND, SpanFlag.ENDED_AT_SHUTDOWN]


def test_recent_exits_find_the_latest_span_of_a_goroutine():
    recent = funcspans.RecentExits(capacity=4)
    spans = empty_spans(6)
    spans["pid"], spans["goid"] = 1, [10, 11, 12, 13, 14, 10]
    spans["span_id"] = [100, 110, 120, 130, 140, 101]
    recent.add(spans[:3])
    recent.add(spans[3:])
    at = recent.find(np.array([1, 1, 1, 2]), np.array([10, 11, 14, 10]))
    got = [int(recent.cols["span"][i]) if i >= 0 else None for i in at]
    assert got == [101, None, 140, None]        # 11 was pushed out of the ring of 4
