"""``gotel top``: goroutines like ``top`` shows processes, live, per process and per group.

Every ``interval`` (2 s by default) each target's goroutines are read from its memory (the census,
receiver/census.py: no probe is attached and the process is never stopped), folded into groups
(start function, state, wait reason, creation site and stack: receiver/groups.py), and the screen
is redrawn in place:

- per process: goroutines alive, created and exited per second since the last refresh (created
  from the rise of the highest goid, which the runtime hands out in order, in batches of 16 per P,
  so it is exact to within that batch; exited = created - the change in the count), the longest
  wait, leak suspects, and what watching it costs: gotel's CPU for the census, since top attaches
  no probe (the traced program pays nothing);
- per group, biggest first: its count and change, the oldest wait (right to within one GC cycle,
  as Go's own traceback), the state or wait reason, the start function, and a ``LEAK?``/``LEAKED``
  mark for leak suspects and goroutines the runtime proved leaked.

Targets: ``--pid``, ``--binary`` (every process running it, looked up again at each refresh) or a
config file's discovery rules (``-c``). Keys: ``q`` quits, ``s`` shows or hides the runtime's own
goroutines. Without a terminal (or with ``--iterations N``) it prints N frames and exits.
"""

import os
import select
import shutil
import sys
import termios
import time
import tty

from receiver import discovery as discovery_mod, targets
from receiver.census import CensusReader
from receiver.errors import GotelError
from receiver.groups import LeakTracker, groups


def _age(ns):
    s = ns / 1e9
    if s >= 3600:
        return f"{s / 3600:.1f}h"
    if s >= 60:
        return f"{s / 60:.1f}m"
    if s >= 1:
        return f"{s:.1f}s"
    return "-" if ns == 0 else f"{s * 1000:.0f}ms"


def _waiting_in(stack):
    """The innermost frame of a stack outside the runtime: where the goroutine waits or runs."""
    for function, _file, _line in stack:
        if not function.startswith(("runtime.", "internal/")):
            return function
    return stack[0][0] if stack else ""


class Watched:
    """One target process and what top remembers of it between refreshes."""

    def __init__(self, pid, leak_after_s):
        self.pid = pid
        self.binary = targets.open_binary(pid)
        self.reader = CensusReader(self.binary, pid)
        self.leaks = LeakTracker(threshold_s=leak_after_s)
        try:
            self.exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        except OSError:
            self.exe = "?"
        self.last = None          # (time, count, max goid, {group key: count})
        self.view = None

    def refresh(self, stacks):
        cpu0 = time.thread_time()
        census = self.reader.read(stacks=stacks)
        gs = groups(census, self.binary)
        leaks = {leak.group.key: leak for leak in self.leaks.update(gs)}
        cpu = time.thread_time() - cpu0
        now = time.monotonic()
        count = len(census.goroutines)
        top_goid = int(census.goroutines["goid"].max()) if count else 0
        created = exited = None
        previous = {}
        if self.last is not None:
            t, c, g, previous = self.last
            dt = max(now - t, 1e-6)
            made = max(0, top_goid - g)
            created, exited = made / dt, max(0, made - (count - c)) / dt
        self.last = (now, count, top_goid, {x.key: x.count for x in gs})
        waits = census.wait_ns()
        self.view = {"count": count, "created": created, "exited": exited,
                     "longest": int(waits.max()) if count else 0, "groups": gs, "leaks": leaks,
                     "previous": previous, "cpu_ms": cpu * 1e3, "dropped": sum(census.dropped.values())}
        return self.view


