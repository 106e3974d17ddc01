"""Go runtime metrics read from a running Go process's memory, computed the way ``runtime/metrics``
computes them (runtime/metrics.go of each release), without stopping or signalling the process.

``RuntimeStatsReader(binary, pid).read()`` returns a ``RuntimeStats``. Sources (globals found by
``receiver.globals``, so stripped binaries work; offsets from ``Layout.structs``):

| value | runtime/metrics name | memory |
|---|---|---|
| gogc | /gc/gogc:percent | gcController.gcPercent |
| memory_limit | /gc/gomemlimit:bytes | gcController.memoryLimit |
| gomaxprocs | /sched/gomaxprocs:threads | runtime.gomaxprocs |
| allocated_bytes, allocations | /gc/heap/allocs:bytes, :objects | memstats.heapStats (sum of the 3 generations) x class_to_size |
| memory_stack, memory_other | /memory/classes/... | heapStats committed/released/inStacks + memstats *_sys |
| heap_goal | /gc/heap/goal:bytes | gcController: heapGoalInternal (GOGC goal, memory-limit goal, sweep distance, trigger) |
| gc_cycles | /gc/cycles/total:gc-cycles | memstats.numgc |
| goroutines | /sched/goroutines:goroutines | allglen - free gs (sched, every P) - system gs (up to Go 1.25) |
| sched_latency | /sched/latencies:seconds | sched.timeToRun (histogram) |
| gc_pauses | /sched/pauses/total/gc:seconds (1.22+), /gc/pauses:seconds | sched.stwTotalTimeGC, memstats.gcPauseDist |
| cpu_ns (gc, scavenge, idle, user) | /cpu/classes/*/total:cpu-seconds (Go 1.20+) | work.cpuStats (a snapshot taken at each GC) |

Memory of another process is untrusted: every count and size is checked against plausibility
bounds; a value that fails is left out (None) and named in ``RuntimeStats.rejected``, never passed
on. The runtime updates these fields concurrently; one read is one process_vm_readv per structure, so sums
over the heap-stat generations can be off by the allocations of the microseconds a read takes.

Cost: 5 reads (``receiver.procmem``, ~30 KB) plus one per P; ~0.2 ms per process.
"""

from dataclasses import dataclass, field

import numpy as np

from receiver import globals as globals_mod
from receiver.buildinfo import parse_go_version
from receiver.errors import TargetError, UnsupportedGoVersion
from receiver.procmem import ProcessMemory

MAX_INT64 = (1 << 63) - 1
MAX_GOROUTINES = 1 << 27      # more goroutines than this in allglen is a torn or damaged read
MAX_PROCS = 1 << 16
MAX_BYTES = 1 << 52           # 4 PiB
MAX_COUNT = 1 << 62
# sched.goidgen (the goroutine ids handed out) is the first field of runtime.schedt in every
# release gotel reads, 1.19 to 1.27 (tests/receiver/test_runtime_stats.py checks it against the
# DWARF of each), so the layout table needs no entry for it.
SCHED_GOIDGEN_OFFSET = 0
# Fields every supported release has (Go 1.19 to 1.27); a layout without one is refused.
REQUIRED = {
    "runtime.mstats": ("heapStats", "stacks_sys", "mspan_sys", "mcache_sys", "buckhash_sys", "gcMiscSys",
                       "other_sys", "numgc"),
    "runtime.consistentHeapStats": ("stats", "stats.$len"),
    "runtime.heapStatsDelta": ("committed", "released", "inStacks", "largeAlloc", "largeAllocCount",
                               "smallAllocCount", "smallAllocCount.$len", "$size"),
    "runtime.gcControllerState": ("gcPercent", "memoryLimit", "gcPercentHeapGoal", "sweepDistMinTrigger",
                                  "triggered"),
    "runtime.schedt": ("timeToRun", "ngsys"),
    "runtime.timeHistogram": ("counts", "counts.$len", "underflow", "$size"),
}


