"""Probes: gotel's BPF program (bpf/gotel.c) compiled with bcc, its per-layout slots, its uprobes.

Two uprobes per traced binary (and per PID, or for every process running the binary): on
``runtime.casgstatus`` at ``GoBinary.functions["runtime.casgstatus"].probe_address``, and on
``runtime.preemptPark`` (GC stack-scan stops, which bypass casgstatus; hit once per stop, see
benchmarks/preempt_park_cost.py). The program
knows no Go version: each distinct Go layout gets a slot of the ``layouts`` map holding its g/m
offsets and a 16x16 table (old status, new status) -> kind, built here from the binary's own status
constants; kinds that are not wanted are written as DROP, so they never reach the event buffers.
Slot N is served by the program ``probe_casgstatus_N``, so binaries of different Go versions are
traced at once.

Attaching takes a file offset, computed here from the binary's program headers
(``GoBinary.file_offset``): bcc's ``attach_uprobe(addr=...)`` expects a virtual address and converts
it itself, which differs between bcc versions; the kernel's uprobe interface takes the offset in the
file, PIE or not. Each uprobe is a BPF link where the kernel has them, else a perf event
(receiver/uprobe.py says why and what each costs).

Cost: every status change of a traced process pays the uprobe trap, wanted or filtered out
(syscall enter/exit included), and a kept event adds building and submitting its record; the
figures, beside the kernel's uprobe floor measured in the same run, are rows 1 and 6 of
benchmarks/RESULTS.md (``make bench``). Not thread-safe: attach, detach and counters are called from the
receiver's control path only.
"""

import dataclasses
import logging
import os
import threading

from receiver.errors import ProbeError
from receiver import uprobe
from receiver.events import BPF_DIR, EVENT_DTYPE, Kind, check_statuses

log = logging.getLogger("gotel.probes")
SOURCE = BPF_DIR / "gotel.c"
MAX_LAYOUTS = 8
COUNTERS = ("lost", "hits", "held_full")
# Events per CPU buffer at least (1 MiB): a CPU running a goroutine-heavy program alone fills 16 Ki
# slots in ~12 ms here, and the poller, sharing the GIL with the pipeline, was seen 60 ms late.
MIN_SLOTS = 16384
# Probe points of the hit counter (GOTEL_POINT_* of bpf/gotel.c) and the programs behind them.
POINTS = ("casgstatus", "create", "exit", "preemptpark")
HIT_PIDS = 1024          # GOTEL_HIT_PIDS
NUM_POINTS = 4           # GOTEL_NUM_POINTS
LIFECYCLE_PROGRAMS = ("probe_create_ax", "probe_create_bx", "probe_exit")
# PREEMPT (running -> runnable: Gosched, preemption) is on by default: without it a goroutine's
# runnable time after a yield is unknown, and go.schedule.duration would miss those waits. The trap
# is paid for it anyway; recording it costs the ring write.
DEFAULT_KINDS = frozenset({Kind.CREATE, Kind.RUN, Kind.PARK, Kind.READY, Kind.EXIT, Kind.PREEMPT})
PROBED_FUNCTION = "runtime.casgstatus"
# GC stack-scan stops (casGToPreemptScan) change the status without casgstatus: this function is
# where they happen; its probe reports them as parks with reason "preempted" (bpf/gotel.c).
PREEMPT_FUNCTION = "runtime.preemptPark"


def ring_problems(ring_bytes, wakeup_bytes=0):
    """What is wrong with a size of kernel buffers and a ring's wakeup threshold (a list of
    messages); the function probes' ring and the event buffers share the size rule."""
    problems = []
    if ring_bytes < 4096 or ring_bytes & (ring_bytes - 1):
        problems.append(f"ring_bytes must be a power of two >= 4096, got {ring_bytes}")
    if not 0 <= wakeup_bytes < ring_bytes:
        problems.append(f"wakeup_bytes must be in [0, ring_bytes), got {wakeup_bytes}")
    return problems


