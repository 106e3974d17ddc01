"""Probes: the (old, new) -> kind table, layout slots, where the uprobe attaches, and what a real
probe on real Go processes delivers: every creation with the right goid and parent, parks with
their wait reasons, only the kinds asked for, several Go versions at once, PIE included."""

import collections
import time

import numpy as np
import pytest

import oracle
from collect import start_held, untraced
from receiver import probes
from receiver.events import Kind

GO125 = {"_Gidle": 0, "_Grunnable": 1, "_Grunning": 2, "_Gsyscall": 3, "_Gwaiting": 4,
         "_Gdead": 6, "_Gcopystack": 8, "_Gpreempted": 9, "_Gscan": 0x1000}
SPAWNED = 500


def kind_of(table, old, new):
    return table[(old & 0xF) << 4 | (new & 0xF)]


def test_transition_table_default_kinds():
    t = probes.transition_table(GO125)
    assert kind_of(t, 6, 1) == Kind.CREATE
    assert kind_of(t, 1, 2) == Kind.RUN
    assert kind_of(t, 4, 2) == Kind.RUN          # end of an internal (GC) wait
    assert kind_of(t, 2, 4) == Kind.PARK
    assert kind_of(t, 4, 1) == Kind.READY
    assert kind_of(t, 2, 6) == Kind.EXIT
    assert kind_of(t, 0, 6) == Kind.DROP         # a fresh g allocated, not a goroutine yet
    assert kind_of(t, 2, 3) == Kind.DROP         # syscalls are off by default
    assert kind_of(t, 0x1000 | 2, 4) == Kind.PARK  # the _Gscan bit is ignored
    assert kind_of(t, 2, 1) == Kind.PREEMPT      # Gosched, preemption: for go.schedule.duration
    assert kind_of(t, 3, 1) == Kind.PREEMPT      # a syscall that lost its P
    assert sum(k != Kind.DROP for k in t) == 12


def test_transition_table_optional_kinds_and_filter():
    every = frozenset(k for k in Kind if k not in (Kind.DROP, Kind.EXISTING))
    t = probes.transition_table(GO125, every)
    assert kind_of(t, 2, 3) == Kind.SYSCALL_ENTER
    assert kind_of(t, 3, 2) == Kind.SYSCALL_EXIT
    assert kind_of(t, 2, 1) == Kind.PREEMPT
    assert kind_of(t, 2, 8) == Kind.STACK_COPY
    only = probes.transition_table(GO125, {Kind.CREATE})
    assert {k for k in only if k != Kind.DROP} == {Kind.CREATE}


def test_transition_table_follows_the_status_numbering_given():
    shifted = {name: (n + 1 if name != "_Gscan" else n) for name, n in GO125.items()}
    t = probes.transition_table(shifted)
    assert kind_of(t, 7, 2) == Kind.CREATE and kind_of(t, 6, 1) == Kind.DROP


def test_thread_table_says_what_each_transition_does_to_the_threads_goroutine():
    t = probes.thread_table(GO125)
    assert kind_of(t, 1, 2) == probes.CURG_RUNS           # execute
    assert kind_of(t, 3, 2) == probes.CURG_KEEP           # exitsyscall: the same goroutine
    assert kind_of(t, 8, 2) == probes.CURG_KEEP           # the end of its stack copy
    assert kind_of(t, 6, 3) == probes.CURG_UNKNOWN        # needm: a cgo callback's goroutine
    assert kind_of(t, 4, 2) == probes.CURG_RUNS           # the end of a GC wait on itself
    assert kind_of(t, 2, 6) == probes.CURG_NONE           # goexit0, then dropg
    assert kind_of(t, 2, 1) == probes.CURG_NONE           # Gosched, preemption
    assert kind_of(t, 3, 1) == probes.CURG_NONE           # exitsyscall0: no P
    assert kind_of(t, 2, 4) == probes.CURG_UNKNOWN        # park_m drops it, the GC's waits keep it
    assert kind_of(t, 4, 1) == probes.CURG_KEEP           # a ready: another goroutine's
    assert kind_of(t, 6, 1) == probes.CURG_KEEP           # a creation
    assert kind_of(t, 2, 3) == probes.CURG_KEEP           # a syscall keeps m.curg
    assert kind_of(t, 0x1000 | 2, 4) == probes.CURG_UNKNOWN   # the scan bit is ignored


