"""EventBufferReader: gotel's per-CPU event buffers (bpf/gotel.c `events`), mapped, read as numpy.

The buffers are one BPF array map (BPF_F_MMAPABLE) of ``cpus * slots`` events: CPU c's buffer is
rows ``c * slots`` to ``(c + 1) * slots``, used as a ring of positions. Two more mapped arrays hold
each CPU's positions, one 64-byte line per CPU: ``heads`` (the writers', mapped read-only here)
and ``tails`` (the reader's). A writer claims its CPU's next position when the tail is less than a
lap behind, writes the event and stores its ``cpu`` field last, holding the position's lap tag
(``lap + 1``, 16 bits). So the reader, per CPU, copies the claimed slots from its tail on whose
tag is their lap's (a slot claimed but not yet written ends the run), writes the CPU into the
copies, and moves the tail. It writes no slot. x86 keeps the writer's stores in order and this
side's loads in order: a tag read here comes before the copy of its event, and the copy before
the store that frees the slots.

Order across CPUs: a goroutine moves between CPUs, and the buffers are read one after another, so
a read could see an event of one CPU and miss an earlier one of the same goroutine on another CPU
(still being written, or written just after that buffer was read). Every read therefore takes the
clock first and hands on only the events dated before it, keeping later ones for the next read: an
event not yet written when its buffer was read can only be followed, for its goroutine, by events
dated after it was written, so after the read began. The decoder sorts each batch by time.

Cost: per read, one vector look at every CPU's head, and for the CPUs with events a few numpy
operations over only the slots claimed; no Python work per event. Not thread-safe: one thread
(the receiver's poller) owns a reader.
"""

import mmap
import time

import numpy as np

from receiver.events import EVENT_DTYPE

POSITION_BYTES = 64    # struct gotel_position: a cache line per CPU


def _map(fd, size, writable):
    """A BPF_F_MMAPABLE array map's values, mapped (size rounded up to pages)."""
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    return mmap.mmap(fd, (size + mmap.PAGESIZE - 1) & ~(mmap.PAGESIZE - 1), mmap.MAP_SHARED,
                     prot, offset=0)


def _join(runs, dtype):
    """One array of the runs (copied as bytes)."""
    if not runs:
        return np.empty(0, dtype=dtype)
    if len(runs) == 1:
        return runs[0]
    return np.concatenate([r.view(np.uint8) for r in runs]).view(dtype)


def _pick(events, mask):
    """events[mask], copied as rows of bytes."""
    return events.view(np.uint8).reshape(len(events), -1)[mask].reshape(-1).view(events.dtype)