@dataclasses.dataclass(frozen=True)
class Config:
    """Tunables of the kernel side, passed to the C as -D flags."""

    ring_bytes: int = 16 << 20        # the event buffers of all CPUs together (power of two)
    kinds: frozenset = DEFAULT_KINDS  # Kind values that reach the event buffers
    cpus: int = 0                     # event buffers (possible CPUs); 0: this machine's

    def validate(self):
        problems = ring_problems(self.ring_bytes)
        unknown = set(self.kinds) - {k for k in Kind if k not in (Kind.DROP, Kind.EXISTING)}
        if unknown:
            problems.append(f"kinds: not emitted by the kernel: {sorted(unknown)}")
        return problems

    @property
    def buffers(self):
        """(cpus, slots per CPU): ring_bytes split among the possible CPUs, at least MIN_SLOTS
        events each (a power of two)."""
        cpus = self.cpus or possible_cpus()
        per_cpu = self.ring_bytes // EVENT_DTYPE.itemsize // cpus
        return cpus, max(MIN_SLOTS, 1 << max(0, per_cpu.bit_length() - 1))

    def cflags(self):
        cpus, slots = self.buffers
        return [f"-I{BPF_DIR}", f"-DGOTEL_CPUS={cpus}",
                f"-DGOTEL_SLOTS_BITS={slots.bit_length() - 1}"]


def possible_cpus():
    """The number of CPU ids the kernel may use (bpf_get_smp_processor_id is below it)."""
    with open("/sys/devices/system/cpu/possible") as f:
        return max(int(part.split("-")[-1]) for part in f.read().strip().split(",")) + 1


def _status_sets(statuses):
    """n(*names): the set of those statuses' low four bits (what the tables index by; _Gscan and
    the statuses a version lacks left out)."""
    s = {name: num & 0xF for name, num in statuses.items() if name.startswith("_G") and name != "_Gscan"}
    return lambda *names: {s[x] for x in names if x in s}


def transition_table(statuses, kinds=DEFAULT_KINDS):
    """The 256-entry (old & 0xf) << 4 | (new & 0xf) -> Kind table for one Go version's statuses.

    statuses maps the runtime's constant names (``_Grunnable`` ...) to numbers; a status a version
    lacks is simply absent. Kinds not in ``kinds`` become DROP.
    """
    n = _status_sets(statuses)
    dead, running = n("_Gdead", "_Gdeadextra"), n("_Grunning")
    runnable, waiting, syscall = n("_Grunnable"), n("_Gwaiting"), n("_Gsyscall")
    preempted, copystack = n("_Gpreempted"), n("_Gcopystack")
    rules = [
        # newproc1 (runnable, or waiting for goroutines born parked), cgo callbacks (syscall).
        (dead, runnable | waiting | syscall, Kind.CREATE),
        # execute(); also the end of the runtime's internal waits (stop-the-world, GC scans), which
        # go _Gwaiting -> _Grunning without ever being made runnable.
        (runnable | waiting, running, Kind.RUN),
        (running, waiting, Kind.PARK),
        (waiting, runnable, Kind.READY),
        (running | syscall, dead, Kind.EXIT),
        (running, syscall, Kind.SYSCALL_ENTER),
        (syscall, running | runnable, Kind.SYSCALL_EXIT),
        (running, runnable | preempted, Kind.PREEMPT),
        # A syscall that lost its P (sysmon retook it) ends runnable, waiting for one: with the
        # syscall kinds off, that is reported as a preemption, so go.schedule.duration sees the
        # wait that follows.
        (syscall, runnable, Kind.PREEMPT),
        (copystack, running | waiting | runnable, Kind.STACK_COPY),
        (running | waiting | runnable, copystack, Kind.STACK_COPY),
    ]
    table = [Kind.DROP] * 256
    for olds, news, kind in rules:
        if kind not in kinds:
            continue
        for old in olds:
            for new in news:
                if table[old << 4 | new] == Kind.DROP:
                    table[old << 4 | new] = kind
    return table


