"""What every exporter shares: the payload it is handed, its counters, its bounded sending queue.

An exporter receives ``Payload``s, each one serialized OTLP export request (traces, metrics or logs) with
the number of items in it, from the pipeline thread, and never blocks that thread: ``export`` puts
the payload on a bounded sending queue (``queue.py``: in memory, or on disk with ``storage``) whose
worker threads do the I/O. A full queue drops the payload and counts its items as enqueue-failed
(the Collector's exporterhelper semantics). ``shutdown(timeout)`` is idempotent: it stops
accepting, lets the workers drain the queue for as long as requests keep going out (what was
collected is not dropped for being much: a second signal stops gotel at once) and ``timeout``
after the last one did, then interrupts them (``stop_event`` wakes any retry back-off) and
counts what is left as failed, or, for a queue on disk, leaves it there for the next start
(``left``). ``send`` may return ``KEEP``: not delivered, not refused either (interrupted by
shutdown): kept on disk when the queue is, else failed.
"""

import collections
import logging
import threading
import time

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from pipeline.exporters import queue as queue_mod
from pipeline.exporters.queue import QueueConfig  # noqa: F401  (exporters' configs import it here)

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


KEEP = "keep"     # send(): not delivered, to be retried later (kept on disk when the queue is)


class Exporter:
    """Base exporter: a bounded queue of payloads drained by worker threads calling ``send``.

    Subclasses implement ``send(payload) -> bool | KEEP`` (True: delivered), may set
    ``last_failure`` (why the last payload was not delivered: the summary quotes it), and may
    override ``close()``. With the queue disabled, ``export`` sends on the caller's thread.
    ``shutdown_timeout`` is how long shutdown waits for a queue that stopped draining.
    """

    shutdown_timeout = 5.0

    def __init__(self, name, queue_config=QueueConfig()):
        self.name = name
        self.queue_config = queue_config
        self.counters = Counters()
        self.stop_event = threading.Event()
        self.log_limited = RateLimitedLog()
        self._queue = None
        self._workers = []
        self._closed = False
        self._started = False
        self._shutdown_lock = threading.Lock()
        self.failing_since = None
        self.last_failure = ""
        self.left = {}                  # {signal: (requests, items)} left on disk at shutdown

    # life cycle
    def start(self):
        if self._started:
            return
        self._started = True
        self._queue = queue_mod.create(self.queue_config, self.name, Payload)
        if self._queue is None:
            return
        if getattr(self._queue, "recovered", (0, 0))[0]:
            requests, items = self._queue.recovered
            log.warning("exporter %s: %d requests (%d items) left unsent by an earlier run in %s; "
                        "sending them first", self.name, requests, items, self._queue.where)
        for i in range(self.queue_config.num_consumers):
            t = threading.Thread(target=self._work, name=f"gotel-export-{self.name}-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def queue_size(self):
        return self._queue.qsize() if self._queue is not None else 0

    def queue_capacity(self):
        return self.queue_config.queue_size if self.queue_config.enabled else 0

    def export(self, payload):
        """Hand a payload over; never blocks. Returns False if it was dropped (counted)."""
        item = ITEM_NAMES[payload.signal]
        if self._closed:
            self.counters.add("enqueue_failed_" + item, payload.signal, payload.count)
            self.last_failure = "exported after shutdown"
            return False
        if not self._started:
            self.start()
        if self._queue is None:
            self._deliver(payload)
            return True
        if self._queue.put(payload):
            return True
        self.counters.add("enqueue_failed_" + item, payload.signal, payload.count)
        self.last_failure = f"sending queue full ({self.queue_config.queue_size} requests)"
        self.log_limited(logging.WARNING, "queue-full",
                         "exporter %s: sending queue is full (%d requests); dropping "
                         "%d %s", self.name, self.queue_config.queue_size, payload.count,
                         item.replace("_", " "))
        return False

    def _work(self):
        while True:
            entry = self._queue.get(timeout=0.05)
            if entry is None:
                if self.stop_event.is_set():
                    return
                continue
            result = False
            try:
                result = self._deliver(entry.payload)
            finally:
                if result == KEEP and self._queue.persistent:
                    self._queue.keep(entry)
                else:
                    self._queue.ack(entry)
            if result == KEEP and self.stop_event.is_set():
                return

    def _deliver(self, payload):
        """Send one payload and count the outcome; returns what send returned."""
        item = ITEM_NAMES[payload.signal]
        if not payload.data and payload.count:
            ok = False
            self.last_failure = "a queued request could not be read back"
        else:
            try:
                ok = self.send(payload)
            except Exception as e:  # noqa: BLE001  (an exporter bug must not kill a worker)
                self.log_limited(logging.ERROR, "send-crash", "exporter %s: %s: %s", self.name,
                                 type(e).__name__, e)
                self.last_failure = f"{type(e).__name__}: {e}"
                ok = False
        if ok == KEEP:
            if self._queue is None or not self._queue.persistent:
                self.counters.add("send_failed_" + item, payload.signal, payload.count)
            return KEEP
        self.counters.add(("sent_" if ok else "send_failed_") + item, payload.signal, payload.count)
        # Since when every send has failed (None after a success): the health check's readiness.
        if ok:
            self.failing_since = None
        elif self.failing_since is None:
            self.failing_since = time.monotonic()
        return bool(ok)

    def send(self, payload):
        raise NotImplementedError

    def close(self):
        """Release files/channels after the workers stopped."""

    def flush(self, timeout=5.0):
        """Wait until everything queued was sent (or failed), while requests keep going out and
        at most ``timeout`` after the last one did; True if it was."""
        if self._queue is None or not self._workers:
            return True
        while True:
            sent = self._sent()
            if self._queue.wait_idle(max(0.05, timeout)):
                return True
            if self._sent() == sent:     # failures are no progress: they can take long each
                if not self.last_failure:
                    self.last_failure = f"nothing went out for {timeout:g}s at shutdown"
                return False

    def _sent(self):
        """Items sent so far, every signal together (what flush counts as progress)."""
        return sum(self.counters.get("sent_" + item, signal) for signal, item in ITEM_NAMES.items())

    def shutdown(self, timeout=5.0):
        """Stop accepting, drain (``flush``), then interrupt and count what is left. Idempotent."""
        with self._shutdown_lock:
            if self._closed:
                return
            self._closed = True
        deadline = time.monotonic() + max(0.0, timeout)
        if self._queue is not None and self._workers:
            self.flush(timeout)
            self.stop_event.set()
            # Whatever was not sent in time is counted as failed, not silently lost (a queue on
            # disk keeps it for the next start instead).
            for entry in self._queue.take_all():
                self.counters.add("send_failed_" + ITEM_NAMES[entry.payload.signal],
                                  entry.payload.signal, entry.payload.count)
            for t in self._workers:
                t.join(max(0.0, deadline - time.monotonic()) + 0.5)
        self.stop_event.set()
        if self._queue is not None and self._queue.persistent:
            self.left = self._queue.held()
            if self.left:
                what = " and ".join(f"{n} {ITEM_NAMES[s].replace('_', ' ')}"
                                    for s, (_, n) in sorted(self.left.items()))
                log.warning("exporter %s: %d requests (%s) left on disk in %s; they are sent "
                            "when gotel starts again with this storage", self.name,
                            sum(r for r, _ in self.left.values()), what, self._queue.where)
        if self._queue is not None:
            self._queue.close()
        self.close()
        lost = [(signal, item, self.counters.get(f"send_failed_{item}", signal)
                 + self.counters.get(f"enqueue_failed_{item}", signal))
                for signal, item in ITEM_NAMES.items()]
        lost = [f"{n} {item.replace('_', ' ')}" for signal, item, n in lost if n]
        if lost:
            why = f" ({self.last_failure})" if self.last_failure else ""
            log.warning("exporter %s: %s not delivered%s", self.name, " and ".join(lost), why)
