"""Compact tables for live state: struct-of-arrays rows, and an open-addressing hash over them.

``RowStore`` keeps one numpy array per column and hands out row numbers (a free list recycles
them). ``HashIndex`` maps a two-part key, stored in two of those columns, to its row: linear probing
over an int32 slot array, every operation vectorized over a whole batch of keys (the probe loop runs
once per probe *step*, not once per key). ``GoroutineTable`` is the decoder's table of live
goroutines keyed by (pid, goid); ``TraceTable`` holds one row per live trace.

Memory (measured by ``tests/pipeline/test_goroutines.py::test_million_goroutines_fit`` and
``python -m pipeline.goroutines``): a goroutine row is 77 bytes of columns, plus 4 bytes of free
list per row of capacity and 4 bytes per hash slot (at least two per live key), about 93 bytes
per live goroutine at 1,000,000 live (under 100 MB), plus 52 bytes per live *trace*, which many
goroutines share.

Not thread-safe: the pipeline thread owns these tables.
"""

import numpy as np

_U64 = np.uint64
_EMPTY = -1
_TOMB = -2
_K1 = _U64(0x9E3779B97F4A7C15)
_K2 = _U64(0xBF58476D1CE4E5B9)
_K3 = _U64(0x94D049BB133111EB)


def hash_pairs(a, b):
    """A well-mixed uint64 hash of two integer key arrays (splitmix64 over a*K1 ^ b)."""
    x = (np.asarray(a).astype(_U64) * _K1) ^ np.asarray(b).astype(_U64)
    x = x ^ (x >> _U64(30))
    x = x * _K2
    x = x ^ (x >> _U64(27))
    x = x * _K3
    return x ^ (x >> _U64(31))


def _bits(x):
    return int(x).bit_length()


def unique_pairs(a, b):
    """(ua, ub, inverse): the distinct (a, b) pairs, and for each input pair its position among
    them. One unstable sort of a packed 64-bit key where the two ranges fit (always for pids with
    goids or wait reasons), else a stable lexsort; a constant batch costs no sort at all."""
    a = np.asarray(a)
    b = np.asarray(b)
    n = a.size
    if n == 0:
        return a[:0], b[:0], np.zeros(0, np.int64)
    if (a == a[0]).all() and (b == b[0]).all():
        return a[:1], b[:1], np.zeros(n, np.int64)
    amin, bmin = a.min(), b.min()
    da = (a - amin).astype(np.uint64)
    db = (b - bmin).astype(np.uint64)
    bb = _bits(db.max())
    if _bits(da.max()) + bb <= 64:
        packed, inverse = np.unique((da << np.uint64(bb)) | db, return_inverse=True)
        ua = (packed >> np.uint64(bb)).astype(a.dtype) + amin
        ub = (packed & np.uint64((1 << bb) - 1)).astype(b.dtype) + bmin
        return ua, ub, inverse.reshape(-1)
    order = np.lexsort((b, a))
    sa, sb = a[order], b[order]
    new = np.ones(n, bool)
    new[1:] = (sa[1:] != sa[:-1]) | (sb[1:] != sb[:-1])
    inverse = np.empty(n, np.int64)
    inverse[order] = np.cumsum(new) - 1
    return sa[new], sb[new], inverse


def bump(column, index, delta=1):
    """column[index] += delta with repeated indexes counted (np.add.at, but ~5x faster)."""
    if len(index) == 0:
        return
    u, c = np.unique(index, return_counts=True)
    if delta >= 0:
        column[u] += (c * delta).astype(column.dtype)
    else:
        column[u] -= (c * -delta).astype(column.dtype)


