"""SpanFilter: short parks, processes and start functions."""

import numpy as np
import pytest

from pipeline.processors import filter as span_filter
from pipeline.stage import Settings
from pipeline.processors.filter import Config, SpanFilter
from pipeline.spans import SpanKind, empty_spans
from receiver.errors import ConfigError


class Names:
    calls = 0

    def function(self, pid, pc):
        Names.calls += 1
        return {0x10: "main.worker", 0x20: "runtime.bgsweep", 0x30: "net/http.(*conn).serve"}[pc]


def rows():
    r = empty_spans(6)
    r["pid"] = [1, 1, 1, 2, 2, 1]
    r["start_pc"] = [0x10, 0x10, 0x20, 0x30, 0x30, 0x10]
    r["kind"] = [SpanKind.GOROUTINE, SpanKind.PARK, SpanKind.GOROUTINE, SpanKind.GOROUTINE,
                 SpanKind.PARK, SpanKind.PARK]
    r["blocked_ns"] = [0, 50_000, 0, 0, 300_000, 60_000]
    r["runnable_ns"] = [0, 10_000, 0, 0, 0, 60_000]
    r["span_id"] = np.arange(1, 7)
    return r


def ids(spans):
    return spans["span_id"].tolist()


def test_short_parks_are_dropped_by_their_true_length():
    f = SpanFilter(Config(min_park_ns=100_000))
    assert ids(f.process(rows())) == [1, 3, 4, 5, 6]
    assert f.dropped_short_parks == 1


def test_processes_are_included_or_excluded():
    f = SpanFilter(Config(min_park_ns=0, exclude_pids=(2,)))
    assert ids(f.process(rows())) == [1, 2, 3, 6]
    f = SpanFilter(Config(min_park_ns=0, include_pids=(2,)))
    assert ids(f.process(rows())) == [4, 5] and f.dropped_by_pid == 4


def test_start_functions_are_matched_by_pattern_and_cached():
    Names.calls = 0
    f = span_filter.create(Settings("filter", Names()),
                          Config(min_park_ns=0, exclude_functions=("runtime.*",)), None)
    assert ids(f.process(rows())) == [1, 2, 4, 5, 6]
    f.process(rows())
    assert Names.calls == 3 and f.dropped_by_function == 2
    f = SpanFilter(Config(min_park_ns=0, include_functions=("main.*", "net/http.*")), names=Names())
    assert ids(f.process(rows())) == [1, 2, 4, 5, 6]


def test_nothing_to_drop_passes_the_batch_through():
    r = rows()
    assert SpanFilter(Config(min_park_ns=0)).process(r) is r
    assert SpanFilter().process(empty_spans()).size == 0


def test_config_problems_are_listed():
    problems = Config(min_park_ns=-1, include_pids=("x",), exclude_functions=("",)).validate()
    assert problems == ["filter::min_park_ns must be >= 0",
                        "filter::include_pids must hold positive integers",
                        "filter::exclude_functions must hold non-empty strings"]
    with pytest.raises(ConfigError):
        SpanFilter(Config(min_park_ns=-1))