def test_config_validation_names_every_problem():
    problems = probes.Config(ring_bytes=5000, kinds={Kind.EXISTING}).validate()
    assert problems == ["ring_bytes must be a power of two >= 4096, got 5000",
                        "kinds: not emitted by the kernel: [<Kind.EXISTING: 10>]"]
    assert probes.Config().validate() == []


def test_dump_bpf_shows_the_tunables():
    text = probes.dump_bpf(probes.Config(ring_bytes=1 << 26, cpus=4))
    assert "#define GOTEL_CPUS 4" in text
    assert "#define GOTEL_SLOTS_BITS 18" in text        # 64 MiB / 64-byte events / 4 CPUs
    assert probes.Config(ring_bytes=4096, cpus=64).buffers == (64, probes.MIN_SLOTS)
    assert "GOTEL_PROBE(7)" in text


@pytest.fixture(scope="module")
def loaded(require_bpf):
    p = probes.Probes()
    yield p
    p.close()


@pytest.mark.bpf
@pytest.mark.parametrize("flags", [(), ("-buildmode=pie",)], ids=["exec", "pie"])
def test_file_offset_agrees_with_bcc_symbol_resolution(require_bpf, go_build, flags):
    """gotel attaches at GoBinary.file_offset(probe_address); bcc's own resolver of the symbol
    must land on the same file offset, for a plain executable and for a PIE."""
    from bcc import BPF

    from receiver.binary import GoBinary

    binary = GoBinary.open(go_build("spawner", "1.25", flags))
    fn = binary.functions["runtime.casgstatus"]
    assert fn.probe_address == fn.address          # nosplit: probed at its first instruction
    _, bcc_offset = BPF._check_path_symbol(binary.path.encode(), b"runtime.casgstatus", None, -1)
    assert binary.file_offset(fn.probe_address) == bcc_offset
    assert binary.pie == bool(flags)
    # bcc 0.26's attach_uprobe(addr=...) takes the ELF virtual address and converts it through
    # the program headers, for PIE too (its docstring says "offset" for PIE; Go's PIEs are linked
    # at 0x400000, so the two differ): gotel passes the file offset to libbcc itself instead.
    _, via_addr = BPF._check_path_symbol(binary.path.encode(), b"", fn.probe_address, -1)
    assert via_addr == bcc_offset != fn.probe_address


def traced_run(loaded, binaries, args=(SPAWNED,)):
    """Run each binary (spawner SPAWNED, or args) with the probe attached to its PID; return
    per-process (binary, proc, output, events)."""
    from receiver.binary import GoBinary

    reader = loaded.reader()
    runs = []
    try:
        for path in binaries:
            proc = start_held(path, *args)
            binary = GoBinary.open(proc.pid)
            att = loaded.attach(binary, proc.pid)
            runs.append((binary, proc, att))
        outputs = [p.communicate("go\n", timeout=60) + (p.returncode,) for _, p, _ in runs]
        time.sleep(0.05)
        events = reader.read()
    finally:
        for _, p, att in runs:
            p.kill()
            loaded.detach(att)
        reader.close()
    return [(b, p, out, events[events["pid"] == p.pid]) for (b, p, _), out in zip(runs, outputs)]


