"""GoroutineReceiver: the pipeline's source stage. Every goroutine transition of the traced Go
processes, as numpy batches of ``EVENT_DTYPE``, handed to the next stage.

``start()`` compiles the probes, resolves the targets (PIDs, binaries, a command it launches held
until the probe is in place), attaches, emits the goroutines that already exist as ``Kind.EXISTING``
events, and starts two threads. The poller reads the kernel's per-CPU event buffers every 10 ms
(``receiver.eventbuf``) and only copies the events into a bounded ``EventBuffer`` (``buffer_events``
events): it never waits on a pipeline stage, so a slow stage cannot make the kernel's buffers overflow.
Every ``check_interval_s`` it retires processes that exited (detaching their probe, and marking them
exited once the pipeline went through their last events) and reports lost events: the kernel's
counter (an event buffer full) and the buffer's (``overflowed``: the pipeline fell ``buffer_events`` behind).
The pipeline thread takes everything buffered as one batch (up to ``max_batch_events``), registers
processes first seen in it, converts timestamps to Unix ns in bulk, fills in goroutines it has never
heard of (read from the process), and calls ``next.consume(batch)``, then ``next.tick()`` (if it
has one) after every batch or 50 ms without one, so timers downstream fire on this thread. A PID
that a retired process held and a new process of a traced binary now holds is registered afresh
(``Processes.add`` forgets the old one's facts, on the pipeline thread, before its events).

Errors: ``start()`` raises ``TargetError`` (no such PID, not a Go program, ...) or ``ProbeError``
before anything runs; after that, nothing raises: a process that dies is logged and retired, and
gotel keeps tracing the others. ``lost`` counts events the kernel could not store (buffer full),
``overflowed`` those the buffer could not hold; ``refused`` is both.
Thread-safety: ``start``/``shutdown``/``wait`` from one control thread; ``next.consume`` and
``next.tick`` run on the pipeline thread only.
"""

import collections
import dataclasses
import logging
import os
import queue
import subprocess
import sys
import threading
import time

import numpy as np

from receiver import (discovery as discovery_mod, existing, levels, platform, privileges, probes,
                      procmem, targets, uprobe)
from receiver.clock import MonotonicClock
from receiver.drain import EventBuffer
from receiver.errors import ConfigError, GotelError, ProbeError, TargetError
from receiver.events import Kind
from receiver.processes import Process, Processes, start_time_ns
from receiver.watch import Following

log = logging.getLogger("gotel.receiver")

KIND_NAMES = {k.name.lower(): k for k in Kind if k not in (Kind.DROP, Kind.EXISTING)}


