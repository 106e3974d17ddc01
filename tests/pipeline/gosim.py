"""Synthetic goroutine transition streams shaped like what the Go runtime's casgstatus produces.

Per goroutine: creation by its parent (_Gdead -> _Grunnable, with the parent's goid), first run
(_Grunnable -> _Grunning), then parks (_Grunning -> _Gwaiting, a wait reason), each followed by
ready (_Gwaiting -> _Grunnable) and run again, or, for some, a direct resume
(_Gwaiting -> _Grunning, as the GC's mark workers do: runtime work, not a park, so truth["parks"]
counts only the others), and finally exit (_Grunning -> _Gdead).
The events are delivered the way the reader of the per-CPU buffers does: in order per CPU, CPUs interleaved.
"""

import numpy as np

from receiver.events import EVENT_DTYPE, Kind

DEAD, RUNNABLE, RUNNING, SYSCALL, WAITING = 6, 1, 2, 3, 4
CHAN_RECEIVE, CHAN_SEND, SELECT, SLEEP = 14, 15, 9, 19
T0 = 1_700_000_000_000_000_000
_STATUS = {Kind.CREATE: (DEAD, RUNNABLE), Kind.RUN: (RUNNABLE, RUNNING),
           Kind.PARK: (RUNNING, WAITING), Kind.READY: (WAITING, RUNNABLE),
           Kind.EXIT: (RUNNING, DEAD), Kind.EXISTING: (0, RUNNING)}


def events(rows, pid=100):
    """An event array from (ts, goid, kind[, aux_goid[, wait_reason]]) tuples, in the given order.
    Creations get start_pc 0x1000 + parent, create_pc 0x2000 + parent."""
    out = np.zeros(len(rows), EVENT_DTYPE)
    for i, r in enumerate(rows):
        ts, goid, kind = r[:3]
        aux = r[3] if len(r) > 3 else 0
        out[i]["ts_ns"] = T0 + ts
        out[i]["goid"] = goid
        out[i]["kind"] = kind
        out[i]["aux_goid"] = aux
        out[i]["pid"] = pid
        if kind in (Kind.CREATE, Kind.EXISTING):
            out[i]["pc_start"] = 0x1000 + aux
            out[i]["pc_create"] = 0x2000 + aux
        if len(r) > 4:
            out[i]["wait_reason"] = r[4]
        old, new = _STATUS.get(Kind(kind), (0, 0))
        out[i]["old_status"], out[i]["new_status"] = old, new
    return out


def workload(n, parks=3, pid=100, seed=0, spread_ns=1_000_000_000, first_goid=10, parent=1,
             direct_resume=0.1, cpus=2, park_ns=(20_000, 2_000_000)):
    """n goroutines created by ``parent`` over ``spread_ns``, each parking ``parks`` times.

    Returns (events as the reader would deliver them, truth) where truth has per goroutine
    goid, created/exited times and each park's (start, ready, run, reason)."""
    rng = np.random.default_rng(seed)
    goid = np.arange(first_goid, first_goid + n, dtype=np.uint64)
    born = np.sort(rng.integers(0, spread_ns, n)).astype(np.int64)
    per = 3 + 3 * parks                    # create, run, (park, ready, run)*, exit
    ts = np.zeros((n, per), np.int64)
    kind = np.zeros((n, per), np.uint8)
    reason = np.zeros((n, per), np.uint8)
    t = born.copy()
    ts[:, 0], kind[:, 0] = t, Kind.CREATE
    t = t + rng.integers(2_000, 50_000, n)
    ts[:, 1], kind[:, 1] = t, Kind.RUN
    reasons = np.array([CHAN_RECEIVE, CHAN_SEND, SELECT, SLEEP], np.uint8)
    direct = rng.random((n, parks)) < direct_resume
    for p in range(parks):
        c = 2 + 3 * p
        t = t + rng.integers(2_000, 100_000, n)
        ts[:, c], kind[:, c] = t, Kind.PARK
        reason[:, c] = reasons[rng.integers(0, reasons.size, n)]
        t = t + rng.integers(*park_ns, n)
        ts[:, c + 1], kind[:, c + 1] = t, Kind.READY
        t = t + rng.integers(2_000, 30_000, n)
        ts[:, c + 2], kind[:, c + 2] = t, Kind.RUN
    t = t + rng.integers(2_000, 100_000, n)
    ts[:, per - 1], kind[:, per - 1] = t, Kind.EXIT
    keep = np.ones((n, per), bool)
    for p in range(parks):
        keep[:, 3 + 3 * p] = ~direct[:, p]   # direct resume: no READY
    ev = np.zeros((n, per), EVENT_DTYPE)
    ev["ts_ns"] = T0 + ts
    ev["goid"] = goid[:, None]
    ev["kind"] = kind
    ev["wait_reason"] = reason
    ev["pid"] = pid
    ev["aux_goid"][:, 0] = parent
    ev["pc_start"][:, 0] = 0x401000
    ev["pc_create"][:, 0] = 0x402000
    old = np.zeros(256, np.uint16)
    new = np.zeros(256, np.uint16)
    for k, (o, nw) in _STATUS.items():
        old[k], new[k] = o, nw
    ev["old_status"] = old[kind]
    ev["new_status"] = new[kind]
    ev["old_status"][:, 4::3][~keep[:, 3::3]] = WAITING     # resumed straight from waiting
    ev["cpu"] = rng.integers(0, cpus, (n, per))
    flat = ev[keep]
    # The ring buffer: each CPU's records in time order, CPUs interleaved in chunks.
    flat = _interleave(flat)
    truth = {"goid": goid, "born": T0 + born, "exit": T0 + ts[:, per - 1],
             "parks": n * parks - int(direct.sum()), "direct": int(direct.sum()), "n": n}
    return flat, truth


def _interleave(flat):
    """Merge per-CPU time-ordered runs the way the reader of the per-CPU buffers does: in time order per CPU,
    with CPUs interleaved in runs (odd CPUs lag 300 ns), so the batch is not globally sorted. A
    goroutine's own transitions stay in order (the reader keeps causal order too)."""
    lag = (flat["cpu"].astype(np.int64) % 2) * 300
    window = (flat["ts_ns"].astype(np.int64) - T0 + lag) // 1_000
    return flat[np.lexsort((flat["ts_ns"], flat["cpu"], window))]


def batches(ev, size):
    return [ev[i:i + size] for i in range(0, ev.size, size)]
