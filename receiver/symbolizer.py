"""``Symbolizer``: vectors of PCs -> function, file, line, from a Go binary's pclntab.

Works on stripped binaries (the pclntab stays: the Go runtime needs it for its own tracebacks).
A batch is looked up with one ``searchsorted`` over the function entries, then grouped by function:
each function's pc-value tables (line and file) are decoded once, cached, and searched vectorized
for the whole group. Hundreds of thousands of PCs a second on the goroutine start/creation PCs gotel
sees (few distinct functions); the first sight of a function costs one table decode (~10-50 us).

The line is that of the innermost inlined call at the PC (pclntab's pcln table), the function the
physical one that holds the PC; inline expansion is not done.

Thread-safety: lookups from several threads are safe (the caches are dicts filled idempotently).
"""

import os
import threading
from typing import NamedTuple

import numpy as np

from receiver.errors import GotelError

PCFILE, PCLN = 5, 6
UNKNOWN = "?"


class Frames(NamedTuple):
    """Parallel arrays, one element per PC: function names and files (object arrays of str) and lines."""

    function: np.ndarray
    file: np.ndarray
    line: np.ndarray


class Symbolizer:
    """PC -> (function, file, line) over one ``receiver.pclntab.PcLnTab``."""

    def __init__(self, tab):
        self.tab = tab
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
        sym = Symbolizer(binary.pclntab)
        with _CACHE_LOCK:
            if len(_CACHE) >= _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)))
            sym = _CACHE.setdefault(key, sym)
    return sym