class Top:
    """The view's state and rendering (no terminal I/O here: ``frame()`` returns the lines)."""

    def __init__(self, find_pids, interval_s=2.0, leak_after_s=60.0, stacks=True):
        self.find_pids = find_pids
        self.interval_s = interval_s
        self.leak_after_s = leak_after_s
        self.stacks = stacks
        self.show_system = False
        self.watched = {}
        self.errors = {}

    def refresh(self):
        pids = set(self.find_pids())
        for pid in list(self.watched):
            if pid not in pids:
                del self.watched[pid]
        for pid in sorted(pids):
            try:
                w = self.watched.get(pid)
                if w is None:
                    w = self.watched[pid] = Watched(pid, self.leak_after_s)
                w.refresh(self.stacks)
                self.errors.pop(pid, None)
            except GotelError as e:
                self.watched.pop(pid, None)
                self.errors[pid] = " ".join(str(e).split())

    def frame(self, width=120, height=40):
        lines = [f"gotel top - {time.strftime('%H:%M:%S')} - {len(self.watched)} process(es), "
                 f"every {self.interval_s:g}s - q: quit, s: runtime goroutines "
                 f"{'shown' if self.show_system else 'hidden'}", ""]
        lines.append(f"{'PID':>8} {'GOROUTINES':>10} {'CREATED/s':>10} {'EXITED/s':>9} "
                     f"{'LONGEST':>8} {'LEAKS':>5} {'COST':>9}  PROGRAM")
        for pid, w in sorted(self.watched.items()):
            v = w.view
            if v is None:
                continue
            rate = (lambda x: "-" if x is None else f"{x:.0f}")
            lines.append(f"{pid:>8} {v['count']:>10} {rate(v['created']):>10} {rate(v['exited']):>9} "
                         f"{_age(v['longest']):>8} {len(v['leaks']):>5} {v['cpu_ms']:>6.1f}ms  "
                         f"{w.exe} ({w.binary.go_version}; census, no probe)")
        for pid, err in sorted(self.errors.items()):
            lines.append(f"{pid:>8}  not watched: {err}")
        lines += ["", f"{'PID':>8} {'COUNT':>7} {'CHANGE':>6} {'OLDEST':>7} {'STATE':<22} "
                      f"START FUNCTION at WHERE IT WAITS"]
        rows = []
        for pid, w in self.watched.items():
            v = w.view
            if v is None:
                continue
            for g in v["groups"]:
                if g.system and not self.show_system:
                    continue
                before = v["previous"].get(g.key)
                change = "new" if before is None and v["previous"] else (
                    f"{g.count - before:+d}" if before is not None else "")
                leak = v["leaks"].get(g.key)
                mark = "" if leak is None else (" LEAKED" if leak.definite else " LEAK?")
                where = _waiting_in(g.stack)
                at = f" at {where}" if where and where != g.start else ""
                rows.append((g.count, pid, f"{pid:>8} {g.count:>7} {change:>6} "
                                           f"{_age(g.oldest_wait_ns):>7} "
                                           f"{(g.wait_reason or g.state)[:22]:<22} "
                                           f"{g.start}{at}{mark}"))
        rows.sort(key=lambda r: (-r[0], r[1]))
        lines += [r[2] for r in rows]
        return [line[:width] for line in lines[:height]]


def _size(out):
    """The terminal's own size (not $COLUMNS, which a parent may have set for another one)."""
    try:
        return os.get_terminal_size(out.fileno())
    except OSError:
        return shutil.get_terminal_size((120, 40))


def _draw(out, lines):
    out.write("\x1b[H\x1b[2J" + "\r\n".join(lines) + "\r\n")
    out.flush()


def run(top, iterations=None, out=sys.stdout, inp=sys.stdin):
    """Refresh and draw until q (or ``iterations`` frames); returns 0."""
    interactive = iterations is None and inp.isatty() and out.isatty()
    old = None
    if interactive:
        old = termios.tcgetattr(inp.fileno())
        tty.setcbreak(inp.fileno())
        out.write("\x1b[?25l")            # hide the cursor while drawing
    try:
        n = 0
        while True:
            top.refresh()
            size = _size(out) if interactive else shutil.get_terminal_size((120, 40))
            if interactive:
                _draw(out, top.frame(size.columns, size.lines - 1))
            else:
                out.write("\n".join(top.frame(size.columns, 10_000)) + "\n\n")
                out.flush()
            n += 1
            if iterations is not None and n >= iterations:
                return 0
            deadline = time.monotonic() + top.interval_s
            while (left := deadline - time.monotonic()) > 0:
                if not interactive:
                    time.sleep(left)
                    break
                ready, _, _ = select.select([inp], [], [], left)
                if ready:
                    key = os.read(inp.fileno(), 1)
                    if key in (b"q", b"Q", b"\x03"):
                        return 0
                    if key in (b"s", b"S"):
                        top.show_system = not top.show_system
                        _draw(out, top.frame(size.columns, size.lines - 1))
    finally:
        if old is not None:
            out.write("\x1b[?25h\n")
            out.flush()
            termios.tcsetattr(inp.fileno(), termios.TCSADRAIN, old)


def pid_finder(pids=(), binaries=(), rules=None):
    """A function returning the PIDs to watch now: given PIDs still running, processes of the given
    binaries, and processes the discovery rules select."""
    scanner = discovery_mod.Discovery(rules) if rules is not None and rules.enabled else None
    paths = [os.path.realpath(b) for b in binaries]

    def find():
        found = {p for p in pids if targets.is_running(p)}
        for path in paths:
            found.update(targets.processes_running(path))
        if scanner is not None:
            found.update(scanner.scan())
        return found

    return find
