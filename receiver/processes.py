"""Processes: the one owner of what gotel knows about each traced process.

A ``Process`` holds the facts found when a process is registered: its ``GoBinary``, executable,
command line, start time, the ``Target`` it was found through, its PIE load bias, whether it is
alive and how it ended. ``Processes`` keeps them by PID and answers every question the rest of gotel
asks about a process: the names of its PCs (``names``, cached per (pid, pc)), its wait reasons, and
the attributes that describe it (``describe``: OpenTelemetry ``process.*``, ``service.*``, ``go.*``).

A PID names one process at a time: ``add`` of a new process under a PID that belonged to another
first ``forget``s the old one, which drops every cached fact and calls the ``on_forget`` hooks, so
that the encoder's caches, the metric series and the decoder's goroutines of the old process go
with it. ``forget(pid)`` is the one way facts are dropped.

Thread-safety: every method may be called from any thread (the receiver's control path and its
watcher add and retire, the pipeline and the exporters read); the maps are guarded by one lock,
held only for the dict operations, never while symbolizing. The ``on_forget`` hooks touch the
pipeline's state, so they run only in ``settle()``, which the receiver's poller calls before it
hands on each batch: a PID forgotten on another thread is settled there.
"""

import collections
import dataclasses
import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from receiver import platform
from receiver.errors import GotelError

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_GOWRAP = re.compile(r"\.gowrap\d+$")


@dataclasses.dataclass(eq=False)
class Process:
    """A traced process and what gotel knows about it (mutated only by the receiver)."""

    pid: int
    binary: object               # receiver.binary.GoBinary
    exe: str
    start_time_ns: int           # Unix ns, from /proc/PID/stat (0 if unknown)
    target: object               # receiver.targets.Target
    args: tuple = ()             # its command line, read at registration
    alive: bool = True
    exit_status: int = None      # known for launched commands; negative = killed by that signal
    attachment: object = None    # receiver.probes.Attachment owned by this process (pid-filtered)
    popen: object = None         # subprocess.Popen for launched commands
    load_bias: int = None        # what to subtract from its PCs to get the file's (PIE), once known
    exe_id: tuple = None         # (device, inode) of the executable it ran when registered
    platform: dict = dataclasses.field(default_factory=dict)   # container, pod, own PID

    @classmethod
    def found(cls, pid, binary, target, popen=None):
        """A Process for a running pid, with the facts /proc gives now."""
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            exe = str(binary.path)
        # A launched command is still the shell that holds it until released: its argv is known.
        if getattr(target, "kind", "") == "command":
            args = tuple(target.value)
        else:
            args = read_cmdline(pid)
        exe_id = None
        if popen is None:            # a launched command is still the shell that will exec it
            try:
                st = os.stat(f"/proc/{pid}/exe")
                exe_id = (st.st_dev, st.st_ino)
            except OSError:
                pass
        return cls(pid, binary, exe, start_time_ns(pid), target, args=args, popen=popen,
                   exe_id=exe_id, platform=platform.describe(pid))

    def pc_bias(self):
        """The PIE load bias of this process (0 for non-PIE), read once while the process lives.
        0 if it could not be read: its PCs then stay unresolved rather than wrongly resolved."""
        if self.load_bias is None:
            try:
                self.load_bias = self.binary.load_bias(self.pid)
            except GotelError:
                return 0
        return self.load_bias

    def __repr__(self):
        state = "alive" if self.alive else f"exited({self.exit_status})"
        return f"Process({self.pid}, {self.exe}, {self.binary.go_version}, {state})"


