"""TraceEncoder: span arrays (``SPAN_DTYPE``) to serialized OTLP ``ExportTraceServiceRequest`` bytes.

The protobuf wire format is written directly, not through message objects: everything that repeats
is serialized once and cached (a process's Resource; per (pid, pc) the function name and creation
site; per wait reason, per flag set and per sampling threshold their attribute bytes); the numeric
part of every span (ids, kind, timestamps, flags, parent, and its integer attributes as varints) is
laid out for the whole batch with numpy; per span only a slice and a concatenation with cached bytes
remain in Python. ``request()`` parses
the bytes into a message for the exporters that need one (file, debug); the gRPC exporter sends the
bytes as they are. Spans are grouped into one ResourceSpans per pid.

Span names are the goroutine's start function (``main.worker``, ``net/http.(*conn).serve``). When
that is a standard-library wrapper that only calls a function value (``sync.(*WaitGroup).Go.func1``,
``time.goFunc``), the user's function is not in the goroutine record, so the name becomes the
function that created the goroutine when that one is the user's code, and the wrapper stays in
``code.function.name``. (The compiler's own wrappers of ``go f(x)``, ``pkg.caller.gowrapN`` or
``funcN``, are named ``f`` from their FUNCDATA_WrapInfo, as Go's tracer does:
``GoBinary.start_pcs``, in receiver/processes.py.) Park spans are named by their wait reason
("chan receive"); with ``park_mode: events`` parks are span events of their goroutine's span.

Thread-safety: one encoder is used by one thread (the pipeline's), its caches are plain dicts.
Cost: see ``python -m pipeline.exporters.encode`` (measured throughput printed in spans/s).
"""

import bisect
import itertools
import struct
import time

import numpy as np
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from pipeline.ids import tracestate
from pipeline.spans import SPAN_DTYPE, SpanFlag, SpanKind

SCOPE_NAME = "gotel"
try:
    from importlib.metadata import version as _pkg_version

    GOTEL_VERSION = _pkg_version("gotel")
except Exception:  # noqa: BLE001  (not installed: running from a checkout)
    GOTEL_VERSION = "0.1.0"

SPAN_KIND_INTERNAL = 1
# W3C sampled flag, and "has is_remote" (bit 8) with is_remote false: these spans are local.
SPAN_FLAGS = 0x101


# --- protobuf wire helpers ----------------------------------------------------------------------
def varint(n):
    """Protobuf base-128 varint of a non-negative integer (int64 two's complement if negative)."""
    if n < 0x80:
        return bytes((n,)) if n >= 0 else varint(n & ((1 << 64) - 1))
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 0x200000:
        return bytes((n & 0x7F | 0x80, (n >> 7) & 0x7F | 0x80, n >> 14))
    out = bytearray()
    n &= (1 << 64) - 1
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [varint(i) for i in range(1 << 14)]


def _v(n):
    return _SMALL[n] if n < 16384 else varint(n)


def field_bytes(number, payload):
    """A length-delimited field: tag, length, payload."""
    return _v((number << 3) | 2) + _v(len(payload)) + payload


def _any_string(s):
    return field_bytes(1, s.encode())


def _any_int(i):
    return b"\x18" + varint(i)


def _any_bool(b):
    return b"\x10\x01" if b else b"\x10\x00"


def _any_double(d):
    return b"\x21" + struct.pack("<d", d)


def key_value_bytes(key, value):
    """A serialized KeyValue for a str/int/bool/float value."""
    if isinstance(value, bool):
        any_value = _any_bool(value)
    elif isinstance(value, int):
        any_value = _any_int(value)
    elif isinstance(value, float):
        any_value = _any_double(value)
    else:
        any_value = _any_string(str(value))
    return field_bytes(1, key.encode()) + field_bytes(2, any_value)


def attribute(key, value):
    """Span attribute bytes (Span field 9, a KeyValue) for a str/int/bool/float value."""
    return field_bytes(9, key_value_bytes(key, value))


