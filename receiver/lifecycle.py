"""Probe points of the lifecycle level: a goroutine's creation and its exit, and nothing else.

The full level traps on every status change (``runtime.casgstatus``). The lifecycle level traps
twice per goroutine, with both probes on instructions the kernel emulates (one trap per hit,
no single-step), checked by disassembly on each binary:

- creation: ``runtime.newproc.func1``, the closure ``newproc`` runs on the system stack, at the
  first emulated instruction after its ``call runtime.newproc1`` (the ``call runtime.runqput`` that
  follows, in Go 1.19 through 1.27), where RBX holds the new g that newproc1 returned in RAX
  (``mov rbx, rax`` sets up runqput's second argument; ``placement.after_call`` follows the copy).
  Its goid, parentGoid, gopc and startpc are all set by then. Not ``newproc1``'s entry (the new g
  does not exist yet) and never a uretprobe (golang/go#22008).
- exit: ``runtime.goexit1`` after its prologue. It runs on the exiting goroutine (R14 = g, not
  g0) and always ends in ``mcall(goexit0)``; a goroutine's return and ``runtime.Goexit`` both pass
  through it.

Not seen at this level: goroutines that coroutines (``iter.Pull``, via ``newcoro``) or cgo
callbacks (extra Ms) bring into being, and the status changes in between (no parks, no
scheduling latency). Raises ``UnsupportedBinary`` when a binary's code has another shape.
"""

from typing import NamedTuple

from receiver import placement
from receiver.errors import UnsupportedBinary

CREATE_CALLER = "runtime.newproc.func1"
CREATOR = "runtime.newproc1"
EXIT_FUNCTION = "runtime.goexit1"
CREATE_PROGRAMS = {"rax": "probe_create_ax", "rbx": "probe_create_bx"}


class Point(NamedTuple):
    """One lifecycle probe: its program prefix in bpf/gotel.c and where it sits."""

    program: str                 # "probe_create_ax", "probe_create_bx" or "probe_exit" (bpf/gotel.c)
    placement: placement.Placement


def points(binary):
    """{"create": Point, "exit": Point} for a GoBinary (cached on it)."""
    cached = getattr(binary, "_gotel_lifecycle_points", None)
    if cached is not None:
        return cached
    found = binary.image.symbols((CREATE_CALLER, CREATOR, EXIT_FUNCTION))
    missing = [n for n in (CREATE_CALLER, CREATOR, EXIT_FUNCTION) if n not in found]
    if missing:
        found.update(binary.pclntab.lookup(missing))
    missing = [n for n in (CREATE_CALLER, CREATOR, EXIT_FUNCTION) if n not in found]
    if missing:
        raise UnsupportedBinary(f"{binary.path} ({binary.go_version}): no {', '.join(missing)}; the "
                                f"lifecycle level cannot be used here: use level full")
    caller, size = found[CREATE_CALLER]
    create, holder = placement.after_call(binary.image.read(caller, size), caller,
                                          found[CREATOR][0], name=CREATE_CALLER)
    if holder not in CREATE_PROGRAMS:
        raise UnsupportedBinary(f"{binary.path}: at {create.probe_address:#x} the new g is in "
                                f"{holder}; the lifecycle level reads it from rax or rbx only")
    exit_at, exit_size = found[EXIT_FUNCTION]
    exit_ = placement.place(binary.image.read(exit_at, exit_size), exit_at, EXIT_FUNCTION)
    out = {"create": Point(CREATE_PROGRAMS[holder], create), "exit": Point("probe_exit", exit_)}
    binary._gotel_lifecycle_points = out
    return out