class Processes:
    """Traced processes keyed by PID, and every fact about them. Iteration returns a snapshot."""

    def __init__(self, host_name=None, pods=None):
        self.host_name = host_name or socket.gethostname()
        self.pods = pods          # receiver.platform.PodIndex, when the cluster can be asked
        self._lock = threading.Lock()
        self._procs = {}
        self._names = {}          # (pid, pc) -> (function, file, line)
        self._described = {}      # pid -> attributes
        self._hooks = []
        self._forgotten = collections.deque()    # PIDs whose hooks have not run yet

    # -- membership ------------------------------------------------------------------------------
    def add(self, process):
        """Register process; a different process that held its PID before is forgotten first."""
        with self._lock:
            old = self._procs.get(process.pid)
        if old is not None and old is not process:
            self.forget(process.pid)
        with self._lock:
            self._procs[process.pid] = process
        return process

    def get(self, pid):
        with self._lock:
            return self._procs.get(int(pid))

    def __getitem__(self, pid):
        with self._lock:
            return self._procs[int(pid)]

    def __contains__(self, pid):
        with self._lock:
            return int(pid) in self._procs

    def __iter__(self):
        with self._lock:
            return iter(list(self._procs.values()))

    def __len__(self):
        with self._lock:
            return len(self._procs)

    def alive(self):
        return [p for p in self if p.alive]

    def mark_exited(self, pid, status=None):
        """Record that pid exited; returns its Process (None if unknown)."""
        with self._lock:
            proc = self._procs.get(pid)
            if proc is not None:
                proc.alive = False
                if status is not None:
                    proc.exit_status = status
            return proc

    def on_forget(self, hook):
        """Call hook(pid), in ``settle()``, whenever the facts of pid were dropped (its PID now
        names another process)."""
        self._hooks.append(hook)

    def forget(self, pid):
        """Drop every fact about pid; its hooks run at the next ``settle()``."""
        pid = int(pid)
        with self._lock:
            self._procs.pop(pid, None)
            self._described.pop(pid, None)
            for key in [k for k in self._names if k[0] == pid]:
                del self._names[key]
        self._forgotten.append(pid)

    def settle(self):
        """Run the hooks of the PIDs forgotten since the last call (on the pipeline's thread)."""
        while self._forgotten:
            pid = self._forgotten.popleft()
            for hook in self._hooks:
                hook(pid)

    # -- names -----------------------------------------------------------------------------------
    def names(self, pid, pcs):
        """[(function, file, line)] for PCs of the process (its own addresses: a PIE's are rebased
        here). Unknown PCs, and PCs of an unknown pid, give ("", "", 0). Cached per (pid, pc)."""
        pid = int(pid)
        pcs = [int(pc) for pc in pcs]
        with self._lock:
            missing = sorted({pc for pc in pcs if (pid, pc) not in self._names})
        if missing:
            found = self._resolve(pid, missing)
            with self._lock:
                self._names.update(((pid, pc), entry) for pc, entry in zip(missing, found))
        with self._lock:
            return [self._names.get((pid, pc), ("", "", 0)) for pc in pcs]

    def function(self, pid, pc):
        """The function holding pc, or "" when unknown."""
        return self.names(pid, [pc])[0][0] if pc else ""

    def _resolve(self, pid, pcs):
        proc = self.get(pid)
        if proc is None:
            return [("", "", 0)] * len(pcs)
        try:
            file_pcs = np.asarray(pcs, dtype=np.uint64) - np.uint64(proc.pc_bias())
            frames = proc.binary.symbolizer().symbolize(file_pcs)
        except Exception:  # noqa: BLE001  (a name is a nicety: never fail the caller for it)
            return [("", "", 0)] * len(pcs)
        out = []
        for pc, fn, file, line in zip(file_pcs.tolist(), frames.function.tolist(),
                                      frames.file.tolist(), frames.line.tolist()):
            if _GOWRAP.search(fn):
                fn = wrapped_function(proc.binary, pc) or fn
            out.append(("" if fn == "?" else fn, "" if file == "?" else file, int(line)))
        return out

    def wait_reasons(self, pid):
        """Go's wait reason names of the process's runtime (index = Go's number)."""
        proc = self.get(pid)
        return proc.binary.layout.wait_reasons if proc is not None else ()

    def wait_reason(self, pid, number):
        names = self.wait_reasons(pid) or ()
        return names[number] if number < len(names) and names[number] else f"waitReason({number})"

    # -- description -----------------------------------------------------------------------------
    def describe(self, pid):
        """Attributes that describe the process, by OpenTelemetry's semantic conventions (cached).
        A pid gotel knows nothing about is described by its pid and the host alone."""
        pid = int(pid)
        with self._lock:
            attrs = self._described.get(pid)
        if attrs is None:
            attrs = describe(pid, self.get(pid), self.host_name, self.pods)
            with self._lock:
                if pid in self._procs:
                    self._described[pid] = attrs
        return dict(attrs)