@pytest.mark.bpf
def test_two_go_versions_and_a_pie_at_once(loaded, go_build):
    paths = [go_build("spawner", "1.21"), go_build("spawner", "1.25", ("-buildmode=pie",)),
             go_build("spawner", "1.23")]
    lost_before = loaded.counters()["lost"]
    runs = traced_run(loaded, paths)
    assert loaded.counters()["lost"] == lost_before
    slots = {probes.layout_key(b) for b, *_ in runs}
    assert len(slots) == 3                            # three layouts, three slots
    for (binary, proc, (out, err, code), ev), path in zip(runs, paths):
        assert (code, out, err) == untraced(path, SPAWNED), binary.go_version
        kinds = collections.Counter(ev["kind"].tolist())
        created = ev[ev["kind"] == Kind.CREATE]
        # Workers, plus the few goroutines the runtime starts itself.
        assert SPAWNED <= len(created) <= SPAWNED + 50, (binary.go_version, kinds)
        assert len(np.unique(created["goid"])) == len(created) and created["goid"].min() >= 1
        workers = created[created["aux_goid"] == 1]   # `go worker(...)` in main
        assert len(workers) == SPAWNED, binary.go_version
        assert kinds[Kind.EXIT] >= SPAWNED and kinds[Kind.RUN] >= SPAWNED
        # A worker can only block on `<-start` (the scheduler decides whether it does), or be
        # marked waiting by the runtime while it helps the GC (an internal wait).
        parks = ev[(ev["kind"] == Kind.PARK) & np.isin(ev["goid"], workers["goid"])]
        reasons = {binary.layout.wait_reasons[r] for r in parks["wait_reason"]}
        assert reasons <= {"chan receive"} | oracle.INTERNAL_WAITS, (binary.go_version, reasons)
        # Any other goid belongs to a goroutine that existed before the probe (main, runtime's own).
        others = set(ev["goid"].tolist()) - set(created["goid"].tolist())
        assert max(others, default=0) < created["goid"].min(), binary.go_version


@pytest.mark.bpf
def test_only_the_kinds_asked_for_reach_the_ring(require_bpf, go_build):
    p = probes.Probes(probes.Config(kinds=frozenset({Kind.CREATE, Kind.EXIT})))
    try:
        path = go_build("spawner", "1.25")
        [(binary, proc, (out, err, code), ev)] = traced_run(p, [path])
        assert (code, out, err) == untraced(path, SPAWNED)
        assert set(ev["kind"].tolist()) == {Kind.CREATE, Kind.EXIT}
        assert p.counters()["hits"] == len(ev)
    finally:
        p.close()


@pytest.mark.bpf
@pytest.mark.parametrize("links", [True, False], ids=["bpf-links", "perf-events"])
def test_uprobes_work_as_links_and_as_perf_events(require_bpf, go_build, monkeypatch, links):
    """Links where the kernel has them (this one does); perf events otherwise, which the test gets
    by having the kernel check answer as a kernel before 6.6 would."""
    from receiver import uprobe

    if not links:
        monkeypatch.setattr(uprobe, "links_available", lambda release=None: False)
    p = probes.Probes()
    try:
        assert p.links is links
        path = go_build("spawner", "1.25")
        [(binary, proc, (out, err, code), ev)] = traced_run(p, [path])
        assert (code, out, err) == untraced(path, SPAWNED)
        created = ev[ev["kind"] == Kind.CREATE]
        assert (created["aux_goid"] == 1).sum() == SPAWNED
        assert p.counters()["lost"] == 0 and not p.attachments
    finally:
        p.close()


@pytest.mark.bpf
def test_detached_probe_sees_nothing(loaded, go_build):
    from receiver.binary import GoBinary

    path = go_build("spawner", "1.25")
    proc = start_held(path, SPAWNED)
    reader = loaded.reader()
    try:
        att = loaded.attach(GoBinary.open(proc.pid), proc.pid)
        loaded.detach(att)
        out, err = proc.communicate("go\n", timeout=60)
        assert (proc.returncode, out, err) == untraced(path, SPAWNED)
        assert len(reader.read()) == 0
    finally:
        proc.kill()
        reader.close()


def test_one_read_covers_the_g_fields_each_kind_needs():
    class Layout:
        g = {"goid": 152, "parentGoid": 272, "gopc": 280, "startpc": 296, "waitreason": 176,
             "atomicstatus": 144, "m": 48}

    start, lengths = probes.read_window(Layout)
    assert start == 152
    # A run reads the wait reason too (set only after the status change in Go 1.19: runtime work).
    assert lengths[Kind.RUN] == 25 and lengths[Kind.PARK] == 25 and lengths[Kind.CREATE] == 152
    assert lengths[Kind.READY] == 8
    Layout.g = dict(Layout.g, startpc=152 + 400)
    with pytest.raises(probes.ProbeError, match="GOTEL_G_WINDOW"):
        probes.read_window(Layout)


