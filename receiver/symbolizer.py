"""``Symbolizer``: vectors of PCs -> function, file, line, from a Go binary's pclntab.

Works on stripped binaries (the pclntab stays: the Go runtime needs it for its own tracebacks).
A batch is looked up with one ``searchsorted`` over the function entries, then grouped by function:
each function's pc-value tables (line and file) are decoded once, cached, and searched vectorized
for the whole group. Hundreds of thousands of PCs a second on the goroutine start/creation PCs gotel
sees (few distinct functions); the first sight of a function costs one table decode (~10-50 us).

``symbolize`` gives the line of the innermost inlined call at the PC (pclntab's pcln table) and the
physical function that holds it. ``frames`` expands inlined calls as Go's own tracebacks do, from
the function's inline tree (FUNCDATA_InlTree, indexed by PCDATA_InlTreeIndex): one logical frame
per inlined call, innermost first, then the physical function; work is per distinct PC, cached.

Thread-safety: lookups from several threads are safe (the caches are dicts filled idempotently).
"""

import os
import threading
from typing import NamedTuple

import numpy as np

from receiver import pclntab
from receiver.errors import GotelError

PCFILE, PCLN = 5, 6
UNKNOWN = "?"


class Frames(NamedTuple):
    """Parallel arrays, one element per PC: function names and files (object arrays of str) and lines."""

    function: np.ndarray
    file: np.ndarray
    line: np.ndarray


class InlineFrames(NamedTuple):
    """Logical frames of a vector of PCs, flattened: the frames of pcs[k] are the rows whose
    ``index`` is k, innermost first. ``inlined`` is False for the physical function holding the PC
    (the last frame of each PC); ``entry`` is that function's entry (file address, 0 when unknown);
    ``wrapper`` marks compiler-generated wrappers (funcID wrapper), which Go's tracebacks elide."""

    index: np.ndarray
    function: np.ndarray
    file: np.ndarray
    line: np.ndarray
    inlined: np.ndarray
    entry: np.ndarray
    wrapper: np.ndarray


MAX_INLINE_DEPTH = 100   # deeper inline chains are damage (Go inlines a few levels at most)