@dataclasses.dataclass(frozen=True)
class Config:
    """receivers::goroutines in gotel's YAML."""

    pids: tuple = ()
    paths: tuple = ()
    command: tuple = ()                    # argv of a program to launch and trace from its start
    keep_running: bool = False             # the launched command outlives gotel (else dies with it)
    # "preempt" (Gosched, preemption) is needed for go.schedule.duration to see those waits.
    kinds: tuple = ("create", "run", "park", "ready", "exit", "preempt")
    ring_bytes: int = 16 << 20             # the kernel's event buffers, all CPUs together
    poll_interval_s: float = dataclasses.field(default=0.05, metadata={"duration": "s"})
    check_interval_s: float = dataclasses.field(default=0.2, metadata={"duration": "s"})
    existing: bool = True                  # emit goroutines alive at attach, and read unknown ones
    # What tracing costs (receiver/levels.py): census, lifecycle or full; windows of full tracing
    # (`window` every `period`); a budget (`max_overhead: 2%` of each target's CPU time); triggers.
    level: str = "full"
    # window: 0 means 2s when a window is opened by a budget or a trigger; period: 0, no periodic ones
    window_s: float = dataclasses.field(default=0.0, metadata={"duration": "s"})
    period_s: float = dataclasses.field(default=0.0, metadata={"duration": "s"})
    max_overhead: float | str = 0.0        # "2%" or 0.02; 0: no budget
    trigger_port: int = 0                  # POST http://127.0.0.1:PORT/window opens a window; 0: off
    trigger_goroutine_rate: float = 0.0    # goroutines/s of growth that open a window; 0: off
    # a group's oldest wait (census, by start function, runtime's own excluded) beyond this opens a
    # window when it crosses it; 0: off
    trigger_oldest_wait_s: float = dataclasses.field(default=0.0, metadata={"duration": "s"})
    # the p99 of the runtime's scheduling latency over ~2 s beyond this opens a window; 0: off
    trigger_sched_latency_p99_s: float = dataclasses.field(default=0.0, metadata={"duration": "s"})
    # at least this long between two anomaly triggers
    trigger_cooldown_s: float = dataclasses.field(default=30.0, metadata={"duration": "s"})
    # Events copied out of the kernel's buffers and not yet through the pipeline (64 bytes each; 2 Mi events,
    # 128 MiB, only when the pipeline is that far behind): ~2 s at the probes' top rate here.
    buffer_events: int = 1 << 21
    # The most events the pipeline takes in one batch. Measured on a replay of row 4's stream:
    # 64 Ki events per batch ran the pipeline faster than 256 Ki (less memory touched per pass)
    # and halved the longest wait of another thread for the GIL.
    max_batch_events: int = 1 << 16
    discovery: discovery_mod.Rules = dataclasses.field(default_factory=discovery_mod.Rules)

    def validate(self, path="receivers::goroutines"):
        problems = []
        if not (self.pids or self.paths or self.command or self.discovery.enabled):
            problems.append(f"{path}: give at least one of pids, paths, command, discovery (or the "
                            f"targets on the command line: --pid, --binary or -- COMMAND)")
        for pid in self.pids:
            if not isinstance(pid, int) or pid <= 0:
                problems.append(f"{path}::pids: {pid!r} is not a process id")
        unknown = [k for k in self.kinds if k not in KIND_NAMES]
        if unknown:
            problems.append(f"{path}::kinds: unknown {unknown}; choose from {sorted(KIND_NAMES)}")
        if self.poll_interval_s <= 0 or self.check_interval_s <= 0:
            problems.append(f"{path}: poll_interval_s and check_interval_s must be > 0")
        if self.buffer_events < 1 or self.max_batch_events < 1:
            problems.append(f"{path}: buffer_events and max_batch_events must be >= 1")
        problems += [f"{path}: {p}" for p in self.probe_config().validate()] if not unknown else []
        if self.level not in levels.LEVELS:
            problems.append(f"{path}::level must be one of {', '.join(levels.LEVELS)}, not {self.level!r}")
        try:
            levels.parse_overhead(self.max_overhead)
        except (TypeError, ValueError):
            problems.append(f"{path}::max_overhead must be a percentage of the target's CPU time "
                            f"below 100% (2%, or 0.02), not {self.max_overhead!r}")
        if min(self.window_s, self.period_s, self.trigger_cooldown_s, self.trigger_oldest_wait_s,
               self.trigger_sched_latency_p99_s) < 0:
            problems.append(f"{path}: window, period and the trigger durations must be >= 0")
        if self.period_s and self.period_s < (self.window_s or levels.DEFAULT_WINDOW_S):
            problems.append(f"{path}::period must be at least window "
                            f"({self.window_s or levels.DEFAULT_WINDOW_S}s), not {self.period_s}s")
        if not 0 <= self.trigger_port < 65536:
            problems.append(f"{path}::trigger_port must be a TCP port (0: off), not {self.trigger_port}")
        return problems

    def probe_config(self):
        return probes.Config(ring_bytes=self.ring_bytes,
                             kinds=frozenset(KIND_NAMES[k] for k in self.kinds if k in KIND_NAMES))