# GOTEL_CURG_* of bpf/gotel.c: what a transition tells of the goroutine its thread runs.
CURG_KEEP, CURG_RUNS, CURG_NONE, CURG_UNKNOWN = range(4)


def thread_table(statuses):
    """The 256-entry (old & 0xf) << 4 | (new & 0xf) -> CURG_* table for one Go version's statuses
    (bpf/gotel.c's ``threads``). A goroutine made running by execute or at the end of the GC's waits on a
    running goroutine becomes the thread's m.curg; one that exits, yields, is preempted or leaves a
    syscall without its P is dropped from the thread right after (dropg); a park may keep it (the
    GC's waits) or drop it (park_m), and a cgo callback's goroutine (needm: out of a dead status
    into a syscall) is not known yet, so the kernel reads m.curg then. A syscall and a stack copy,
    begun and ended on the thread by its own goroutine, leave it as it was, as do a ready and a
    creation: the syscalls, which are not recorded by default, cost no write."""
    n = _status_sets(statuses)
    running, waiting, syscall = n("_Grunning"), n("_Gwaiting"), n("_Gsyscall")
    stopped = n("_Grunnable", "_Gdead", "_Gdeadextra", "_Gpreempted")
    table = [CURG_KEEP] * 256
    for old in n("_Grunnable") | waiting:
        for new in running:
            table[old << 4 | new] = CURG_RUNS
    for old in running | syscall:
        for new in stopped:
            table[old << 4 | new] = CURG_NONE
    for old, new in [(o, w) for o in running for w in waiting] + [
            (d, s) for d in n("_Gdead", "_Gdeadextra") for s in syscall]:
        table[old << 4 | new] = CURG_UNKNOWN
    return table


G_WINDOW = 256   # GOTEL_G_WINDOW of bpf/gotel.c


def read_window(layout):
    """(offset of the first g field read, {kind: bytes to read}) for one layout: every kind reads
    goid; a park adds waitreason (1 byte); a creation adds parentGoid, gopc and startpc."""
    g = layout.g
    needs = {kind: [("goid", 8)] for kind in Kind}
    needs[Kind.PARK].append(("waitreason", 1))
    needs[Kind.RUN].append(("waitreason", 1))
    needs[Kind.CREATE] += [(f, 8) for f in ("parentGoid", "gopc", "startpc") if f in g]
    start = min(g[f] for fields in needs.values() for f, _ in fields)
    lengths = {kind: max(g[f] + size for f, size in fields) - start for kind, fields in needs.items()}
    if max(lengths.values()) > G_WINDOW:
        raise ProbeError(f"runtime.g fields span {max(lengths.values())} bytes, more than the "
                         f"{G_WINDOW} one probe read takes; raise GOTEL_G_WINDOW in bpf/gotel.c")
    return start, lengths


def late_goid(binary):
    """True for Go <= 1.23, whose newproc1 sets g.goid after casgstatus(_Gdead -> _Grunnable)
    (runtime/proc.go; Go 1.24 moved the assignment before it)."""
    from receiver.buildinfo import parse_go_version

    return tuple(parse_go_version(binary.go_version))[:2] < (1, 24)


def layout_key(binary):
    """What makes two binaries share a slot: the same offsets, status numbers and goid timing."""
    layout = binary.layout
    return (tuple(sorted(layout.g.items())), tuple(sorted(layout.m.items())),
            tuple(sorted(layout.statuses.items())), late_goid(binary))


@dataclasses.dataclass
class Attachment:
    """One uprobe: a binary (by path and file offset), a PID or -1 for every process, a slot."""

    path: str
    offset: int
    pid: int
    slot: int
    uprobe: "uprobe.Uprobe"
    extra: tuple = ()   # the other uprobes of this attachment (preemptPark)


