"""What gotel needs from the kernel to trace, checked before bcc is touched, one message per lack.

Measured on Linux 6.18 as a non-root user with ``setpriv`` (tests/faults/test_fault_gotel.py):

- CAP_BPF: create the event buffers and the maps, load the program.
- CAP_PERFMON: load a tracing program that reads process memory, create its uprobes.
- On Linux 6.6 and later, nothing else: gotel's uprobes are BPF links (receiver/uprobe.py).
- Before 6.6 (or with ``GOTEL_UPROBE_LINKS=0``) uprobes are perf events, and there is one more
  need. The uprobe PMU (``perf_event_open`` with the type in
  ``/sys/bus/event_source/devices/uprobe/type``) needs CAP_SYS_ADMIN since the 2025 fix "perf:
  Require CAP_SYS_ADMIN for uprobes" (it accepted CAP_PERFMON from 5.8 on). bcc falls back to
  tracefs: writing ``/sys/kernel/tracing/uprobe_events`` (root's) needs CAP_DAC_OVERRIDE, a
  smaller grant than CAP_SYS_ADMIN.
- CAP_SYS_PTRACE only for processes of another user: probing them and reading their memory
  (``/proc/PID/mem``) need ptrace access. A command gotel launches runs as gotel's user and needs
  none.

So the least set is CAP_BPF + CAP_PERFMON (plus CAP_DAC_OVERRIDE before Linux 6.6), plus
CAP_SYS_PTRACE to trace other users' processes. ``problems(pids)`` says what is missing, in words,
before bcc prints its own lines or fails with "Failed to compile BPF module".
"""

import os
import re

CAPS = {"CAP_DAC_OVERRIDE": 1, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38,
        "CAP_BPF": 39}
TRACEFS = "/sys/kernel/tracing"
UPROBE_EVENTS = f"{TRACEFS}/uprobe_events"
LEAST = ("CAP_BPF", "CAP_PERFMON")
PERF_EVENT_UPROBES = "CAP_DAC_OVERRIDE"   # also needed where uprobes are perf events


def effective(status_path="/proc/self/status"):
    """The set of capability names gotel holds now (effective set)."""
    mask = 0
    with open(status_path) as f:
        for line in f:
            if line.startswith("CapEff:"):
                mask = int(line.split()[1], 16)
    return {name for name, bit in CAPS.items() if mask >> bit & 1}


def tracefs_writable():
    """Whether this process may write uprobe_events (opened for append; nothing is written)."""
    try:
        fd = os.open(UPROBE_EVENTS, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return False
    os.close(fd)
    return True


def tracefs_mounted(mounts="/proc/self/mounts"):
    """Whether tracefs is mounted where bcc looks for it (readable by anyone, unlike the files)."""
    try:
        with open(mounts) as f:
            return any(line.split()[1:3] == [TRACEFS, "tracefs"] for line in f)
    except OSError:
        return True      # cannot tell: let the attach say


def process_uid(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


# The event buffers are claimed by a BPF compare-and-swap (Linux 5.12).
MIN_KERNEL = (5, 12)


def kernel_version(release=None):
    """(major, minor) of a kernel release string (this kernel's by default)."""
    numbers = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return (int(numbers[1]), int(numbers[2])) if numbers else (0, 0)


def problems(pids=(), caps=None, writable=None, release=None, links=False):
    """Every reason tracing cannot work as this process is now, each with what to do; empty when
    nothing is missing. ``pids``: running processes to trace (other users' need CAP_SYS_PTRACE);
    ``links``: uprobes are BPF links (``receiver.uprobe.links_available``), not perf events."""
    if caps is None:
        caps = effective()
    admin = "CAP_SYS_ADMIN" in caps
    out = []
    if kernel_version(release) < MIN_KERNEL:
        out.append(f"Linux {release or os.uname().release} is too old: gotel's probes need "
                   f"{'.'.join(map(str, MIN_KERNEL))} or later (BPF compare-and-swap)")
    if "CAP_BPF" not in caps and not admin:
        out.append("CAP_BPF is missing: the kernel refuses gotel's event buffers and BPF program")
    if "CAP_PERFMON" not in caps and not admin:
        out.append("CAP_PERFMON is missing: the kernel refuses a tracing program that reads "
                   "process memory, and the uprobe's perf event")
    if not admin and not links:
        if not tracefs_mounted():
            out.append(f"{UPROBE_EVENTS} does not exist: mount tracefs (mount -t tracefs tracefs "
                       f"{TRACEFS}), or give CAP_SYS_ADMIN to create uprobes without it")
        elif not (tracefs_writable() if writable is None else writable):
            out.append(f"{PERF_EVENT_UPROBES} is missing: creating a uprobe means writing "
                       f"{UPROBE_EVENTS} (no BPF uprobe links before Linux 6.6, and the uprobe "
                       f"PMU needs CAP_SYS_ADMIN)")
    if "CAP_SYS_PTRACE" not in caps:
        me = os.geteuid()
        others = [p for p in pids if process_uid(p) not in (None, me)]
        if others:
            out.append(f"CAP_SYS_PTRACE is missing: process(es) {', '.join(map(str, others))} "
                       f"belong to another user; probing them and reading their memory needs it")
    return out


def hint():
    """One line naming the least capability set (for messages)."""
    return (f"run gotel as root, or with {' + '.join(LEAST)} (and {PERF_EVENT_UPROBES} before "
            f"Linux 6.6, CAP_SYS_PTRACE for other users' processes); see README: Requirements")


_STALE = re.compile(r"^[pr]:(uprobes/gotel_\d+_\S*_bcc_(\d+))\s")


def remove_stale_uprobes(path=UPROBE_EVENTS):
    """Remove tracefs uprobe events left by a gotel that was killed (named ``gotel_..._bcc_PID``
    by bcc, PID being that gotel's, no longer running). They hold no breakpoint without a perf
    event open, but they pile up in ``uprobe_events``. Returns the names removed."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    removed = []
    for line in lines:
        m = _STALE.match(line)
        if m is None or os.path.exists(f"/proc/{m.group(2)}"):
            continue
        try:
            # One write(2) on an O_APPEND fd: Python's "a" mode seeks, which tracefs refuses.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, f"-:{m.group(1)}\n".encode())
            finally:
                os.close(fd)
            removed.append(m.group(1))
        except OSError:
            pass          # in use, or not ours to remove: left alone
    return removed