class _IntAttribute:
    """Builds Span field 9 bytes for an int attribute with a fixed key, fast: everything before the
    varint depends only on the varint's length, so it is precomputed for each of the 10 lengths."""

    def __init__(self, key):
        prefix = field_bytes(1, key.encode()) + b"\x12"
        self.heads = [b""] + [b"\x4a" + _v(len(prefix) + 2 + n) + prefix + bytes((1 + n,)) + b"\x18"
                              for n in range(1, 11)]

    def __call__(self, value):
        v = _SMALL[value] if value < 16384 else varint(value)
        return self.heads[len(v)] + v


# --- names --------------------------------------------------------------------------------------
# Standard-library functions that start a goroutine only to call a function value they were given.
WRAPPERS = (
    "sync.(*WaitGroup).Go.func",
    "time.goFunc",
    "golang.org/x/sync/errgroup.(*Group).Go.func",
    "golang.org/x/sync/errgroup.(*Group).TryGo.func",
    "context.AfterFunc.func",
    "runtime/pprof.",
)


def is_stdlib(function):
    """True for the runtime and standard library: a package path whose first element has no dot."""
    if not function or function.startswith("main."):
        return False
    if "/" in function:
        return "." not in function.split("/", 1)[0]
    return True


def is_wrapper(function):
    return any(function.startswith(w) for w in WRAPPERS)


def span_name(start_function, creator_function):
    """The goroutine span's name: its start function, unless that is a wrapper of user code.
    The main goroutine starts in runtime.main, which runs the program's main.main."""
    if start_function == "runtime.main":
        return "main.main"
    if start_function and is_wrapper(start_function) and creator_function and not is_stdlib(
            creator_function):
        return creator_function
    return start_function or creator_function or "goroutine"


# --- per-process facts --------------------------------------------------------------------------
class Resources:
    """resource_for(pid) -> OTLP Resource of a traced process, cached per pid.

    ``describe(pid)`` gives the attributes that describe the process (``Processes.describe``);
    gotel adds ``telemetry.sdk.*``, and ``overrides`` from the config replace any of them
    (``service.name`` first among them).
    """

    def __init__(self, describe, overrides=None):
        self.describe = describe
        self.overrides = dict(overrides or {})
        self._cache = {}

    def attributes(self, pid):
        attrs = dict(self.describe(pid))
        attrs["telemetry.sdk.name"] = "gotel"
        attrs["telemetry.sdk.version"] = GOTEL_VERSION
        attrs.update(self.overrides)
        return attrs

    def resource_for(self, pid):
        """The Resource message of pid (cached)."""
        pid = int(pid)
        res = self._cache.get(pid)
        if res is None:
            res = resource_pb2.Resource(
                attributes=[key_value(k, v) for k, v in self.attributes(pid).items()])
            self._cache[pid] = res
        return res

    def forget(self, pid):
        self._cache.pop(int(pid), None)


def any_value(value):
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    if isinstance(value, (list, tuple)):
        return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(
            values=[any_value(v) for v in value]))
    return common_pb2.AnyValue(string_value=str(value))


def key_value(key, value):
    return common_pb2.KeyValue(key=key, value=any_value(value))


# --- the encoder --------------------------------------------------------------------------------
# The fixed part of every span, in wire order-insensitive layout: protobuf fields may come in any
# order, so the optional parent_span_id goes last and a root span's record is cut 10 bytes short.
_FIXED = np.dtype([
    ("t_trace", "u1"), ("l_trace", "u1"), ("trace_hi", ">u8"), ("trace_lo", ">u8"),
    ("t_span", "u1"), ("l_span", "u1"), ("span", ">u8"),
    ("t_kind", "u1"), ("kind", "u1"),
    ("t_start", "u1"), ("start", "<u8"),
    ("t_end", "u1"), ("end", "<u8"),
    ("t_flags", "u1"), ("t_flags2", "u1"), ("flags", "<u4"),
    ("t_parent", "u1"), ("l_parent", "u1"), ("parent", ">u8"),
])
_FIXED_SIZE = _FIXED.itemsize
_ROOT_SIZE = _FIXED_SIZE - 10

