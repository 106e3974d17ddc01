"""EventBufferReader: gotel's per-CPU event buffers (bpf/gotel.c `events`), mapped, read as numpy.

The buffers are one BPF array map (BPF_F_MMAPABLE) of ``cpus * slots`` events: CPU c's buffer is
rows ``c * slots`` to ``(c + 1) * slots``, used as a ring of positions. A writer claims the next
position of its CPU when the reader's position (``tails``, a second mapped array, one 64-byte line
per CPU) is less than a lap behind, writes the event and stores its ``cpu`` field last, holding
the position's lap tag (``lap + 1``, 16 bits). So the reader, per CPU, copies the run of slots from
its position on whose tag is their lap's, writes the CPU into the copies, and stores its new
position in ``tails``. It writes no slot. x86 keeps the writer's stores in order and this side's
loads in order: a tag read here comes before the copy of its event, and the copy before the store
that frees the slots.

Order across CPUs: a goroutine moves between CPUs, and the buffers are read one after another, so
a read could see an event of one CPU and miss an earlier one of the same goroutine on another CPU
(still being written, or written just after that buffer was read). Every read therefore takes the
clock first and hands on only the events dated before it, keeping later ones for the next read: an
event not yet written when its buffer was read can only be followed, for its goroutine, by events
dated after it was written, so after the read began. The decoder sorts each batch by time.

Cost: per read, one vector look at every CPU's next slot, and for the CPUs with events a few numpy
operations; no Python work per event. Not thread-safe: one thread (the
receiver's poller) owns a reader.
"""

import mmap
import time

import numpy as np

from receiver.events import EVENT_DTYPE

# How many slots the first look of a read takes per CPU; it doubles while they are all written.
FIRST_LOOK = 256
TAIL_BYTES = 64     # struct gotel_position: a cache line per CPU


def _map(fd, size):
    """A BPF_F_MMAPABLE array map's values, mapped read-write (size rounded up to pages)."""
    return mmap.mmap(fd, (size + mmap.PAGESIZE - 1) & ~(mmap.PAGESIZE - 1), mmap.MAP_SHARED,
                     mmap.PROT_READ | mmap.PROT_WRITE, offset=0)


class EventBufferReader:
    """Reads every written event of the per-CPU buffers behind ``map_fd`` (``cpus`` buffers of
    ``slots`` events, a power of two), as one array of ``dtype`` per read.

    ``read()`` takes what is written now (see the module's note on order); ``poll(timeout)``
    first sleeps until MIN_READ_INTERVAL_S after the previous read (there is no wakeup to wait
    for). ``records_read`` counts what came out; ``max_gap_s`` is the longest time between two
    reads that was not spent sleeping here.
    """

    # The buffers are read this often: at the probes' top rate (~1.5 M events/s per CPU here) a
    # CPU's 64 Ki slots hold ~40 ms.
    MIN_READ_INTERVAL_S = 0.01

    def __init__(self, events_fd, tails_fd, cpus, slots, dtype=EVENT_DTYPE):
        dtype = np.dtype(dtype)
        self._maps = [_map(events_fd, cpus * slots * dtype.itemsize),
                      _map(tails_fd, cpus * TAIL_BYTES)]
        self._setup(np.frombuffer(self._maps[0], dtype=dtype, count=cpus * slots),
                    np.frombuffer(self._maps[1], dtype="<u8", count=cpus * TAIL_BYTES // 8),
                    cpus, slots)

    @classmethod
    def over(cls, events, tails, cpus, slots):
        """A reader over plain arrays laid out like the maps (tails: 8 u64 per CPU), for tests of
        the record logic without a kernel."""
        self = cls.__new__(cls)
        self._maps = []
        self._setup(events, tails, cpus, slots)
        return self

    def _setup(self, events, tails, cpus, slots):
        if slots & (slots - 1):
            raise ValueError(f"slots per CPU must be a power of two, got {slots}")
        self.cpus, self.slots, self.dtype = cpus, slots, events.dtype
        self._bits = slots.bit_length() - 1
        self._events = events.reshape(cpus, slots)
        self._tags = self._events["cpu"]
        self._tails = tails.reshape(cpus, TAIL_BYTES // 8)[:, 0]
        self._positions = [int(p) for p in self._tails]
        self._cpu_index = np.arange(cpus)
        self._later = np.empty(0, dtype=self.dtype)   # read, dated after the last read began
        self.records_read = 0
        self.polls = 0
        self.max_gap_s = 0.0
        self._last_read = 0.0
        self._closed = False

    @property
    def pending(self):
        """Events read from the buffers but held for the next read (dated after this one began)."""
        return len(self._later)

    def poll(self, timeout=0.1):
        """Sleep until MIN_READ_INTERVAL_S after the last read (at most ``timeout``), then read."""
        now = time.monotonic()
        pause = min(self._last_read + self.MIN_READ_INTERVAL_S - now, timeout or 0.0)
        if pause > 0:
            time.sleep(pause)
        elif self._last_read:
            self.max_gap_s = max(self.max_gap_s, now - self._last_read)
        self._last_read = time.monotonic()
        self.polls += 1
        return self.read()

    def read(self, everything=False):
        """The events written before now, as one array, freed in the buffers. ``everything``:
        also those dated after this read began (when no probe can write any more)."""
        cutoff = time.clock_gettime_ns(time.CLOCK_MONOTONIC)   # bpf_ktime_get_ns's clock
        runs = [self._later] if len(self._later) else []
        # One vector look at every CPU's next slot: an idle machine of many CPUs costs one op.
        positions = np.array(self._positions, dtype=np.uint64)
        next_tags = self._tags[self._cpu_index, (positions & np.uint64(self.slots - 1)).astype(np.intp)]
        due = ((positions >> np.uint64(self._bits)) + np.uint64(1)) & np.uint64(0xFFFF)
        for cpu in np.flatnonzero(next_tags == due):
            self._take(int(cpu), runs)
        got = np.concatenate(runs) if len(runs) > 1 else (runs[0] if runs else self._later[:0])
        if everything:
            self._later = got[:0]
        else:
            late = got["ts_ns"] >= cutoff
            if late.any():
                self._later, got = got[late], got[~late]
            else:
                self._later = got[:0]
        self.records_read += len(got)
        return got

    def _take(self, cpu, runs):
        """Copy out, then free, the written run of cpu's buffer from its position."""
        tags, events, mask = self._tags[cpu], self._events[cpu], self.slots - 1
        pos = first = self._positions[cpu]
        while pos - first < self.slots:
            # The slots from pos to the end of the buffer (or of the lap) hold one lap's events.
            start = pos & mask
            end = min(self.slots, start + self.slots - (pos - first))
            tag = ((pos >> self._bits) + 1) & 0xFFFF
            look, n = FIRST_LOOK, 0
            while start + n < end:
                written = tags[start + n:min(end, start + n + look)] == tag
                if written.all():
                    n += len(written)
                    look *= 2
                    continue
                n += int(np.argmin(written))
                break
            if n == 0:
                break
            run = events[start:start + n].copy()
            run["cpu"] = cpu
            runs.append(run)
            pos += n
            if start + n < end:
                break          # stopped at a slot not written yet
        if pos != first:
            self._positions[cpu] = pos
            self._tails[cpu] = pos     # after the copies: the writers may reuse the slots now

    def close(self):
        """Unmap the buffers; the map fd stays open (the caller owns it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        del self._events, self._tags, self._tails
        for m in self._maps:
            m.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
