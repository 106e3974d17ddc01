"""The few typed errors gotel raises. Each says what was expected, what was found, and what to do.

The CLI prints ``str(error)`` as one line and exits non-zero; nothing else should escape to a user.
"""


class GotelError(Exception):
    """Base of every error gotel reports to a user."""


class NotAGoBinary(GotelError):
    """The file is not an ELF, or is an ELF without the Go runtime's build info."""


class UnsupportedBinary(GotelError):
    """A Go binary gotel cannot trace safely (architecture, gccgo, -linkshared, ...)."""


class UnsupportedGoVersion(UnsupportedBinary):
    """A Go version whose layout gotel does not know and cannot read from DWARF."""


class CorruptBinary(GotelError):
    """A Go binary whose tables (pclntab, buildinfo, DWARF) are truncated or inconsistent."""


class TargetError(GotelError):
    """A target process or path that cannot be traced: missing, exited, not permitted."""


class ProbeError(GotelError):
    """A BPF program that failed to compile, load or attach."""


class ConfigError(GotelError):
    """An invalid configuration; the message lists every problem by its YAML path."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("invalid configuration: " + "; ".join(self.problems))


def denied_hint(pid=None):
    """What to do about a permission error, for the user gotel runs as: as root, the kernel itself
    refuses (a process not dumpable, in another user namespace, or guarded by a security module);
    otherwise the capability that is missing."""
    import os

    if os.geteuid() == 0:
        what = f"process {pid}" if pid is not None else "it"
        return (f"the kernel denies this even to root: {what} is protected from tracing (not "
                f"dumpable, another user namespace, or a security module such as Yama or AppArmor)")
    return "run gotel as root, or give it CAP_SYS_PTRACE (see README: Requirements)"