@dataclass
class Histogram:
    """Bucket boundaries in seconds (len(counts) + 1, first -inf, last +inf) and counts, as
    ``runtime/metrics.Float64Histogram``."""

    bounds: np.ndarray
    counts: np.ndarray


@dataclass
class RuntimeStats:
    gogc: int = None
    memory_limit: int = None
    gomaxprocs: int = None
    allocated_bytes: int = None
    allocations: int = None
    memory_stack: int = None
    memory_other: int = None
    heap_goal: int = None
    gc_cycles: int = None
    goroutines: int = None
    sched_latency: Histogram = None
    gc_pauses: Histogram = None
    cpu_ns: dict = None          # {"gc": ns, "scavenge": ns, "idle": ns, "user": ns}; None before Go 1.20
    rejected: list = field(default_factory=list)


class _Memory(ProcessMemory):
    """A ProcessMemory whose reads raise instead of returning None: every read here is of a runtime
    global, which must be there while the process lives."""

    def read(self, addr, size):
        data = super().read(addr, size)
        if data is None:
            raise TargetError(f"process {self.pid}: cannot read {size} bytes at {addr:#x} "
                              f"(it exited?)")
        return data


def time_histogram_bounds(nbuckets):
    """Bucket boundaries (seconds) of a runtime ``timeHistogram`` with ``nbuckets`` counts, as
    ``timeHistogramMetricsBuckets`` builds them: Go 1.19's (45 super-buckets x 16, no overflow
    bucket) or Go 1.20+'s (40 x 4 from 2^9 ns, plus overflow). Raises UnsupportedGoVersion for
    another shape."""
    if nbuckets == 45 * 16:
        b = [-np.inf] + [i / 1e9 for i in range(16)]
        for i in range(44):
            for j in range(16):
                b.append(((1 << (i + 4)) | (j << i)) / 1e9)
        b.append(np.inf)
        return np.array(b)
    if nbuckets == 40 * 4:
        min_bits, max_bits, sub_bits = 9, 48, 2
        b = [-np.inf] + [(j << (min_bits - 1 - sub_bits)) / 1e9 for j in range(4)]
        for i in range(min_bits, max_bits):
            for j in range(4):
                b.append(((1 << (i - 1)) | (j << (i - 1 - sub_bits))) / 1e9)
        b.append((1 << (max_bits - 1)) / 1e9)
        b.append(np.inf)
        return np.array(b)
    raise UnsupportedGoVersion(f"runtime timeHistogram with {nbuckets} buckets: a shape gotel does not know")


def quantile_of_delta(before, after, q=0.99):
    """(q-quantile in seconds, count) of what a histogram recorded between two reads of it
    (``Histogram``s of one process, ``after`` the later), or (None, 0) when nothing was recorded.

    The quantile's bucket is the first whose cumulative count reaches ceil(q x count); a bucket
    stands for its upper bound (every latency in it is at most that), the overflow bucket, which
    has none, for its lower bound. So the value is exact to the runtime's bucket resolution (4 per
    power of two since Go 1.20, 16 in Go 1.19) and never below the true quantile, but for the
    overflow bucket. A count that went down (a torn or unrelated read) gives (None, 0)."""
    if before is None or after is None or len(before.counts) != len(after.counts):
        return None, 0
    delta = after.counts.astype(np.int64) - before.counts.astype(np.int64)
    n = int(delta.sum())
    if n <= 0 or (delta < 0).any():
        return None, 0
    k = int(np.searchsorted(np.cumsum(delta), int(np.ceil(q * n))))
    upper = after.bounds[k + 1]
    return float(upper if np.isfinite(upper) else after.bounds[k]), n


