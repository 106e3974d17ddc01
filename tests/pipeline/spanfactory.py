"""Span arrays for the exporter-side tests: valid ids and times, stand-in process facts (no Go
binary behind them: the end-to-end tests cover real ones), an encoder."""

from types import SimpleNamespace

import numpy as np

from pipeline.exporters import encode
from pipeline.spans import SPAN_DTYPE, SpanKind
from receiver import processes

T0 = 1_700_000_000_000_000_000
WAIT_REASONS = ["", "GC assist marking", "IO wait", "chan receive", "chan send", "select", "sleep"]
FUNCTIONS = {0x401000: ("main.worker", "/src/app/main.go", 10),
             0x402000: ("main.main", "/src/app/main.go", 40),
             0x403000: ("sync.(*WaitGroup).Go.func1", "/go/src/sync/waitgroup.go", 239),
             0x404000: ("net/http.(*Server).Serve", "/go/src/net/http/server.go", 3360)}


def resolve(pid, pcs):
    """A symbolizer: the function whose range [start, start + 0x1000) holds each PC."""
    out = []
    for pc in pcs:
        base = pc & ~0xFFF
        fn, file, line = FUNCTIONS.get(base, ("", "", 0))
        out.append((fn, file, line + (pc - base)) if fn else ("", "", 0))
    return out


class Names:
    """What the encoder asks ``receiver.processes.Processes``, answered from the tables above."""

    def __init__(self, resolver=resolve):
        self.resolver = resolver

    def names(self, pid, pcs):
        return self.resolver(pid, list(pcs))

    def wait_reason(self, pid, number):
        ok = number < len(WAIT_REASONS) and WAIT_REASONS[number]
        return WAIT_REASONS[number] if ok else f"waitReason({number})"


def process(pid, exe=None, module="example.com/app"):
    binary = SimpleNamespace(go_version="go1.25.5", module=module,
                             info=SimpleNamespace(module_version="(devel)"),
                             build_settings={"GOARCH": "amd64", "vcs.revision": "abc123"})
    return processes.Process(pid, binary, exe or f"/usr/local/bin/app{pid}", T0 - 10**9, None)


def describe(pid):
    return processes.describe(pid, process(pid), "testhost")


def encoder(resolver=resolve, attributes=None):
    return encode.TraceEncoder(encode.Resources(describe, attributes), Names(resolver))


def spans(n, seed=0, pids=(100,), parks=0.5):
    """n random but valid spans (non-zero ids, end >= start) spread over pids."""
    rng = np.random.default_rng(seed)
    s = np.zeros(n, dtype=SPAN_DTYPE)
    for col in ("trace_hi", "trace_lo", "span_id"):
        s[col] = rng.integers(1, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    s["parent_span_id"] = np.where(rng.random(n) < 0.2, 0,
                                   rng.integers(1, 2**63, n, dtype=np.uint64))
    s["start_ns"] = T0 + rng.integers(0, 10**9, n, dtype=np.uint64)
    s["end_ns"] = s["start_ns"] + rng.integers(0, 10**8, n, dtype=np.uint64)
    s["goid"] = rng.integers(1, 2**40, n, dtype=np.uint64)
    s["parent_goid"] = rng.integers(0, 2**20, n, dtype=np.uint64)
    s["start_pc"] = 0x401000
    s["create_pc"] = 0x402010
    s["kind"] = np.where(rng.random(n) < parks, SpanKind.PARK, SpanKind.GOROUTINE)
    s["wait_reason"] = rng.integers(1, len(WAIT_REASONS), n)
    s["blocked_ns"] = rng.integers(0, 10**7, n, dtype=np.uint64)
    s["runnable_ns"] = rng.integers(0, 10**5, n, dtype=np.uint64)
    s["n_parks"] = rng.integers(0, 100, n)
    s["pid"] = np.array(pids, dtype=np.uint32)[rng.integers(0, len(pids), n)]
    s["born_ns"] = s["start_ns"]
    return s
