"""EventBuffer: the bounded user-space buffer between the ring-buffer reader and the pipeline.

The receiver's poller thread only copies records out of the kernel's ring (``put``) and never
waits on a pipeline stage; a consumer thread takes everything buffered at once (``take``) and runs
the pipeline on it. A slow stage then makes the batches larger (cheaper per event: the pipeline's
numpy work is per batch) instead of stalling the drain while the ring fills. The buffer is bounded
in events: what does not fit is dropped and counted (``overflowed``), reported like ring loss.

Memory: arrays are held as the reader returned them (no preallocation); at most ``capacity``
events (64 bytes each) are held. Thread-safety: ``put`` from one producer thread, ``take`` from one
consumer thread; every method is safe to call from any thread.
"""

import collections
import threading

import numpy as np


class EventBuffer:
    """A bounded FIFO of event arrays; see the module docstring.

    ``appended`` and ``taken`` count events that went in and came out (monotonic), so a caller can
    wait until everything put before some moment has been consumed (``wait_taken``).
    """

    def __init__(self, capacity, max_batch=None):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = int(capacity)
        self.max_batch = int(max_batch or capacity)
        self._chunks = collections.deque()
        self._held = 0
        self._cond = threading.Condition()
        self.appended = 0        # events accepted
        self.taken = 0           # events handed to the consumer
        self.consumed = 0        # events the consumer finished with (see done())
        self.overflowed = 0      # events dropped: the buffer was full
        self.peak = 0            # most events held at once
        self._closed = False

    def __len__(self):
        return self._held

    @property
    def closed(self):
        return self._closed

    def put(self, batch):
        """Append an array of events (owned by the buffer from now on); never blocks. Returns the
        number of events dropped because the buffer was full (the newest are dropped, as the
        kernel's ring drops the newest)."""
        n = len(batch)
        if not n:
            return 0
        with self._cond:
            room = self.capacity - self._held
            dropped = 0
            if n > room:
                dropped = n - room
                batch = batch[:room]
                n = room
                self.overflowed += dropped
            if n:
                self._chunks.append(batch)
                self._held += n
                self.appended += n
                self.peak = max(self.peak, self._held)
                self._cond.notify()
            return dropped

    def take(self, timeout=None):
        """Everything buffered (up to ``max_batch`` events) as one array; waits up to timeout for
        something to arrive. None when there is nothing."""
        with self._cond:
            if not self._held and not self._closed:
                self._cond.wait(timeout)
            if not self._held:
                return None
            parts, n = [], 0
            while self._chunks and n < self.max_batch:
                chunk = self._chunks[0]
                want = self.max_batch - n
                if len(chunk) > want:
                    parts.append(chunk[:want])
                    self._chunks[0] = chunk[want:]
                    n += want
                    break
                parts.append(self._chunks.popleft())
                n += len(chunk)
            self._held -= n
            self.taken += n
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def done(self, n):
        """The consumer finished with n events taken earlier."""
        with self._cond:
            self.consumed += n
            self._cond.notify_all()

    def wait_consumed(self, mark, timeout=None):
        """Wait until every event appended before ``appended`` was ``mark`` has been consumed (or
        dropped by close()); True if it was, False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.consumed >= mark or self._closed, timeout)

    def close(self):
        """Wake every waiter; take() returns what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
