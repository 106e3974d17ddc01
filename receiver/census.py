"""The goroutine census: every goroutine of a running Go process, its state, wait and stack, read
from the process's memory without stopping or signalling it.

``CensusReader(binary, pid).read(stacks=True)`` returns a ``Census``:

1. ``runtime.allgs`` (a ``[]*g``) and ``runtime.allglen``, then every g in batched
   ``process_vm_readv`` calls (``receiver.procmem``), decoded with one numpy structured view whose
   field offsets come from ``binary.layout`` (DWARF, or the release table for stripped binaries).
2. Rows that do not add up are dropped and counted (``Census.dropped``): unknown status, goid 0,
   stack bounds inverted or over 1 GiB, saved SP outside the stack.
3. Stacks of goroutines that are not running, unwound from the saved context (``g.sched``, or
   ``g.syscallsp/pc`` in a system call): the first frame by pclntab's SP-delta table at the saved PC
   (which works whatever ``sched.bp`` holds: Go 1.21+ saves the caller's frame pointer there), the
   rest by the frame-pointer chain amd64 Go keeps. Every frame is checked: return PC inside the Go
   text and known to pclntab, frame pointer 8-aligned, strictly rising, inside [stack.lo, stack.hi).
   Unwinding stops at ``runtime.goexit`` (complete), at ``max_depth`` (truncated, default 64) or at
   the first frame that fails a check (broken); one batched read per depth level for all goroutines.
4. With stacks, the g records are read again afterwards: a goroutine whose status, goid or saved
   context changed in between moved while being read; it is dropped and counted (``moved``).

Precision: the picture is a moment's, not an atomic snapshot (the process keeps running). The wait
start, ``g.waitsince``, is set lazily by the runtime: when a GC cycle's stack scan finds a goroutine
blocked and unstamped, it stamps it with ``work.tstart``, the end of the previous cycle's marking
(runtime/mgcmark.go ``markroot``, mgc.go ``gcMark``). The real wait start lies between the two
cycles' scans, and so does the stamp: a wait age is right to within one GC cycle, either way, and
unknown (0) until the second GC after the goroutine parked (during the first cycle ever the stamp
is 0). Go's own traceback prints its "N minutes" from the same field.

Errors: ``TargetError`` when the process is gone or its goroutine list cannot be located or read.
Thread-safety: one CensusReader per thread. Cost: see README ("the goroutine census").
"""

import dataclasses
import time

import numpy as np

from receiver import globals as runtime_globals
from receiver.errors import GotelError, TargetError
from receiver.procmem import ProcessMemory

MAX_GOROUTINES = 1 << 24       # more allgs entries than this is a damaged slice header
MAX_STACK = 1 << 30            # Go's default max stack is 1 GB
DEFAULT_DEPTH = 64
SCAN_BIT = 0x1000

# One row per goroutine (after decoding; the g struct itself is read through a view built per layout).
GOROUTINE_DTYPE = np.dtype([
    ("g", "<u8"), ("goid", "<u8"), ("parent_goid", "<u8"), ("status", "<u4"), ("scan", "?"),
    ("wait_reason", "u1"), ("waitsince", "<i8"), ("gopc", "<u8"), ("startpc", "<u8"),
    ("sched_pc", "<u8"), ("sched_sp", "<u8"), ("sched_bp", "<u8"),
    ("stack_lo", "<u8"), ("stack_hi", "<u8"),
    ("frames_start", "<i8"), ("frames_len", "<i4"), ("unwind", "u1"),
])
# Census.goroutines["unwind"]: how the stack walk ended.
UNWIND_NONE, UNWIND_COMPLETE, UNWIND_TRUNCATED, UNWIND_BROKEN = 0, 1, 2, 3

# g fields read, by Layout name -> (column, numpy type).
_G_COLUMNS = {
    "goid": ("goid", "<u8"), "parentGoid": ("parent_goid", "<u8"), "atomicstatus": ("status", "<u4"),
    "waitreason": ("wait_reason", "u1"), "waitsince": ("waitsince", "<i8"), "gopc": ("gopc", "<u8"),
    "startpc": ("startpc", "<u8"), "sched.pc": ("sched_pc", "<u8"), "sched.sp": ("sched_sp", "<u8"),
    "sched.bp": ("sched_bp", "<u8"), "stack.lo": ("stack_lo", "<u8"), "stack.hi": ("stack_hi", "<u8"),
    "syscallsp": ("syscallsp", "<u8"), "syscallpc": ("syscallpc", "<u8"),
}
STACK_FIELDS = ("sched.pc", "sched.sp", "stack.lo", "stack.hi")


