"""SpanFilter: drops park rows shorter than a minimum, and spans of unwanted processes or functions.

Parks are measured by their true length (``blocked_ns + runnable_ns``). Processes are matched by
pid; goroutines by their start function name (``fnmatch`` patterns such as ``runtime.*``), resolved
through ``names.function(pid, pc)`` once per distinct (pid, start PC), cached. A goroutine whose
function is excluded loses its span and its park rows; goroutines it created keep their parent
reference, which then points at a span that is never exported. Include lists, when given, keep only
what matches. Runtime metrics are not affected: they are computed in the decoder, before this stage.

Cost: a few vectorized comparisons per batch, plus one name lookup per new (pid, start PC). Not
thread-safe.
"""

import fnmatch
import dataclasses
from dataclasses import dataclass

import numpy as np

from pipeline.goroutines import unique_pairs
from pipeline.spans import SpanKind, empty_spans
from pipeline.stage import Stage


TYPE = "filter"
SIGNALS = ("traces",)


@dataclass(frozen=True)
class Config:
    # parks shorter than this (0.1 ms) are noise
    min_park_ns: int = dataclasses.field(default=100_000, metadata={"duration": "ns"})
    include_pids: tuple = ()
    exclude_pids: tuple = ()
    include_functions: tuple = ()           # fnmatch patterns on the start function
    exclude_functions: tuple = ()

    def validate(self, path="filter"):
        problems = []
        if self.min_park_ns < 0:
            problems.append(f"{path}::min_park_ns must be >= 0")
        for field in ("include_pids", "exclude_pids"):
            if not all(isinstance(p, int) and p > 0 for p in getattr(self, field)):
                problems.append(f"{path}::{field} must hold positive integers")
        for field in ("include_functions", "exclude_functions"):
            if not all(isinstance(p, str) and p for p in getattr(self, field)):
                problems.append(f"{path}::{field} must hold non-empty strings")
        return problems


def _matches(name, patterns):
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


class SpanFilter(Stage):
    """Drops short parks and spans outside the configured processes and functions."""

    COUNTERS = ("dropped_short_parks", "dropped_by_pid", "dropped_by_function")

    def __init__(self, config=Config(), next_stage=None, names=None):
        super().__init__(next_stage, config)
        self.names = names
        self._by_function = bool(config.include_functions or config.exclude_functions)
        self._verdicts = {}   # (pid, start_pc) -> keep

    def _function_ok(self, name):
        c = self.config
        if c.include_functions and not _matches(name, c.include_functions):
            return False
        return not _matches(name, c.exclude_functions)

    def process(self, spans):
        if len(spans) == 0:
            return spans
        c = self.config
        keep = np.ones(len(spans), bool)
        if c.min_park_ns:
            short = (spans["kind"] == SpanKind.PARK) & (
                spans["blocked_ns"] + spans["runnable_ns"] < np.uint64(c.min_park_ns))
            self.dropped_short_parks += int(np.count_nonzero(short))
            keep &= ~short
        if c.include_pids or c.exclude_pids:
            pid = spans["pid"]
            ok = np.ones(len(spans), bool)
            if c.include_pids:
                ok &= np.isin(pid, np.array(c.include_pids, np.uint32))
            if c.exclude_pids:
                ok &= ~np.isin(pid, np.array(c.exclude_pids, np.uint32))
            self.dropped_by_pid += int(np.count_nonzero(keep & ~ok))
            keep &= ok
        if self._by_function:
            up, upc, inverse = unique_pairs(spans["pid"], spans["start_pc"])
            verdict = np.empty(up.size, bool)
            for i, key in enumerate(zip(up.tolist(), upc.tolist())):
                v = self._verdicts.get(key)
                if v is None:
                    name = self.names.function(*key) if self.names else f"0x{key[1]:x}"
                    v = self._verdicts[key] = self._function_ok(name)
                verdict[i] = v
            ok = verdict[inverse]
            self.dropped_by_function += int(np.count_nonzero(keep & ~ok))
            keep &= ok
        if keep.all():
            return spans
        return spans[keep] if keep.any() else empty_spans()


def create(settings, config, next_stage):
    return SpanFilter(config, next_stage, names=settings.processes)
