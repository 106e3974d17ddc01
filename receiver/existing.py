"""Goroutines that exist before gotel attaches, read from the live process's memory.

A probe only sees transitions after it is attached, so goroutines already alive at attach would
surface later as unknown goids with no creation. ``read_goroutines`` walks ``runtime.allgs`` (a
``[]*g``; its address comes from the binary's symbol table) and returns one synthetic
``Kind.EXISTING`` event per goroutine that is not dead, carrying the same fields a CREATE has
(goid, parent goid, start PC, creation PC) plus the current status and wait reason. ``read_g`` does
the same for one g, found by the address a kernel event carries: the receiver uses it lazily for a
goid it has never seen (e.g. a stripped binary without ``runtime.allgs``).

The process keeps running while it is read, so the picture is a moment's, not an atomic snapshot:
a goroutine created meanwhile may appear both here and as a CREATE, which consumers treat as the
same goroutine. ``read_goroutines`` takes one census (batched process_vm_readv reads); ``read_g`` one
read through a ``receiver.procmem.ProcessMemory``. PIE binaries are handled by adding the load bias found in /proc/PID/maps.
"""

import os
import time

import numpy as np

from receiver.errors import TargetError
from receiver.events import EVENT_DTYPE, Kind

G_FIELDS = ("goid", "parentGoid", "gopc", "startpc", "waitreason", "atomicstatus")
SCAN_BIT = 0x1000


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


def stack_texts(census, binary):
    """{goid: its stack in Go's traceback text} of a census (one text per distinct stack)."""
    from receiver import dump, groups

    rows = census.goroutines
    if len(rows) == 0 or len(census.pcs) == 0:
        return {}
    uniq, first, inverse = np.unique(groups.stack_hashes(census), return_index=True,
                                     return_inverse=True)
    sym = binary.symbolizer()
    texts = []
    for row in first.tolist():
        fr = sym.frames(census.frames(row), bias=census.bias)
        texts.append("\n".join(f"{f}(...)\n\t{file}:{line}" for f, file, line, wrapper in zip(
            fr.function.tolist(), fr.file.tolist(), fr.line.tolist(), fr.wrapper.tolist())
            if dump.shown(f, file, wrapper)))
    return {goid: texts[k] for goid, k in zip(rows["goid"].tolist(), inverse.reshape(-1).tolist())
            if texts[k]}


def read_goroutines(pid, binary, stacks_out=None):
    """EXISTING events for every live goroutine of process pid running binary (a GoBinary), from
    one census (``receiver.census``: the one reader of ``runtime.allgs``).

    A goroutine parked at attach whose wait start the runtime has stamped (``g.waitsince``, set by
    the GC: see receiver/census.py) gets that moment as its event time, so its park (and its span,
    marked as started before attach) begins when its wait began; the others get the attach time.
    Returns None when the binary's goroutine list cannot be located: unknown goroutines are then
    read one by one with ``read_g`` as their events arrive.
    With ``stacks_out`` (a dict), the census unwinds stacks too and fills it with ``stack_texts``.
    """
    from receiver.census import CensusReader

    try:
        reader = CensusReader(binary, pid)
    except TargetError:
        if not os.path.exists(f"/proc/{pid}"):
            raise
        return None
    census = reader.read(stacks=stacks_out is not None)
    if stacks_out is not None:
        stacks_out.update(stack_texts(census, binary))
    return census_to_events(census, binary, pid)


def census_to_events(census, binary, pid):
    """One EXISTING event per goroutine of a census, in time order: a waiting one whose wait start
    the runtime stamped (``g.waitsince``) dated then, the others at the census's time
    (CLOCK_MONOTONIC, like the kernel's events)."""
    rows = census.goroutines
    out = np.zeros(len(rows), dtype=EVENT_DTYPE)
    waiting = rows["status"] == binary.layout.statuses.get("_Gwaiting", 4)
    stamped = waiting & (rows["waitsince"] > 0) & (rows["waitsince"] <= census.mono_ns)
    out["ts_ns"] = np.where(stamped, rows["waitsince"].astype(np.uint64), np.uint64(census.mono_ns))
    out["g"] = rows["g"]
    out["goid"] = rows["goid"]
    out["aux_goid"] = rows["parent_goid"]
    out["pc_start"] = rows["startpc"]
    out["pc_create"] = rows["gopc"]
    out["pid"] = pid
    out["kind"] = Kind.EXISTING
    out["wait_reason"] = rows["wait_reason"]
    out["new_status"] = rows["status"].astype(np.uint16)
    out["old_status"] = out["new_status"]
    return out[np.argsort(out["ts_ns"], kind="stable")]


def read_g(mem, g_addr, layout):
    """One EXISTING event for the g at g_addr of mem's process (empty when dead or unreadable)."""
    blob = mem.read(g_addr, _span(layout))
    if blob is None:
        return np.zeros(0, dtype=EVENT_DTYPE)
    return events_from_gs(mem.pid, [g_addr], [blob], layout)


def census_events(binary, pid, number):
    """EXISTING events of every goroutine of a process now, from a census without stacks (the
    opening of window ``number``: see receiver/levels.py), then a CENSUS event at the census's
    time saying the list is complete. Each carries ``number`` as its ``tid``, so that the decoder
    knows which EXISTING events the CENSUS closes: a goroutine it holds from before, absent from
    the list and silent since before the census, has exited unseen. A census that dropped rows
    (unreadable or implausible g's) is not complete: it gets no CENSUS event."""
    from receiver.census import CensusReader

    census = CensusReader(binary, pid).read(stacks=False)
    events = census_to_events(census, binary, pid)
    events["tid"] = number
    if any(census.dropped.values()):
        return events
    end = np.zeros(1, dtype=EVENT_DTYPE)
    end["ts_ns"], end["pid"], end["kind"] = census.mono_ns, pid, Kind.CENSUS
    end["tid"] = number
    return np.concatenate([events, end])


def window_sync(existing_events, layout):
    """The events that start a window from the state of the goroutines alive at its opening:
    the EXISTING events as read, then a PARK (running -> waiting, same time, same wait reason)
    for each goroutine waiting."""
    waiting = layout.statuses["_Gwaiting"]
    parks = existing_events[(existing_events["new_status"] & 0xFFF) == waiting].copy()
    parks["kind"] = Kind.PARK
    parks["old_status"] = layout.statuses["_Grunning"]
    parks["aux_goid"] = parks["pc_start"] = parks["pc_create"] = 0
    return np.concatenate([existing_events, parks])
