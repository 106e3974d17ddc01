"""Span arrays for the exporter-side tests: valid ids and times, a fake symbolizer, an encoder."""

import numpy as np

from pipeline.exporters import encode
from pipeline.spans import SPAN_DTYPE, SpanKind

T0 = 1_700_000_000_000_000_000
WAIT_REASONS = ["", "GC assist marking", "IO wait", "chan receive", "chan send", "select", "sleep"]
FUNCTIONS = {0x401000: ("main.worker", "/src/app/main.go", 10),
             0x402000: ("main.main", "/src/app/main.go", 40),
             0x403000: ("sync.(*WaitGroup).Go.func1", "/go/src/sync/waitgroup.go", 239),
             0x404000: ("net/http.(*Server).Serve", "/go/src/net/http/server.go", 3360)}


def resolve(pid, pcs):
    """A symbolizer: the function whose range [start, start + 0x1000) holds each PC."""
    out = []
    for pc in pcs.tolist():
        base = pc & ~0xFFF
        fn, file, line = FUNCTIONS.get(base, ("", "", 0))
        out.append((fn, file, line + (pc - base)))
    return out


def process(pid):
    return encode.ProcessInfo(pid, f"/usr/local/bin/app{pid}", "go1.25.5", "example.com/app",
                              "(devel)", {"GOARCH": "amd64", "vcs.revision": "abc123"},
                              T0 - 10**9)


def encoder(resolver=resolve, lookup=process, attributes=None):
    return encode.TraceEncoder(encode.Resources(lookup, attributes, host_name="testhost"),
                               encode.Symbols(resolver), lambda pid: WAIT_REASONS)


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
