"""The numpy mirror of ``struct gotel_event`` (bpf/gotel_event.h) and the transition kinds.

Defined once, little-endian, with the C struct's own field order and padding, so a run of ring-buffer records is viewed as an array with
``np.frombuffer`` and no copy. tests/receiver/test_events.py proves it agrees with the C header.
"""

import enum
from pathlib import Path

import numpy as np

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
EVENT_HEADER = BPF_DIR / "gotel_event.h"


class Kind(enum.IntEnum):
    """GOTEL_KIND_* of bpf/gotel_event.h."""

    DROP = 0
    CREATE = 1
    RUN = 2
    PARK = 3
    READY = 4
    EXIT = 5
    SYSCALL_ENTER = 6
    SYSCALL_EXIT = 7
    PREEMPT = 8
    STACK_COPY = 9
    EXISTING = 10
    CENSUS = 11      # every goroutine alive at ts_ns is an EXISTING event with this tid (window)


# The raw statuses that EXISTING and SYSCALL_EXIT events carry and the decoder reads. Go has kept
# these numbers since 1.14; a binary whose layout numbers them otherwise is refused at attach
# (check_statuses) rather than misread.
DECODED_STATUSES = {"_Grunnable": 1, "_Grunning": 2, "_Gsyscall": 3, "_Gwaiting": 4, "_Gpreempted": 9}


def check_statuses(binary):
    """Raise UnsupportedGoVersion if binary's goroutine statuses differ from DECODED_STATUSES."""
    from receiver.errors import UnsupportedGoVersion

    statuses = binary.layout.statuses
    wrong = {n: statuses.get(n) for n, v in DECODED_STATUSES.items() if statuses.get(n, v) != v}
    if wrong:
        raise UnsupportedGoVersion(
            f"{binary.path}: {binary.go_version} numbers goroutine statuses differently ({wrong}); "
            f"this gotel cannot decode them: use a newer gotel")


EVENT_DTYPE = np.dtype(
    [
        ("ts_ns", "<u8"),
        ("g", "<u8"),
        ("goid", "<u8"),
        ("aux_goid", "<u8"),
        ("pc_start", "<u8"),
        ("pc_create", "<u8"),
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("kind", "u1"),
        ("wait_reason", "u1"),
        ("old_status", "<u2"),
        ("new_status", "<u2"),
        ("cpu", "<u2"),
    ]
)
EVENT_SIZE = EVENT_DTYPE.itemsize  # 64

