"""Batcher: groups span arrays into export requests with the Collector batch processor's semantics.

A batch is sent when ``send_batch_size`` spans are held, or ``timeout`` after the first span of a
batch arrived, whichever comes first (``timeout: 0`` sends every input at once). No request holds
more than ``send_batch_max_size`` spans (0: no limit), nor more than ``send_batch_max_bytes`` of
encoded OTLP (estimated at ``bytes_per_span``, which exporters correct with the sizes they see), which
keeps gRPC requests under the 4 MiB default message limit of receivers.

The timer has no thread: the driving thread (the receiver's poller) calls ``tick()`` between polls,
and ``consume`` checks it too. ``clock`` is injectable so tests run on a fake clock. Not thread-safe.
Cost: one ``np.concatenate`` per emitted batch; inputs are sliced as views.
"""

import dataclasses
import time

import numpy as np

from pipeline.stage import Stage

TYPE = "batch"
SIGNALS = ("traces",)
MIB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Config:
    send_batch_size: int = 8192
    timeout: float = dataclasses.field(default=0.2, metadata={"duration": "s"})
    send_batch_max_size: int = 0
    send_batch_max_bytes: int = dataclasses.field(default=4 * MIB - 64 * 1024,
                                                  metadata={"bytes": True})
    bytes_per_span: int = dataclasses.field(default=400, metadata={"bytes": True})

    def validate(self):
        problems = []
        if self.send_batch_size < 1:
            problems.append("send_batch_size must be >= 1")
        if self.timeout < 0:
            problems.append("timeout must be >= 0")
        if self.send_batch_max_size < 0:
            problems.append("send_batch_max_size must be >= 0 (0: no limit)")
        elif self.send_batch_max_size and self.send_batch_max_size < self.send_batch_size:
            problems.append("send_batch_max_size must be >= send_batch_size")
        if self.send_batch_max_bytes < 64 * 1024:
            problems.append("send_batch_max_bytes must be >= 65536")
        if self.bytes_per_span < 16:
            problems.append("bytes_per_span must be >= 16")
        return problems


class Batcher(Stage):
    """Holds span arrays until a batch is due, then forwards it (size, max size, bytes, timer)."""

    COUNTERS = ("batches_sent", "sent_by_size", "sent_by_timeout")

    def __init__(self, config=Config(), next_stage=None, clock=time.monotonic):
        super().__init__(next_stage, config)
        self.clock = clock
        self._held = []
        self._count = 0
        self._deadline = None
        self.bytes_per_span = float(config.bytes_per_span)

    @property
    def max_items(self):
        """The most spans one request may hold: the count cap and the byte cap, whichever is lower."""
        by_bytes = max(1, int(self.config.send_batch_max_bytes // max(self.bytes_per_span, 1.0)))
        cap = self.config.send_batch_max_size or by_bytes
        return min(cap, by_bytes)

    def observe_size(self, spans, nbytes):
        """Feedback from the encoder: a request of `spans` spans took `nbytes`; adapt the estimate."""
        if spans > 0:
            per_span = nbytes / spans
            # Rise at once (never overshoot the byte cap twice), fall slowly.
            self.bytes_per_span = max(per_span, 0.9 * self.bytes_per_span + 0.1 * per_span)

    def held(self):
        return self._count

    def process(self, batch):
        if len(batch) == 0:
            return None
        if self._count == 0:
            self._deadline = self.clock() + self.config.timeout
        self._held.append(batch)
        self._count += len(batch)
        if self.config.timeout == 0:
            self._emit()
        elif self._count >= self.config.send_batch_size:
            self.sent_by_size += 1
            self._emit(keep_below=self.config.send_batch_size)
        elif self.clock() >= self._deadline:
            self.sent_by_timeout += 1
            self._emit()
        return None

    def tick(self):
        """Send what is held if the timer expired; called by the driving thread between polls."""
        if self._count and self.clock() >= self._deadline:
            self.sent_by_timeout += 1
            self._emit()
        super().tick()

    def flush(self):
        """Send everything held now (shutdown), in requests that respect the caps."""
        if self._count:
            self._emit()
        return None

    def _emit(self, keep_below=0):
        """Send requests of at most max_items until fewer than keep_below spans remain held.

        As in the Collector, what is left below send_batch_size after a size-triggered send waits
        for the next input or a fresh timer.
        """
        held = self._held[0] if len(self._held) == 1 else np.concatenate(self._held)
        step, start = self.max_items, 0
        while len(held) - start > 0 and len(held) - start >= keep_below:
            self.batches_sent += 1
            self.emit(held[start:start + step])
            start += step
        rest = held[start:]
        self._held, self._count = ([rest], len(rest)) if len(rest) else ([], 0)
        self._deadline = self.clock() + self.config.timeout if len(rest) else None


def create(settings, config, next_stage):
    return Batcher(config, next_stage)