class Symbolizer:
    """PC -> (function, file, line) over one ``receiver.pclntab.PcLnTab``."""

    def __init__(self, tab, image=None):
        self.tab = tab
        self.image = image   # the ElfImage, to read inline trees (go:func.*); None: no expansion
        self._trees = {}     # function index -> inline tree or None
        self._wrapper = None
        self._expanded = {}  # (pc, return_address) -> logical frames
        self._lines = {}     # function index -> (ends, lines)
        self._files = {}     # function index -> (ends, file ids)
        self._file_ids = {}  # file name -> id
        self._file_names = []
        self._func_names = {}
        self._lock = threading.Lock()

    def function_names(self, pcs, bias=0):
        """Object array of the function name holding each PC ("?" outside the Go text)."""
        idx = self.tab.find(_unbiased(pcs, bias))
        uniq, inverse = np.unique(idx, return_inverse=True)
        names = np.array([self._func_name(int(i)) for i in uniq] or [UNKNOWN], dtype=object)
        return names[inverse.reshape(-1)] if len(idx) else np.array([], dtype=object)

    def symbolize(self, pcs, bias=0):
        """Frames for an array of PCs. Unknown PCs give ("?", "?", 0); never raises on bad PCs.

        PCs are the file's virtual addresses; for PCs read in a PIE process pass its
        ``GoBinary.load_bias(pid)`` as ``bias`` (subtracted first).
        """
        pcs = _unbiased(pcs, bias)
        n = len(pcs)
        if n == 0:
            empty = np.array([], dtype=object)
            return Frames(empty, empty.copy(), np.zeros(0, np.int32))
        idx = self.tab.find(pcs)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        uniq, starts = np.unique(sorted_idx, return_index=True)
        bounds = np.append(starts, n)
        lines = np.zeros(n, np.int32)
        file_ids = np.full(n, -1, np.int64)
        for k, f in enumerate(uniq.tolist()):
            if f < 0:
                continue
            sel = order[bounds[k]:bounds[k + 1]]
            group = pcs[sel]
            try:
                lines[sel] = _lookup(*self._table(self._lines, f, PCLN), group, 0)
                file_ids[sel] = _lookup(*self._table(self._files, f, PCFILE), group, -1)
            except GotelError:
                continue   # a damaged table for one function leaves its PCs unknown
        names = np.array([self._func_name(int(i)) for i in uniq], dtype=object)
        func_of = np.empty(n, dtype=object)
        func_of[order] = names[np.repeat(np.arange(len(uniq)), np.diff(bounds))]
        file_table = np.array(self._file_names + [UNKNOWN], dtype=object)
        return Frames(func_of, file_table[file_ids], lines)

    def frames(self, pcs, bias=0, return_address=True):
        """InlineFrames of an array of PCs (PIE: pass the load bias, as for ``symbolize``).

        With ``return_address`` (PCs read from a stack: return addresses, and g.sched.pc), each PC
        is looked up one byte back, in the call instruction, as Go's traceback does; else as given
        (a trapping or start PC). Unknown PCs give one frame ("?", "?", 0). Never raises on bad PCs.
        """
        pcs = _unbiased(pcs, bias)
        uniq, inverse = np.unique(pcs, return_inverse=True)
        per_pc = [self._expand(int(pc), return_address) for pc in uniq.tolist()]
        counts = np.array([len(x) for x in per_pc], np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else counts
        n = counts[inverse]
        index = np.repeat(np.arange(len(pcs), dtype=np.int64), n)
        total = int(n.sum())
        # row r of the output is frame (r - first row of its PC) of that PC's expansion
        first = np.repeat(np.cumsum(n) - n, n)
        src = np.repeat(starts[inverse], n) + (np.arange(total) - first)
        flat = [f for x in per_pc for f in x]
        if not flat:
            empty = np.array([], dtype=object)
            return InlineFrames(index, empty, empty.copy(), np.zeros(0, np.int32), np.zeros(0, bool),
                                np.zeros(0, np.uint64), np.zeros(0, bool))
        func, file, line, inlined, entry, wrapper = zip(*flat)
        return InlineFrames(index, np.array(func, dtype=object)[src], np.array(file, dtype=object)[src],
                            np.array(line, np.int32)[src], np.array(inlined, bool)[src],
                            np.array(entry, np.uint64)[src], np.array(wrapper, bool)[src])

    def _expand(self, pc, return_address):
        key = (pc, return_address)
        hit = self._expanded.get(key)
        if hit is None:
            try:
                hit = self._expand_uncached(pc, return_address)
            except GotelError:
                hit = ((UNKNOWN, UNKNOWN, 0, False, 0, False),)
            if len(self._expanded) < 1 << 20:
                self._expanded[key] = hit
        return hit

    def _expand_uncached(self, pc, return_address):
        tab = self.tab
        f = int(tab.find(np.array([pc], np.uint64))[0])
        if f < 0:
            return ((UNKNOWN, UNKNOWN, 0, False, 0, False),)
        entry = int(tab.entries[f])
        wrapper = self.wrapper_func_id
        cur = pc - 1 if return_address and pc > entry else pc
        out = []
        tree = self._inline_tree(f)
        if tree is not None:
            ends, vals, calls = tree
            for _ in range(MAX_INLINE_DEPTH):
                ix = int(_lookup(ends, vals, np.array([cur], np.uint64), -1)[0])
                if ix < 0 or ix >= len(calls):
                    break
                out.append((tab.name_at(int(calls["nameOff"][ix])), *self._file_line(f, cur), True, entry,
                            int(calls["funcID"][ix]) == wrapper))
                cur = entry + int(calls["parentPc"][ix])
        out.append((self._func_name(f), *self._file_line(f, cur), False, entry,
                    int(tab.func_ids()[f]) == wrapper))
        return tuple(out)

    @property
    def wrapper_func_id(self):
        """The funcID of compiler-generated wrappers: the last of Go's FuncID enumeration in every
        release (1.18-1.27), so the largest any function of the binary carries (every binary has
        autogenerated equality and method wrappers)."""
        if self._wrapper is None:
            ids = self.tab.func_ids()
            self._wrapper = int(ids.max()) if len(ids) else -1
        return self._wrapper

    def _file_line(self, f, pc):
        at = np.array([pc], np.uint64)
        line = int(_lookup(*self._table(self._lines, f, PCLN), at, 0)[0])
        fid = int(_lookup(*self._table(self._files, f, PCFILE), at, -1)[0])
        return (self._file_names[fid] if 0 <= fid < len(self._file_names) else UNKNOWN), line

    def _inline_tree(self, f):
        """(ends, tree indices, inlinedCall array) of function f, or None when nothing is inlined."""
        if f in self._trees:
            return self._trees[f]
        tree = None
        tab = self.tab
        off = tab.pcdata_offset(f, pclntab.PCDATA_INLTREE)
        data = tab.funcdata_offset(f, pclntab.FUNCDATA_INLTREE)
        if off and data is not None and tab.gofunc and self.image is not None:
            ends, vals = tab.pcvalue_table_at(f, off)
            count = int(vals.max()) + 1 if len(vals) else 0
            if 0 < count <= 1 << 16:
                dtype = pclntab.INLINED_CALL_120 if tab.magic == pclntab.MAGIC_120 else pclntab.INLINED_CALL_118
                raw = self.image.read(tab.gofunc + data, count * dtype.itemsize)
                tree = (ends, vals, np.frombuffer(raw, dtype))
        self._trees[f] = tree
        return tree

    def _func_name(self, i):
        if i < 0:
            return UNKNOWN
        name = self._func_names.get(i)
        if name is None:
            try:
                name = self.tab.name(i)
            except GotelError:
                name = UNKNOWN
            self._func_names[i] = name
        return name

    def _table(self, cache, f, word):
        hit = cache.get(f)
        if hit is None:
            ends, vals = self.tab.pcvalue_table(f, word)
            if word == PCFILE:
                names = [self.tab.file_name(f, int(v)) for v in vals.tolist()]
                vals = np.array([self._file_id(name) for name in names], np.int64)
            hit = cache[f] = (ends, vals)
        return hit

    def _file_id(self, name):
        with self._lock:
            fid = self._file_ids.get(name)
            if fid is None:
                fid = self._file_ids[name] = len(self._file_names)
                self._file_names.append(name)
        return fid


def _unbiased(pcs, bias):
    pcs = np.asarray(pcs, dtype=np.uint64).reshape(-1)
    return pcs - np.uint64(bias) if bias else pcs


def _lookup(ends, vals, pcs, missing):
    # PCs past a function's last table row (its padding) have no value, as in Go's pcvalue.
    i = np.searchsorted(ends, pcs, side="right")
    out = vals[np.minimum(i, len(vals) - 1)]
    out[i >= len(vals)] = missing
    return out


_CACHE = {}
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 32


def for_binary(binary):
    """The shared Symbolizer of a ``GoBinary``'s file: processes running the same executable share
    one, keyed by the file's identity (device, inode, size, mtime)."""
    try:
        st = os.stat(binary.path)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        key = ("path", binary.path)
    with _CACHE_LOCK:
        sym = _CACHE.get(key)
    if sym is None:
        sym = Symbolizer(binary.pclntab, binary.image)
        with _CACHE_LOCK:
            if len(_CACHE) >= _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)))
            sym = _CACHE.setdefault(key, sym)
    return sym
