"""Goroutines that exist before gotel attaches, read from the live process through /proc/PID/mem.

A probe only sees transitions after it is attached, so goroutines already alive at attach would
surface later as unknown goids with no creation. ``read_goroutines`` walks ``runtime.allgs`` (a
``[]*g``; its address comes from the binary's symbol table) and returns one synthetic
``Kind.EXISTING`` event per goroutine that is not dead, carrying the same fields a CREATE has
(goid, parent goid, start PC, creation PC) plus the current status and wait reason. ``read_g`` does
the same for one g, found by the address a kernel event carries: the receiver uses it lazily for a
goid it has never seen (e.g. a stripped binary without ``runtime.allgs``).

The process keeps running while it is read, so the picture is a moment's, not an atomic snapshot:
a goroutine created meanwhile may appear both here and as a CREATE, which consumers treat as the
same goroutine. Cost: one pread of the allgs slice and one per goroutine (~2 us each). PIE binaries
are handled by adding the load bias found in /proc/PID/maps.
"""

import errno
import os
import struct
import time

import numpy as np

from receiver.errors import TargetError, denied_hint
from receiver.events import EVENT_DTYPE, Kind

G_FIELDS = ("goid", "parentGoid", "gopc", "startpc", "waitreason", "atomicstatus")
SCAN_BIT = 0x1000


class ProcessMemory:
    """Reads of another process's memory through /proc/PID/mem (needs CAP_SYS_PTRACE; root)."""

    def __init__(self, pid):
        self.pid = pid
        try:
            self._fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        except FileNotFoundError as e:
            raise TargetError(f"process {pid} does not exist (it exited?)") from e
        except PermissionError as e:
            raise TargetError(f"process {pid}: permission denied reading its memory; "
                              f"{denied_hint(pid)}") from e

    def read(self, addr, size):
        """size bytes at addr, or None when the range is not mapped (or the process is gone)."""
        try:
            data = os.pread(self._fd, size, addr)
        except OSError as e:
            if e.errno in (errno.EIO, errno.EFAULT, errno.ESRCH, errno.EINVAL):
                return None
            raise
        return data if len(data) == size else None

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# allgs is only ever appended to (every g ever made, dead ones reused): 16 Mi g structs would be
# gigabytes of a process's memory. A count above this is a misread, never a real program.
MAX_GOROUTINES = 1 << 24


def _span(layout):
    return max(layout.g[f] for f in G_FIELDS if f in layout.g) + 8


def events_from_gs(pid, addrs, blobs, layout):
    """EXISTING events from raw g structs (rows of bytes at the g's offset 0); dead ones dropped."""
    span = _span(layout)
    rows = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), span)

    def field(name, width=8):
        if name not in layout.g:
            return np.zeros(len(blobs), dtype=f"<u{width}")
        off = layout.g[name]
        return np.ascontiguousarray(rows[:, off:off + width]).view(f"<u{width}").ravel()

    status = field("atomicstatus", 4) & ~np.uint32(SCAN_BIT)
    gone = [layout.statuses[n] for n in ("_Gidle", "_Gdead", "_Gdeadextra") if n in layout.statuses]
    live = ~np.isin(status, gone)
    out = np.zeros(int(live.sum()), dtype=EVENT_DTYPE)
    out["ts_ns"] = time.monotonic_ns()
    out["g"] = np.asarray(addrs, dtype=np.uint64)[live]
    out["goid"] = field("goid")[live]
    out["aux_goid"] = field("parentGoid")[live]
    out["pc_start"] = field("startpc")[live]
    out["pc_create"] = field("gopc")[live]
    out["pid"] = pid
    out["kind"] = Kind.EXISTING
    out["wait_reason"] = field("waitreason", 1)[live]
    out["new_status"] = status[live].astype(np.uint16)
    out["old_status"] = out["new_status"]
    return out


def read_goroutines(pid, binary, mem=None):
    """EXISTING events for every live goroutine of process pid running binary (a GoBinary).

    Returns None when the binary has no ``runtime.allgs`` symbol (stripped): unknown goroutines
    are then read one by one with ``read_g`` as their events arrive.
    """
    sym = binary.image.symbols(["runtime.allgs"], functions_only=False).get("runtime.allgs")
    if sym is None:
        return None
    own = mem is None
    mem = mem or ProcessMemory(pid)
    try:
        bias = binary.load_bias(pid)
        header = mem.read(sym[0] + bias, 16)
        if header is None:
            raise TargetError(f"process {pid}: cannot read runtime.allgs (it exited?)")
        ptr, n = struct.unpack("<QQ", header)
        if n > MAX_GOROUTINES:
            raise TargetError(f"process {pid}: runtime.allgs says {n} goroutines, more than any Go "
                              f"program holds ({MAX_GOROUTINES}); its memory is not laid out as "
                              f"this binary's symbols say")
        raw = mem.read(ptr, 8 * n) if n else b""
        if raw is None:
            raise TargetError(f"process {pid}: cannot read the goroutine list (it exited?)")
        span = _span(binary.layout)
        addrs, blobs = [], []
        for g in np.frombuffer(raw, dtype="<u8").tolist():
            blob = mem.read(g, span) if g else None
            if blob is not None:
                addrs.append(g)
                blobs.append(blob)
        if not blobs:
            return np.zeros(0, dtype=EVENT_DTYPE)
        return events_from_gs(pid, addrs, blobs, binary.layout)
    finally:
        if own:
            mem.close()


def read_g(mem, g_addr, layout):
    """One EXISTING event for the g at g_addr of mem's process (empty when dead or unreadable)."""
    blob = mem.read(g_addr, _span(layout))
    if blob is None:
        return np.zeros(0, dtype=EVENT_DTYPE)
    return events_from_gs(mem.pid, [g_addr], [blob], layout)