ROUND_TRIPS = 5000


@pytest.mark.bpf
@pytest.mark.parametrize("version", ["1.19", "1.25"])
def test_a_wakeup_names_the_goroutine_that_made_it(loaded, go_build, version):
    """tests/go/churn pingpong: a pair's two goroutines are only ever readied by each other (the
    channel send each one waits for), so every READY of one names the other as its waker (m.curg
    of the thread that ran the wakeup). On Go 1.19 (no g.parentGoid) a creation's parent comes
    the same way."""
    path = go_build("churn", version)
    [(binary, proc, (out, err, code), ev)] = traced_run(loaded, [path], ("pingpong", ROUND_TRIPS))
    assert code == 0 and out.startswith(f"ops {ROUND_TRIPS} "), err
    created = ev[ev["kind"] == Kind.CREATE]
    parents = dict(zip(created["goid"].tolist(), created["aux_goid"].tolist()))
    [(inner, outer)] = [(g, p) for g, p in parents.items() if parents.get(p) == 1]
    readies = ev[ev["kind"] == Kind.READY]
    by_outer = readies[readies["goid"] == inner]["aux_goid"]
    by_inner = readies[readies["goid"] == outer]["aux_goid"]
    # Nearly one wakeup each way per round trip: when a send finds its receiver not yet parked,
    # the sender parks instead, and the wakeup goes the other way.
    assert len(by_outer) >= 0.9 * ROUND_TRIPS and set(by_outer.tolist()) == {outer}
    assert len(by_inner) >= 0.9 * ROUND_TRIPS and set(by_inner.tolist()) == {inner}


FILLS = 3 * probes.MIN_SLOTS     # goroutines: 3 events each, more than any one CPU's buffer holds


@pytest.mark.bpf
def test_a_full_event_buffer_counts_every_event_it_drops(require_bpf, go_build):
    """Nobody reads the smallest buffers (MIN_SLOTS events a CPU): what does not fit is counted as
    lost, nothing vanishes, and the traced program runs as it does untraced."""
    p = probes.Probes(probes.Config(ring_bytes=4096))
    try:
        path = go_build("spawner", "1.25")
        [(binary, proc, (out, err, code), ev)] = traced_run(p, [path], (FILLS,))
        assert (code, out, err) == untraced(path, FILLS)
        c = p.counters()
        cpus, slots = p.config.buffers
        assert c["lost"] > 0 and slots <= len(ev) <= cpus * slots
        assert c["hits"] == len(ev) + c["lost"]
    finally:
        p.close()


@pytest.mark.bpf
def test_every_event_of_every_cpu_comes_out_once_in_its_goroutines_order(require_bpf, go_build):
    """tests/go/churn spawn on every CPU, its goroutines moving between them, read every 10 ms
    while it runs: each event the kernel counted comes out once (no CPU's buffer skipped, no slot
    read twice), and each goroutine's events come out in time order across reads, which the reader
    keeps by holding back what is dated after a read began (receiver/eventbuf.py)."""
    import threading

    from receiver.binary import GoBinary

    p = probes.Probes(probes.Config(kinds=frozenset({Kind.CREATE, Kind.RUN, Kind.PARK,
                                                     Kind.READY, Kind.EXIT})))
    reader = p.reader()
    proc = start_held(go_build("churn", "1.25"), "spawn", 200_000)
    batches, stop = [], threading.Event()
    poller = threading.Thread(target=lambda: [batches.append(reader.poll(0.05))
                                              for _ in iter(stop.is_set, True)])
    try:
        att = p.attach(GoBinary.open(proc.pid), proc.pid)
        poller.start()
        out, err = proc.communicate("go\n", timeout=120)
        assert proc.returncode == 0, err
        p.detach(att)
        stop.set()
        poller.join()
        batches.append(reader.read(everything=True))
    finally:
        stop.set()
        proc.kill()
        reader.close()
    c = p.counters()
    p.close()
    ev = np.concatenate(batches)
    assert c["lost"] == 0 and len(ev) == c["hits"] > 200_000
    assert sum(len(b) > 0 for b in batches) > 10        # read while it ran, not all at the end
    assert set(ev["cpu"].tolist()) <= set(range(p.config.buffers[0]))
    creations = ev[ev["kind"] == Kind.CREATE]["goid"]
    assert len(np.unique(creations)) == len(creations)
    # Each batch sorted by time, as the decoder does; then per goroutine, time never goes back.
    ordered = np.concatenate([b[np.argsort(b["ts_ns"], kind="stable")] for b in batches])
    by_goroutine = np.lexsort((np.arange(len(ordered)), ordered["goid"]))
    goid, ts = ordered["goid"][by_goroutine], ordered["ts_ns"][by_goroutine].astype(np.int64)
    same = goid[1:] == goid[:-1]
    assert not np.any(np.diff(ts)[same] < 0)