class RuntimeStatsReader:
    """Reads one process's runtime metrics. Not thread-safe (one per process, one caller)."""

    def __init__(self, binary, pid):
        self.binary = binary
        self.pid = pid
        lay = binary.layout
        self.version = parse_go_version(binary.go_version)
        self.mstats = lay.struct("runtime.mstats")
        self.chs = lay.struct("runtime.consistentHeapStats")
        self.delta = lay.struct("runtime.heapStatsDelta")
        self.gcc = lay.struct("runtime.gcControllerState")
        self.sched = lay.struct("runtime.schedt")
        self.p = lay.struct("runtime.p")
        self.hist = lay.struct("runtime.timeHistogram")
        self.cpu = lay.structs.get("runtime.cpuStats") or None
        work = lay.structs.get("runtime.workType", {})
        self.class_to_size = np.array(lay.class_to_size, dtype=np.uint64)
        missing = [f"{s}.{f}" for s, fields in REQUIRED.items() for f in fields if f not in lay.struct(s)]
        if not any(k in self.sched for k in ("gFree.n", "gFree.stack.size")) \
                or not any(k in self.p for k in ("gFree.n", "gFree.size")):
            missing.append("runtime.schedt/p gFree counts")
        if missing:
            raise UnsupportedGoVersion(
                f"{binary.go_version}: the runtime lacks {', '.join(missing)}; gotel reads runtime metrics "
                f"from memory for Go 1.19 and later")
        bias = binary.load_bias(pid)
        self.addr = {name: globals_mod.global_address(binary, name) + bias for name in (
            "runtime.memstats", "runtime.gcController", "runtime.sched", "runtime.gomaxprocs",
            "runtime.allglen", "runtime.allgs", "runtime.allp")}
        self.cpu_addr = None
        if self.cpu and "cpuStats" in work:
            self.cpu_addr = globals_mod.global_address(binary, "runtime.work") + bias + work["cpuStats"]
        self.bounds = time_histogram_bounds(self.hist["counts.$len"])
        self.mem = _Memory(pid)

    def close(self):
        self.mem.close()

    def read(self):
        """A RuntimeStats of the process now. Raises TargetError when the process is gone."""
        out = RuntimeStats()
        ms = self.mem.read(self.addr["runtime.memstats"], max(self.mstats.values()) + 8 + self._pause_size())
        gc = self.mem.read(self.addr["runtime.gcController"], max(self.gcc.values()) + 8)
        sc = self.mem.read(self.addr["runtime.sched"], max(self.sched.values()) + self.hist["$size"])

        def check(name, value, lo, hi):
            if value is not None and not lo <= value <= hi:
                out.rejected.append(f"{name}={value}")
                return None
            return value

        gogc = _i32(gc, self.gcc["gcPercent"])
        out.gogc = check("gogc", gogc, 0, 1 << 31) if gogc >= 0 else None   # GOGC=off: no value
        out.memory_limit = check("memory_limit", _i64(gc, self.gcc["memoryLimit"]), 0, MAX_INT64)
        out.gomaxprocs = check("gomaxprocs", _i32(self.mem.read(self.addr["runtime.gomaxprocs"], 4), 0),
                               1, MAX_PROCS)
        self._heap(ms, out, check)
        out.gc_cycles = check("gc_cycles", _u32(ms, self.mstats["numgc"]), 0, 1 << 32)
        if out.memory_limit is not None:
            out.heap_goal = check("heap_goal", self._heap_goal(gc, out.memory_limit), 1, MAX_BYTES)
        out.goroutines = check("goroutines", self._goroutines(sc), 1, MAX_GOROUTINES)
        out.sched_latency = self._histogram(sc, self.sched["timeToRun"])
        if "stwTotalTimeGC" in self.sched:
            out.gc_pauses = self._histogram(sc, self.sched["stwTotalTimeGC"])
        elif "gcPauseDist" in self.mstats:
            out.gc_pauses = self._histogram(ms, self.mstats["gcPauseDist"])
        if self.cpu_addr is not None:
            out.cpu_ns = self._cpu(check)
        return out

    def sched_latency(self):
        """Only ``sched.timeToRun`` (one pread): what the schedule-latency trigger reads
        (receiver/levels.py). None when implausible; raises TargetError when the process is gone."""
        at = self.addr["runtime.sched"] + self.sched["timeToRun"]
        return self._histogram(self.mem.read(at, self.hist["$size"]), 0)

    def goids_allocated(self):
        """``sched.goidgen``: the goroutine ids handed out so far, which the runtime hands to each P
        16 at a time (so it runs ahead of the creations by at most 16 a P). None when the value is
        implausible; raises TargetError when the process is gone."""
        value = _u64(self.mem.read(self.addr["runtime.sched"] + SCHED_GOIDGEN_OFFSET, 8), 0)
        return value if 0 < value < MAX_COUNT else None

    def _cpu(self, check):
        raw = self.mem.read(self.cpu_addr, max(self.cpu.values()) + 8)
        out = {}
        for state, names in (("gc", ("GCTotalTime", "gcTotalTime")), ("scavenge", ("ScavengeTotalTime", "scavengeTotalTime")),
                             ("idle", ("IdleTime", "idleTime")), ("user", ("UserTime", "userTime"))):
            off = next((self.cpu[n] for n in names if n in self.cpu), None)
            if off is None:
                return None
            value = check(f"cpu_{state}", _i64(raw, off), 0, MAX_COUNT)
            if value is None:
                return None
            out[state] = value
        return out

    def _heap_goal(self, gc, memory_limit):
        """gcControllerState.heapGoal() (runtime/mgcpacer.go, the same in Go 1.19-1.27 but for the
        memory-limit headroom); None when the memory-limit goal cannot be computed."""
        goal = _u64(gc, self.gcc["gcPercentHeapGoal"])
        limit_goal = self._memory_limit_goal(gc, memory_limit)
        if limit_goal is None:
            return None
        if limit_goal < goal:
            return limit_goal
        goal = max(goal, _u64(gc, self.gcc["sweepDistMinTrigger"]))
        triggered = _u64(gc, self.gcc["triggered"])
        if triggered != (1 << 64) - 1 and goal < triggered + (64 << 10):
            goal = triggered + (64 << 10)
        return goal

    def _memory_limit_goal(self, gc, memory_limit):
        """gcControllerState.memoryLimitHeapGoal()."""
        if memory_limit == MAX_INT64:
            return MAX_INT64        # no limit: never below the GOGC goal
        fields = ("heapFree", "totalAlloc", "totalFree", "mappedReady", "heapMarked")
        if not all(f in self.gcc for f in fields) or self.version[:2] == (1, 20):
            return None             # Go 1.20's headroom rule was not checked (no toolchain here)
        heap_free = _u64(gc, self.gcc["heapFree"])
        heap_alloc = _u64(gc, self.gcc["totalAlloc"]) - _u64(gc, self.gcc["totalFree"])
        mapped = _u64(gc, self.gcc["mappedReady"])
        marked = _u64(gc, self.gcc["heapMarked"])
        if heap_free + heap_alloc > mapped:
            return None             # a torn read (the runtime retries here; one read cannot)
        non_heap = mapped - heap_free - heap_alloc
        overage = max(mapped - memory_limit, 0)
        if non_heap + overage >= memory_limit:
            return marked
        goal = memory_limit - (non_heap + overage)
        if self.version < (1, 21):
            headroom = 1 << 20      # Go 1.19: memoryLimitHeapGoalHeadroom
        else:
            headroom = max(goal // 100 * 3, 1 << 20)   # memoryLimitHeapGoalHeadroomPercent, min 1 MiB
        goal = headroom if goal < headroom or goal - headroom < headroom else goal - headroom
        return max(goal, marked)

    def _pause_size(self):
        return self.hist["$size"] if "gcPauseDist" in self.mstats else 0

    def _heap(self, ms, out, check):
        base = self.mstats["heapStats"] + self.chs["stats"]
        size, n = self.delta["$size"], self.chs["stats.$len"]
        nclass = self.delta["smallAllocCount.$len"]
        total = {k: 0 for k in ("committed", "released", "inStacks", "largeAlloc", "largeAllocCount")}
        small = np.zeros(nclass, np.uint64)
        for gen in range(n):
            at = base + gen * size
            for k in total:
                total[k] += _i64(ms, at + self.delta[k])
            small += np.frombuffer(ms, "<u8", nclass, at + self.delta["smallAllocCount"])
        if len(self.class_to_size) == nclass:
            allocated = total["largeAlloc"] + int((small * self.class_to_size).sum())
            out.allocated_bytes = check("allocated_bytes", allocated, 0, MAX_COUNT)
        out.allocations = check("allocations", total["largeAllocCount"] + int(small.sum()), 0, MAX_COUNT)
        sys_total = sum(_u64(ms, self.mstats[k]) for k in (
            "stacks_sys", "mspan_sys", "mcache_sys", "buckhash_sys", "gcMiscSys", "other_sys"))
        # /memory/classes/total - /memory/classes/heap/released, split as OpenTelemetry's Go
        # instrumentation does: stack = heap/stacks + os-stacks, other = the rest.
        used = total["committed"] + sys_total
        stack = total["inStacks"] + _u64(ms, self.mstats["stacks_sys"])
        if check("memory_used", used, 1, MAX_BYTES) is not None and 0 <= stack <= used:
            out.memory_stack, out.memory_other = stack, used - stack
        elif stack > used:
            out.rejected.append(f"memory_stack={stack}>used={used}")

    def _goroutines(self, sc):
        allglen = _u64(self.mem.read(self.addr["runtime.allglen"], 8), 0)
        if not 0 < allglen <= MAX_GOROUTINES:
            return None
        free = sum(_i32(sc, self.sched[k]) for k in ("gFree.n", "gFree.stack.size", "gFree.noStack.size")
                   if k in self.sched)
        allp = self.mem.read(self.addr["runtime.allp"], 16)
        ptr, nprocs = _u64(allp, 0), _u64(allp, 8)
        if not 0 < nprocs <= MAX_PROCS:
            return None
        pfree_off = self.p.get("gFree.n", self.p.get("gFree.size"))
        try:   # pointers read from the target: a bad one drops this value, not the process
            ps = np.frombuffer(self.mem.read(ptr, 8 * nprocs), "<u8")
            for p in ps.tolist():
                if p:
                    free += _i32(self.mem.read(p + pfree_off, 4), 0)
        except TargetError:
            return None
        n = allglen - free
        if self.version < (1, 26):   # Go 1.26 counts system goroutines in /sched/goroutines
            n -= _i32(sc, self.sched["ngsys"])
        return max(n, 1)   # as gcount(): the reading goroutine itself always exists

    def _histogram(self, buf, at):
        n = self.hist["counts.$len"]
        counts = np.frombuffer(buf, "<u8", n, at + self.hist["counts"])
        under = _u64(buf, at + self.hist["underflow"])
        over = [_u64(buf, at + self.hist["overflow"])] if "overflow" in self.hist else []
        all_counts = np.concatenate([[under], counts, over]).astype(np.uint64)
        if len(all_counts) + 1 != len(self.bounds) or all_counts.max(initial=0) > MAX_COUNT:
            return None
        return Histogram(self.bounds, all_counts)


def _u64(buf, off):
    return int.from_bytes(buf[off:off + 8], "little")


def _i64(buf, off):
    return int.from_bytes(buf[off:off + 8], "little", signed=True)


def _u32(buf, off):
    return int.from_bytes(buf[off:off + 4], "little")


def _i32(buf, off):
    return int.from_bytes(buf[off:off + 4], "little", signed=True)
