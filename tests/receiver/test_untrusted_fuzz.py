"""More untrusted input, fuzzed: configuration files, ring-buffer records (the data area and its
positions, then the decoder fed whatever records come out), and another process's memory (the
goroutine list and g structs read through /proc/PID/mem). Only gotel's own errors, never a
traceback: anything else would reach a user, or stop the pipeline thread."""

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
from receiver.ringbuf import BUSY_BIT, DISCARD_BIT, HEADER_SIZE, RingBufferReader

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
class GarbageMemory:
    """A process memory that answers reads from a seeded stream of bytes (or not at all)."""

    pid = 4242

    def __init__(self, blob, holes):
        self.blob = blob or b"\0"
        self.holes = holes

    def read(self, addr, size):
        if size < 0 or (addr // 4096) % 7 in self.holes:
            return None
        if size > 1 << 24:
            raise AssertionError(f"gotel asked for {size} bytes of another process: unbounded")
        start = addr % len(self.blob)
        out = (self.blob[start:] + self.blob * (size // len(self.blob) + 1))[:size]
        return out


@pytest.fixture(scope="module")
def go_binary(inspectme):
    return GoBinary.open(inspectme("1.25"))


@FUZZ
@given(st.binary(min_size=1, max_size=512), st.sets(st.integers(0, 6), max_size=3))
def test_goroutine_list_from_garbage(go_binary, blob, holes):
    mem = GarbageMemory(blob, holes)
    try:
        out = existing.read_goroutines(4242, go_binary, mem)
    except GotelError:
        return
    assert out is None or out.dtype == EVENT_DTYPE


@FUZZ
@given(st.binary(min_size=1, max_size=512), st.integers(0, 2**64 - 1))
def test_one_g_from_garbage(go_binary, blob, addr):
    try:
        out = existing.read_g(GarbageMemory(blob, set()), addr, go_binary.layout)
    except GotelError:
        return
    assert out.dtype == EVENT_DTYPE and len(out) <= 1