class EventBufferReader:
    """Reads every written event of the per-CPU buffers behind ``events_fd`` (``cpus`` buffers of
    ``slots`` events, a power of two; ``heads_fd`` and ``tails_fd``: each CPU's write and read
    positions), as one array of ``dtype`` per read.

    ``read()`` takes what is written now (see the module's note on order); ``poll(timeout)``
    first sleeps until MIN_READ_INTERVAL_S after the previous read (there is no wakeup to wait
    for). ``max_gap_s`` is the longest time between two reads that was not spent sleeping here.
    """

    # The buffers are read this often: at the probes' top rate (~1.4 M events/s on one CPU here)
    # a CPU's buffer holds ~90 ms by default on 2 CPUs (128 Ki events), ~12 ms at the least (16 Ki).
    MIN_READ_INTERVAL_S = 0.01

    def __init__(self, events_fd, heads_fd, tails_fd, cpus, slots, dtype=EVENT_DTYPE):
        dtype = np.dtype(dtype)
        self._maps = [_map(events_fd, cpus * slots * dtype.itemsize, False),
                      _map(heads_fd, cpus * POSITION_BYTES, False),
                      _map(tails_fd, cpus * POSITION_BYTES, True)]
        words = cpus * POSITION_BYTES // 8
        self._setup(np.frombuffer(self._maps[0], dtype=dtype, count=cpus * slots),
                    np.frombuffer(self._maps[1], dtype="<u8", count=words),
                    np.frombuffer(self._maps[2], dtype="<u8", count=words), cpus, slots)

    @classmethod
    def over(cls, events, heads, tails, cpus, slots):
        """A reader over plain arrays laid out like the maps (heads, tails: 8 u64 per CPU), for
        tests of the record logic without a kernel."""
        self = cls.__new__(cls)
        self._maps = []
        self._setup(events, heads, tails, cpus, slots)
        return self

    def _setup(self, events, heads, tails, cpus, slots):
        if slots & (slots - 1):
            raise ValueError(f"slots per CPU must be a power of two, got {slots}")
        self.cpus, self.slots, self.dtype = cpus, slots, events.dtype
        self._bits = slots.bit_length() - 1
        # Events are copied as bytes: numpy copies a structured array ~50x slower, field by field.
        self._bytes = events.view(np.uint8).reshape(cpus, slots * self.dtype.itemsize)
        self._tags = events.reshape(cpus, slots)["cpu"]
        self._heads = heads.reshape(cpus, POSITION_BYTES // 8)[:, 0]
        self._tails = tails.reshape(cpus, POSITION_BYTES // 8)[:, 0]
        self._positions = self._tails.copy()
        self._later = np.empty(0, dtype=self.dtype)   # read, dated after the last read began
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
        return self.read()

    def read(self, everything=False):
        """The events written before now, as one array, freed in the buffers. ``everything``:
        also those dated after this read began (when no probe can write any more)."""
        cutoff = time.clock_gettime_ns(time.CLOCK_MONOTONIC)   # bpf_ktime_get_ns's clock
        runs = [self._later] if len(self._later) else []
        # One vector look at every CPU's write position: idle CPUs cost nothing more. Few numpy
        # operations per read matter: each large one lets the pipeline thread take the GIL.
        claimed = self._heads - self._positions
        for cpu in np.flatnonzero(claimed).tolist():
            self._take(cpu, min(int(claimed[cpu]), self.slots), runs)
        got = _join(runs, self.dtype)
        if everything:
            self._later = got[:0]
        else:
            late = got["ts_ns"] >= cutoff
            if late.any():
                self._later, got = _pick(got, late), _pick(got, ~late)
            else:
                self._later = got[:0]
        return got

    def _take(self, cpu, claimed, runs):
        """Copy out, then free, the written run of the ``claimed`` positions of cpu's buffer from
        its read position; a position claimed but not yet written ends the run."""
        pos = int(self._positions[cpu])
        start = pos & (self.slots - 1)
        lap = pos >> self._bits
        first = min(claimed, self.slots - start)      # up to the end of the buffer: this lap
        n = self._written(cpu, start, first, lap)
        if n == first and claimed > first:            # then the next lap from slot 0
            n += self._written(cpu, 0, claimed - first, lap + 1)
        if n == 0:
            return
        size, data = self.dtype.itemsize, self._bytes[cpu]
        end = start + n
        if end > self.slots:                          # wrapped: two slices of bytes
            run = np.concatenate((data[start * size:], data[:(end - self.slots) * size]))
        else:
            run = data[start * size:end * size].copy()
        run = run.view(self.dtype)
        run["cpu"] = cpu
        runs.append(run)
        self._positions[cpu] = pos + n
        self._tails[cpu] = pos + n     # after the copy: the writers may reuse the slots now

    def _written(self, cpu, start, count, lap):
        """How many of the count slots from start hold their position's event of this lap."""
        written = self._tags[cpu, start:start + count] == ((lap + 1) & 0xFFFF)
        return count if written.all() else int(np.argmin(written))

    def close(self):
        """Unmap the buffers; the map fds stay open (the caller owns them). Idempotent."""
        if self._closed:
            return
        self._closed = True
        del self._bytes, self._tags, self._heads, self._tails
        for m in self._maps:
            m.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