_GOID = _IntAttribute("gotel.goroutine.id")
_PARENT_GOID = _IntAttribute("gotel.goroutine.parent_id")
_PARKS = _IntAttribute("gotel.goroutine.parks")
_BLOCKED = _IntAttribute("gotel.park.blocked_ns")
_RUNNABLE = _IntAttribute("gotel.park.runnable_ns")

_FLAG_ATTRIBUTES = (
    (SpanFlag.ENDED_AT_SHUTDOWN, "gotel.goroutine.ended_at_shutdown"),
    (SpanFlag.STARTED_BEFORE_ATTACH, "gotel.goroutine.started_before_attach"),
    (SpanFlag.PARENT_UNSEEN, "gotel.goroutine.parent_unseen"),
    (SpanFlag.CONTINUED, "gotel.goroutine.continued"),
    (SpanFlag.ANOMALY, "gotel.sampler.anomaly"),
    (SpanFlag.SPLIT, "gotel.trace.split"),
    (SpanFlag.UNWOUND, "gotel.function.unwound"),
    (SpanFlag.EXIT_UNSEEN, "gotel.goroutine.exit_unseen"),
)


class TraceEncoder:
    """Serializes span arrays into ExportTraceServiceRequest bytes (see the module docstring).

    ``resources`` gives ``resource_for(pid)``; ``names`` answers ``names(pid, pcs)`` ->
    [(function, file, line)] and ``wait_reason(pid, number)`` (``receiver.processes.Processes``).
    """

    def __init__(self, resources, names):
        self.resources = resources
        self.names_of = names
        scope = common_pb2.InstrumentationScope(name=SCOPE_NAME, version=GOTEL_VERSION)
        self._scope = field_bytes(1, scope.SerializeToString())
        self._resource = {}
        self._symbol = {}           # (pid, pc) -> (function, file, line); unknown: named by address
        self._start_blob = {}       # (pid, start_pc) -> (name field or None for a wrapper, attrs)
        self._create_blob = {}      # (pid, create_pc) -> creation site attributes
        self._park_blob = {}        # (pid, wait_reason) -> name field + wait reason attribute
        self._flag_blob = {}
        self._state_blob = {}
        # windows(pid) -> (numbers, opened, closed) Unix ns arrays of that process's windows of full
        # tracing (receiver.levels), or None: spans overlapping one carry gotel.window = its number.
        self.windows = lambda pid: None
        self._window_blob = {}
        # span_id -> serialized attributes of a FUNCTION span (arguments; pipeline/funcspans.py)
        self.extra_attributes = None

    # cached parts
    def _resource_bytes(self, pid):
        blob = self._resource.get(pid)
        if blob is None:
            blob = field_bytes(1, self.resources.resource_for(pid).SerializeToString())
            self._resource[pid] = blob
        return blob

    def forget(self, pid):
        """Drop what is cached for a process whose PID now names another process."""
        self._resource.pop(pid, None)
        for cache in (self._symbol, self._start_blob, self._create_blob, self._park_blob):
            for key in [k for k in cache if k[0] == pid]:
                del cache[key]
        self.resources.forget(pid)

    def _lookup(self, pid, pcs):
        """Make sure every (pid, pc) is cached; pcs may repeat."""
        missing = [pc for pc in set(pcs) if (pid, pc) not in self._symbol]
        if not missing:
            return
        try:
            found = self.names_of.names(pid, missing)
        except Exception:  # noqa: BLE001  (a symbolizer failure must not lose the spans)
            found = []
        for i, pc in enumerate(missing):
            entry = found[i] if i < len(found) else None
            if not entry or not entry[0]:
                entry = (f"0x{pc:x}" if pc else "", "", 0)
            self._symbol[(pid, pc)] = (str(entry[0]), str(entry[1] or ""), int(entry[2] or 0))

    def _symbolized(self, pid, pc):
        entry = self._symbol.get((pid, pc))
        if entry is None:
            self._lookup(pid, [pc])
            entry = self._symbol[(pid, pc)]
        return entry

    def names(self, pid, start_pc, create_pc):
        """(span name, start function, creator function, creation file, creation line)."""
        start_fn = self._symbolized(pid, start_pc)[0] if start_pc else ""
        creator_fn, file, line = self._symbolized(pid, create_pc - 1) if create_pc else ("", "", 0)
        return span_name(start_fn, creator_fn), start_fn, creator_fn, file, line

    def _goroutine_bytes(self, pid, start_pc, create_pc):
        """Name field and code attributes: cached per start PC and per creation PC, since real
        programs pair them in few ways but a cache per pair would still be their product."""
        start = self._start_blob.get((pid, start_pc))
        if start is None:
            start_fn = self._symbolized(pid, start_pc)[0] if start_pc else ""
            wrapper = is_wrapper(start_fn)
            attrs = attribute("code.function.name", start_fn) if start_fn else b""
            name = None if wrapper else field_bytes(5, (start_fn or "goroutine").encode())
            start = self._start_blob[(pid, start_pc)] = (name, attrs)
        create = self._create_blob.get((pid, create_pc))
        if create is None:
            # The creation PC is a return address; its call is the instruction before (Go's own
            # traceback does the same for "created by").
            creator_fn, file, line = self._symbolized(pid, create_pc - 1) if create_pc else ("", "", 0)
            parts = []
            if file:
                parts.append(attribute("code.file.path", file))
            if line:
                parts.append(attribute("code.line.number", line))
            if creator_fn:
                parts.append(attribute("gotel.goroutine.created_by", creator_fn))
            create = self._create_blob[(pid, create_pc)] = b"".join(parts)
        name = start[0]
        if name is None:
            name = field_bytes(5, self.names(pid, start_pc, create_pc)[0].encode())
        return name + start[1] + create

    def wait_reason(self, pid, number):
        return self.names_of.wait_reason(pid, number)

    def _park_bytes(self, pid, number):
        key = (pid, number)
        blob = self._park_blob.get(key)
        if blob is None:
            reason = self.wait_reason(pid, number)
            blob = self._park_blob[key] = field_bytes(5, reason.encode()) + attribute(
                "gotel.wait_reason", reason)
        return blob

    def _flags_bytes(self, flags):
        blob = self._flag_blob.get(flags)
        if blob is None:
            blob = self._flag_blob[flags] = b"".join(
                attribute(key, True) for flag, key in _FLAG_ATTRIBUTES if flags & flag)
        return blob

    def _state_bytes(self, threshold):
        blob = self._state_blob.get(threshold)
        if blob is None:
            state = tracestate(threshold)
            blob = self._state_blob[threshold] = field_bytes(3, state.encode()) if state else b""
        return blob

    # encoding
    def _numeric(self, spans):
        """Every span's numeric part, serialized for the whole batch with numpy.

        Returns (buffer, offsets): span i's ids, kind, timestamps, flags, optional parent and its three
        int attributes are ``buffer[offsets[i]:offsets[i + 1]]``. A varint's bytes are written per
        length class, so the cost is a few dozen array operations per batch, not per span.
        """
        n = len(spans)
        fixed = np.empty(n, dtype=_FIXED)
        fixed["t_trace"], fixed["l_trace"] = 0x0A, 16
        fixed["trace_hi"], fixed["trace_lo"] = spans["trace_hi"], spans["trace_lo"]
        fixed["t_span"], fixed["l_span"] = 0x12, 8
        fixed["span"] = spans["span_id"]
        fixed["t_kind"], fixed["kind"] = 0x30, SPAN_KIND_INTERNAL
        fixed["t_start"], fixed["start"] = 0x39, spans["start_ns"]
        fixed["t_end"], fixed["end"] = 0x41, spans["end_ns"]
        fixed["t_flags"], fixed["t_flags2"], fixed["flags"] = 0x85, 0x01, SPAN_FLAGS
        fixed["t_parent"], fixed["l_parent"] = 0x22, 8
        fixed["parent"] = spans["parent_span_id"]
        fixed2d = fixed.view(np.uint8).reshape(n, _FIXED_SIZE)
        has_parent = spans["parent_span_id"] != 0
        is_park = spans["kind"] == int(SpanKind.PARK)
        slots = [
            (spans["goid"], _GOID, _GOID),
            (np.where(is_park, spans["blocked_ns"], spans["parent_goid"]), _BLOCKED, _PARENT_GOID),
            (np.where(is_park, spans["runnable_ns"], spans["n_parks"]), _RUNNABLE, _PARKS),
        ]
        lengths = np.where(has_parent, _FIXED_SIZE, _ROOT_SIZE).astype(np.int64)
        classes = []
        for values, park_attr, goroutine_attr in slots:
            values = values.astype(np.uint64)
            vlen = np.ones(n, dtype=np.int64)
            for k in range(1, 10):
                vlen += values >= np.uint64(1 << (7 * k))
            hlen = np.where(is_park, np.array([len(h) for h in park_attr.heads])[vlen],
                            np.array([len(h) for h in goroutine_attr.heads])[vlen])
            lengths += hlen + vlen
            classes.append((values, vlen, hlen, park_attr, goroutine_attr))
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        out = np.empty(int(offsets[-1]), dtype=np.uint8)
        starts = offsets[:-1]
        out[starts[:, None] + np.arange(_ROOT_SIZE)] = fixed2d[:, :_ROOT_SIZE]
        if has_parent.any():
            out[starts[has_parent, None] + np.arange(_ROOT_SIZE, _FIXED_SIZE)] = \
                fixed2d[has_parent, _ROOT_SIZE:]
        cursor = starts + np.where(has_parent, _FIXED_SIZE, _ROOT_SIZE)
        for values, vlen, hlen, park_attr, goroutine_attr in classes:
            for park_value, attr in ((True, park_attr), (False, goroutine_attr)):
                kind_mask = is_park == park_value
                for length in np.unique(vlen[kind_mask]).tolist():
                    mask = kind_mask & (vlen == length)
                    head = np.frombuffer(attr.heads[length], dtype=np.uint8)
                    at = cursor[mask]
                    out[at[:, None] + np.arange(len(head))] = head
                    at = at + len(head)
                    v = values[mask]
                    for j in range(length):
                        byte = (v >> np.uint64(7 * j)) & np.uint64(0x7F)
                        if j < length - 1:
                            byte |= np.uint64(0x80)
                        out[at + j] = byte.astype(np.uint8)
            cursor = cursor + hlen + vlen
        return out.tobytes(), offsets.tolist()

    def _span_bodies(self, pid, spans):
        """Serialized Span messages (each with its ScopeSpans field tag and length) of one pid."""
        events = {}
        as_event = (spans["flags"] & int(SpanFlag.AS_EVENT)) != 0
        if as_event.any():
            spans, events = self._split_events(pid, spans, as_event)
        self._lookup(pid, np.unique(spans["start_pc"]).tolist())
        self._lookup(pid, [pc - 1 for pc in np.unique(spans["create_pc"]).tolist() if pc])
        numeric, offsets = self._numeric(spans)
        goroutine_bytes, park_bytes = self._goroutine_bytes, self._park_bytes
        flags_bytes, state_bytes = self._flags_bytes, self._state_bytes
        out = []
        append = out.append
        park = int(SpanKind.PARK)
        columns = [spans[c].tolist() for c in (
            "start_pc", "create_pc", "sample_threshold", "kind", "wait_reason", "flags",
            "link_span_id")]
        extra = self.extra_attributes
        span_ids = spans["span_id"].tolist() if events or extra else None
        function = int(SpanKind.FUNCTION)
        window = self._window_numbers(pid, spans)
        before = int(SpanFlag.STARTED_BEFORE_ATTACH)
        goids = spans["goid"].tolist() if (spans["flags"] & before).any() else None
        memo = {}
        for i, (spc, cpc, threshold, kind, reason, flags, link) in enumerate(zip(*columns)):
            head = numeric[offsets[i]:offsets[i + 1]]
            if kind == park:
                blob = park_bytes(pid, reason)
            else:
                blob = memo.get((spc, cpc))
                if blob is None:
                    blob = memo[(spc, cpc)] = goroutine_bytes(pid, spc, cpc)
            more = extra(span_ids[i]) if extra is not None and kind == function else b""
            w = window[i] if window is not None else 0
            if flags or threshold or link or events or more or w:
                parts = [head, blob, more]
                if w:
                    parts.append(self._window_attribute(w))
                if flags:
                    parts.append(flags_bytes(flags))
                    if flags & before and kind != park:   # its stack when gotel attached
                        stack = self.names_of.attach_stack(pid, goids[i])
                        if stack:
                            parts.append(attribute("code.stacktrace", stack))
                if link:
                    # CONTINUED: the goroutine's previous part; SPLIT: the creator's span.
                    lh, ll = int(spans["link_trace_hi"][i]), int(spans["link_trace_lo"][i])
                    body = struct.pack(">BBQQBBQ", 0x0A, 16, lh, ll, 0x12, 8, link)
                    parts.append(field_bytes(13, body + b"\x35" + struct.pack("<I", SPAN_FLAGS)))
                if threshold:
                    parts.append(state_bytes(threshold))
                if events:
                    mine = events.get(span_ids[i])
                    if mine:
                        parts.extend(mine)
                body = b"".join(parts)
            else:
                body = head + blob
            append(b"\x12" + _v(len(body)) + body)
        return out

    def _window_numbers(self, pid, spans):
        """Per span, the number of the window of full tracing it overlaps (0: none), or None."""
        found = self.windows(pid)
        if found is None:
            return None
        numbers, opened, closed = found
        i = np.searchsorted(opened, spans["end_ns"], side="right").astype(np.int64) - 1
        ok = i >= 0
        ok[ok] = closed[i[ok]] >= spans["start_ns"][ok]
        out = np.zeros(len(spans), np.uint64)
        out[ok] = numbers[i[ok]]
        return out.tolist()

    def _window_attribute(self, number):
        blob = self._window_blob.get(number)
        if blob is None:
            blob = self._window_blob[number] = attribute("gotel.window", int(number))
        return blob

    def _split_events(self, pid, spans, as_event):
        """Park rows flagged AS_EVENT become span events of their parent (Span field 11). A row whose
        parent is not in this batch stays a park span rather than being lost."""
        rows = spans[as_event]
        others = spans[~as_event]
        present = set(others["span_id"].tolist())
        events, orphans = {}, np.zeros(len(rows), bool)
        for i, (parent, start, reason, blocked, runnable, goid) in enumerate(zip(*[
                rows[c].tolist() for c in ("parent_span_id", "start_ns", "wait_reason",
                                           "blocked_ns", "runnable_ns", "goid")])):
            if parent not in present:
                orphans[i] = True
                continue
            name = self.wait_reason(pid, reason)
            body = (b"\x09" + struct.pack("<Q", start) + field_bytes(2, name.encode())
                    + field_bytes(3, key_value_bytes("gotel.wait_reason", name))
                    + field_bytes(3, key_value_bytes("gotel.park.blocked_ns", blocked))
                    + field_bytes(3, key_value_bytes("gotel.park.runnable_ns", runnable)))
            events.setdefault(parent, []).append(field_bytes(11, body))
        if orphans.any():
            others = np.concatenate([others, rows[orphans]])
        return others, events

    def encode_chunks(self, spans, max_bytes=None):
        """[(request bytes, span count)] for a span array, each request under max_bytes if given
        (a single span larger than max_bytes still goes, alone)."""
        if len(spans) == 0:
            return []
        if spans.dtype != SPAN_DTYPE:
            spans = spans.astype(SPAN_DTYPE)
        pids = spans["pid"]
        order = np.argsort(pids, kind="stable")
        bounds = np.flatnonzero(np.diff(pids[order])) + 1
        chunks, current, size, count = [], [], 0, 0
        for group in np.split(order, bounds):
            pid = int(pids[group[0]])
            resource = self._resource_bytes(pid)
            bodies = self._span_bodies(pid, spans[group] if len(bounds) else spans)
            overhead = len(resource) + len(self._scope) + 16
            cum = list(itertools.accumulate(map(len, bodies)))
            start, base = 0, 0
            while start < len(bodies):
                room = None if max_bytes is None else max_bytes - size - overhead
                end = len(bodies) if room is None else bisect.bisect_right(cum, base + room, lo=start)
                if end == start:
                    if current:              # the current request is full: close it
                        chunks.append((b"".join(current), count))
                        current, size, count = [], 0, 0
                        continue
                    end = start + 1          # one span larger than the cap goes alone
                scope_spans = field_bytes(2, self._scope + b"".join(bodies[start:end]))
                rs = field_bytes(1, resource + scope_spans)
                current.append(rs)
                size += len(rs)
                count += end - start
                base = cum[end - 1]
                start = end
        if current:
            chunks.append((b"".join(current), count))
        return chunks

    def encode(self, spans):
        """One ExportTraceServiceRequest, serialized, holding every span of the array."""
        chunks = self.encode_chunks(spans)
        return chunks[0][0] if chunks else b""

    def request(self, spans):
        """One ExportTraceServiceRequest message holding every span of the array."""
        return trace_service_pb2.ExportTraceServiceRequest.FromString(self.encode(spans))


