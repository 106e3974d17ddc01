"""The numpy mirror of ``struct gotel_event`` (bpf/gotel_event.h) and the transition kinds.

Defined once, little-endian and packed, so a run of ring-buffer records is viewed as an array with
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


def empty_events(n=0):
    """A zeroed event array of length n."""
    return np.zeros(n, dtype=EVENT_DTYPE)