@dataclasses.dataclass
class Census:
    """Every goroutine of one process at one moment (see the module docstring).

    ``goroutines``: GOROUTINE_DTYPE rows, live goroutines in allgs order. ``pcs``: the stack PCs of
    all goroutines, flat, as read in the process (subtract ``bias`` for file addresses); row r's
    frames are ``pcs[frames_start:frames_start + frames_len]``, innermost first (frame 0 is the saved
    PC). ``dropped``: rows dropped by reason. ``mono_ns``/``time_ns``: CLOCK_MONOTONIC (Go's own
    ``nanotime`` clock, which ``waitsince`` uses) and Unix time of the read.
    """

    pid: int
    goroutines: np.ndarray
    pcs: np.ndarray
    bias: int
    mono_ns: int
    time_ns: int
    allglen: int
    dropped: dict
    stacks: bool
    duration_s: float = 0.0

    def frames(self, row):
        """The PCs of one row's stack, innermost first."""
        r = self.goroutines[row]
        return self.pcs[int(r["frames_start"]):int(r["frames_start"]) + int(r["frames_len"])]

    def wait_ns(self):
        """Per row: ns since the wait started (0 where the runtime has not stamped it yet)."""
        ws = self.goroutines["waitsince"]
        return np.where(ws > 0, np.maximum(self.mono_ns - ws, 0), 0)


