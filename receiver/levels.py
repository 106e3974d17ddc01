"""Tracing whose cost the user sets: levels, windows, triggers and an overhead budget, per target.

Levels (``level`` of receivers::goroutines):

- ``census``: no probe at all; goroutines are only read from the process's memory.
- ``lifecycle``: two probes (receiver/lifecycle.py): one event at each goroutine's creation and one
  at its exit. One span per goroutine with its parent, creation site and lifetime; no parks.
- ``full``: the ``runtime.casgstatus`` probe: every status change (parks, wakeups, latency).

Windows: with ``window`` and ``period`` (e.g. 2 s every 60 s), full tracing is attached for
``window`` every ``period`` on top of the configured level, and detached after (a detached uprobe
costs the target nothing). Triggers open a window at once: ``open_window(reason)`` (SIGUSR1 and the
local HTTP endpoint of ``trigger_port`` call it), or the goroutine count rising faster than
``trigger_goroutine_rate`` per second (read as the growth of ``runtime.allglen``, which rises only
when live goroutines pass their previous peak), or a group's oldest wait crossing
``trigger_oldest_wait`` (a census every WAIT_CHECK_S: the longest a waiting goroutine of each start
function has waited, from ``g.waitsince``, which the runtime stamps at GC cycles; the runtime's own
goroutines excluded; a group fires when it crosses the threshold, not again while it stays above),
or the scheduling latency's p99 beyond ``trigger_sched_latency_p99``: every SCHED_CHECK_S the
runtime's own histogram ``sched.timeToRun`` (what ``/sched/latencies:seconds`` reports; read from
memory, stripped binaries and Go 1.19+ too) is read, and the p99 of what it recorded since the last
read (``runtime_stats.quantile_of_delta``: a bucket counts as its upper bound) is compared with the
threshold; at least SCHED_MIN_SAMPLES latencies, else the p99 is a handful's maximum (the runtime
samples 1 transition in 8). A process fires when it crosses the threshold, not again while it
stays above. Each trigger is logged and counted by reason; the growth and schedule-latency
triggers fire at most once per ``trigger_cooldown`` (counted from any trigger).

Budget: with ``max_overhead`` (a fraction of the target's CPU time), every probe hit is priced: the
BPF side counts every hit, kept or dropped, per process and probe point (``Probes.hits``), and one
hit costs what ``receiver.calibrate`` prices it at (a floor measured at start times a factor fitted
on a server), but never more in total than the target's system time, where the traps are charged
(the sharper bound on programs that make few syscalls). A token bucket per target holds the CPU time
the probes may still spend: it fills at ``max_overhead`` x the target's CPU time (utime + stime of
``/proc/PID/stat``, which includes the traps) and drains by hits x cost. A window opens only when
the bucket holds what it is expected to cost (a whole ``window``, or what 0.9 of a full bucket buys,
at least MIN_WINDOW_S: where full tracing costs more than a bucket holds, short windows, three in a
minute at 2% on row 10's server) and closes early when the bucket runs dry. A budgeted target starts
at the census level while gotel reads from memory what the probes would cost (and goes on reading it
every PREVIEW_S while they are off): the runtime's own count of runs (``sched.timeToRun``, which
records 1 run in RUN_SAMPLING) times HITS_PER_RUN hits per run prices full tracing, and the
goroutine ids it hands out (``sched.goidgen``) price the lifecycle probes, which are placed only if
they would cost at most half the budget. Where memory cannot tell, the probes measure it (a first
window of MEASURE_S for full tracing). A window's measured hit rate replaces the guess; once it is
off, the guess stands in again at the scale the probe measured (hits counted per guessed hit over a
read when it was on). Full tracing stays on while it costs less than the budget; the lifecycle
probes come off while they alone cost more than half of it (back when memory says they fit; else
tried after LIFECYCLE_RETRY_S). So the duty cycle follows the rate. ``overhead`` is the estimate
(cost over CPU time, smoothed over ~5 s): ``gotel.target.overhead``.

Thread-safety: one controller thread (``gotel-levels``) does every attach and detach after start;
``open_window`` may be called from any thread (or a signal handler); ``status()`` reads a snapshot.
"""

import dataclasses
import logging
import os
import struct
import threading
import time

from receiver.errors import GotelError

log = logging.getLogger("gotel.levels")