NO_CREATE = probes.DEFAULT_KINDS - {Kind.CREATE}


@pytest.fixture(scope="module")
def loaded_without_creations(require_bpf):
    p = probes.Probes(probes.Config(kinds=NO_CREATE))
    yield p
    p.close()


@pytest.mark.bpf
@pytest.mark.parametrize("version,creations", [("1.19", True), ("1.21", True), ("1.25", True),
                                               ("1.21", False), ("1.25", False)])
def test_goids_stay_right_while_g_structs_are_reused_across_attachments(
        request, go_build, version, creations):
    """The kernel side remembers each g's goid (bpf/gotel.c's goid cache) instead of reading it at
    every event. tests/go/churn spawn starts 64 goroutines at a time, so every g struct is reborn
    thousands of times, here while the probe goes on and off 20 times (reborn unseen in between).
    A goid the cache kept too long would belong to a goroutine already gone: it would exit twice,
    or show an event after its exit or before its creation; a waker's goid would name a goroutine
    that had exited before it woke anyone. Without creations recorded, the kernel side must still
    forget a g's goid when it is reborn."""
    from receiver.binary import GoBinary

    loaded = request.getfixturevalue("loaded" if creations else "loaded_without_creations")

    path = go_build("churn", version)
    proc = start_held(path, "spawn", 10**12)      # stopped when the probe is done
    binary = GoBinary.open(proc.pid)
    reader = loaded.reader()
    chunks = []

    cycles = 0
    try:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        while cycles < 20 and proc.poll() is None:
            att = loaded.attach(binary, proc.pid)
            time.sleep(0.02)
            chunks.append(reader.read())
            loaded.detach(att)
            cycles += 1
            time.sleep(0.02)
        chunks.append(reader.read())
        assert proc.poll() is None, proc.communicate()
    finally:
        proc.kill()
        reader.close()
    ev = np.concatenate(chunks)
    ev = ev[ev["pid"] == proc.pid]
    ev = ev[np.argsort(ev["ts_ns"], kind="stable")]
    assert len(ev) > 10_000 and (ev["goid"] > 0).all()
    kinds, goids, ts = ev["kind"], ev["goid"], ev["ts_ns"]
    created, exited = ev[kinds == Kind.CREATE], ev[kinds == Kind.EXIT]
    assert len(np.unique(created["goid"])) == len(created) > (1000 if creations else -1)
    assert len(np.unique(exited["goid"])) == len(exited) > 1000
    born = dict(zip(created["goid"].tolist(), created["ts_ns"].tolist()))
    gone = dict(zip(exited["goid"].tolist(), exited["ts_ns"].tolist()))
    first = {g: t for g, t in zip(goids[::-1].tolist(), ts[::-1].tolist())}
    last = dict(zip(goids.tolist(), ts.tolist()))
    assert all(first[g] >= t for g, t in born.items()), version
    assert all(last[g] <= t for g, t in gone.items()), version
    # One g struct per goroutine.
    pairs = np.unique(np.stack([goids, ev["g"]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1], version
    # main waits for each batch of 64: the child that readies it is alive then.
    readies = ev[(kinds == Kind.READY) & (goids == 1)]
    wakers = readies["aux_goid"]
    assert len(readies) >= 100 and (wakers > 1).all(), version
    assert all(gone.get(w, t) >= t and born.get(w, 0) <= t
               for w, t in zip(wakers.tolist(), readies["ts_ns"].tolist())), version