def describe(pid, proc, host_name, pods=None):
    """Attributes of a process (a ``Process`` or None), by OpenTelemetry's semantic conventions.
    ``process.pid`` is the PID the process sees itself as; ``gotel.process.host_pid`` the host's,
    when they differ (a process in a container's PID namespace)."""
    exe = proc.exe if proc is not None else ""
    exe_name = Path(exe).name if exe else ""
    binary = proc.binary if proc is not None else None
    module = getattr(binary, "module", "") or ""
    module = module if module != "command-line-arguments" else ""
    start = proc.start_time_ns if proc is not None else 0
    attrs = {
        "service.name": module or f"unknown_service:{exe_name or 'go'}",
        "service.instance.id": str(uuid.uuid5(uuid.NAMESPACE_URL,
                                              f"gotel://{host_name}/{pid}/{start}")),
        "process.pid": pid,
        "process.executable.name": exe_name,
        "process.executable.path": exe,
        "process.runtime.name": "go",
        "process.runtime.version": getattr(binary, "go_version", "") or "",
        "host.name": host_name,
    }
    if start:
        attrs["process.creation.time"] = iso8601(start)
    if proc is not None and proc.args:
        attrs["process.command_args"] = list(proc.args)
    if module:
        attrs["go.module.path"] = module
        version = getattr(getattr(binary, "info", None), "module_version", "")
        if version:
            attrs["go.module.version"] = version
    for key, value in sorted((getattr(binary, "build_settings", None) or {}).items()):
        attrs[f"go.build.{key.lstrip('-')}"] = value
    where = dict(proc.platform) if proc is not None else {}
    own_pid = where.pop("gotel.process.pid_in_namespace", None)
    if own_pid is not None and own_pid != pid:
        attrs["process.pid"] = own_pid
        attrs["gotel.process.host_pid"] = pid
    attrs.update(where)
    if pods is not None and where.get("k8s.pod.uid"):
        attrs.update(pods.attributes(where["k8s.pod.uid"], where.get("container.id", "")))
    return {k: v for k, v in attrs.items() if v != ""}


def wrapped_function(binary, pc):
    """The function a compiler-made ``go`` statement wrapper calls, or None.

    Since Go 1.21 ``go f(x)`` starts ``pkg.caller.gowrapN``, a closure that calls ``f(x)``: the
    goroutine's start PC names the wrapper, not ``f``. The wrapper's first direct call outside the
    runtime (its prologue calls ``runtime.morestack*``) is ``f``. amd64 only (as gotel); None when
    the code cannot be read or holds no such call (``f`` was inlined into the wrapper).
    """
    try:
        import capstone

        tab = binary.pclntab
        i = int(tab.find(np.array([pc], dtype=np.uint64))[0])
        if i < 0:
            return None
        entry, end = int(tab.entries[i]), int(tab.entries[i + 1])
        code = binary.image.read(entry, min(end - entry, 4096))
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        targets = [int(insn.op_str, 16) for insn in md.disasm(code, entry)
                   if insn.mnemonic == "call" and insn.op_str.startswith("0x")]
        if not targets:
            return None
        names = binary.symbolizer().function_names(np.array(targets, dtype=np.uint64))
        return next((n for n in names.tolist() if n != "?" and not n.startswith("runtime.")), None)
    except Exception:  # noqa: BLE001  (a name is a nicety: never fail the spans for it)
        return None


# -- /proc ---------------------------------------------------------------------------------------
def read_cmdline(pid):
    """The command line of pid as a tuple, () when it cannot be read."""
    try:
        data = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(data.decode(errors="replace").split("\0")[:-1])


def boot_time_ns():
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return int(line.split()[1]) * 10**9
    return 0


def start_time_ns(pid):
    """Unix ns at which pid started (from /proc/PID/stat), or 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return boot_time_ns() + int(fields[19]) * 10**9 // _CLK_TCK


def iso8601(ns):
    t = time.gmtime(ns // 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{(ns // 1_000_000) % 1000:03d}Z"