class RowStore:
    """Struct-of-arrays rows with a free list; ``store[name]`` is a column (capacity long)."""

    def __init__(self, columns, capacity=1024):
        self.dtypes = {name: np.dtype(dt) for name, dt in columns.items()}
        self.capacity = 0
        self.columns = {name: np.zeros(0, dt) for name, dt in self.dtypes.items()}
        self._free = np.zeros(0, np.int32)   # stack of free rows; the top is _free[:_n_free][-1]
        self._n_free = 0
        self.live = 0
        self._grow(max(16, int(capacity)))

    def __getitem__(self, name):
        return self.columns[name]

    @property
    def row_bytes(self):
        return sum(dt.itemsize for dt in self.dtypes.values())

    @property
    def nbytes(self):
        return sum(c.nbytes for c in self.columns.values()) + self._free.nbytes

    def _grow(self, capacity):
        old = self.capacity
        for name, col in self.columns.items():
            new = np.zeros(capacity, col.dtype)
            new[:old] = col
            self.columns[name] = new
        free = np.zeros(capacity, np.int32)
        free[: self._n_free] = self._free[: self._n_free]
        # Newly added rows go on the stack so the lowest is handed out first.
        added = np.arange(capacity - 1, old - 1, -1, dtype=np.int32)
        free[self._n_free : self._n_free + added.size] = added
        self._free = free
        self._n_free += added.size
        self.capacity = capacity

    def alloc(self, n):
        """n fresh rows (zeroed), as an int64 array."""
        if n > self._n_free:
            self._grow(max(self.capacity * 2, self.capacity + n - self._n_free))
        top = self._n_free
        rows = self._free[top - n : top][::-1].astype(np.int64)
        self._n_free -= n
        self.live += n
        for col in self.columns.values():
            col[rows] = 0
        return rows

    def release(self, rows):
        rows = np.asarray(rows, np.int64)
        self._free[self._n_free : self._n_free + rows.size] = rows
        self._n_free += rows.size
        self.live -= rows.size

    def live_rows(self):
        """Rows in use, ascending (O(capacity))."""
        used = np.ones(self.capacity, bool)
        used[self._free[: self._n_free]] = False
        return np.flatnonzero(used)


class HashIndex:
    """Open-addressing (linear probing) index from (key_a, key_b) to a RowStore row.

    Keys must be distinct and absent on insert (the caller looks up first); deletes leave
    tombstones, cleared by a rebuild. Live keys fill at most half the slots (the array doubles
    past that), and live keys plus tombstones at most three quarters (a rebuild at the same size
    clears the tombstones, leaving a quarter of the slots before the next one), so probe runs stay
    short.
    """

    def __init__(self, store, key_a, key_b, slots=1024):
        self.store = store
        self.key_a, self.key_b = key_a, key_b
        self.size = 1 << max(4, int(slots - 1).bit_length())
        self.slots = np.full(self.size, _EMPTY, np.int32)
        self.used = 0    # live keys + tombstones
        self.count = 0   # live keys

    @property
    def nbytes(self):
        return self.slots.nbytes

    def _home(self, a, b):
        return (hash_pairs(a, b) & _U64(self.size - 1)).astype(np.int64)

    def _find(self, a, b):
        """(rows, slot positions) for keys; -1 where absent."""
        n = len(a)
        rows = np.full(n, -1, np.int64)
        where = np.full(n, -1, np.int64)
        if n == 0:
            return rows, where
        ka, kb = self.store[self.key_a], self.store[self.key_b]
        mask = self.size - 1
        pend = np.arange(n)
        pos = self._home(a, b)
        pa, pb = np.asarray(a), np.asarray(b)
        while pend.size:
            s = self.slots[pos]
            occupied = s >= 0
            hit = occupied.copy()
            so = s[occupied]
            hit[occupied] = (ka[so] == pa[pend[occupied]]) & (kb[so] == pb[pend[occupied]])
            rows[pend[hit]] = s[hit]
            where[pend[hit]] = pos[hit]
            go_on = (s != _EMPTY) & ~hit
            pend = pend[go_on]
            pos = (pos[go_on] + 1) & mask
        return rows, where

    def lookup(self, a, b):
        """Rows of keys (a[i], b[i]), -1 where absent."""
        return self._find(a, b)[0]

    def _place(self, rows, a, b):
        mask = self.size - 1
        pend = np.arange(len(rows))
        pos = self._home(a, b)
        while pend.size:
            s = self.slots[pos]
            free = np.flatnonzero(s < 0)
            placed = np.zeros(pend.size, bool)
            if free.size:
                # Several keys may claim one free slot in the same step: the first wins.
                _, first = np.unique(pos[free], return_index=True)
                win = free[first]
                self.slots[pos[win]] = rows[pend[win]]
                placed[win] = True
            pend = pend[~placed]
            pos = (pos[~placed] + 1) & mask

    def insert(self, a, b):
        """Allocate rows for distinct, absent keys, write the keys, index them; return the rows."""
        n = len(a)
        rows = self.store.alloc(n)
        if n == 0:
            return rows
        self.store[self.key_a][rows] = a
        self.store[self.key_b][rows] = b
        if self.count + n > self.size // 2 or self.used + n > self.size * 3 // 4:
            self._rebuild(self.count + n)
        self._place(rows, a, b)
        self.used += n
        self.count += n
        return rows

    def intern(self, a, b):
        """Rows of keys (a[i], b[i]), inserting the distinct ones that are absent."""
        rows, inverse = self.intern_distinct(a, b)
        return rows[inverse]

    def intern_distinct(self, a, b):
        """(rows of the distinct keys, inverse): key i's row is rows[inverse[i]]."""
        ua, ub, inverse = unique_pairs(a, b)
        rows = self.lookup(ua, ub)
        missing = rows < 0
        if missing.any():
            rows[missing] = self.insert(ua[missing], ub[missing])
        return rows, inverse

    def delete(self, rows):
        rows = np.asarray(rows, np.int64)
        if rows.size == 0:
            return
        _, where = self._find(self.store[self.key_a][rows], self.store[self.key_b][rows])
        where = where[where >= 0]
        self.slots[where] = _TOMB
        self.count -= where.size
        self.store.release(rows)

    def _rebuild(self, need):
        size = self.size
        while need > size // 2:
            size *= 2
        live = self.slots[self.slots >= 0].astype(np.int64)
        self.size = size
        self.slots = np.full(size, _EMPTY, np.int32)
        self._place(live, self.store[self.key_a][live], self.store[self.key_b][live])
        self.used = live.size


