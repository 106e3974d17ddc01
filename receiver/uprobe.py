"""Putting a BPF program on a uprobe: as a BPF link (uprobe_multi, Linux 6.6+) where the kernel has
them, else as a perf event (libbcc's ``bpf_attach_uprobe``).

Why links first: a link's hit runs the program straight from the uprobe's consumer. A perf event's
hit passes the trace event layer before it: a read lock on the probe's filter, which every CPU that
hits the probe takes on the same cache line, and the trace call's own bookkeeping. Row 6 of
benchmarks/RESULTS.md measures one hit both ways in the same run. A program is loaded for one of
the two (a link needs the program's expected attach type), so ``load`` is told which.
"""

import ctypes
import logging
import os
import platform

log = logging.getLogger("gotel.uprobe")

# bpf(2): BPF_LINK_CREATE with attach type BPF_TRACE_UPROBE_MULTI (uapi/linux/bpf.h, Linux 6.6).
LINK_ATTACH_TYPE = 48
LINK_MIN_KERNEL = (6, 6)
_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
_BPF_LINK_CREATE = 28
_libc = ctypes.CDLL(None, use_errno=True)


def links_available(release=None):
    """Whether uprobes are attached as BPF links: the kernel has them, and ``GOTEL_UPROBE_LINKS=0``
    does not ask for perf events instead (a way around a kernel whose links misbehave)."""
    from receiver import privileges

    if os.environ.get("GOTEL_UPROBE_LINKS", "1") == "0":
        return False
    return privileges.kernel_version(release) >= LINK_MIN_KERNEL


def load(bpf, name, links):
    """bcc's ``bpf.load_func`` of a uprobe program, for links or for perf events."""
    from bcc import BPF

    if isinstance(name, str):
        name = name.encode()
    bpf.funcs.pop(name, None)   # bcc caches by name; the two loads differ
    return bpf.load_func(name, BPF.KPROBE, attach_type=LINK_ATTACH_TYPE if links else -1)


def link(prog_fd, path, offsets, pid, cookies=None):
    """fd of a BPF link putting prog on every file offset of path (pid -1: every process), each
    site with its cookie (bpf_get_attach_cookie) if given. Raises OSError."""
    path_buf = ctypes.create_string_buffer(path.encode())
    offs = (ctypes.c_uint64 * len(offsets))(*offsets)
    cooks = (ctypes.c_uint64 * len(offsets))(*(cookies or [0] * len(offsets)))
    attr = (ctypes.c_uint8 * 128)()
    base = ctypes.addressof(attr)
    for at, value in ((0, ctypes.c_uint32(prog_fd)), (8, ctypes.c_uint32(LINK_ATTACH_TYPE)),
                      (16, ctypes.c_uint64(ctypes.addressof(path_buf))),
                      (24, ctypes.c_uint64(ctypes.addressof(offs))),
                      (40, ctypes.c_uint64(ctypes.addressof(cooks))),
                      (48, ctypes.c_uint32(len(offsets))), (56, ctypes.c_uint32(max(pid, 0)))):
        ctypes.memmove(base + at, ctypes.byref(value), ctypes.sizeof(value))
    fd = _libc.syscall(_SYS_BPF, _BPF_LINK_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_LINK_CREATE uprobe_multi: {os.strerror(err)}")
    return fd


class Uprobe:
    """One uprobe of one program at one file offset, for one PID or every process (-1).

    ``close()`` removes it (idempotent); the program stays loaded."""

    def __init__(self, prog_fd, path, offset, pid, name, links):
        self.name, self.links = name, links
        if links:
            self._fd = link(prog_fd, path, [offset], pid)
            return
        from bcc import lib

        self._fd = lib.bpf_attach_uprobe(prog_fd, 0, name.encode(), path.encode(), offset, pid)
        if self._fd < 0:
            raise OSError(f"perf uprobe {name} on {path}+{offset:#x} (pid {pid}) was refused")

    @property
    def open(self):
        return self._fd >= 0

    def close(self):
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        if self.links:
            os.close(fd)
            return
        from bcc import lib

        from receiver import privileges

        lib.bpf_close_perf_event_fd(fd)
        # libbcc makes a perf-only probe when it can, and a tracefs one otherwise: only the latter
        # has anything to remove, and only a writable tracefs could have made one.
        if privileges.tracefs_writable():
            lib.bpf_detach_uprobe(self.name.encode())
