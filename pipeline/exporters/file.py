"""File exporter: OTLP/JSON, one export request per line, like the Collector's file exporter.

Each request is written as protobuf JSON with the OTLP/JSON rules of the specification: keys in
lowerCamelCase, enums as integers, trace and span ids as hex strings (not protobuf's base64), 64-bit
integers as decimal strings (protobuf's JSON mapping, which OTLP/JSON receivers accept). Give traces
and metrics separate files by defining one exporter per signal (``file/traces``, ``file/metrics``).
One worker thread writes, so the pipeline thread never waits for the disk; the file is truncated at
start unless ``append`` is set. Each export request reaches the file as it is exported, as one
complete line in one ``write`` (no user-space buffer): a reader sees every export so far, and the
file stays valid JSON Lines after gotel is stopped by any means except a kill in the middle of that
one write. ``flush_interval`` is how often the file is also fsync'd to the disk (0: never).
"""

import dataclasses
import json
import os
import threading
import time
from pathlib import Path

from google.protobuf.descriptor import FieldDescriptor as FD

from pipeline.exporters.base import Exporter, QueueConfig
from receiver.errors import ConfigError

TYPE = "file"
SIGNALS = ("traces", "metrics", "logs")


@dataclasses.dataclass(frozen=True)
class Config:
    path: str = ""
    append: bool = False
    flush_interval: float = dataclasses.field(default=1.0, metadata={"duration": "s"})
    queue_size: int = 1000

    def validate(self):
        problems = []
        if not self.path:
            problems.append("path is required (the file to write, e.g. ./gotel-out/traces.jsonl)")
        else:
            parent = Path(self.path).expanduser().resolve().parent
            existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
            if existing is not None and not existing.is_dir():
                problems.append(f"path: {existing} is not a directory")
        if self.flush_interval < 0:
            problems.append("flush_interval must be >= 0")
        if self.queue_size < 1:
            problems.append("queue_size must be >= 1")
        return problems


_INT64 = {FD.TYPE_INT64, FD.TYPE_UINT64, FD.TYPE_FIXED64, FD.TYPE_SFIXED64, FD.TYPE_SINT64}


def _scalar(fd, value):
    if fd.type in _INT64:
        return str(value)
    if fd.type == FD.TYPE_BYTES:
        # Every bytes field gotel writes is a trace or span id (OTLP/JSON: hex, not base64).
        return value.hex()
    return value


def otlp_json_object(message):
    """A message as the dict of its OTLP/JSON form: set fields only, lowerCamelCase names, enums as
    integers, 64-bit integers as strings, ids as hex. Walks ``ListFields()``: ~1.5x faster than
    ``json_format.MessageToDict`` plus an id rewrite, with the same output for OTLP requests;
    attributes (most of the messages in a request) take a shorter path."""
    out = {}
    for fd, value in message.ListFields():
        if fd.type == FD.TYPE_MESSAGE:
            convert = _CONVERTERS.get(fd.message_type.full_name, otlp_json_object)
            out[fd.json_name] = [convert(v) for v in value] if fd.is_repeated else convert(value)
        elif fd.is_repeated:
            out[fd.json_name] = [_scalar(fd, v) for v in value]
        else:
            out[fd.json_name] = _scalar(fd, value)
    return out


# AnyValue cases written directly (the others, arrays, maps, bytes, doubles, take the general walk).
_ANY = {"string_value": ("stringValue", None), "int_value": ("intValue", str),
        "bool_value": ("boolValue", None)}


def _key_value(kv):
    """A KeyValue (an attribute) as otlp_json_object makes it, without walking its fields."""
    value = kv.value
    which = value.WhichOneof("value")
    if not kv.key or which not in _ANY:
        return otlp_json_object(kv)
    name, text = _ANY[which]
    v = getattr(value, which)
    return {"key": kv.key, "value": {name: text(v) if text else v}}


_CONVERTERS = {"opentelemetry.proto.common.v1.KeyValue": _key_value}

# A list longer than this is written to JSON in slices of it: json.dumps holds the GIL for its
# whole call (measured: ~19 us per span, 0.15 s for an 8192-span request), and the receiver's poller
# must get the GIL within milliseconds to drain the ring.
JSON_SLICE = 256


def _dumps(obj, depth):
    """json.dumps of obj, with long lists down to ``depth`` levels written slice by slice."""
    if depth <= 0 or not isinstance(obj, (dict, list)):
        return json.dumps(obj, separators=(",", ":"))
    if isinstance(obj, dict):
        return "{" + ",".join(json.dumps(k) + ":" + _dumps(v, depth - 1)
                              for k, v in obj.items()) + "}"
    if len(obj) > JSON_SLICE:
        return "[" + ",".join(json.dumps(obj[i:i + JSON_SLICE], separators=(",", ":"))[1:-1]
                              for i in range(0, len(obj), JSON_SLICE)) + "]"
    return "[" + ",".join(_dumps(v, depth - 1) for v in obj) + "]"


def to_otlp_json(message):
    """An export request message as one line of OTLP/JSON (no trailing newline). The spans,
    metrics or log records (six levels down) are written a slice at a time."""
    return _dumps(otlp_json_object(message), 6)


class FileExporter(Exporter):
    """Appends OTLP/JSON lines to one file; see the module docstring."""

    def __init__(self, name, config):
        super().__init__(name, QueueConfig(True, 1, config.queue_size))
        self.config = config
        self.path = Path(config.path).expanduser()
        self._file = None
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self.lines = 0

    def start(self):
        if self._file is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "ab" if self.config.append else "wb", buffering=0)
            except OSError as e:
                raise ConfigError([f"exporters::{self.name}: cannot write {self.path}: "
                                   f"{e.strerror or e}"]) from e
        super().start()

    def send(self, payload):
        line = (to_otlp_json(payload.message()) + "\n").encode()
        with self._lock:
            if self._file is None:
                self.last_failure = "the file was closed"
                return False
            view = memoryview(line)
            while view:
                view = view[self._file.write(view):]
            self.lines += 1
            now = time.monotonic()
            if self.config.flush_interval and now - self._last_flush >= self.config.flush_interval:
                os.fsync(self._file.fileno())
                self._last_flush = now
        return True

    def hold(self, timeout):
        """Wait (at most timeout) for a line being written, then keep every other write out: for
        a process about to exit without draining."""
        self._lock.acquire(timeout=timeout)

    def close(self):
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def create(settings, config, next_stage=None):
    return FileExporter(settings.id, config)
