"""What every exporter shares: the payload it is handed, its counters, its bounded sending queue.

An exporter receives ``Payload``s, each one serialized OTLP export request (traces, metrics or logs) with
the number of items in it, from the pipeline thread, and never blocks that thread: ``export`` puts
the payload on a bounded ``SendingQueue`` whose worker threads do the I/O. A full queue drops the
payload and counts its items as enqueue-failed (the Collector's exporterhelper semantics).
``shutdown(timeout)`` is idempotent: it stops accepting, lets the workers drain the queue until the
deadline, then interrupts them (``stop_event`` wakes any retry back-off) and counts what is left as
failed.
"""

import collections
import dataclasses
import logging
import queue
import threading
import time

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

log = logging.getLogger("gotel.exporter")

REQUEST_TYPES = {
    "traces": trace_service_pb2.ExportTraceServiceRequest,
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
    "logs": logs_service_pb2.ExportLogsServiceRequest,
}


class Payload:
    """One serialized export request: ``signal`` ("traces"/"metrics"), ``data`` bytes, ``count``
    (spans or metric data points). ``message()`` parses it once, for exporters that need objects."""

    __slots__ = ("signal", "data", "count", "_message")

    def __init__(self, signal, data, count):
        self.signal = signal
        self.data = data
        self.count = count
        self._message = None

    def message(self):
        if self._message is None:
            self._message = REQUEST_TYPES[self.signal].FromString(self.data)
        return self._message

    @classmethod
    def of(cls, signal, message, count=None):
        """A payload from a request message (count of items computed when not given)."""
        data = message.SerializeToString()
        payload = cls(signal, data, count if count is not None else count_items(signal, message))
        payload._message = message
        return payload


def count_items(signal, message):
    """Spans, metric data points or log records in an export request message."""
    if signal == "traces":
        return sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans)
    if signal == "logs":
        return sum(len(sl.log_records) for rl in message.resource_logs for sl in rl.scope_logs)
    total = 0
    for rm in message.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if kind:
                    total += len(getattr(m, kind).data_points)
    return total


ITEM_NAMES = {"traces": "spans", "metrics": "metric_points", "logs": "log_records"}


class Counters:
    """The Collector's exporter counters, per signal: sent, send_failed, enqueue_failed."""

    def __init__(self):
        self.lock = threading.Lock()
        self.values = collections.Counter()

    def add(self, name, signal, n):
        if n:
            with self.lock:
                self.values[(name, signal)] += n

    def get(self, name, signal):
        return self.values.get((name, signal), 0)


class RateLimitedLog:
    """Logs a message at most once per ``interval`` seconds per key; counts what it held back."""

    def __init__(self, logger=log, interval=30.0, clock=time.monotonic):
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last = {}
        self._suppressed = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, level, key, message, *args):
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._suppressed[key] += 1
                return False
            self._last[key] = now
            held = self._suppressed.pop(key, 0)
        if held:
            message += f" ({held} similar messages suppressed)"
        self.logger.log(level, message, *args)
        return True


@dataclasses.dataclass(frozen=True)
class QueueConfig:
    """sending_queue: the Collector's exporterhelper queue, sized in requests."""

    enabled: bool = True
    num_consumers: int = 10
    queue_size: int = 1000

    def validate(self):
        problems = []
        if self.num_consumers < 1:
            problems.append("num_consumers must be >= 1")
        if self.queue_size < 1:
            problems.append("queue_size must be >= 1")
        return problems


class Exporter:
    """Base exporter: a bounded queue of payloads drained by worker threads calling ``send``.

    Subclasses implement ``send(payload) -> bool`` (True: delivered) and may override ``close()``.
    With the queue disabled, ``export`` sends on the caller's thread.
    """

    def __init__(self, name, queue_config=QueueConfig()):
        self.name = name
        self.queue_config = queue_config
        self.counters = Counters()
        self.stop_event = threading.Event()
        self.log_limited = RateLimitedLog()
        self._queue = queue.Queue(maxsize=queue_config.queue_size) if queue_config.enabled else None
        self._workers = []
        self._pending = 0                    # queued or being sent
        self._idle = threading.Condition()   # notified when _pending drops to 0
        self._closed = False
        self._started = False
        self._shutdown_lock = threading.Lock()

    # life cycle
    def start(self):
        if self._started or self._queue is None:
            self._started = True
            return
        self._started = True
        for i in range(self.queue_config.num_consumers):
            t = threading.Thread(target=self._work, name=f"gotel-export-{self.name}-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def queue_size(self):
        return self._queue.qsize() if self._queue is not None else 0

    def queue_capacity(self):
        return self.queue_config.queue_size if self._queue is not None else 0

    def export(self, payload):
        """Hand a payload over; never blocks. Returns False if it was dropped (counted)."""
        item = ITEM_NAMES[payload.signal]
        if self._closed:
            self.counters.add("enqueue_failed_" + item, payload.signal, payload.count)
            return False
        if self._queue is None:
            self._deliver(payload)
            return True
        if not self._started:
            self.start()
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait(payload)
            return True
        except queue.Full:
            self._done()
            self.counters.add("enqueue_failed_" + item, payload.signal, payload.count)
            self.log_limited(logging.WARNING, "queue-full",
                             "exporter %s: sending queue is full (%d requests); dropping "
                             "%d %s", self.name, self.queue_config.queue_size, payload.count,
                             item.replace("_", " "))
            return False

    def _work(self):
        while True:
            try:
                payload = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self.stop_event.is_set():
                    return
                continue
            try:
                self._deliver(payload)
            finally:
                self._done()

    def _done(self):
        with self._idle:
            self._pending -= 1
            if not self._pending:
                self._idle.notify_all()

    def _deliver(self, payload):
        item = ITEM_NAMES[payload.signal]
        try:
            ok = self.send(payload)
        except Exception as e:  # noqa: BLE001  (an exporter bug must not kill a worker)
            self.log_limited(logging.ERROR, "send-crash", "exporter %s: %s: %s", self.name,
                             type(e).__name__, e)
            ok = False
        self.counters.add(("sent_" if ok else "send_failed_") + item, payload.signal, payload.count)

    def send(self, payload):
        raise NotImplementedError

    def close(self):
        """Release files/channels after the workers stopped."""

    def flush(self, timeout=5.0):
        """Wait until everything queued was sent (or failed), at most timeout; True if it was."""
        if self._queue is None or not self._workers:
            return True
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, max(0.0, timeout))

    def shutdown(self, timeout=5.0):
        """Stop accepting, drain within timeout, then interrupt and count what is left. Idempotent."""
        with self._shutdown_lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + max(0.0, timeout)
        if self._queue is not None and self._workers:
            self.flush(timeout)
            self.stop_event.set()
            # Whatever was not sent in time is counted as failed, not silently lost.
            while True:
                try:
                    payload = self._queue.get_nowait()
                except queue.Empty:
                    break
                self.counters.add("send_failed_" + ITEM_NAMES[payload.signal], payload.signal,
                                  payload.count)
                self._done()
            for t in self._workers:
                t.join(max(0.0, deadline - time.monotonic()) + 0.5)
        self.stop_event.set()
        self.close()
        lost = [(signal, item, self.counters.get(f"send_failed_{item}", signal)
                 + self.counters.get(f"enqueue_failed_{item}", signal))
                for signal, item in ITEM_NAMES.items()]
        lost = [f"{n} {item.replace('_', ' ')}" for signal, item, n in lost if n]
        if lost:
            log.warning("exporter %s: %s not delivered", self.name, " and ".join(lost))