class Probes:
    """The compiled program, its layout slots and its live uprobes.

    ``reader()`` reads its per-CPU event buffers; ``counters()`` sums the per-CPU counters (lost:
    events that found their CPU's buffer full). ``close()`` detaches everything.
    Raises ``ProbeError`` when compiling, loading or attaching fails.
    """

    def __init__(self, config=Config()):
        problems = config.validate()
        if problems:
            raise ProbeError("probe configuration: " + "; ".join(problems))
        self.config = config
        try:
            from bcc import BPF
        except ImportError as e:
            raise ProbeError("bcc is not importable: install Debian's python3-bpfcc and use a venv "
                             "made with --system-site-packages (make setup)") from e
        from receiver import privileges

        if privileges.tracefs_writable():
            for name in privileges.remove_stale_uprobes():
                log.info("removed %s, left by a gotel that was killed", name)
        try:
            self.bpf = BPF(src_file=str(SOURCE).encode(), cflags=config.cflags())
        except Exception as e:
            raise ProbeError(f"compiling {SOURCE} failed: {e}") from e
        self.links = uprobe.links_available()
        try:
            self._load()
        except Exception as e:
            if not self.links:
                raise ProbeError(f"loading {SOURCE} failed: {e}") from e
            log.info("uprobe links refused (%s); attaching as perf events", e)
            self.links = False
            try:
                self._load()
            except Exception as e2:
                raise ProbeError(f"loading {SOURCE} failed: {e2}") from e2
        self._layouts = self.bpf["layouts"]
        self._counters = self.bpf["counters"]
        self._hits = self.bpf["hits"]
        self._slots = {}
        self._leaves = {}
        self.attachments = {}
        self._lock = threading.Lock()

    def _load(self):
        """Every program, for BPF links or for perf events (``self.links``)."""
        def each(name):
            return [uprobe.load(self.bpf, f"{name}_{i}", self.links) for i in range(MAX_LAYOUTS)]

        self._fns = each("probe_casgstatus")
        self._lifecycle_fns = {name: each(name) for name in LIFECYCLE_PROGRAMS}
        self._preempt_fns = each("probe_preemptpark")

    @property
    def events_fd(self):
        return self.bpf["events"].map_fd

    def reader(self):
        """An ``EventBufferReader`` of this program's event buffers."""
        from receiver.eventbuf import EventBufferReader

        return EventBufferReader(self.events_fd, self.bpf["heads"].map_fd, self.bpf["tails"].map_fd,
                                 *self.config.buffers)

    def slot_for(self, binary):
        """The layout slot for a GoBinary, filled on first use."""
        key = layout_key(binary)
        if key in self._slots:
            return self._slots[key]
        if len(self._slots) >= MAX_LAYOUTS:
            raise ProbeError(f"{binary.path}: gotel traces at most {MAX_LAYOUTS} distinct Go layouts "
                             f"at once; this would be one more")
        check_statuses(binary)
        slot = len(self._slots)
        self._write_layout(slot, binary)
        self._slots[key] = slot
        return slot

    def _write_layout(self, slot, binary):
        layout = binary.layout
        leaf = self._layouts.Leaf()
        g, m = layout.g, layout.m
        leaf.g_goid = g["goid"]
        leaf.g_parent_goid = g.get("parentGoid", 0) or 0
        leaf.g_gopc = g["gopc"]
        leaf.g_startpc = g["startpc"]
        leaf.g_waitreason = g["waitreason"]
        leaf.g_m = g["m"]
        leaf.m_curg = m["curg"]
        leaf.enabled = 1
        leaf.g_window, lengths = read_window(layout)
        for kind, n in lengths.items():
            leaf.window_len[kind] = n
        s = layout.statuses
        # Statuses the lifecycle and preemptPark probes write into their events.
        leaf.status_runnable = s["_Grunnable"]
        leaf.status_running = s["_Grunning"]
        leaf.status_dead = s["_Gdead"]
        leaf.status_preempted = s.get("_Gpreempted", 9)
        if late_goid(binary):
            leaf.late_goid_olds = (1 << (s["_Grunnable"] & 0xF)) | (1 << (s["_Gwaiting"] & 0xF))
        leaf.dead_olds = sum(1 << (s[n] & 0xF) for n in ("_Gidle", "_Gdead", "_Gdeadextra") if n in s)
        # A run reads the wait reason where the decoder may use it: a wait ended without a ready,
        # or any run when readies are not recorded.
        waits = ("_Gwaiting",) if Kind.READY in self.config.kinds else ("_Gwaiting", "_Grunnable")
        leaf.run_reason_olds = sum(1 << (s[n] & 0xF) for n in waits)
        table = transition_table(layout.statuses, self.config.kinds)
        for i, kind in enumerate(table):
            leaf.kinds[i] = int(kind)
        for i, effect in enumerate(thread_table(layout.statuses)):
            leaf.curg[i] = effect
        if "preempted" in layout.wait_reasons and Kind.PARK in self.config.kinds:
            leaf.preempt_kind = int(Kind.PARK)
            leaf.preempted_reason = layout.wait_reasons.index("preempted")
        self._layouts[self._layouts.Key(slot)] = leaf
        self._leaves[slot] = leaf

    def _new_epoch(self, slot):
        """Void the slot's goid cache entries (bpf/gotel.c): g structs may have been reused while
        casgstatus was not probed."""
        leaf = self._leaves[slot]
        leaf.epoch = (leaf.epoch + 1) & 0xFFFFFFFF
        self._layouts[self._layouts.Key(slot)] = leaf

    def attach(self, binary, pid=-1):
        """Put the probe on binary (a GoBinary) for one PID, or for every process if pid is -1.

        Returns the Attachment; attaching the same (binary file, pid) twice returns the first.
        """
        try:
            fn = binary.functions[PROBED_FUNCTION]
        except KeyError as e:
            raise ProbeError(f"{binary.path}: no {PROBED_FUNCTION} to probe") from e
        slot = self.slot_for(binary)
        self._new_epoch(slot)
        return self._attach_at(binary, pid, fn.probe_address, self._fns[slot], slot,
                               with_preempt=True)

    def attach_lifecycle(self, binary, pid=-1):
        """The lifecycle level's two probes (creation, exit: receiver/lifecycle.py) on binary for
        one PID or every process: a list of two Attachments. Raises UnsupportedBinary when the
        binary's code has another shape."""
        from receiver import lifecycle

        slot = self.slot_for(binary)
        return [self._attach_at(binary, pid, point.placement.probe_address,
                                self._lifecycle_fns[point.program][slot], slot)
                for point in lifecycle.points(binary).values()]

    def _attach_at(self, binary, pid, vaddr, fn, slot, with_preempt=False):
        """One uprobe of program fn at vaddr; ``with_preempt`` (the full level) adds the
        ``runtime.preemptPark`` probe beside it, whose stack-scan stops only full tracing reports."""
        path = os.path.realpath(binary.path) if pid == -1 else str(binary.path)
        offset = binary.file_offset(vaddr)
        st = os.stat(binary.path)
        key = (st.st_dev, st.st_ino, offset, pid)
        with self._lock:
            if key in self.attachments:
                return self.attachments[key]
            stop = binary.functions.get(PREEMPT_FUNCTION) if with_preempt else None
            if with_preempt and stop is None:
                # Its probe also tells the kernel side that the thread runs no goroutine any more.
                raise ProbeError(f"{path}: no {PREEMPT_FUNCTION} to probe")
            name = f"gotel_{os.getpid()}_{st.st_ino:x}_{offset:x}_{pid if pid >= 0 else 'all'}"
            main = self._uprobe(fn, path, offset, pid, name, "")
            extra = ()
            if stop is not None:
                stop_offset = binary.file_offset(stop.probe_address)
                try:
                    extra = (self._uprobe(self._preempt_fns[slot], path, stop_offset, pid,
                                          f"{name}_p{stop_offset:x}", f" ({PREEMPT_FUNCTION})"),)
                except ProbeError:
                    main.close()
                    raise
            att = Attachment(path, offset, pid, slot, main, extra)
            self.attachments[key] = att
            return att

    def _uprobe(self, fn, path, offset, pid, name, what):
        try:
            return uprobe.Uprobe(fn.fd, path, offset, pid, name, self.links)
        except OSError as e:
            from receiver import privileges

            missing = privileges.problems([pid] if pid > 0 else [], links=self.links)
            raise ProbeError(
                f"attaching the uprobe to {path} at file offset {offset:#x}{what} (pid {pid}) failed "
                f"({e}); " + ("; ".join(missing) if missing else
                              f"does the process still exist? ({privileges.hint()})")) from e

    def detach(self, attachment):
        """Remove one attachment's uprobes; events they already produced stay in the buffers."""
        with self._lock:
            for key, att in list(self.attachments.items()):
                if att is attachment:
                    del self.attachments[key]
            for probe in (attachment.uprobe, *attachment.extra):
                probe.close()

    def forget(self, pid):
        """Drop what the kernel side still holds for an exited process (creations of Go <= 1.23
        goroutines that never ran)."""
        held = self.bpf["created"]
        for key in [k for k in held.keys() if k.pid == pid]:
            try:
                del held[key]
            except KeyError:
                pass

    def counters(self):
        """{"lost", "hits", "held_full"}: sums over CPUs since load."""
        return {name: int(sum(self._counters[self._counters.Key(i)]))
                for i, name in enumerate(COUNTERS)}

    def calibrate(self):
        """``receiver.calibrate.Calibration``: the cost of one hit of this program on this machine,
        measured on the last layout slot while it is still unused (call before attaching)."""
        from receiver import calibrate

        if len(self._slots) >= MAX_LAYOUTS:
            return calibrate.Calibration(calibrate.DEFAULT_FLOOR_NS, False)
        return calibrate.calibrate(self._fns[MAX_LAYOUTS - 1].fd, self.links)

    def hits(self, pid):
        """{"casgstatus", "create", "exit"}: probe hits of process pid since load, kept or dropped
        (summed over CPUs). Processes whose pids are equal modulo HIT_PIDS share their counts."""
        base = (pid & (HIT_PIDS - 1)) * NUM_POINTS
        return {name: int(sum(self._hits[self._hits.Key(base + i)])) for i, name in enumerate(POINTS)}

    def close(self):
        """Detach every uprobe and free the program and maps. Idempotent."""
        if self.bpf is None:
            return
        for att in list(self.attachments.values()):
            self.detach(att)
        self.bpf.cleanup()
        self.bpf = None


def dump_bpf(config=Config()):
    """The program text that Probes would compile with config, without compiling it."""
    defines = "".join(f"#define {flag[2:].replace('=', ' ', 1)}\n"
                      for flag in config.cflags() if flag.startswith("-D"))
    return f"/* cflags: {' '.join(config.cflags())} */\n{defines}{SOURCE.read_text()}"


def main(argv=None):
    """``python -m receiver.probes --dump-bpf [--ring-bytes N]``: print the program gotel loads."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m receiver.probes", description=main.__doc__)
    parser.add_argument("--dump-bpf", action="store_true", help="print the BPF C with its tunables")
    parser.add_argument("--ring-bytes", type=int, default=Config.ring_bytes)
    args = parser.parse_args(argv)
    config = Config(ring_bytes=args.ring_bytes)
    problems = config.validate()
    if problems:
        parser.error("; ".join(problems))
    print(dump_bpf(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
