"""``ProcessMemory``: batched reads of another process's memory with ``process_vm_readv``.

The process is never stopped or signalled: reads see memory as it is at that instant, so whatever
comes back is untrusted input. Every remote address is first checked against the readable
mappings of ``/proc/PID/maps`` (re-read by ``refresh()``), every length is bounded, and a read that
falls short (a mapping went away meanwhile) marks only the pieces it did not fill as failed.

``read_many(addrs, size)`` reads one fixed-size record per address into one numpy array, with up
to ``IOV_MAX`` (1024) remote pieces per system call: 100,000 records of 400 bytes take ~100 calls.
``read(addr, size)`` reads one piece; one that falls outside the known mappings re-reads them
first (at most every ``REMAP_S``: a long-lived reader sees the Go heap grow). Needs CAP_SYS_PTRACE
(root); the kernel applies the same check as for ptrace attach.

Thread-safety: reads may come from several threads (the mapping table is replaced as one tuple,
never mutated; the call counters are only statistics). Cost: the system call copies the bytes and
pins each page it touches.
"""

import ctypes
import ctypes.util
import errno
import os
import time

import numpy as np

from receiver.errors import TargetError, denied_hint

IOV_MAX = 1024
MAX_RECORD = 1 << 20          # no record gotel reads is larger
MAX_BATCH_BYTES = 1 << 30     # one read_many never asks for more than this in total
REMAP_S = 0.1                 # a read outside the known mappings re-reads them at most this often
IOVEC = np.dtype([("base", "<u8"), ("len", "<u8")])

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_readv = _libc.process_vm_readv
_readv.restype = ctypes.c_ssize_t
_readv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p,
                   ctypes.c_ulong, ctypes.c_ulong]