LEVELS = ("census", "lifecycle", "full")
TICK_S = 0.1
SAMPLE_S = 0.5           # how often hits and CPU time are read
SMOOTHING_S = 5.0        # time constant of the overhead estimate
DEFAULT_WINDOW_S = 2.0   # a window's length when only a budget or a trigger opens them
BUCKET_S = 30.0          # the bucket holds at most this many seconds of budget
MEASURE_S = 0.25         # a window opened only to learn what full tracing costs (budget, no figure yet)
MIN_WINDOW_S = 0.1       # the shortest window a budget opens: a low budget on a busy target still samples
LIFECYCLE_RETRY_S = 60   # lifecycle probes that overspent are tried again this much later
WAIT_CHECK_S = 2.0       # how often the oldest-wait trigger reads a census
SCHED_CHECK_S = 2.0      # how often the schedule-latency trigger reads sched.timeToRun
SCHED_MIN_SAMPLES = 10   # fewer latencies than this in an interval: no p99 of it
PREVIEW_S = 0.5          # under a budget, how often memory prices the probes that are off
RUN_SAMPLING = 8         # the runtime records 1 run in 8 in sched.timeToRun (gTrackingPeriod)
HITS_PER_RUN = 3         # casgstatus hits per run: into running, out of it, and the ready before


def parse_overhead(value):
    """``max_overhead`` -> fraction: "2%" -> 0.02, 0.02 -> 0.02, 0 or "" -> 0 (no budget).
    ValueError when malformed or not in [0, 1)."""
    if value in (None, "", 0):
        return 0.0
    if isinstance(value, str):
        text = value.strip()
        frac = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    else:
        frac = float(value)
    if not 0 <= frac < 1:
        raise ValueError(value)
    return frac