def benchmark(n=200_000, pids=2, distinct_pcs=200, park_share=0.5, seed=1):
    """Encode n synthetic spans; return spans/s (the symbolizer is a trivial function)."""
    rng = np.random.default_rng(seed)
    spans = np.zeros(n, dtype=SPAN_DTYPE)
    for col in ("trace_hi", "trace_lo", "span_id", "parent_span_id"):
        spans[col] = rng.integers(1, 2**63, n, dtype=np.uint64)
    spans["parent_span_id"][:: 10] = 0
    spans["start_ns"] = 1_700_000_000_000_000_000 + rng.integers(0, 10**9, n, dtype=np.uint64)
    spans["end_ns"] = spans["start_ns"] + rng.integers(0, 10**6, n, dtype=np.uint64)
    spans["goid"] = rng.integers(1, 10**6, n, dtype=np.uint64)
    spans["parent_goid"] = rng.integers(1, 10**6, n, dtype=np.uint64)
    spans["start_pc"] = 0x400000 + rng.integers(0, distinct_pcs, n, dtype=np.uint64) * 64
    spans["create_pc"] = 0x500000 + rng.integers(0, distinct_pcs, n, dtype=np.uint64) * 64
    spans["kind"] = (rng.random(n) < park_share).astype(np.uint8)
    spans["wait_reason"] = rng.integers(0, 30, n)
    spans["blocked_ns"] = rng.integers(0, 10**7, n, dtype=np.uint64)
    spans["runnable_ns"] = rng.integers(0, 10**5, n, dtype=np.uint64)
    spans["n_parks"] = rng.integers(0, 50, n)
    spans["pid"] = 1000 + rng.integers(0, pids, n)

    class Names:
        def names(self, pid, pcs):
            return [(f"main.function{pc % 997}", "/src/app/main.go", int(pc % 500)) for pc in pcs]

        def wait_reason(self, pid, number):
            return f"reason {number}"

    describe = {"service.name": "example.com/app", "process.executable.path": "/usr/bin/app"}
    encoder = TraceEncoder(Resources(lambda pid: {**describe, "process.pid": pid}), Names())
    encoder.encode_chunks(spans[:1000])  # warm the caches, as a running pipeline has
    batch = 8192
    t0 = time.perf_counter()
    total = 0
    for start in range(0, n, batch):
        for data, _ in encoder.encode_chunks(spans[start:start + batch], 4 << 20):
            total += len(data)
    elapsed = time.perf_counter() - t0
    return n / elapsed, total / n


if __name__ == "__main__":
    rate, per_span = benchmark()
    print(f"encode: {rate:,.0f} spans/s, {per_span:.0f} bytes/span (batches of 8192)")
