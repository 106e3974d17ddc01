"""Goroutine groups and leaks, from censuses (``receiver.census``).

``groups(census, binary)`` folds a census's goroutines by (start function, creation site, state,
wait reason, stack): each ``Group`` has a count, the oldest wait (from ``g.waitsince``: a lower
stamp the GC sets: right to within one GC cycle) and an example goid. Folding is vectorized: one 64-bit hash of each
stack's PCs, then one ``np.unique`` over the key columns; only the distinct groups are named.

``LeakTracker`` follows groups across censuses. A group is a leak *suspect* when its oldest member
has been blocked at least ``threshold_s`` and its count rose at every one of the last ``censuses``
censuses; goroutines the runtime itself marked leaked (``_Gleaked``, Go 1.26+ leak detector) are
*definite* leaks. A healthy group (a pool of workers, requests that come and go) does not rise
census after census, or does not stay blocked.
"""

import dataclasses

import numpy as np

from receiver.census import SCAN_BIT  # noqa: F401  (statuses in rows are already without it)

_MULT = np.array([(0x9E3779B97F4A7C15 * (2 * i + 1)) & ((1 << 64) - 1) for i in range(1024)], np.uint64)


@dataclasses.dataclass
class Group:
    """One group of goroutines (see the module docstring). ``stack``: [(function, file, line)]
    innermost first, inlined calls expanded; ``key``: a stable identity across censuses."""

    key: tuple
    start: str
    created_by: str           # "function file:line"
    state: str
    wait_reason: str
    stack: list
    count: int
    oldest_wait_ns: int
    example_goid: int
    leaked: int = 0           # members in _Gleaked
    system: bool = False

    def title(self):
        what = self.wait_reason or self.state
        return f"{self.start} [{what}] created by {self.created_by}"


def stack_hashes(census):
    """One uint64 per row, a hash of its stack's PCs (0 for no stack)."""
    rows = census.goroutines
    n = len(rows)
    out = np.zeros(n, np.uint64)
    lens = rows["frames_len"].astype(np.int64)
    if n == 0 or len(census.pcs) == 0:
        return out
    pos = np.arange(len(census.pcs)) - np.repeat(rows["frames_start"], lens)
    terms = census.pcs * _MULT[np.minimum(pos, len(_MULT) - 1)]
    nonempty = lens > 0
    sums = np.add.reduceat(terms, rows["frames_start"][nonempty]) if nonempty.any() else []
    out[nonempty] = sums
    return out


def groups(census, binary):
    """[Group] of a census, biggest first."""
    rows = census.goroutines
    if len(rows) == 0:
        return []
    keys = np.zeros(len(rows), [("startpc", "<u8"), ("gopc", "<u8"), ("status", "<u4"),
                                ("wait", "u1"), ("stack", "<u8")])
    keys["startpc"], keys["gopc"], keys["status"] = rows["startpc"], rows["gopc"], rows["status"]
    waiting = np.isin(rows["status"], [v for k, v in binary.layout.statuses.items()
                                       if k in ("_Gwaiting", "_Gleaked")])
    keys["wait"] = np.where(waiting, rows["wait_reason"], 0)
    keys["stack"] = stack_hashes(census)
    uniq, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True,
                                             return_counts=True)
    inverse = inverse.reshape(-1)
    wait = census.wait_ns()
    oldest = np.zeros(len(uniq), np.int64)
    np.maximum.at(oldest, inverse, wait.astype(np.int64))
    leaked_status = binary.layout.statuses.get("_Gleaked", -1)
    leaked = np.bincount(inverse, weights=rows["status"] == leaked_status, minlength=len(uniq))
    sym = binary.symbolizer()
    bias = census.bias
    starts = sym.function_names(uniq["startpc"], bias=bias)
    created = sym.frames(uniq["gopc"], bias=bias)
    phys = np.flatnonzero(~created.inlined)
    names = {v: k[2:] for k, v in binary.layout.statuses.items() if v < SCAN_BIT}
    reasons = binary.layout.wait_reasons
    out = []
    for k in range(len(uniq)):
        row = int(first[k])
        frames = sym.frames(census.frames(row), bias=bias)
        stack = list(zip(frames.function.tolist(), frames.file.tolist(), frames.line.tolist()))
        c = phys[k]
        wr = int(uniq["wait"][k])
        out.append(Group(
            key=(int(uniq["startpc"][k]) - bias, int(uniq["gopc"][k]) - bias, int(uniq["status"][k]),
                 wr, int(uniq["stack"][k])),
            start=starts[k], created_by=f"{created.function[c]} {created.file[c]}:{created.line[c]}",
            state=names.get(int(uniq["status"][k]), "???"),
            wait_reason=reasons[wr] if wr and wr < len(reasons) else "",
            stack=stack, count=int(counts[k]), oldest_wait_ns=int(oldest[k]),
            example_goid=int(rows["goid"][row]), leaked=int(leaked[k]),
            system=starts[k].startswith("runtime.") and starts[k] != "runtime.main"))
    out.sort(key=lambda g: -g.count)
    return out


@dataclasses.dataclass(frozen=True)
class Leak:
    group: Group
    definite: bool
    history: tuple            # the group's counts over the last censuses, oldest first


class LeakTracker:
    """Leak suspects across censuses of one process (see the module docstring). Not thread-safe."""

    def __init__(self, threshold_s=60.0, censuses=3, max_tracked=10_000):
        self.threshold_ns = int(threshold_s * 1e9)
        self.censuses = int(censuses)
        self.max_tracked = max_tracked
        self._history = {}    # group key -> list of counts (last `censuses` + 1)

    def update(self, gs):
        """Leaks among this census's groups: suspects and definite ones."""
        seen = {}
        for g in gs:
            seen[g.key] = g
        history = {}
        for key, g in seen.items():
            h = (self._history.get(key, []) + [g.count])[-(self.censuses + 1):]
            history[key] = h
        if len(history) > self.max_tracked:   # bounded: keep the biggest groups
            keep = sorted(history, key=lambda k: -seen[k].count)[:self.max_tracked]
            history = {k: history[k] for k in keep}
        self._history = history
        out = []
        for key, h in history.items():
            g = seen[key]
            if g.system:
                continue
            if g.leaked:
                out.append(Leak(g, True, tuple(h)))
                continue
            rising = len(h) == self.censuses + 1 and all(b > a for a, b in zip(h, h[1:]))
            if rising and g.wait_reason and g.oldest_wait_ns >= self.threshold_ns:
                out.append(Leak(g, False, tuple(h)))
        return out
