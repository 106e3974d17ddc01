"""``gotel funcs count|latency PATTERN``: function probes on one Go binary, summarised like bcc's
funccount and funclatency, but per goroutine (calls matched by goroutine id, never thread id).

``FunctionTracer`` owns one ``receiver.funcs.FuncProbes`` (one binary), its ring-buffer reader, a
``pipeline.funcs.CallMatcher`` and a ``FunctionStats``. ``poll()`` reads one batch and returns the
calls it finished. Targets: PIDs of that binary, every process running it (``paths``), or a launched
command (attached while the shell still holds it, so no call is missed). Not thread-safe: the
caller's thread drives it.
"""

import os
import sys
import time

import numpy as np

from pipeline.funcs import CallMatcher, FunctionStats
from receiver import funcs, targets
from receiver.errors import TargetError
from receiver.ringbuf import RingBufferReader


class FunctionTracer:
    """Function probes on the processes of one Go binary."""

    def __init__(self, patterns, pids=(), paths=(), command=None, limit=funcs.DEFAULT_LIMIT,
                 config=funcs.Config(), goroutine_span=None, launch_options=None):
        self.command = None
        if command:
            self.command = targets.LaunchedCommand(list(command), **(launch_options or {}))
            sources = [self.command.program]
        else:
            sources = list(pids) + list(paths)
        if not sources:
            raise TargetError("nothing to trace: give --pid PID, --binary PATH, or -- COMMAND ARGS...")
        try:
            binaries = [targets.open_binary(s) for s in sources]
            inodes = {os.stat(b.image.path).st_ino for b in binaries}
            if len(inodes) > 1:
                raise TargetError("function probes follow one Go binary at a time; these targets run "
                                  f"{len(inodes)} different ones")
            self.binary = binaries[0]
            self.functions, self.skipped = funcs.select(self.binary, patterns, limit)
            self.names = [f.name for f in self.functions]
            self.values = None      # receiver.funcargs values per function, when registers are captured
            strings = None
            if config.capture_registers:
                from receiver import funcargs

                self.values = [funcargs.from_types(f.types) if f.types is not None
                               else funcargs.from_dwarf(self.binary, f) or [] for f in self.functions]
                strings = [funcargs.string_registers(v) for v in self.values]
            self.probes = funcs.FuncProbes(self.binary, self.functions, config, strings=strings)
            if self.command is not None:
                self.probes.attach(self.command.pid)
                self.pids = [self.command.pid]
            elif pids:
                for pid in pids:
                    self.probes.attach(int(pid))
                self.pids = [int(p) for p in pids]
            else:
                self.probes.attach(-1)
                self.pids = []
        except BaseException:
            if self.command is not None:   # never released: the program has not run
                self.command.popen.kill()
                self.command.popen.wait()
            raise
        self.reader = RingBufferReader(self.probes.events_fd, funcs.FUNC_EVENT_DTYPE)
        self.matcher = CallMatcher([f.sp_delta for f in self.functions], goroutine_span=goroutine_span)
        self.stats = FunctionStats(self.names)
        self._maps = {}
        self.events = 0
        if self.command is not None:
            self.command.release()

    def _address_map(self, pid, ips=None):
        m = self._maps.get(pid)
        if m is None:
            try:
                bias = self.binary.load_bias(pid) if self.binary.pie else 0
            except TargetError:
                # Gone before its memory map was read (a short-lived PIE): its events say it.
                bias = funcs.infer_bias(self.functions, ips) if ips is not None else None
                if bias is None:
                    raise
            m = self._maps[pid] = funcs.AddressMap(self.functions, bias)
        return m

    def _function_index(self, events):
        if not self.binary.pie:
            return self._address_map(0).lookup(events["ip"])
        out = np.full(len(events), -1, np.int32)
        for pid in np.unique(events["pid"]).tolist():
            sel = events["pid"] == pid
            try:
                out[sel] = self._address_map(pid, events["ip"][sel]).lookup(events["ip"][sel])
            except TargetError:
                pass   # the process is gone before its load address was read: counted as unmapped
        return out

    def consume(self, events):
        """Finished calls of a batch of FUNC_EVENT_DTYPE events (and add them to ``stats``)."""
        self.events += len(events)
        calls = self.matcher.process(events, self._function_index(events))
        self.stats.add(calls)
        return calls

    def poll(self, timeout=0.1):
        return self.consume(self.reader.poll(timeout))

    def finished(self):
        if self.command is not None:
            return self.command.popen.poll() is not None
        if self.pids:
            return not any(targets.is_running(p) for p in self.pids)
        return False

    def close(self):
        """Drain what is left, end open calls (ENDED_AT_SHUTDOWN), remove the probes. Returns the
        calls that came out."""
        calls = [self.consume(self.reader.read())]
        rest = self.matcher.flush()
        self.stats.add(rest)
        calls.append(rest)
        self.reader.close()
        self.probes.close()
        return np.concatenate(calls)

    def counters(self):
        c = dict(self.probes.counters())
        c.update(events=self.events, unmatched_returns=self.matcher.unmatched_returns,
                 unmapped=self.matcher.unmapped, probes=self.probes.probe_count)
        return c


def run(mode, patterns, pids=(), paths=(), command=None, interval=None, duration=None,
        limit=funcs.DEFAULT_LIMIT, out=sys.stdout, stop=None):
    """The body of ``gotel funcs count|latency``: trace until the targets exit, ``stop`` is set,
    or ``duration`` passes; print the summary every ``interval`` seconds and at the end."""
    tracer = FunctionTracer(patterns, pids, paths, command, limit)
    what = f"{len(tracer.functions)} function(s) with {tracer.probes.probe_count} probes"
    print(f"gotel: tracing {what} ({tracer.probes.attach_seconds:.2f} s to attach); "
          f"calls matched by goroutine", file=sys.stderr)
    for s in tracer.skipped[:10]:
        print(f"gotel: skipped {s}", file=sys.stderr)
    render = tracer.stats.format_counts if mode == "count" else tracer.stats.format_latency
    started = last = time.monotonic()
    try:
        while not (stop is not None and stop.is_set()) and not tracer.finished():
            if duration is not None and time.monotonic() - started >= duration:
                break
            tracer.poll(0.1)
            if interval and time.monotonic() - last >= interval:
                last = time.monotonic()
                print(time.strftime("\n%H:%M:%S"), file=out)
                print(render(), file=out, flush=True)
                tracer.stats.reset()
    finally:
        tracer.close()
        if tracer.command is not None and tracer.command.popen.poll() is None:
            tracer.command.popen.terminate()
            tracer.command.popen.wait(5)
    print(render(), file=out)
    c = tracer.counters()
    print(f"gotel: {c['events']} events, {c['lost']} lost, {c['bad_g']} with no goroutine, "
          f"{c['unmatched_returns']} returns of calls begun before attach; "
          f"{tracer.probes.detach_seconds:.2f} s to remove the probes", file=sys.stderr)
    return tracer