def readable_ranges(pid):
    """(starts, ends) uint64 arrays of the readable mappings of a process, sorted and merged."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            lines = f.read().splitlines()
    except FileNotFoundError as e:
        raise TargetError(f"process {pid} does not exist (it exited?)") from e
    except PermissionError as e:
        raise TargetError(f"process {pid}: permission denied reading its memory map; "
                          f"{denied_hint(pid)}") from e
    starts, ends = [], []
    for line in lines:
        parts = line.split(None, 2)
        if len(parts) < 2 or parts[1][:1] != b"r":
            continue
        lo, _, hi = parts[0].partition(b"-")
        if line.endswith(b"[vvar]") or line.endswith(b"[vsyscall]"):
            continue   # readable by the owner, refused to process_vm_readv
        starts.append(int(lo, 16))
        ends.append(int(hi, 16))
    s = np.array(starts, np.uint64)
    e = np.array(ends, np.uint64)
    order = np.argsort(s)
    s, e = s[order], e[order]
    if len(s) > 1:   # merge adjacent mappings, so a record straddling two of them is accepted
        first = np.ones(len(s), bool)
        first[1:] = s[1:] != e[:-1]
        heads = np.flatnonzero(first)
        e = np.maximum.reduceat(e, heads)
        s = s[heads]
    return s, e


class ProcessMemory:
    """Reads of process pid's memory (see the module docstring)."""

    def __init__(self, pid):
        self.pid = int(pid)
        self.calls = 0          # system calls made
        self.failed = 0         # pieces asked for that could not be read
        self._maps = (np.zeros(0, np.uint64), np.zeros(0, np.uint64))
        self._mapped_at = 0.0
        self.refresh()

    def refresh(self):
        """Re-read the process's mappings (a Go heap grows; call once per census)."""
        self._maps = readable_ranges(self.pid)
        self._mapped_at = time.monotonic()

    def readable(self, addrs, size):
        """Bool array: [addr, addr+size) lies inside one readable mapping, for each address.
        ``size`` is a scalar or an array like addrs."""
        addrs = np.asarray(addrs, np.uint64)
        size = np.asarray(size, np.uint64)
        starts, ends = self._maps
        if len(starts) == 0:
            return np.zeros(addrs.shape, bool)
        i = np.searchsorted(starts, addrs, side="right").astype(np.int64) - 1
        ok = i >= 0
        j = np.maximum(i, 0)
        end = addrs + size
        return ok & (end >= addrs) & (end <= ends[j]) & (size <= MAX_RECORD)

    def read_many(self, addrs, size, out=None):
        """(records, ok): ``records`` is a (n, size) uint8 array holding ``size`` bytes at each
        address; ``ok[k]`` says record k was read in full (else its bytes are zero or partial and
        must be ignored). Addresses outside the readable mappings are not asked for."""
        addrs = np.asarray(addrs, np.uint64).reshape(-1)
        n = len(addrs)
        size = int(size)
        if not 0 < size <= MAX_RECORD or n * size > MAX_BATCH_BYTES:
            raise ValueError(f"read_many of {n} x {size} bytes is out of bounds")
        if out is None or out.shape != (n, size):
            out = np.zeros((n, size), np.uint8)
        ok = self.readable(addrs, size)
        self._transfer(out.ctypes.data, size, addrs, ok)
        return out, ok

    def read_ranges(self, addrs, sizes, out_offsets, out):
        """Read variable-length pieces: sizes[k] bytes at addrs[k] into the flat uint8 array ``out``
        at out_offsets[k]. Returns ok (bool per piece); pieces outside the mappings are skipped."""
        addrs = np.asarray(addrs, np.uint64).reshape(-1)
        sizes = np.asarray(sizes, np.uint64).reshape(-1)
        out_offsets = np.asarray(out_offsets, np.uint64).reshape(-1)
        if len(sizes) and (int(sizes.max()) > MAX_RECORD
                           or int((out_offsets + sizes).max()) > out.nbytes):
            raise ValueError("read_ranges: a piece is larger than allowed or than the buffer")
        ok = self.readable(addrs, sizes) & (sizes > 0)
        self._transfer(out.ctypes.data, sizes, addrs, ok, out_offsets)
        return ok

    def _transfer(self, base, sizes, addrs, ok, offsets=None):
        idx = np.flatnonzero(ok)
        if len(idx) == 0:
            return
        sizes = np.broadcast_to(np.asarray(sizes, np.uint64), addrs.shape)
        if offsets is None:
            offsets = np.arange(len(addrs), dtype=np.uint64) * sizes[0] if len(addrs) else sizes
        local = np.empty(len(idx), IOVEC)
        remote = np.empty(len(idx), IOVEC)
        local["base"] = np.uint64(base) + offsets[idx]
        local["len"] = sizes[idx]
        remote["base"] = addrs[idx]
        remote["len"] = sizes[idx]
        cum = np.cumsum(sizes[idx])
        k = 0
        while k < len(idx):
            m = min(IOV_MAX, len(idx) - k)
            self.calls += 1
            got = _readv(self.pid, local.ctypes.data + k * 16, m, remote.ctypes.data + k * 16, m, 0)
            if got < 0:
                err = ctypes.get_errno()
                if err == errno.ESRCH:
                    raise TargetError(f"process {self.pid} exited while gotel read its memory")
                if err == errno.EPERM:
                    raise TargetError(f"process {self.pid}: permission denied reading its memory; "
                                      f"{denied_hint(self.pid)}")
                if err not in (errno.EFAULT, errno.EIO, errno.ENOMEM):
                    raise OSError(err, os.strerror(err))
                got = 0
            want = int(cum[k + m - 1] - (cum[k - 1] if k else 0))
            if got >= want:
                k += m
                continue
            # Short read: the kernel stops at the first piece it cannot read. Pieces wholly
            # inside `got` are good; the one it stopped in is failed; go on after it.
            done = np.searchsorted(cum[k:k + m] - (cum[k - 1] if k else 0), got, side="right")
            bad = k + int(done)
            ok[idx[bad]] = False
            self.failed += 1
            k = bad + 1

    def read(self, addr, size):
        """size bytes at addr, or None when the range is not readable (or the process is gone)."""
        if size <= 0:
            return b"" if size == 0 else None
        if size > MAX_RECORD:
            return None
        if not self.readable([addr], size)[0] and time.monotonic() - self._mapped_at > REMAP_S:
            try:
                self.refresh()
            except TargetError:
                return None
        try:
            rec, ok = self.read_many(np.array([addr], np.uint64), size)
        except TargetError:
            return None
        return rec[0].tobytes() if ok[0] else None

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