def cpu_times(pid):
    """(CPU time, system time) of process pid so far (every thread), in ns; None once it is gone.
    The system time includes every uprobe trap and BPF program run in the process's context."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])     # fields 14 and 15 of stat, in ticks
    tick_ns = 1e9 / os.sysconf("SC_CLK_TCK")
    return (utime + stime) * tick_ns, stime * tick_ns


def allglen(pid, binary, mem):
    """len(runtime.allgs) of a process: the most goroutines it ever had at once (dead ones are
    reused, never freed). Found in stripped binaries too (``receiver.globals``). None when
    unreadable (no such global found, or the process is gone)."""
    from receiver import globals as runtime_globals

    try:
        address = runtime_globals.global_address(binary, "runtime.allgs")
        raw = mem.read(address + binary.load_bias(pid) + 8, 8)
    except (GotelError, OSError):
        return None
    return struct.unpack("<Q", raw)[0] if raw else None


@dataclasses.dataclass
class Window:
    """One span of full tracing of one target: its number, why it opened, when (monotonic ns)."""

    number: int
    reason: str
    opened_ns: int
    closed_ns: int = 0
    close_reason: str = ""
    opened_unix_ns: int = 0
    closed_unix_ns: int = 0
    attached: bool = True            # the window attached the full probe (and detaches it)


class Unit:
    """One target under control: a process (``pid`` > 0) or every process running a binary (-1)."""

    def __init__(self, binary, pid, pids):
        self.binary = binary
        self.pid = pid
        self.pids = pids                 # () -> the live pids this unit covers
        self.lifecycle = []              # Attachments of the lifecycle probes, when on
        self.full = None                 # Attachment of the casgstatus probe, when on
        self.window = None               # the open Window
        self.windows = []                # every Window so far
        self.next_window_ns = 0
        self.tokens_ns = 0.0             # CPU ns the probes may still spend
        self.overhead = 0.0              # smoothed estimate: probe cost / target CPU time
        self.cpu_rate = 0.0              # target CPU ns per ns
        self.rates = {}                  # probe point -> hits per second, last sample
        self.full_rate = None            # casgstatus hits per second, last seen while full was on
        self.hits = None                 # {pid: {point: count}} at the last sample
        self.cpu = None                  # {pid: (cpu ns, system ns)} at the last sample
        self.sampled_ns, self.window_until = 0, 0
        self.cost_ns, self.cpu_ns = 0.0, 0.0   # estimated probe cost, the target's CPU time: totals
        self.sys_ns, self.priced_ns = 0.0, 0.0   # system time (bounds cost_ns), hits x price: totals
        self.allglen, self.allglen_ns = None, 0
        self.lifecycle_error = None      # why the lifecycle probes cannot go on this binary
        self.lifecycle_off_ns = 0
        self.life_rate = 0.0             # lifecycle hits per second, last seen while they were on
        self.life_measured_ns = 0
        self.last_trigger_ns = 0
        self.final_pids = []             # the pids it covered, once retired
        self.census = {}                 # pid -> receiver.census.CensusReader (oldest-wait trigger)
        self.waits_ns = 0                # when the last census was read
        self.waiting_long = set()        # start functions whose oldest wait is past the threshold
        self.final_level = None
        self.sched = {}                  # pid -> [RuntimeStatsReader or None, last histogram]
        self.sched_ns = 0                # when sched.timeToRun was last read
        self.sched_p99 = {}              # pid -> (p99 s, latencies) of the last interval
        self.sched_high = set()          # pids whose p99 is past the threshold
        self.memory_rates = None         # (ns, _memory_counts, casgstatus hits) or "unreadable"
        self.memory_guessed = False      # a first interval of memory has been read
        self.full_guessed = False        # full_rate is a guess from memory, not yet measured
        self.full_since = None           # when the window whose probe is on was opened
        self.full_scale = None           # hits measured / memory's guess, over a read with it on
        self.life_guessed = False        # life_rate is a guess from memory (the probes are off)


class LevelController:
    """Applies a receiver's level/window/trigger/budget settings to its targets (module docstring).

    ``probes`` is the receiver's ``Probes``; ``memory(pid)`` returns its ``ProcessMemory``;
    ``on_window(unit, window, stage)`` is called on the controller thread with stage "opening"
    (just before a window attaches the full probe), "opened" and "closed" (after detaching). ``clock`` is monotonic ns (tests pass a fake).
    """

    def __init__(self, config, probes, memory=None, on_window=None, clock=time.monotonic_ns):
        self.level = config.level
        self.window_ns = int((config.window_s or DEFAULT_WINDOW_S) * 1e9)
        self.period_ns = int(config.period_s * 1e9)
        self.budget = parse_overhead(config.max_overhead)
        self.growth = config.trigger_goroutine_rate
        self.oldest_wait_ns = int(config.trigger_oldest_wait_s * 1e9)
        self.sched_p99_ns = int(config.trigger_sched_latency_p99_s * 1e9)
        self.cooldown_ns = int(config.trigger_cooldown_s * 1e9)
        self.probes = probes
        self.memory = memory
        self.on_window = on_window
        self.clock = clock
        self.calibration = None
        self.units = []
        self.retired = []                # units of exited processes (for the summary)
        self.triggers = {}               # reason -> count
        self._requests = []              # reasons of windows asked for, not yet opened
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._http = None
        self.trigger_port = config.trigger_port

    # -- control path (the receiver's start) ------------------------------------------------------
    def calibrate(self):
        """Measure the cost of a hit (before anything is attached; a few tens of ms)."""
        if self.calibration is None:
            self.calibration = self.probes.calibrate()
        return self.calibration

    def add(self, binary, pid, pids=None):
        """Put a target under control and attach what its level starts with; returns the Unit."""
        unit = Unit(binary, pid, pids or (lambda: [pid]))
        now = self.clock()
        if self.level in ("lifecycle", "full") and not self.budget:
            self._set_lifecycle(unit, self.level == "lifecycle")
            if self.level == "full":
                unit.full = self.probes.attach(binary, pid)
        # Under a budget: census until _read_rates has priced the probes from memory;
        # then lifecycle where it is affordable, and the bucket decides about full.
        if self.budget and self.level == "full":
            unit.next_window_ns = now          # a first window once the bucket affords it
        elif self.period_ns:
            unit.next_window_ns = now + self.period_ns
        unit.tokens_ns = 0.0
        with self._lock:
            self.units.append(unit)
        return unit

    def _set_lifecycle(self, unit, on):
        if on and not unit.lifecycle and unit.lifecycle_error is None:
            try:
                unit.lifecycle = self.probes.attach_lifecycle(unit.binary, unit.pid)
            except GotelError as e:
                unit.lifecycle_error = str(e)
                log.warning("%s: lifecycle probes not placed (%s); between windows it is traced "
                            "at the census level", unit.binary.path, e)
        elif not on and unit.lifecycle:
            for att in unit.lifecycle:
                self.probes.detach(att)
            unit.lifecycle = []

    def start(self):
        """Start the controller thread (it also keeps the overhead estimate of a fixed level) and
        the trigger endpoint."""
        if self.trigger_port:
            self._start_http()
        self._thread = threading.Thread(target=self._run, name="gotel-levels", daemon=True)
        self._thread.start()
        return self

    def remove(self, pid):
        """Detach and forget the unit of process pid (it exited); no-op for other pids."""
        with self._lock:
            gone = [u for u in self.units if u.pid == pid]
            self.units = [u for u in self.units if u.pid != pid]
            self.retired += gone
        for unit in gone:
            unit.final_pids = [unit.pid] if unit.pid > 0 else []
            unit.final_level = "full" if unit.full is not None else \
                "lifecycle" if unit.lifecycle else "census"
            self._set_lifecycle(unit, False)
            for reader, _ in unit.sched.values():
                if reader is not None:
                    reader.close()
            if unit.full is not None:
                self.probes.detach(unit.full)
                unit.full = None
            if unit.window is not None:
                unit.window.closed_ns, unit.window.close_reason = self.clock(), "exit"
                unit.window.closed_unix_ns = time.time_ns()
                unit.window = None

    def stop(self):
        """Stop the controller, after a last sample of every unit: the estimate over the run then
        covers the whole run, not only up to the last tick the controller had (a detach under load
        can hold it for seconds)."""
        self._stop.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        if self.calibration is not None:
            with self._lock:
                units = list(self.units)
            for unit in units:
                if unit.pids():
                    self._sample(unit, self.clock(), final=True)

    # -- triggers ---------------------------------------------------------------------------------
    def open_window(self, reason):
        """Ask for a window of full tracing on every target, now (any thread; signal-safe: it only
        appends to a list)."""
        self._requests.append(reason)

    def _start_http(self):
        from receiver import window_endpoint

        self._http = window_endpoint.serve(self.trigger_port, self.open_window)
        self.trigger_port = self._http.server_address[1]
        log.info("POST http://127.0.0.1:%d/window opens a window of full tracing", self.trigger_port)

    # -- controller thread ------------------------------------------------------------------------
    def _run(self):
        while not self._stop.wait(TICK_S):
            try:
                self.tick()
            except Exception:  # noqa: BLE001  (the controller must outlive a bad tick)
                log.exception("level controller tick failed")

    def tick(self):
        """One step of control for every unit (the controller thread calls this every TICK_S)."""
        now = self.clock()
        requests, self._requests = self._requests, []
        with self._lock:
            units = list(self.units)
        for unit in units:
            if not unit.pids():
                continue
            self._sample(unit, now)
            for reason in requests:
                self._trigger(unit, reason, now)
            self._check_growth(unit, now)
            self._check_waits(unit, now)
            self._check_sched_latency(unit, now)
            self._plan(unit, now)

    def _trigger(self, unit, reason, now, detail=""):
        """Count a trigger by its reason and open a window (or lengthen the one open)."""
        self.triggers[reason] = self.triggers.get(reason, 0) + 1
        log.warning("trigger (%s%s): opening a window of full tracing on %s", reason,
                    f": {detail}" if detail else "", unit.pid if unit.pid > 0 else unit.binary.path)
        unit.last_trigger_ns = now
        if unit.window is None:
            self._open(unit, now, reason)
        else:
            unit.window_until = now + self.window_ns   # already open: a full window from now

    def _check_growth(self, unit, now):
        if not self.growth or self.memory is None or now - unit.allglen_ns < 1e9:
            return
        total = 0
        for pid in unit.pids():
            n = allglen(pid, unit.binary, self.memory(pid))
            if n is None:
                return
            total += n
        if unit.allglen is not None:
            rate = (total - unit.allglen) * 1e9 / (now - unit.allglen_ns)
            if rate > self.growth and now - unit.last_trigger_ns >= self.cooldown_ns:
                self._trigger(unit, "goroutines rising", now, f"{rate:.0f}/s > {self.growth:g}/s")
        unit.allglen, unit.allglen_ns = total, now

    def _check_waits(self, unit, now):
        if not self.oldest_wait_ns or now - unit.waits_ns < WAIT_CHECK_S * 1e9:
            return
        unit.waits_ns = now
        from receiver import census as census_mod

        above = {}
        for pid in unit.pids():
            try:
                reader = unit.census.get(pid)
                if reader is None:
                    reader = unit.census[pid] = census_mod.CensusReader(unit.binary, pid)
                census = reader.read(stacks=False)
            except GotelError as e:
                log.info("process %d: no census for the oldest-wait trigger: %s", pid, e)
                continue
            rows = census.goroutines
            waiting = rows["status"] == unit.binary.layout.statuses["_Gwaiting"]
            ages = census.wait_ns()
            old = waiting & (ages > self.oldest_wait_ns)
            if not old.any():
                continue
            names = unit.binary.symbolizer().function_names(rows["startpc"][old], census.bias)
            for name, age in zip(names.tolist(), ages[old].tolist()):
                if not name.startswith("runtime."):
                    above[name] = max(above.get(name, 0), age)
        for name in sorted(set(above) - unit.waiting_long):
            self._trigger(unit, f"oldest wait of {name}", now,
                          f"{above[name] / 1e9:.1f}s > {self.oldest_wait_ns / 1e9:g}s")
        unit.waiting_long = set(above)

    def _check_sched_latency(self, unit, now):
        if not self.sched_p99_ns or now - unit.sched_ns < SCHED_CHECK_S * 1e9:
            return
        from receiver import runtime_stats

        dt, unit.sched_ns = (now - unit.sched_ns) / 1e9, now
        for pid in unit.pids():
            state, hist = self._time_to_run(unit, pid)
            if hist is None:
                continue
            before, state[1] = state[1], hist
            p99, n = runtime_stats.quantile_of_delta(before, hist)
            if before is None:
                continue
            unit.sched_p99[pid] = (p99, n)
            high = p99 is not None and n >= SCHED_MIN_SAMPLES and p99 * 1e9 > self.sched_p99_ns
            if high and pid not in unit.sched_high and now - unit.last_trigger_ns >= self.cooldown_ns:
                self._trigger(unit, "schedule latency p99", now,
                              f"process {pid}: {p99 * 1e3:.3g}ms over the last {dt:.1f}s "
                              f"({n} latencies) > {self.sched_p99_ns / 1e6:g}ms")
            if high:
                unit.sched_high.add(pid)        # also within the cooldown: fires on a new crossing
            else:
                unit.sched_high.discard(pid)

    def _time_to_run(self, unit, pid):
        """(state, histogram) of process pid's ``sched.timeToRun`` read now; state is the pid's
        [reader, last histogram the trigger used]; histogram None when unreadable (said once)."""
        from receiver import runtime_stats

        state = unit.sched.get(pid)
        if state is None:
            try:
                state = unit.sched[pid] = [runtime_stats.RuntimeStatsReader(unit.binary, pid), None]
            except Exception as e:  # noqa: BLE001  (an unknown or damaged layout: said once)
                log.warning("process %d: sched.timeToRun not readable (no schedule-latency trigger, "
                            "no pricing from memory under a budget): %s", pid, e)
                state = unit.sched[pid] = [None, None]
        if state[0] is None:
            return state, None
        try:
            return state, state[0].sched_latency()
        except GotelError:
            state[0].close()
            unit.sched.pop(pid)             # gone (a new reader if the pid comes back)
            return state, None

    def _memory_counts(self, unit):
        """{pid: (runs sched.timeToRun recorded or None, goroutine ids handed out or None)} now,
        of the unit's live processes; None when one has a layout gotel cannot read."""
        out = {}
        for pid in unit.pids():
            state, hist = self._time_to_run(unit, pid)
            if state[0] is None:
                return None
            if unit.sched.get(pid) is not state:
                continue                     # exited since (its reader is closed)
            try:
                goids = state[0].goids_allocated()
            except GotelError:
                continue                     # exited since
            out[pid] = (int(hist.counts.sum()) if hist is not None else None, goids)
        return out

    def _read_rates(self, unit, now):
        """Every PREVIEW_S, guess from memory what the probes that are off would cost (module
        docstring): into unit.full_rate until a window measures it, unit.life_rate while the
        lifecycle probes are off. False until a first interval is read (True if memory can't tell)."""
        if unit.memory_rates == "unreadable":
            return True
        if unit.memory_rates is not None and now - unit.memory_rates[0] < PREVIEW_S * 1e9:
            return unit.memory_guessed           # read once per PREVIEW_S, not every tick
        counts = self._memory_counts(unit)
        if counts is None:
            unit.memory_rates = "unreadable"
            return True
        hits = sum(h["casgstatus"] for h in unit.hits.values()) if unit.hits else None
        if unit.memory_rates is None:
            unit.memory_rates = (now, counts, hits)
            return False
        started, before, hits_before = unit.memory_rates
        unit.memory_rates, dt = (now, counts, hits), (now - started) / 1e9

        def delta(i):
            pids = set(before) & set(counts)
            steps = [counts[p][i] - before[p][i] for p in pids
                     if counts[p][i] is not None and before[p][i] is not None]
            return sum(steps) if steps and len(steps) == len(pids) and min(steps) >= 0 else None

        runs, goids = delta(0), delta(1)
        if runs is None and set(before) & set(counts):
            unit.memory_rates = "unreadable"     # a count missing or going back: not trusted
            return True
        if runs is None:
            return unit.memory_guessed           # no process in both reads (pids came and went)
        who = unit.pid if unit.pid > 0 else unit.binary.path
        guess = HITS_PER_RUN * RUN_SAMPLING * runs / dt
        if unit.full_since is not None and unit.full_since <= started and runs and \
                None not in (hits, hits_before) and hits >= hits_before:   # on over this whole read
            unit.full_scale = (hits - hits_before) / dt / guess      # sharper than the guess's 2x
        if runs and (unit.full_rate is None or unit.full_guessed):
            unit.full_rate = guess
            if not unit.full_guessed:
                log.info("%s: full tracing would take about %.0f hits/s (%d runs recorded in "
                         "%.1fs)", who, unit.full_rate, runs, dt)
            unit.full_guessed = True
        elif unit.full is None and unit.full_scale is not None:   # a rate that falls back is seen
            unit.full_rate = guess * unit.full_scale                 # within PREVIEW_S
        if goids is not None and not unit.lifecycle:
            unit.life_rate, unit.life_guessed = 2 * goids / dt, True
        unit.memory_guessed = True
        return True

    def _sample(self, unit, now, final=False):
        # Under a budget every tick (it reacts within TICK_S), else every SAMPLE_S.
        every = TICK_S if self.budget else SAMPLE_S
        if now - unit.sampled_ns < every * 1e9 * 0.9 and unit.sampled_ns and not final:
            return
        pids = unit.pids()
        hits = {pid: self.probes.hits(pid) for pid in pids}
        cpu = {pid: cpu_times(pid) for pid in pids}
        if unit.hits is not None:
            dt = max(now - unit.sampled_ns, 1)
            rates, dcpu, dsys = {}, 0.0, 0.0
            for pid in pids:
                before, after = unit.hits.get(pid), hits[pid]
                if before is not None:
                    for point, n in after.items():
                        rates[point] = rates.get(point, 0.0) + (n - before[point]) * 1e9 / dt
                if cpu[pid] is not None and unit.cpu.get(pid) is not None:
                    dcpu += cpu[pid][0] - unit.cpu[pid][0]
                    dsys += cpu[pid][1] - unit.cpu[pid][1]
            price = self.calibration.hit_ns
            cost = sum(rate * price.get(point, 0.0) for point, rate in rates.items()) * dt / 1e9
            # The traps run in the kernel in the target's context, charged to its system time: in
            # total they cannot have cost more than that. The price is fitted on a server
            # (receiver/calibrate.py), whose system time is mostly its own syscalls; on a program
            # that makes few, such as a tight goroutine loop, this measured bound is the sharper
            # one. Both are summed over the run, so a sample whose system time lags (/proc counts
            # it in 10 ms ticks) defers its cost to the next one instead of losing it.
            unit.priced_ns += cost
            unit.sys_ns += max(dsys, 0.0)
            cost = max(min(unit.priced_ns, unit.sys_ns) - unit.cost_ns, 0.0)
            unit.rates = rates
            unit.cpu_rate = dcpu / dt
            unit.cost_ns += cost
            unit.cpu_ns += dcpu
            if unit.full is not None and rates.get("casgstatus"):
                unit.full_rate, unit.full_guessed = rates["casgstatus"], False
            if unit.lifecycle:
                unit.life_rate = rates.get("create", 0.0) + rates.get("exit", 0.0)
                unit.life_measured_ns, unit.life_guessed = now, False
            alpha = min(1.0, dt / (SMOOTHING_S * 1e9))
            unit.overhead += alpha * ((cost / dcpu if dcpu > 0 else 0.0) - unit.overhead)
            if self.budget:
                cap = self.budget * max(unit.cpu_rate, 0.01) * BUCKET_S * 1e9
                unit.tokens_ns = min(cap, unit.tokens_ns + self.budget * dcpu - cost)
        unit.hits, unit.cpu, unit.sampled_ns = hits, cpu, now

    def _ns_per_ns(self, unit, rate, point):
        """CPU ns that ``rate`` hits/s of a probe point cost per ns, at most a core or the target's
        CPU rate: traps are its CPU time and slow it (memory's guess is an untraced rate)."""
        return min(rate * self.calibration.hit_ns[point] / 1e9, max(unit.cpu_rate, 1.0))

    def _full_ns_per_ns(self, unit):
        """CPU ns full tracing costs per ns of a window (None: no rate yet)."""
        return None if unit.full_rate is None else self._ns_per_ns(unit, unit.full_rate, "casgstatus")

    def _affordable_ns(self, unit):
        """How long a window the bucket pays for now (ns), and the longest it can ever pay for
        (when full); (None, None) before full tracing was measured."""
        rate = self._full_ns_per_ns(unit)
        if rate is None:
            return None, None
        cap = self.budget * max(unit.cpu_rate, 0.01) * BUCKET_S * 1e9
        return max(unit.tokens_ns, 0.0) / max(rate, 1e-9), cap / max(rate, 1e-9)

    def _plan(self, unit, now):
        if unit.window is not None:
            budgeted = self.budget and unit.window.reason in ("period", "budget")
            if budgeted and unit.tokens_ns < 0 and unit.hits is not None:
                self._close(unit, now, "budget")
            elif now >= unit.window_until:
                rate = self._full_ns_per_ns(unit)
                if budgeted and self.level == "full" and not self.period_ns and rate is not None \
                        and rate <= 0.8 * self.budget * unit.cpu_rate and unit.tokens_ns >= 0:
                    unit.window_until = now + self.window_ns   # affordable: full stays on
                else:
                    self._close(unit, now, "end")
        if self.budget and self.level in ("lifecycle", "full") and not self._read_rates(unit, now):
            return     # census only, until memory has told what the probes would cost
        if self.budget and self.level in ("lifecycle", "full") and unit.lifecycle_error is None:
            # The lifecycle probes may take half the budget; beyond, census until memory says they are
            # affordable or, where it cannot tell, (for a few ticks) after LIFECYCLE_RETRY_S.
            life_cost = self._ns_per_ns(unit, unit.life_rate, "create")
            too_dear = unit.life_rate and life_cost > 0.5 * self.budget * unit.cpu_rate
            if too_dear and not unit.lifecycle and unit.life_guessed and not unit.lifecycle_off_ns:
                log.warning("lifecycle probes of %s would cost about %.1f%% of its CPU (%.0f "
                            "goroutines/s), more than half the budget: census level until they "
                            "would not", unit.binary.path, 100 * life_cost / max(unit.cpu_rate, 1e-9),
                            unit.life_rate / 2)
                unit.lifecycle_off_ns = now
            if unit.lifecycle and unit.hits is not None and too_dear and unit.tokens_ns < 0:
                log.warning("lifecycle probes of %s cost %.1f%% of its CPU, more than half the "
                            "budget: census level, tried again in %ds", unit.binary.path,
                            100 * life_cost / max(unit.cpu_rate, 1e-9), LIFECYCLE_RETRY_S)
                self._set_lifecycle(unit, False)
                unit.lifecycle_off_ns = now
            elif not unit.lifecycle and unit.tokens_ns >= 0 and (not too_dear or (
                    not unit.life_guessed and now - unit.lifecycle_off_ns > LIFECYCLE_RETRY_S * 1e9)):
                self._set_lifecycle(unit, True)
        if unit.window is not None or now < unit.next_window_ns:
            return
        if self.budget and (self.level == "full" or self.period_ns):
            afford, longest = self._affordable_ns(unit)
            if afford is None and unit.memory_rates != "unreadable":
                return    # memory saw no run yet: nothing to trace, nothing to measure
            if afford is None:
                self._open(unit, now, "budget" if not self.period_ns else "period",
                           int(MEASURE_S * 1e9))
            elif afford >= min(self.window_ns, 0.9 * longest) and afford >= MIN_WINDOW_S * 1e9:
                self._open(unit, now, "budget" if not self.period_ns else "period",
                           int(min(self.window_ns, afford)))
        elif self.period_ns:
            self._open(unit, now, "period", self.window_ns)
            unit.next_window_ns = now + self.period_ns

    def _open(self, unit, now, reason, length_ns=None):
        attached = unit.full is None      # under a continuous full level, a window only marks time
        window = Window(len(unit.windows) + 1, reason, self.clock(), attached=attached,
                        opened_unix_ns=time.time_ns())
        if attached:
            if self.on_window is not None:
                # Before attaching: what the goroutines alive now are doing (see the receiver).
                self.on_window(unit, window, "opening")
            try:
                unit.full = self.probes.attach(unit.binary, unit.pid)
            except GotelError as e:
                log.warning("window not opened on %s: %s", unit.binary.path, e)
                return
            unit.full_since = now
        unit.window = window
        unit.windows.append(window)
        unit.window_until = now + (length_ns or self.window_ns)
        log.info("window %d opened (%s, %.2fs) on %s", unit.window.number, reason,
                 (length_ns or self.window_ns) / 1e9, unit.pid if unit.pid > 0 else unit.binary.path)
        if self.on_window is not None:
            self.on_window(unit, unit.window, "opened")

    def _close(self, unit, now, why):
        window = unit.window
        unit.window = None
        if window.attached and unit.full is not None:
            self.probes.detach(unit.full)
            unit.full = None
            unit.full_since = None
        window.closed_ns, window.close_reason = self.clock(), why
        window.closed_unix_ns = time.time_ns()
        if self.period_ns:
            unit.next_window_ns = max(unit.next_window_ns, window.opened_ns + self.period_ns)
        else:
            unit.next_window_ns = now + int(MEASURE_S * 1e9)
        log.info("window %d closed (%s) on %s", window.number, why,
                 unit.pid if unit.pid > 0 else unit.binary.path)
        if self.on_window is not None:
            self.on_window(unit, window, "closed")

    # -- reading ----------------------------------------------------------------------------------
    def status(self):
        """[{pid, pids, path, level, overhead, cpu_rate, rates, windows, window_open, window_s}] per
        unit, those of exited processes included (as they were last)."""
        out = []
        with self._lock:
            units = list(self.units) + list(self.retired)
        for u in units:
            level = u.final_level or (
                "full" if u.full is not None else "lifecycle" if u.lifecycle else "census")
            out.append({"pid": u.pid, "pids": u.pids() if u in self.units else u.final_pids,
                        "path": str(u.binary.path), "level": level,
                        "overhead": u.overhead, "cpu_rate": u.cpu_rate, "rates": dict(u.rates),
                        "windows": len(u.windows), "window_open": u.window is not None,
                        "cost_ns": u.cost_ns, "cpu_ns": u.cpu_ns,
                        "opened_unix_ns": [w.opened_unix_ns for w in u.windows],
                        "window_reasons": [(w.reason, w.close_reason) for w in u.windows],
                        "window_s": sum(((w.closed_ns or self.clock()) - w.opened_ns)
                                        for w in u.windows) / 1e9})
        return out

    def windows_of(self, pid):
        """(numbers, opened, closed) of process pid's windows as uint64 arrays of Unix ns (closed
        is the maximum for one still open), in order; None when it had none."""
        import numpy as np

        with self._lock:
            units = [u for u in list(self.units) + list(self.retired)
                     if u.pid == pid or (u.pid == -1 and u in self.units and pid in u.pids())]
        windows = [w for u in units for w in list(u.windows)]
        if not windows:
            return None
        return (np.array([w.number for w in windows], np.uint64),
                np.array([w.opened_unix_ns for w in windows], np.uint64),
                np.array([w.closed_unix_ns or np.iinfo(np.uint64).max for w in windows], np.uint64))
