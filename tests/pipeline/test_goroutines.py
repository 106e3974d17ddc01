"""The compact live-goroutine table, its hash index, and the ID generator."""

import numpy as np
from hypothesis import given, settings, strategies as st

from pipeline import goroutines as gt
from pipeline.goroutines import GoroutineTable, SiteTable, bump, unique_pairs
from pipeline.ids import IdGenerator, MASK56, mix64, predecessor, randomness, successor, unmix64


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["insert", "delete", "lookup"]),
                          st.lists(st.tuples(st.integers(1, 4), st.integers(0, 300)), max_size=60)),
                max_size=25))
def test_table_agrees_with_a_dict(ops):
    table = GoroutineTable(capacity=4)
    model = {}
    for op, keys in ops:
        keys = list(dict.fromkeys(keys))
        pid = np.array([k[0] for k in keys], np.uint32)
        goid = np.array([k[1] for k in keys], np.uint64)
        if op == "insert":
            fresh = [i for i, k in enumerate(keys) if k not in model]
            rows = table.insert(pid[fresh], goid[fresh])
            for i, r in zip(fresh, rows):
                model[keys[i]] = int(r)
        elif op == "delete":
            gone = [i for i, k in enumerate(keys) if k in model]
            table.delete(np.array([model.pop(keys[i]) for i in gone], np.int64))
        rows = table.lookup(pid, goid)
        assert rows.tolist() == [model.get(k, -1) for k in keys]
        assert len(table) == len(model)
        assert len(set(model.values())) == len(model)
    for (p, g), r in model.items():
        assert table["pid"][r] == p and table["goid"][r] == g


def test_churn_keeps_lookups_right_and_memory_bounded():
    table = GoroutineTable(capacity=16)
    rng = np.random.default_rng(1)
    live = np.zeros(0, np.uint64)
    next_goid = 1
    for _ in range(200):
        new = np.arange(next_goid, next_goid + 500, dtype=np.uint64)
        next_goid += 500
        table.insert(np.full(new.size, 7, np.uint32), new)
        live = np.concatenate([live, new])
        dead = rng.choice(live.size, size=480, replace=False)
        rows = table.lookup(np.full(dead.size, 7, np.uint32), live[dead])
        assert (rows >= 0).all()
        table.delete(rows)
        live = np.delete(live, dead)
    assert len(table) == live.size
    rows = table.lookup(np.full(live.size, 7, np.uint32), live)
    assert (table["goid"][rows] == live).all()
    gone = table.lookup(np.full(5, 7, np.uint32), np.arange(next_goid, next_goid + 5, dtype=np.uint64))
    assert (gone == -1).all()
    assert table.index.size <= 4 * 16384   # tombstones were cleared, not accumulated


def test_million_goroutines_fit(capsys):
    table = gt._measure(1_000_000)
    per = table.nbytes / len(table)
    with capsys.disabled():
        print(f"\ngoroutine table: {len(table)} live, {table.nbytes / 1e6:.1f} MB, {per:.1f} bytes each")
    assert len(table) == 1_000_000
    assert table.nbytes <= 100e6 and per <= 100
    probe = np.array([1, 500_000, 1_000_000, 1_000_001], np.uint64)
    rows = table.lookup(np.full(4, 4242, np.uint32), probe)
    assert (rows[:3] >= 0).all() and rows[3] == -1


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)), max_size=40),
       st.booleans())
def test_unique_pairs(pairs, small):
    if small:
        pairs = [(a % 5, b % 7) for a, b in pairs]
    a = np.array([p[0] for p in pairs], np.uint64)
    b = np.array([p[1] for p in pairs], np.uint64)
    ua, ub, inverse = unique_pairs(a, b)
    assert sorted(zip(ua.tolist(), ub.tolist())) == sorted(set(pairs))
    assert [(int(ua[i]), int(ub[i])) for i in inverse] == pairs


def test_bump_counts_repeats():
    col = np.zeros(5, np.uint32)
    bump(col, np.array([1, 1, 3]))
    bump(col, np.array([1]), -1)
    assert col.tolist() == [0, 1, 0, 1, 0]


def test_sites_are_interned():
    sites = SiteTable()
    a = sites.intern(np.array([5, 6, 5], np.uint64), np.array([9, 9, 9], np.uint64))
    b = sites.intern(np.array([6, 0], np.uint64), np.array([9, 0], np.uint64))
    assert a[0] == a[2] != a[1] and b[0] == a[1] and b[1] == 0
    assert sites["start_pc"][a].tolist() == [5, 6, 5]


def test_ids_are_non_zero_unique_and_chainable():
    gen = IdGenerator(seed=1)
    spans = np.concatenate([gen.span_ids(n) for n in (1, 1000, 50_000)])
    assert (spans != 0).all() and np.unique(spans).size == spans.size
    hi, lo = gen.trace_ids(50_000)
    assert (lo != 0).all() and np.unique(lo).size == lo.size
    assert (predecessor(successor(spans)) == spans).all()
    assert (successor(spans) != 0).all()
    x = np.random.default_rng(0).integers(0, 2**64, 1000, dtype=np.uint64, endpoint=False)
    assert (unmix64(mix64(x)) == x).all() and mix64(np.zeros(1, np.uint64))[0] == 0
    # The 56 bits OTEP 235 samples on are uniform: each eighth of the range holds ~1/8.
    r = randomness(lo) / float(MASK56 + 1)
    assert np.allclose(np.histogram(r, bins=8, range=(0, 1))[0] / lo.size, 1 / 8, atol=0.01)


def test_the_counter_value_that_maps_to_zero_is_skipped():
    gen = IdGenerator(seed=2)
    gen._span_next = gen._span_key - 2      # the next span IDs pass the zero point
    ids = gen.span_ids(5)
    assert (ids != 0).all() and np.unique(ids).size == 5
    assert (gen.span_ids(3) != 0).all()
