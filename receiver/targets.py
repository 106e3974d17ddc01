"""What gotel traces: PIDs, binaries (every process running one, now and later), launched commands.

A ``Target`` says what the user asked for; ``ProcessRegistry`` holds what was found: one
``Process`` per traced PID with its facts (the ``GoBinary``, the executable path, start time,
alive or exited, exit status when gotel launched it). The decoder and exporters read the registry
from the poller thread while the receiver's control path adds and retires processes, so it is
guarded by a lock; a ``Process`` itself is only mutated by the receiver.

A command is launched through ``/bin/bash`` (dash cannot name a descriptor above 9), which blocks reading a pipe before it ``exec``s the
command: gotel attaches its probe to the shell's PID while nothing of the Go program has run, then
releases it, so the program is traced from its first instruction (the uprobe's PID filter follows
the task across exec). The launched process inherits gotel's stdin, stdout and stderr unless told
otherwise.
"""

import dataclasses
import os
import shutil
import subprocess
import threading

from receiver.errors import GotelError, NotAGoBinary, TargetError

_CLK_TCK = os.sysconf("SC_CLK_TCK")
SHELL = "/bin/bash"


@dataclasses.dataclass(frozen=True)
class Target:
    """One thing to trace: ``kind`` is "pid", "path" or "command"; ``value`` an int, a path, argv."""

    kind: str
    value: object

    @classmethod
    def pid(cls, pid):
        return cls("pid", int(pid))

    @classmethod
    def path(cls, path):
        return cls("path", os.path.realpath(path))

    @classmethod
    def command(cls, argv):
        return cls("command", tuple(map(str, argv)))

    def __str__(self):
        if self.kind == "command":
            return "command " + " ".join(self.value)
        return f"{self.kind} {self.value}"


@dataclasses.dataclass(eq=False)
class Process:
    """A traced process and what gotel knows about it."""

    pid: int
    binary: object               # receiver.binary.GoBinary
    exe: str
    start_time_ns: int           # Unix ns, from /proc/PID/stat (0 if unknown)
    target: Target
    alive: bool = True
    exit_status: int = None      # known for launched commands; negative = killed by that signal
    attachment: object = None    # receiver.probes.Attachment owned by this process (pid-filtered)
    popen: object = None         # subprocess.Popen for launched commands
    load_bias: int = None        # what to subtract from its PCs to get the file's (PIE), once known

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


class ProcessRegistry:
    """Traced processes keyed by PID. Thread-safe; iteration returns a snapshot."""

    def __init__(self):
        self._lock = threading.Lock()
        self._procs = {}

    def add(self, process):
        with self._lock:
            self._procs[process.pid] = process
        return process

    def get(self, pid):
        with self._lock:
            return self._procs.get(pid)

    def __getitem__(self, pid):
        with self._lock:
            return self._procs[pid]

    def __contains__(self, pid):
        with self._lock:
            return pid in self._procs

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


def is_running(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def open_binary(target):
    """GoBinary for a PID or path, with errors that name the target."""
    from receiver.binary import GoBinary

    try:
        return GoBinary.open(target)
    except NotAGoBinary as e:
        what = f"process {target}" if isinstance(target, int) else str(target)
        raise TargetError(f"{what} is not a Go program ({e})") from e


def processes_running(path):
    """PIDs of the processes whose executable is the file at path (same device and inode)."""
    st = os.stat(path)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            est = os.stat(f"/proc/{entry}/exe")
        except OSError:
            continue
        if (est.st_dev, est.st_ino) == (st.st_dev, st.st_ino) and is_running(int(entry)):
            found.append(int(entry))
    return sorted(found)


def resolve_program(name):
    """The absolute path of the program a command names (as the shell would find it), or a
    TargetError that says what is wrong with it."""
    if "/" in name:
        if not os.path.lexists(name):
            raise TargetError(f"{name}: no such file")
        if os.path.isdir(name):
            raise TargetError(f"{name}: is a directory, not a program; give the Go executable "
                              f"inside it")
        if not os.path.exists(name):
            raise TargetError(f"{name}: a broken symbolic link")
        if not os.access(name, os.X_OK):
            raise TargetError(f"{name}: is not executable (chmod +x {name}?)")
        return os.path.realpath(name)
    program = shutil.which(name)
    if program is None:
        raise TargetError(f"{name}: command not found in PATH (give its path, e.g. ./{name})")
    return os.path.realpath(program)


def _die_with_parent(parent):
    """preexec_fn of a launched command: the kernel kills it when gotel dies, even by SIGKILL
    (PR_SET_PDEATHSIG survives exec, except of set-user-ID programs)."""
    import ctypes
    import signal

    def arm():
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)      # PR_SET_PDEATHSIG
        if os.getppid() != parent:                   # gotel died before the prctl
            os._exit(1)
    return arm


def new_process(pid, binary, target, popen=None):
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = str(binary.path)
    return Process(pid, binary, exe, start_time_ns(pid), target, popen=popen)


class LaunchedCommand:
    """A command started held: the shell waits on a pipe until ``release()``, then execs argv.
    Unless ``keep_running``, it dies with gotel (PR_SET_PDEATHSIG: even when gotel is killed)."""

    HOLD = 'read _ <&{fd}; exec {fd}<&-; exec "$0" "$@"'

    def __init__(self, argv, keep_running=False, **popen_kwargs):
        if not argv:
            raise TargetError("empty command; give the program to run and its arguments")
        self.program = resolve_program(argv[0])
        program = argv[0] if "/" in argv[0] else shutil.which(argv[0])
        self.keep_running = keep_running
        self._read, self._write = os.pipe()
        if not keep_running:
            popen_kwargs.setdefault("preexec_fn", _die_with_parent(os.getpid()))
        try:
            self.popen = subprocess.Popen(
                [SHELL, "-c", self.HOLD.format(fd=self._read), program, *argv[1:]],
                pass_fds=(self._read,), **popen_kwargs)
        finally:
            os.close(self._read)
        self.pid = self.popen.pid

    def release(self):
        """Let the shell exec the command (idempotent)."""
        if self._write is not None:
            try:
                os.write(self._write, b"\n")
            finally:
                os.close(self._write)
                self._write = None

    def kill(self):
        self.release()
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


def describe_exit(status):
    if status is None:
        return "exited"
    if status < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited with status {status}"