# Goroutine states kept between batches (see decoder.py for how events move between them).
FREE, RUNNABLE, RUNNING, SYSCALL, PARKED, READY, DEAD, UNKNOWN = range(8)

GOROUTINE_COLUMNS = {
    "pid": "<u4",
    "goid": "<u8",
    "trace": "<u4",          # TraceTable row of the goroutine's current trace
    "span_id": "<u8",        # span of the goroutine's current part
    "parent_span": "<u8",    # 0: root of its trace
    "parent_goid": "<u8",
    "born_ns": "<u8",        # creation (or first sight, with STARTED_BEFORE_ATTACH)
    "site": "<u4",           # SiteTable row: (start_pc, create_pc)
    "t_park": "<u8",         # last park
    "t_other": "<u8",        # last transition other than a park (became runnable, ran, ...)
    "n_parks": "<u4",        # parks in the current part
    "flags": "<u2",          # SpanFlag bits of the goroutine span
    "state": "u1",
    "wait_reason": "u1",
    "n_held": "u1",          # park events held for the goroutine span (park_mode "events")
}

TRACE_COLUMNS = {
    "hi": "<u8",
    "lo": "<u8",
    "start_ns": "<u8",
    "link_hi": "<u8",        # the trace this one continues (CONTINUED parts) or spilled from
    "link_lo": "<u8",
    "spill": "<u4",          # 1 + the trace new goroutines go to while this one is full (0: none)
    "n_emitted": "<u4",      # spans emitted into the trace so far
    "n_live": "<u4",         # goroutine parts still open in it
}


class GoroutineTable:
    """Live goroutines keyed by (pid, goid): columns ``GOROUTINE_COLUMNS`` plus a hash index."""

    def __init__(self, capacity=1024):
        self.rows = RowStore(GOROUTINE_COLUMNS, capacity)
        self.index = HashIndex(self.rows, "pid", "goid", slots=2 * capacity)

    def __getitem__(self, name):
        return self.rows[name]

    def __len__(self):
        return self.index.count

    def lookup(self, pid, goid):
        return self.index.lookup(pid, goid)

    def insert(self, pid, goid):
        return self.index.insert(pid, goid)

    def delete(self, rows):
        self.rows["state"][rows] = FREE
        self.index.delete(rows)

    def live_rows(self):
        return self.rows.live_rows()

    @property
    def nbytes(self):
        return self.rows.nbytes + self.index.nbytes


class SiteTable:
    """Interned (start_pc, create_pc) pairs: goroutines store a 4-byte site instead of 16 bytes.
    Sites are never removed; a program has a bounded number of ``go`` statements."""

    def __init__(self):
        self.rows = RowStore({"start_pc": "<u8", "create_pc": "<u8"}, 256)
        self.index = HashIndex(self.rows, "start_pc", "create_pc", slots=512)
        self.intern(np.zeros(1, _U64), np.zeros(1, _U64))   # site 0: unknown

    def intern(self, start_pc, create_pc):
        return self.index.intern(start_pc, create_pc)

    def __getitem__(self, name):
        return self.rows[name]


def _measure(n=1_000_000):
    table = GoroutineTable()
    goid = np.arange(1, n + 1, dtype=_U64)
    for chunk in range(0, n, 65536):
        g = goid[chunk : chunk + 65536]
        table.insert(np.full(g.size, 4242, np.uint32), g)
    return table


if __name__ == "__main__":
    import time

    t0 = time.perf_counter()
    t = _measure()
    dt = time.perf_counter() - t0
    print(f"{len(t)} live goroutines: {t.nbytes / 1e6:.1f} MB, {t.nbytes / len(t):.1f} bytes each "
          f"(row {t.rows.row_bytes} B, {t.index.size} slots); inserted in {dt:.2f} s")