class CensusReader:
    """Reads censuses of one process running ``binary`` (a GoBinary). Raises TargetError when the
    goroutine list cannot be located (no ``runtime.allgs`` known for this binary)."""

    def __init__(self, binary, pid, mem=None):
        self.binary = binary
        self.pid = int(pid)
        self.layout = binary.layout
        self.mem = mem or ProcessMemory(pid)
        try:
            self.allgs = runtime_globals.global_address(binary, "runtime.allgs")
        except GotelError as e:
            raise TargetError(f"{binary.path}: runtime.allgs not found, so gotel cannot list this "
                              f"process's goroutines: {e}") from e
        try:
            self.allglen = runtime_globals.global_address(binary, "runtime.allglen")
        except GotelError:
            self.allglen = None     # len(allgs) alone is still a bound
        self.bias = binary.load_bias(pid)
        g = self.layout.g
        self.columns = {name: col for name, col in _G_COLUMNS.items() if name in g}
        self.span = max(g[name] + np.dtype(t).itemsize for name, (_, t) in self.columns.items())
        self.view = np.dtype({
            "names": [c for c, _ in self.columns.values()],
            "formats": [t for _, t in self.columns.values()],
            "offsets": [g[name] for name in self.columns],
            "itemsize": self.span,
        })
        self.can_unwind = all(f in g for f in STACK_FIELDS)
        st = self.layout.statuses
        self.gone = np.array([st[n] for n in ("_Gidle", "_Gdead", "_Gdeadextra") if n in st], np.uint32)
        self.known = np.array([v for k, v in st.items() if v < SCAN_BIT], np.uint32)
        self.s_running = st.get("_Grunning", 2)
        self.s_syscall = st.get("_Gsyscall", 3)
        self.s_copystack = st.get("_Gcopystack", 8)
        tab = binary.pclntab
        self.tab = tab
        self.text = (int(tab.entries[0]) + self.bias, int(tab.entries[-1]) + self.bias)
        goexit = tab.lookup(["runtime.goexit"]).get("runtime.goexit")
        self.goexit = int(tab.find(np.array([goexit[0]], np.uint64))[0]) if goexit else -2
        self._spdelta = {}

    # --- the goroutine table ------------------------------------------------------------------
    def _gs(self):
        """(addresses of the g structs, allglen) from runtime.allgs."""
        header = self.mem.read(self.allgs + self.bias, 24)
        if header is None:
            raise TargetError(f"process {self.pid}: cannot read runtime.allgs (it exited?)")
        ptr, n, cap = np.frombuffer(header, "<u8").tolist()
        if self.allglen is not None:
            raw = self.mem.read(self.allglen + self.bias, 8)
            if raw is not None:
                n = min(n, int.from_bytes(raw, "little"))
        if n > cap or n > MAX_GOROUTINES:
            raise TargetError(f"process {self.pid}: runtime.allgs says {n} goroutines (capacity {cap}); "
                              f"not a goroutine list gotel can trust")
        if n == 0:
            return np.zeros(0, np.uint64), 0
        chunk = 1 << 17          # pointers per piece (1 MiB)
        starts = np.arange(0, n, chunk, dtype=np.uint64)
        sizes = np.minimum(chunk, n - starts) * 8
        out = np.zeros(n, np.uint64)
        ok = self.mem.read_ranges(ptr + starts * 8, sizes, starts * 8, out.view(np.uint8))
        if not ok.all():
            raise TargetError(f"process {self.pid}: cannot read the goroutine list (it exited?)")
        return out, n

    def _read_rows(self, addrs):
        rows, ok = self.mem.read_many(addrs, self.span)
        return rows.view(self.view).reshape(-1), ok

    def read(self, stacks=True, max_depth=DEFAULT_DEPTH):
        """A Census of the process now. Raises TargetError if the process is gone."""
        t0 = time.perf_counter()
        mono, now = time.monotonic_ns(), time.time_ns()
        self.mem.refresh()
        addrs, allglen = self._gs()
        dropped = {"unreadable": 0, "inconsistent": 0, "moved": 0}
        plausible = (addrs != 0) & (addrs % 8 == 0)
        addrs = addrs[plausible]
        view, ok = self._read_rows(addrs)
        dropped["unreadable"] = int((~ok).sum()) + int((~plausible).sum())
        status = view["status"] & np.uint32(~SCAN_BIT & 0xFFFFFFFF)
        live = ok & ~np.isin(status, self.gone)
        out = np.zeros(int(live.sum()), GOROUTINE_DTYPE)
        v = view[live]
        out["g"] = addrs[live]
        for col in out.dtype.names:
            if col in v.dtype.names:
                out[col] = v[col]
        out["status"] = status[live]
        out["scan"] = (v["status"] & SCAN_BIT) != 0
        sys_pc = v["syscallpc"] if "syscallpc" in v.dtype.names else None
        sys_sp = v["syscallsp"] if "syscallsp" in v.dtype.names else None
        good = self._consistent(out)
        dropped["inconsistent"] = int((~good).sum())
        out = out[good]
        keep_addrs = out["g"].copy()
        pcs = np.zeros(0, np.uint64)
        if stacks and self.can_unwind and len(out):
            pc = out["sched_pc"].copy()
            sp = out["sched_sp"].copy()
            if sys_pc is not None and sys_sp is not None:
                insys = out["status"] == self.s_syscall
                pc[insys] = sys_pc[good][insys]
                sp[insys] = sys_sp[good][insys]
            pcs = self._unwind(out, pc, sp, max_depth)
            # A goroutine whose status or saved context changed while we read moved: drop it.
            again, ok2 = self._read_rows(keep_addrs)
            same = ok2 & (again["goid"] == out["goid"]) & (again["status"] == (out["status"] | np.where(out["scan"], SCAN_BIT, 0).astype(np.uint32)))
            parked = out["status"] != self.s_running
            same &= ~parked | ((again["sched_pc"] == out["sched_pc"]) & (again["sched_sp"] == out["sched_sp"]))
            dropped["moved"] = int((~same).sum())
            if not same.all():
                out, pcs = _compact(out, pcs, same)
        return Census(self.pid, out, pcs, self.bias, mono, now, allglen, dropped,
                      stacks and self.can_unwind, time.perf_counter() - t0)

    def _consistent(self, rows):
        lo, hi = rows["stack_lo"], rows["stack_hi"]
        good = np.isin(rows["status"], self.known) & (rows["goid"] > 0) & (rows["goid"] < (1 << 62))
        if self.can_unwind:
            good &= (lo < hi) & (hi - lo <= MAX_STACK)
            saved = (rows["status"] != self.s_running) & (rows["status"] != self.s_syscall) \
                & (rows["status"] != self.s_copystack)
            good &= ~saved | ((rows["sched_sp"] >= lo) & (rows["sched_sp"] < hi))
        return good

    # --- stacks ---------------------------------------------------------------------------------
    def _in_text(self, pcs):
        """Bool per PC: inside the Go text and inside a function pclntab knows."""
        ok = (pcs >= self.text[0]) & (pcs < self.text[1])
        idx = self.tab.find(np.where(ok, pcs - np.uint64(self.bias), 0))
        return ok & (idx >= 0), idx

    def _sp_delta(self, pcs):
        """SP delta (bytes between SP and the return address slot) at each saved PC; -1 unknown."""
        uniq, inverse = np.unique(pcs, return_inverse=True)
        out = np.empty(len(uniq), np.int64)
        for k, pc in enumerate(uniq.tolist()):
            d = self._spdelta.get(pc)
            if d is None:
                d = -1
                f = int(self.tab.find(np.array([pc - self.bias], np.uint64))[0]) if pc >= self.bias else -1
                if f >= 0:
                    try:
                        ends, vals = self.tab.pcvalue_table(f, 4)
                        i = int(np.searchsorted(ends, np.uint64(pc - self.bias), side="right"))
                        if i < len(vals) and 0 <= vals[i] <= MAX_STACK:
                            d = int(vals[i])
                    except Exception:  # noqa: BLE001  (a damaged table: this PC stays unknown)
                        d = -1
                if len(self._spdelta) < 1 << 16:
                    self._spdelta[pc] = d
            out[k] = d
        return out[inverse.reshape(-1)]

    def _unwind(self, rows, pc, sp, max_depth):
        """Fill frames_start/frames_len/unwind of rows; return the flat PC array."""
        n = len(rows)
        levels = []                  # (row indices, their PCs) per depth level
        depth = np.zeros(n, np.int64)
        result = np.full(n, UNWIND_NONE, np.uint8)
        lo, hi = rows["stack_lo"], rows["stack_hi"]
        status = rows["status"]
        want = (status != self.s_running) & (status != self.s_copystack) & (pc != 0)
        first_ok, first_f = self._in_text(pc)
        result[want & ~first_ok] = UNWIND_BROKEN
        active = want & first_ok
        levels.append((np.flatnonzero(active), pc[active]))
        depth[active] = 1
        result[active & (first_f == self.goexit)] = UNWIND_COMPLETE
        active &= first_f != self.goexit
        # The first frame: its return address sits delta bytes above the saved SP; the caller's
        # frame pointer (saved by the first frame's prologue) just below it.
        delta = np.full(n, -1, np.int64)
        if active.any():
            delta[active] = self._sp_delta(pc[active])
        bad = active & (delta < 0)
        result[bad] = UNWIND_BROKEN
        active &= ~bad
        # Records are read 16 bytes at a time: [saved caller BP, return address]. The first one
        # sits just below the return address slot (the saved BP is the register itself when the
        # first frame has not pushed it yet, delta 0); the next ones at each saved frame pointer.
        cur = np.where(active, sp + delta.astype(np.uint64) - np.uint64(8), 0)
        first = True
        while active.any():
            idx = np.flatnonzero(active)
            here = cur[idx]
            inside = (here >= lo[idx]) & (here + np.uint64(16) <= hi[idx]) & (here % 8 == 0)
            result[idx[~inside]] = UNWIND_BROKEN
            idx, here = idx[inside], here[inside]
            recs, ok = self.mem.read_many(here, 16)
            words = recs.view("<u8")
            saved_bp, ret = words[:, 0], words[:, 1]
            if first:
                saved_bp = np.where(delta[idx] >= 8, saved_bp, rows["sched_bp"][idx])
            result[idx[~ok]] = UNWIND_BROKEN
            idx, saved_bp, ret, here = idx[ok], saved_bp[ok], ret[ok], here[ok]
            in_text, f = self._in_text(ret)
            done = in_text & (f == self.goexit)
            result[idx[done]] = UNWIND_COMPLETE
            result[idx[~in_text]] = UNWIND_BROKEN
            go = in_text & ~done
            idx, saved_bp, ret, here = idx[go], saved_bp[go], ret[go], here[go]
            full = depth[idx] >= max_depth
            result[idx[full]] = UNWIND_TRUNCATED
            idx, saved_bp, ret, here = idx[~full], saved_bp[~full], ret[~full], here[~full]
            levels.append((idx, ret))
            depth[idx] += 1
            # The next frame's record must lie above this one, inside the stack.
            rising = saved_bp > here
            result[idx[~rising]] = UNWIND_BROKEN
            active[:] = False
            active[idx[rising]] = True
            cur[idx[rising]] = saved_bp[rising]
            first = False
        result[want & (result == UNWIND_NONE)] = UNWIND_BROKEN
        rows["unwind"] = result
        rows["frames_len"] = depth
        starts = np.concatenate([[0], np.cumsum(depth)[:-1]]) if n else depth
        rows["frames_start"] = starts
        if not levels:
            return np.zeros(0, np.uint64)
        row = np.concatenate([i for i, _ in levels])
        level = np.concatenate([np.full(len(i), k, np.int64) for k, (i, _) in enumerate(levels)])
        order = np.lexsort((level, row))
        return np.concatenate([p for _, p in levels]).astype(np.uint64)[order]


def _compact(rows, pcs, keep):
    """rows[keep] with their frames gathered into a new flat PC array."""
    rows = rows[keep]
    if len(pcs) == 0:
        rows["frames_start"] = 0
        return rows, pcs
    n = rows["frames_len"].astype(np.int64)
    total = int(n.sum())
    first = np.repeat(np.cumsum(n) - n, n)
    src = np.repeat(rows["frames_start"], n) + (np.arange(total) - first)
    rows["frames_start"] = np.cumsum(n) - n
    return rows, pcs[src]
