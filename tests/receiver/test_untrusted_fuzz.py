"""More untrusted input, fuzzed: configuration files, ring-buffer records (the data area and its
positions, then the decoder fed whatever records come out), and another process's memory (the
census of runtime.allgs and every g, and one g read on its own). Only gotel's own errors, never a
traceback: anything else would reach a user, or stop the pipeline thread."""

import ctypes
import struct

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import config
from pipeline.decoder import EventDecoder
from pipeline.metrics import GoRuntimeMetrics
from receiver import existing
from receiver.binary import GoBinary
from receiver.errors import ConfigError, GotelError
from receiver.events import EVENT_DTYPE, Kind
from receiver.procmem import ProcessMemory
from receiver.ringbuf import RingBufferReader

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

# --- configuration ------------------------------------------------------------------------------
KEYS = st.sampled_from([
    "receivers", "processors", "exporters", "service", "pipelines", "traces", "metrics",
    "goroutines", "filter", "sampler", "batch", "otlp", "file/traces", "debug", "telemetry",
    "endpoint", "path", "timeout", "sending_queue", "storage", "queue_size", "num_consumers",
    "retry_on_failure", "ring_bytes", "pids", "command", "paths", "kinds", "spans", "metrics",
    "min_park", "send_batch_size", "exporters", "level", "tls", "insecure", "buffer_events",
    "shutdown_timeout", "collection_interval", "resource", "headers", "compression"])
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                   st.text(max_size=20), st.sampled_from(["5s", "200ms", "1m30s", "0", "-1s",
                                                         "${env:HOME}", "${env:NOPE}", "$$", "${x}",
                                                         "localhost:4317", "ftp://h:1", "goroutines"]))
TREES = st.recursive(LEAVES, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                    st.dictionaries(KEYS, kids, max_size=5)),
                     max_leaves=30)


def only_config_errors(text):
    try:
        config.loads(text)
    except ConfigError:
        pass


@FUZZ
@given(st.dictionaries(KEYS, TREES, max_size=6))
def test_config_trees(tree):
    only_config_errors(yaml.safe_dump(tree, allow_unicode=True))


@FUZZ
@given(st.text(max_size=400))
def test_config_text(text):
    only_config_errors(text)


@FUZZ
@given(st.dictionaries(KEYS, TREES, max_size=4))
def test_default_config_with_changes(changes):
    """The shipped configuration with random values put into its components."""
    tree = config.default_dict()
    for kind in ("receivers", "processors", "exporters"):
        for cid in tree.get(kind) or {}:
            settings_ = tree[kind][cid] or {}
            settings_.update(changes)
            tree[kind][cid] = settings_
    only_config_errors(yaml.safe_dump(tree))


# --- ring-buffer records ------------------------------------------------------------------------
RING = 4096


@FUZZ
@given(st.binary(min_size=RING, max_size=RING), st.integers(0, 2**62), st.integers(-2**20, 2**20))
def test_ring_records_from_garbage(data, consumer, ahead):
    """A data area of random bytes, positions anywhere (even the producer behind the consumer):
    read() returns records or nothing, and never moves the consumer past what it read."""
    area = np.frombuffer(data * 2, dtype=np.uint8).copy()
    cons = np.array([consumer & ~7], dtype="<u8")
    prod = np.array([max(0, (consumer & ~7) + (ahead & ~7))], dtype="<u8")
    reader = RingBufferReader.over(cons, prod, area, RING)
    before = int(cons[0])
    out = reader.read()
    assert out.dtype == EVENT_DTYPE and int(cons[0]) - before <= RING
    decode(out)


def decode(events):
    """The decoder and metrics take any records and never raise."""
    d = EventDecoder(metrics=GoRuntimeMetrics())
    d.process(events)
    d.flush()


@FUZZ
@given(st.binary(min_size=EVENT_DTYPE.itemsize, max_size=EVENT_DTYPE.itemsize * 40),
       st.sampled_from([None, Kind.CREATE, Kind.PARK, Kind.EXIT, Kind.EXISTING]))
def test_decoder_takes_any_records(raw, kind):
    n = len(raw) // EVENT_DTYPE.itemsize
    events = np.frombuffer(raw[:n * EVENT_DTYPE.itemsize], dtype=EVENT_DTYPE).copy()
    events["pid"] %= 3                    # a few processes, so that goroutines meet again
    events["goid"] %= 8
    if kind is not None:
        events["kind"][::2] = kind
    decode(events)


# --- another process's memory --------------------------------------------------------------------
class GarbageMemory(ProcessMemory):
    """A process whose memory is a seeded stream of bytes, readable everywhere but in ``holes``
    (which 4 KiB pages, modulo 7): the real ProcessMemory bounds and batching over fake data."""

    def __init__(self, blob, holes, overlay=None):
        self.blob = np.frombuffer((blob or b"\0") * 64, np.uint8)
        self.holes = holes
        self.overlay = overlay or {}      # {address: bytes} laid over the random bytes
        super().__init__(4242)

    def refresh(self):
        self._maps = (np.array([0x1000], np.uint64), np.array([1 << 47], np.uint64))

    def _transfer(self, base, sizes, addrs, ok, offsets=None):
        sizes = np.broadcast_to(np.asarray(sizes, np.uint64), addrs.shape)
        if offsets is None:
            offsets = np.arange(len(addrs), dtype=np.uint64) * (sizes[0] if len(addrs) else 0)
        for k in np.flatnonzero(ok).tolist():
            addr, size = int(addrs[k]), int(sizes[k])
            if (addr // 4096) % 7 in self.holes:
                ok[k] = False
                continue
            start = addr % len(self.blob)
            data = np.resize(np.roll(self.blob, -start), size)
            for at, raw in self.overlay.items():
                lo, hi = max(at, addr), min(at + len(raw), addr + size)
                if lo < hi:
                    data[lo - addr:hi - addr] = np.frombuffer(raw[lo - at:hi - at], np.uint8)
            ctypes.memmove(int(base) + int(offsets[k]), data.ctypes.data, size)


@pytest.fixture(scope="module")
def go_binary(inspectme):
    return GoBinary.open(inspectme("1.25"))


@FUZZ
@given(st.binary(min_size=1, max_size=512), st.sets(st.integers(0, 6), max_size=3),
       st.integers(0, 300), st.lists(st.integers(0, 2**64 - 1), max_size=8))
def test_goroutine_census_from_garbage(go_binary, blob, holes, n, pointers):
    """The census (runtime.allgs, every g, their fields, their stacks) over memory of random bytes
    behind a plausible goroutine list: n pointers, some given, the rest random."""
    from receiver.census import CensusReader

    mem = GarbageMemory(blob, holes)
    try:
        reader = CensusReader(go_binary, 4242, mem=mem)
        list_at = 0x7f0000000000
        mem.overlay[reader.allgs + reader.bias] = struct.pack("<QQQ", list_at, n, n)
        if reader.allglen is not None:
            mem.overlay[reader.allglen + reader.bias] = struct.pack("<Q", n)
        mem.overlay[list_at] = b"".join(struct.pack("<Q", p) for p in pointers)
        census = reader.read(stacks=True)
    except GotelError:
        return
    assert len(census.goroutines) <= n


@FUZZ
@given(st.binary(min_size=1, max_size=512), st.integers(0, 2**64 - 1))
def test_one_g_from_garbage(go_binary, blob, addr):
    try:
        out = existing.read_g(GarbageMemory(blob, set()), addr, go_binary.layout)
    except GotelError:
        return
    assert out.dtype == EVENT_DTYPE and len(out) <= 1
