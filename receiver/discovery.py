"""Discovery: which running processes to trace, by rules instead of PIDs.

A process is selected when it is a Go program (its executable holds Go build information; anything
else is ignored and only counted) and every kind of criterion given matches (any pattern of a kind
may match), and no exclusion matches:

- ``exe_paths``: globs over the executable's path (as the process sees it, and as the host sees it
  through ``/proc/PID/root``), ``names``: globs over the process name (``comm``),
  ``cmdlines``: regular expressions searched in the command line (arguments joined by spaces),
- ``cgroups``: globs over any of its cgroup paths, ``containers``: globs over its container id,
- ``k8s_namespaces`` and ``k8s_pods``: globs over its pod's namespace and name (known when the
  Kubernetes API is reachable, see receiver.platform).

``Discovery.scan()`` walks ``/proc`` once (a few ms for hundreds of processes; the figure of the
last scan is ``last_scan_s``) and returns the PIDs selected; the Go check is cached per executable
(device, inode, size, mtime), so a node's hundred copies of one binary are read once.
Not thread-safe: the receiver's poller thread scans.
"""

import dataclasses
import fnmatch
import os
import re
import time
from pathlib import Path

from receiver import platform
from receiver.elf import ElfImage, map_file
from receiver.errors import GotelError
from receiver.buildinfo import parse as parse_buildinfo

CRITERIA = ("exe_paths", "names", "cmdlines", "cgroups", "containers", "k8s_namespaces", "k8s_pods")


@dataclasses.dataclass(frozen=True)
class Rules:
    """receivers::goroutines::discovery in gotel's YAML."""

    enabled: bool = False
    exe_paths: tuple = ()
    names: tuple = ()
    cmdlines: tuple = ()
    cgroups: tuple = ()
    containers: tuple = ()
    k8s_namespaces: tuple = ()
    k8s_pods: tuple = ()
    exclude_exe_paths: tuple = ()
    exclude_names: tuple = ()
    exclude_cmdlines: tuple = ()
    exclude_cgroups: tuple = ()
    exclude_containers: tuple = ()
    exclude_k8s_namespaces: tuple = ()
    exclude_k8s_pods: tuple = ()
    interval_s: float = dataclasses.field(default=1.0, metadata={"duration": "s"})

    def validate(self, path="receivers::goroutines::discovery"):
        problems = []
        for key in CRITERIA:
            for kind in (key, f"exclude_{key}"):
                for pattern in getattr(self, kind):
                    if not isinstance(pattern, str) or not pattern:
                        problems.append(f"{path}::{kind}: {pattern!r} is not a pattern")
                    elif key == "cmdlines":
                        try:
                            re.compile(pattern)
                        except re.error as e:
                            problems.append(f"{path}::{kind}: {pattern!r} is not a regular "
                                            f"expression ({e})")
        if self.enabled and not any(getattr(self, k) for k in CRITERIA):
            problems.append(f"{path}: give at least one criterion (exe_paths, names, cmdlines, "
                            f"cgroups, containers, k8s_namespaces, k8s_pods)")
        if self.interval_s <= 0:
            problems.append(f"{path}::interval must be > 0")
        return problems


@dataclasses.dataclass
class Candidate:
    """What discovery looks at for one process."""

    pid: int
    exe: str = ""
    host_exe: str = ""
    name: str = ""
    cmdline: str = ""
    cgroups: tuple = ()
    container: str = ""
    pod_uid: str = ""
    namespace: str = ""
    pod: str = ""

    def values(self, key):
        if key == "exe_paths":
            return [v for v in (self.exe, self.host_exe) if v]
        return {"names": [self.name], "cmdlines": [self.cmdline], "cgroups": list(self.cgroups),
                "containers": [self.container], "k8s_namespaces": [self.namespace],
                "k8s_pods": [self.pod]}[key]


def _matches(key, patterns, values):
    if key == "cmdlines":
        return any(re.search(p, v) for p in patterns for v in values if v)
    return any(fnmatch.fnmatchcase(v, p) for p in patterns for v in values if v)


def selects(rules, candidate):
    """True when the rules select this candidate (Go or not: that is checked apart)."""
    for key in CRITERIA:
        include, exclude = getattr(rules, key), getattr(rules, f"exclude_{key}")
        values = candidate.values(key)
        if include and not _matches(key, include, values):
            return False
        if exclude and _matches(key, exclude, values):
            return False
    return True


def inspect(pid, pods=None):
    """A Candidate for a running pid, or None when it is gone (or a kernel thread)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    c = Candidate(pid, exe=exe.removesuffix(" (deleted)"))
    host = Path(f"/proc/{pid}/root") / c.exe.lstrip("/")
    c.host_exe = os.path.realpath(host) if host.exists() else ""
    try:
        c.name = Path(f"/proc/{pid}/comm").read_text().strip()
        c.cmdline = " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(
            errors="replace").split("\0")).strip()
    except OSError:
        return None
    c.cgroups = tuple(platform.cgroup_paths(pid))
    c.container, c.pod_uid = platform.container_of(c.cgroups)
    if c.pod_uid and pods is not None:
        c.namespace, c.pod = pods.namespace_and_name(c.pod_uid)
    return c


class Discovery:
    """Scans /proc with a set of Rules; see the module docstring."""

    def __init__(self, rules, pods=None):
        self.rules = rules
        self.pods = pods
        self._is_go = {}          # executable identity -> bool
        self.scans = 0
        self.not_go = 0           # selected by the rules but not Go programs (last scan)
        self.last_scan_s = 0.0

    def is_go(self, pid):
        """True when the process's executable is a Go program (cached per executable)."""
        exe = f"/proc/{pid}/exe"
        try:
            st = os.stat(exe)
        except OSError:
            return False
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        known = self._is_go.get(key)
        if known is None:
            try:
                parse_buildinfo(ElfImage(exe, map_file(exe)))
                known = True
            except (GotelError, OSError, ValueError):
                known = False
            self._is_go[key] = known
        return known

    def scan(self, skip=()):
        """PIDs selected now, except those in skip (already traced) and gotel itself."""
        started = time.perf_counter()
        me, found, not_go = os.getpid(), [], 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid == me or pid in skip:
                continue
            candidate = inspect(pid, self.pods)
            if candidate is None or not selects(self.rules, candidate):
                continue
            if self.is_go(pid):
                found.append(pid)
            else:
                not_go += 1
        self.scans += 1
        self.not_go = not_go
        self.last_scan_s = time.perf_counter() - started
        return sorted(found)
