"""MonotonicClock: converts the kernel's CLOCK_MONOTONIC timestamps to Unix nanoseconds, in bulk.

``bpf_ktime_get_ns()`` is CLOCK_MONOTONIC, the clock of ``time.monotonic_ns()``. The offset to the
wall clock is measured by bracketing one ``time.time_ns()`` between two monotonic reads and keeping
the tightest of a few tries (error <= half the bracket, well under a microsecond); it is re-measured
every ``refresh_s`` so that NTP slewing of the wall clock is followed. Each timestamp is converted
exactly once, by one vectorized addition over the whole batch. Not thread-safe (the poller owns it).
"""

import time

import numpy as np


def measure_offset(tries=5):
    """Unix ns minus monotonic ns now, from the tightest of `tries` brackets."""
    best = None
    for _ in range(tries):
        before = time.monotonic_ns()
        wall = time.time_ns()
        after = time.monotonic_ns()
        if best is None or after - before < best[0]:
            best = (after - before, wall - (before + after) // 2)
    return best[1]


class MonotonicClock:
    """Adds the monotonic -> Unix offset to arrays of timestamps, in place."""

    def __init__(self, refresh_s=1.0, now=time.monotonic):
        self.refresh_s = refresh_s
        self._now = now
        self._next_refresh = float("-inf")
        self.offset_ns = 0

    def to_unix(self, ts_ns):
        """Convert a uint64 array of monotonic ns to Unix ns in place; return it."""
        now = self._now()
        if now >= self._next_refresh:
            self.offset_ns = measure_offset()
            self._next_refresh = now + self.refresh_s
        if len(ts_ns):
            ts_ns += np.uint64(self.offset_ns)
        return ts_ns