class GoroutineReceiver(Following):
    """Source of event batches: see the module docstring. ``next_stage`` is anything with
    ``start()``, ``consume(batch)`` and ``shutdown(timeout)``; ``registry`` is the ``Processes``
    that owns every fact about the traced processes."""

    SWITCH_INTERVAL_S = 0.001

    def __init__(self, config, next_stage=None, registry=None, launch_options=None):
        self.next = next_stage
        problems = config.validate()
        if problems:
            raise ConfigError(problems)
        self.config = config
        self.registry = registry if registry is not None else Processes()
        self.probes = None
        self.reader = None
        self.clock = MonotonicClock()
        self.lost = 0
        self.overflowed = 0                 # events the EventBuffer had no room for
        self.max_poll_gap_s = 0.0           # longest the event buffers went unread (kept after shutdown)
        self.events = 0
        self.buffer = EventBuffer(config.buffer_events, config.max_batch_events)
        self.failed_batches = 0             # batches the next stage raised on (dropped)
        self.failed_events = 0              # the events in them
        self._next_error_log = 0.0
        self.finished = threading.Event()   # set when every target has exited (none left to trace)
        self.command = None                 # targets.LaunchedCommand
        self._launch_options = dict(launch_options or {})   # subprocess.Popen keywords (stdio)
        self._stop = threading.Event()
        self._thread = None
        self._pipeline_thread = None
        self._idents = {}                   # pid -> ((dev, ino) of its executable, start ns), read
                                            # on the poller when its first events came
        self._path_targets = []             # (Target, GoBinary, Attachment, (dev, ino))
        self._seen_pids = set()             # pids whose events came through (registered or not)
        # pid -> goids seen, only for processes whose goroutines at attach could not be read
        # at once (no runtime.allgs symbol): their unknown goroutines are read one by one.
        self._lazy = {}
        self._mem = {}                      # pid -> procmem.ProcessMemory
        self._pending = queue.SimpleQueue()  # EXISTING batches of processes attached since
        self._watcher = None                # follows execs, replaced binaries, discovery
        self._retiring = set()              # pids whose probes are being detached
        self._unbiased = set()              # pids of PIE load bias to learn from their events
        self._retirements = []              # the threads that detach them
        self.discovery = None               # discovery_mod.Discovery when rules are given
        self._next_scan = 0.0
        self._shut = False
        self.levels = None                  # levels.LevelController
        self._window_lazy = set()           # pids read lazily only while a window is open
        self._inject = collections.deque()  # event batches to deliver with the next kernel batch

    # -- control path -----------------------------------------------------------------------------

    def start(self):
        """Attach to every target and start polling. Raises TargetError / ProbeError up front."""
        missing = privileges.problems(self.config.pids, links=uprobe.links_available())
        if missing:
            raise ProbeError("cannot trace: " + "; ".join(missing))
        if self.registry.pods is None:
            self.registry.pods = platform.PodIndex.from_environment()
        if self.next is not None:
            self.next.start()
        self.probes = probes.Probes(self.config.probe_config())
        try:
            self.levels = levels.LevelController(self.config, self.probes, memory=self._memory,
                                                 on_window=self._on_window)
            self.levels.calibrate()
            self.reader = self.probes.reader()
            for pid in self.config.pids:
                self._attach_pid(targets.Target.pid(pid), pid)
            for path in self.config.paths:
                self._attach_path(targets.Target.path(path))
            if self.config.command:
                self._launch(targets.Target.command(self.config.command))
            if self.config.discovery.enabled:
                # The first scan is the watcher's, once the poller drains the event buffers: attaching a
                # node's worth of processes takes seconds, their events must not wait for it.
                self.discovery = discovery_mod.Discovery(self.config.discovery, self.registry.pods)
            self.levels.start()
        except BaseException:
            self._teardown()
            raise
        # The poller must get the GIL within milliseconds of waking: at the probes' top rate a
        # CPU's buffer holds ~90 ms (16 MiB on 2 CPUs). Python hands the GIL over every 5 ms by
        # default; with the pipeline thread busy and the CPU shared, gaps of 0.2 s between reads
        # were measured (and lost events); at 1 ms they stayed under 0.1 s.
        if sys.getswitchinterval() > self.SWITCH_INTERVAL_S:
            sys.setswitchinterval(self.SWITCH_INTERVAL_S)
        self._pipeline_thread = threading.Thread(target=self._pipeline_loop, daemon=True,
                                                 name="gotel-pipeline")
        self._pipeline_thread.start()
        self._thread = threading.Thread(target=self._run, name="gotel-receiver", daemon=True)
        self._thread.start()
        self._watcher = threading.Thread(target=self._watch, name="gotel-watch", daemon=True)
        self._watcher.start()
        return self

    def open_window(self, reason="signal"):
        """Open a window of full tracing on every target now (any thread, signal handlers too)."""
        if self.levels is not None:
            self.levels.open_window(reason)

    def _on_window(self, unit, window, stage):
        """A window of full tracing opens or closes (controller thread).

        Opening, just before the probe goes on: a census of the process (``receiver.census``, no
        stacks) is handed to the pipeline with the next kernel batch (the decoder sorts by time): an
        EXISTING event per goroutine (ignored for those the decoder knows from the level below) and
        a PARK for each one waiting, with its wait reason, dated when its wait began as far as the
        runtime says (``g.waitsince``, stamped at GC cycles; else the census's time), so that a
        wait begun before the window ends in a park span; and a CENSUS event closing the list,
        by which the decoder ends the goroutines it holds that exited unseen. Without a census (a
        binary whose goroutine list cannot be located), goroutines first seen in the window are
        read one by one as their events arrive instead (the lazy path)."""
        if not window.attached:
            return
        for pid in unit.pids():
            proc = self.registry.get(pid)
            if stage == "opening" and proc is not None:
                batch = None
                try:
                    batch = existing.census_events(proc.binary, pid, window.number)
                except GotelError as e:
                    log.info("process %d: goroutines at window %d not read: %s", pid,
                             window.number, e)
                if batch is not None:
                    self._inject.append(existing.window_sync(batch, proc.binary.layout))
                elif pid not in self._lazy:
                    self._window_lazy.add(pid)
                    self._lazy[pid] = set()
            elif stage == "closed" and pid in self._window_lazy:
                self._window_lazy.discard(pid)
                self._lazy.pop(pid, None)

    @property
    def refused(self):
        """Events lost before the pipeline: event buffer full (kernel) plus buffer full (user space)."""
        return self.lost + self.overflowed

    def _attach_pid(self, target, pid, binary=None, popen=None):
        if not targets.is_running(pid):
            raise TargetError(f"process {pid} does not exist (it exited?); give a running PID")
        binary = binary or targets.open_binary(pid)
        proc = Process.found(pid, binary, target, popen=popen)
        if popen is not None:
            proc.exe = self.command.program   # the shell is about to become it
        unit = self.levels.add(binary, pid)
        proc.attachment = unit.full       # the casgstatus probe at start (None below full)
        if popen is None:
            proc.pc_bias()
        elif binary.pie:
            self._unbiased.add(pid)   # not exec'd yet: learnt from its first events
        self.registry.add(proc)
        if self.config.existing and popen is None:
            self._read_existing(proc)
        log.info("tracing %s", proc)
        return proc

    def _attach_path(self, target):
        binary = targets.open_binary(target.value)
        att = self._add_path_unit(binary)
        st = os.stat(target.value)
        self._path_targets.append((target, binary, att, (st.st_dev, st.st_ino)))
        for pid in targets.processes_running(target.value):
            proc = self.registry.add(Process.found(pid, binary, target))
            proc.pc_bias()
            if self.config.existing:
                self._read_existing(proc)
        log.info("tracing every process running %s", target.value)

    def _add_path_unit(self, binary):
        """The probes of a binary target (every process running it), under the level controller."""
        return self.levels.add(binary, -1, pids=lambda: [p.pid for p in self.registry.alive()
                                                         if p.binary is binary])

    def _launch(self, target):
        self.command = targets.LaunchedCommand(list(target.value), self.config.keep_running,
                                               **self._launch_options)
        try:
            binary = targets.open_binary(self.command.program)
            self._attach_pid(target, self.command.pid, binary=binary, popen=self.command.popen)
        except BaseException:
            self.command.kill()
            raise
        self.command.release()

    def _read_existing(self, proc):
        try:
            stacks = {}
            batch = existing.read_goroutines(proc.pid, proc.binary, stacks)
            proc.attach_stacks = stacks
        except GotelError as e:
            log.warning("process %d: goroutines alive at attach not read: %s", proc.pid, e)
            batch = None
        if batch is None:
            self._lazy[proc.pid] = set()
        else:
            self._pending.put(batch)

    def _memory(self, pid):
        mem = self._mem.get(pid)
        if mem is None:
            mem = self._mem[pid] = procmem.ProcessMemory(pid)
        return mem

    def wait(self, timeout=None):
        """Block until every target has exited (or timeout); return the launched command's exit
        status, if gotel launched one."""
        self.finished.wait(timeout)
        if self.command is not None:
            return self.command.popen.wait(timeout)
        return None

    def shutdown(self, timeout=5.0):
        """Stop polling after a last full drain, detach everything, then shut the next stage down.
        Idempotent."""
        if self._shut:
            return
        self._shut = True
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        self.buffer.close()
        if self._pipeline_thread is not None:
            # The stages run on that thread only and never wait on I/O (exporters queue): it
            # ends once it went through what was collected, which is not dropped for being much.
            self._pipeline_thread.join(max(0.0, deadline - time.monotonic()))
            if self._pipeline_thread.is_alive():
                log.warning("processing the %d events collected before the stop (a second "
                            "signal stops gotel without them)",
                            self.buffer.appended - self.buffer.consumed)
                self._pipeline_thread.join()
        if self._watcher is not None:
            self._watcher.join(max(0.0, deadline - time.monotonic()))
        self._teardown()
        if self.next is not None:
            self.next.shutdown(max(0.0, deadline - time.monotonic()))

    def _teardown(self):
        if self.levels is not None:
            self.levels.stop()
        self.buffer.close()
        for retire in self._retirements:
            retire.join()
        if self.reader is not None:
            self.max_poll_gap_s = self.reader.max_gap_s
            self.reader.close()
            self.reader = None
        if self.probes is not None:
            self.probes.close()
            self.probes = None
        for mem in self._mem.values():
            mem.close()
        self._mem.clear()

    # -- poller thread ----------------------------------------------------------------------------

    def _run(self):
        """The poller: event buffers -> EventBuffer, and the periodic check. Never runs a stage."""
        next_check = 0.0
        try:
            self._deliver_pending()
            while not self._stop.is_set():
                self._buffer(self.reader.poll(self.config.poll_interval_s))
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + self.config.check_interval_s
                    self._check()
            self._buffer(self.reader.read(everything=True))   # what was written before shutdown
            self._check()
        except Exception:
            log.exception("receiver poller stopped by an unexpected error")
            self.finished.set()
        finally:
            self.buffer.close()     # the pipeline thread empties the buffer, then ends

    def _buffer(self, batch):
        if not len(batch):
            return
        # Who a new PID is, read now, while the process most likely still runs (the pipeline
        # thread registers it, maybe after it exited).
        pids = batch["pid"]
        if pids[0] not in self._idents or not (pids == pids[0]).all():
            for pid in np.unique(pids).tolist():
                if pid not in self._idents:
                    self._idents[pid] = (self._identify(pid), start_time_ns(pid))
        self.buffer.put(batch)

    @staticmethod
    def _identify(pid):
        try:
            st = os.stat(f"/proc/{pid}/exe")
            return (st.st_dev, st.st_ino)
        except OSError:
            return None

    def _pipeline_loop(self):
        """The pipeline thread: takes everything buffered as one batch and runs the stages on it,
        and lets them fire their timers between batches."""
        while True:
            batch = self.buffer.take(0.05)
            if batch is None:
                if self.buffer.closed:
                    return
                self._tick()
                continue
            try:
                self._deliver(batch)
            except Exception:   # noqa: BLE001  (this thread must live: the buffer would fill)
                log.exception("receiver dropped a batch of %d events on an unexpected error",
                              len(batch))
            finally:
                self.buffer.done(len(batch))
            self._tick()

    def _deliver(self, batch):
        if self._inject:
            injected = []
            while self._inject:     # appended by the controller thread: popleft is atomic
                injected.append(self._inject.popleft())
            batch = np.concatenate(injected + [batch])
        if not len(batch):
            return
        pids = batch["pid"]
        if pids[0] not in self._seen_pids or not (pids == pids[0]).all():
            self._note_pids(pids)
        if self._unbiased:
            self._learn_biases(batch)
        self.registry.settle()          # hooks of a PID given to a new process, before its events
        if self._lazy:
            batch = self._with_unknown(batch)
        self.clock.to_unix(batch["ts_ns"])
        self.events += len(batch)
        try:
            if self.next is not None:
                self.next.consume(batch)
        except Exception:
            # A failing stage must not stop the poller: the ring would fill and every process
            # would lose events. The batch is dropped, counted, and the error logged (rate-limited).
            self.failed_batches += 1
            self.failed_events += len(batch)
            now = time.monotonic()
            if now >= self._next_error_log:
                self._next_error_log = now + 10.0
                log.exception("next stage failed on a batch of %d events (%d batches dropped so "
                              "far)", len(batch), self.failed_batches)

    def _tick(self):
        """Let the stages after this one fire their timers (between batches, on this thread)."""
        tick = getattr(self.next, "tick", None)
        if tick is None:
            return
        try:
            tick()
        except Exception:  # noqa: BLE001  (as for a batch: logged, never stops the poller)
            log.exception("a stage failed on a tick")

    def _learn_biases(self, batch):
        """PIE load biases of processes traced from their first instruction (launched by gotel,
        or started after gotel attached to their binary). Their first events include goroutine
        1's creation, whose start PC is runtime.main: that gives the bias exactly, even when the
        process is gone before its memory map could be read."""
        main = batch[(batch["kind"] == Kind.CREATE) & (batch["goid"] == 1)]
        for pid in [p for p in main["pid"].tolist() if p in self._unbiased]:
            self._unbiased.discard(pid)
            proc = self.registry.get(pid)
            if proc is None or not proc.binary.pie:
                continue
            entry = proc.binary.pclntab.lookup(["runtime.main"]).get("runtime.main")
            if entry is not None:
                proc.load_bias = int(main["pc_start"][main["pid"] == pid][0]) - entry[0]

    def _note_pids(self, pids):
        """Register processes first seen in events: new processes running a traced binary."""
        for pid in np.unique(pids).tolist():
            if pid not in self._seen_pids:
                self._seen_pids.add(pid)
                known = self.registry.get(pid)
                if known is None:
                    self._adopt(pid)
                elif not known.alive and (start_time_ns(pid) or self._idents.get(pid, (0, 0))[1]) \
                        not in (0, known.start_time_ns):
                    self._adopt(pid)       # the PID of a process that exited, now another's
                now = self.registry.get(pid)
                if now is not None and not now.alive:
                    # Gone already (its events came after it): a new process may take the PID at
                    # any moment, so its next events are looked at again.
                    self._seen_pids.discard(pid)

    def _with_unknown(self, batch):
        """Prefix EXISTING events for goroutines never seen created (read from the process), for
        the processes whose goroutines at attach could not be read as a whole."""
        extra = []
        for pid in np.unique(batch["pid"]).tolist():
            known = self._lazy.get(pid)
            if known is None:
                continue
            mine = batch[batch["pid"] == pid]
            born = (mine["kind"] == Kind.CREATE) | (mine["kind"] == Kind.EXISTING)
            known.update(mine["goid"][born].tolist())
            others = mine[~born & (mine["kind"] != Kind.CENSUS)]
            goids, first = np.unique(others["goid"], return_index=True)
            proc = self.registry.get(pid)
            for goid, i in zip(goids.tolist(), first.tolist()):
                if goid not in known:
                    known.add(goid)
                    extra.append(self._introduce(proc, others[i:i + 1]))
            done = mine["goid"][mine["kind"] == Kind.EXIT]
            known.difference_update(done.tolist())
        if not extra:
            return batch
        return np.concatenate(extra + [batch])

    def _introduce(self, proc, event):
        """An EXISTING event for the goroutine of one kernel event: read from its g in the process,
        or, when the process is already gone, just its goid and g address (start PC unknown)."""
        if proc is not None and proc.alive:
            try:
                found = existing.read_g(self._memory(proc.pid), int(event["g"][0]), proc.binary.layout)
                if len(found) and found["goid"][0] == event["goid"][0]:
                    found["ts_ns"] = event["ts_ns"]   # known to exist by then
                    return found
            except (GotelError, OSError):
                pass   # the process is gone (or going): introduce the goroutine without its g
        out = event.copy()
        out["kind"] = Kind.EXISTING
        out["aux_goid"] = out["pc_start"] = out["pc_create"] = out["wait_reason"] = 0
        out["new_status"] = out["old_status"]
        return out

    def _adopt(self, pid):
        """A PID seen in events but not registered: a new process running a traced binary."""
        ident = self._identify(pid) or self._idents.get(pid, (None, 0))[0]
        for target, binary, _att, path_ident in self._path_targets:
            if ident is None and len(self._path_targets) > 1:
                break
            if binary is None:
                continue
            if ident is None or ident == path_ident:
                proc = Process.found(pid, binary, target)
                proc.alive = ident is not None
                if binary.pie:
                    self._unbiased.add(pid)    # started after the attach: traced from its start
                self.registry.add(proc)
                log.info("tracing new %s", proc)
                return

    def _deliver_pending(self):
        """EXISTING batches of processes attached since the last poll, into the buffer (poller)."""
        while True:
            try:
                batch = self._pending.get_nowait()
            except queue.Empty:
                return
            self._buffer(batch)

    def _check(self):
        """Retire exited processes, follow execs and replaced binaries, discover new processes,
        report lost events."""
        if self.probes is None or self.reader is None:
            return
        self._deliver_pending()
        for proc in self.registry.alive():
            if proc.pid in self._retiring:
                continue
            status = proc.popen.poll() if proc.popen is not None else None
            if status is None and targets.is_running(proc.pid):
                continue
            if status is None and proc.popen is not None:
                # It died between the two looks (a zombie not reaped by poll): its status is
                # there to take now.
                try:
                    status = proc.popen.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    pass
            # Its last events were committed before it died: drain them before detaching, and
            # mark it exited only once the pipeline went through them.
            self._buffer(self.reader.read())
            mark = self.buffer.appended
            mem = self._mem.pop(proc.pid, None)
            if mem is not None:
                mem.close()
            # Unregistering a uprobe waits on the kernel (0.1-0.15 s measured here): that happens
            # on a thread of its own, while this one keeps draining the ring for other targets.
            self._retiring.add(proc.pid)
            retire = threading.Thread(target=self._retire, args=(proc, status, mark), daemon=True,
                                      name=f"gotel-retire-{proc.pid}")
            self._retirements = [t for t in self._retirements if t.is_alive()] + [retire]
            retire.start()
        # Events under the PID of a process that exited are looked at again: the PID may have
        # been given to a new process of a traced binary.
        self._seen_pids.difference_update(
            [p.pid for p in self.registry if not p.alive and p.pid not in self._retiring])
        lost = self.probes.counters()["lost"]
        if lost > self.lost:
            log.warning("%d events lost: the kernel's event buffers (%d bytes) were full; raise "
                        "ring_bytes",
                        lost - self.lost, self.config.ring_bytes)
            self.lost = lost
        overflowed = self.buffer.overflowed
        if overflowed > self.overflowed:
            log.warning("%d events lost: the pipeline fell %d events behind the probes (gotel's "
                        "event buffer was full); raise buffer_events or trace fewer kinds",
                        overflowed - self.overflowed, self.config.buffer_events)
            self.overflowed = overflowed
        if not self._path_targets and self.discovery is None and not self.registry.alive():
            self.finished.set()

    def _retire(self, proc, status, mark=0):
        """Detach an exited process's probe and mark it exited (on a thread of its own), once the
        pipeline consumed the events buffered up to ``mark``."""
        try:
            self.levels.remove(proc.pid)     # every probe of the process, whatever its level
            self.probes.forget(proc.pid)
            self.buffer.wait_consumed(mark)
        finally:
            self._idents.pop(proc.pid, None)
            self.registry.mark_exited(proc.pid, status)
            # Its PID may name another process next: let that one's events be adopted afresh
            # (also before the next check comes round).
            self._seen_pids.discard(proc.pid)
            self._lazy.pop(proc.pid, None)
            self._unbiased.discard(proc.pid)
            self._retiring.discard(proc.pid)
        # Killed or failed is worth a warning; an ordinary end (or one gotel cannot know the
        # status of, not being the parent) is news.
        level = logging.INFO if status in (None, 0) else logging.WARNING
        log.log(level, "process %d (%s) %s; still tracing %d other process(es)", proc.pid,
                proc.exe, targets.describe_exit(status), len(self.registry.alive()))



def run_command(argv, next_stage=None, timeout=None, capture=True, **config):
    """Trace a command from its first instruction until it exits, then drain and shut down.

    ``config`` holds any other ``Config`` fields. With ``capture``, the command's stdout and stderr
    are collected as text (else inherited). Returns ``(receiver, subprocess.CompletedProcess)``;
    the receiver is shut down but its registry, ``lost`` and counters stay readable.
    """
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True} if capture else {}
    rx = GoroutineReceiver(Config(command=tuple(map(str, argv)), **config), next_stage,
                           launch_options=options)
    rx.start()
    try:
        out, err = rx.command.popen.communicate(timeout=timeout)
        rx.wait(timeout)
    finally:
        rx.shutdown()
    return rx, subprocess.CompletedProcess(list(argv), rx.command.popen.returncode, out, err)

