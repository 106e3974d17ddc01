"""What gotel traces: PIDs, binaries (every process running one, now and later), launched commands.

A ``Target`` says what the user asked for; what was found is kept in ``receiver.processes``.

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

from receiver.errors import NotAGoBinary, TargetError

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


def exe_identity(pid):
    """(device, inode) of the executable a process runs now, None when it is gone."""
    try:
        st = os.stat(f"/proc/{pid}/exe")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _task_state(path):
    """The state letter of a /proc .../stat file, None when it is gone."""
    try:
        with open(path) as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def is_running(pid):
    """True while pid exists and any of its threads is not a zombie.

    The thread-group leader alone is not the process: it is a zombie while another thread execs
    (the kernel's de_thread waits for the leader to die before the exec'ing thread takes its PID;
    a Go program execs from whichever thread runs the goroutine) and after its main thread exited
    alone. Seen here in 1 exec of 30 polled back to back. The leader is read again last: the
    exec'ing thread may have taken its PID (and left its own TID) since the first look."""
    if _task_state(f"/proc/{pid}/stat") not in ("Z", "X", None):
        return True
    try:
        tids = [t for t in os.listdir(f"/proc/{pid}/task") if t != str(pid)] + [str(pid)]
    except OSError:
        return False
    return any(_task_state(f"/proc/{pid}/task/{t}/stat") not in ("Z", "X", None) for t in tids)


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


# The launched command dies with gotel, even when gotel is SIGKILLed: util-linux's setpriv sets
# PR_SET_PDEATHSIG, which survives exec (except of set-user-ID programs), before it execs the
# holding shell. Not a preexec_fn: Python code in the child of a threaded process (gRPC's threads)
# can deadlock or die before the exec.
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--")


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
        prefix = () if keep_running else DIE_WITH_PARENT
        try:
            self.popen = subprocess.Popen(
                [*prefix, SHELL, "-c", self.HOLD.format(fd=self._read), program, *argv[1:]],
                pass_fds=(self._read,), **popen_kwargs)
        finally:
            os.close(self._read)
        self.pid = self.popen.pid

    def release(self):
        """Let the shell exec the command (idempotent)."""
        if self._write is not None:
            try:
                os.write(self._write, b"\n")
            except BrokenPipeError:
                pass             # the shell is gone already: whatever failed says so, not this
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

