"""``GoBinary``: everything gotel needs to know about one Go executable before it attaches a probe.

``GoBinary.open(target)`` takes a path or a PID and answers the contract of docs/architecture.md:
Go version and build settings, whether it is stripped, where the probed runtime functions are and
at which address each probe goes, the runtime layout the kernel side reads, and a PC symbolizer.

Everything is read from the file itself: the ELF headers, ``.symtab`` when present, else the Go
function table in ``.gopclntab``; DWARF when present, else the committed layout table. A binary gotel
cannot trace safely is refused with one typed error from ``receiver.errors`` saying what to do.

Thread-safety: a GoBinary is immutable after ``open`` except for lazily built, cached parts
(symbolizer, symtab function table), which are safe to build twice. Cost: opening a 30 MB binary
without DWARF takes a few tens of milliseconds (the file is mmapped, tables are decoded with numpy);
with DWARF add ~0.3 s for the runtime's compilation units.
"""

import dataclasses
import os
import re
import struct
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import capstone
import numpy as np

from receiver import buildinfo, layout as layout_mod, placement, runtime_structs
from receiver.elf import EM_AARCH64, EM_X86_64, ElfImage, map_file
from receiver.errors import (
    CorruptBinary, GotelError, TargetError, UnsupportedBinary, UnsupportedGoVersion,
    denied_hint,
)

# The runtime functions gotel probes. casgstatus is the main probe (every status change of every
# goroutine); the others are the naive reference set the benchmarks compare against.
PROBED_FUNCTIONS = (
    "runtime.casgstatus",
    "runtime.preemptPark",   # GC stack-scan stops, which bypass casgstatus (bpf/gotel.c)
    "runtime.newproc1",
    "runtime.gopark",
    "runtime.ready",
    "runtime.execute",
)
# Functions whose absence makes tracing impossible (the others are only for benchmarks).
REQUIRED_FUNCTIONS = ("runtime.casgstatus",)

MIN_GO = (1, 17)   # the register ABI gotel reads arguments with arrived in Go 1.17
# Libraries a cgo or externally linked Go binary normally needs; anything else next to a missing
# runtime means the runtime came from a Go shared library (-linkshared).
SYSTEM_LIB = re.compile(
    r"^(libc|libpthread|libdl|libm|librt|ld-linux[-\w]*|libresolv|libgcc_s|libstdc\+\+)\.so")

class Function(NamedTuple):
    """A probed runtime function: ELF virtual addresses of its entry and of the chosen probe."""

    name: str
    address: int
    size: int
    probe_address: int


def resolve_target(target):
    """(path to open, path uprobes attach to, pid or None) for a path or a PID (int or digits)."""
    pid = None
    if isinstance(target, int) and not isinstance(target, bool):
        pid = target
    elif isinstance(target, str) and target.isdigit() and not os.path.exists(target):
        pid = int(target)
    if pid is None:
        path = Path(target)
        if not path.exists():
            raise TargetError(f"{path}: no such file; give the path of a Go executable or a PID")
        if path.is_dir():
            raise TargetError(f"{path}: is a directory; give the path of a Go executable or a PID")
        return path, path, None
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        raise TargetError(f"process {pid} does not exist (it exited?); give a running PID or a path")
    exe = proc / "exe"
    try:
        os.readlink(exe)
    except FileNotFoundError as e:
        raise TargetError(f"process {pid} has no executable (a kernel thread, or it exited)") from e
    except PermissionError as e:
        raise TargetError(f"process {pid}: permission denied reading /proc/{pid}/exe; "
                          f"{denied_hint(pid)}") from e
    # /proc/PID/exe reaches the file even when it was deleted (go run's temp binaries) or lives in
    # another mount namespace (a container); uprobes attach through the same link.
    return exe, exe, pid


def container_path(pid):
    """The executable of a process as seen from the host: /proc/PID/root + its path in its own mount
    namespace (for processes in containers). None when that path no longer exists (deleted binary)."""
    try:
        inner = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    candidate = Path(f"/proc/{pid}/root") / inner.lstrip("/")
    return candidate if candidate.exists() else None


class GoBinary:
    """One Go executable, inspected. Build with ``GoBinary.open(path_or_pid)``."""

    def __init__(self, image, info, pid=None, attach_path=None):
        self.image = image
        self.info = info
        self.pid = pid
        self.path = str(attach_path or image.path)
        self.go_version = info.go_version
        self.goarch = info.settings.get("GOARCH", "amd64" if image.machine == EM_X86_64 else "")
        self.module = info.module
        self.build_settings = dict(info.settings)
        self.stripped = image.symtab is None
        self.has_dwarf = image.has_dwarf
        self.pie = image.pie

    @classmethod
    def open(cls, target):
        """Inspect a path or a PID. Raises TargetError, NotAGoBinary, UnsupportedBinary,
        UnsupportedGoVersion or CorruptBinary, each with one line saying what to do."""
        path, attach, pid = resolve_target(target)
        return cls.from_bytes(map_file(path), path, pid, attach)

    @classmethod
    def from_bytes(cls, data, path="<memory>", pid=None, attach_path=None):
        """Inspect an executable already in memory (bytes or mmap); same errors as ``open``."""
        try:
            image = ElfImage(path, data)
            check_not_gccgo(image)
            info = buildinfo.parse(image)
            check_supported(image, info)
            binary = cls(image, info, pid, attach_path)
            binary.functions  # noqa: B018  (find and place the probes now, so refusals happen at open)
            binary.layout  # noqa: B018
            return binary
        except GotelError:
            raise
        except (struct.error, ValueError, IndexError, OverflowError, UnicodeError, MemoryError,
                capstone.CsError) as e:
            # A damaged file must end as one line for the user, whatever table the damage hit.
            raise CorruptBinary(f"{path}: damaged or truncated Go binary ({type(e).__name__}: {e})") from e

    @cached_property
    def pclntab(self):
        """The Go function table (``receiver.pclntab.PcLnTab``) of this binary."""
        from receiver import pclntab

        tab = pclntab.load(self.image)
        tab.gofunc = pclntab.gofunc_address(self.image, tab, self.info.version_tuple)
        return tab

    @cached_property
    def functions(self):
        """{name: Function} for PROBED_FUNCTIONS present in the binary, each with a placed probe."""
        found = self.image.symbols(PROBED_FUNCTIONS)
        missing = [n for n in PROBED_FUNCTIONS if n not in found]
        if missing:
            found.update(self.pclntab.lookup(missing))
        for name in REQUIRED_FUNCTIONS:
            if name not in found:
                if [lib for lib in self.image.needed if not SYSTEM_LIB.match(lib)]:
                    raise UnsupportedBinary(
                        f"{self.image.path}: the Go runtime lives in a shared library (-linkshared, needs "
                        f"{', '.join(self.image.needed)}); rebuild without -linkshared")
                raise CorruptBinary(f"{self.image.path}: {name} not found in the binary's function tables")
        out = {}
        for name, (address, size) in found.items():
            code = self.image.read(address, size)
            where = placement.place(code, address, name)
            out[name] = Function(name, address, size, where.probe_address)
        return out

    def start_pcs(self, pcs):
        """The PC a goroutine is named by, for each start PC (file addresses), as the runtime's own
        tracebacks (``/debug/pprof/goroutine``) name it: where a start PC is the entry of a
        compiler-made wrapper (``go f(x)`` starts ``caller.gowrapN`` or, before Go 1.22,
        ``caller.funcN``; funcID wrapper, elided from tracebacks), the entry of the function it
        wraps. From the wrapper's FUNCDATA_WrapInfo where it has one (``runtime.startPCforTrace``
        does the same); else (Go 1.19-1.21 closures called with arguments) from its code: the
        outermost function inlined at one of its calls, or the function it calls, the first that
        is neither runtime code nor a wrapper. Otherwise the PC itself. Works on stripped binaries;
        a bad table leaves the PC as it is."""
        from receiver import pclntab as pcln

        pcs = np.asarray(pcs, np.uint64).reshape(-1)
        out = pcs.copy()
        try:
            tab = self.pclntab
            if pcs.size == 0:
                return out
            idx = tab.find(pcs)
            entry = (idx >= 0) & (tab.entries[np.maximum(idx, 0)] == pcs)
            wrapper_id = self.symbolizer().wrapper_func_id
            for k in np.flatnonzero(entry).tolist():
                i = int(idx[k])
                off = tab.funcdata_offset(i, pcln.FUNCDATA_WRAPINFO) if tab.gofunc else None
                if off is not None:
                    text_off = int.from_bytes(self.image.read(tab.gofunc + off, 4), "little")
                    target = tab.text_start + text_off
                    if tab.entries[0] <= target < tab.entries[-1]:
                        out[k] = target
                elif int(tab.func_ids()[i]) == wrapper_id:
                    out[k] = self._wrapped_by_code(i) or out[k]
        except GotelError:
            pass
        return out

    def _wrapped_by_code(self, i):
        """Entry of what wrapper function i (no WrapInfo) wraps, from its calls, or None."""
        tab, sym = self.pclntab, self.symbolizer()
        entry, end = int(tab.entries[i]), int(tab.entries[i + 1])
        code = self.image.read(entry, min(end - entry, 4096))
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        calls = [(insn.address + insn.size, insn.op_str) for insn in md.disasm(code, entry)
                 if insn.mnemonic == "call"]
        if not calls:
            return None
        frames = sym.frames(np.array([ret for ret, _ in calls], np.uint64))
        wrapper_id = sym.wrapper_func_id
        for k, (_, target) in enumerate(calls):
            sel = np.flatnonzero((frames.index == k) & frames.inlined & ~frames.wrapper)
            if sel.size:                      # innermost first: the outermost inlined call is last
                name = frames.function[sel[-1]]
                if not name.startswith("runtime."):
                    found = tab.lookup([name])
                    return found[name][0] if name in found else None
            if target.startswith("0x"):
                t = int(target, 16)
                f = int(tab.find(np.array([t], np.uint64))[0])
                if f >= 0 and int(tab.entries[f]) == t and int(tab.func_ids()[f]) != wrapper_id \
                        and not tab.name(f).startswith("runtime."):
                    return t
        return None

    def function(self, name):
        """The Function called name; UnsupportedBinary naming the functions available when it is
        absent (gotel probes only PROBED_FUNCTIONS; runtime.goready, for one, is inlined in Go 1.25)."""
        try:
            return self.functions[name]
        except KeyError:
            raise UnsupportedBinary(
                f"{self.go_version} binary {self.path} has no function {name}; "
                f"available: {', '.join(sorted(self.functions))}") from None

    def placement(self, name):
        """``receiver.placement.Placement`` of a probed function: why the probe sits where it does."""
        f = self.function(name)
        return placement.place(self.image.read(f.address, f.size), f.address, name)

    def ret_sites(self, name):
        """Virtual addresses of every RET instruction of a probed function (return-value capture
        probes there instead of uretprobes, which crash Go programs)."""
        f = self.function(name)
        return placement.ret_sites(self.image.read(f.address, f.size), f.address)

    def file_offset(self, vaddr):
        """File offset of a virtual address (what a uprobe attaches at)."""
        return self.image.file_offset(vaddr)

    def load_bias(self, pid=None):
        """What to subtract from a PC read in process ``pid`` (default: the PID this binary was opened
        from) to get this file's virtual address, e.g. before ``symbolizer()``: 0 for a non-PIE
        executable, the ASLR load address for a PIE. Raises TargetError if the process is gone or
        does not map this file."""
        if not self.pie:
            return 0
        pid = self.pid if pid is None else pid
        if pid is None:
            raise TargetError(f"{self.path}: a PIE's load address needs the PID of a process running it")
        try:
            inode = os.stat(f"/proc/{pid}/exe").st_ino
            with open(f"/proc/{pid}/maps") as maps:
                lines = maps.read().splitlines()
        except OSError as e:
            raise TargetError(f"process {pid}: cannot read its memory map ({e.strerror or e})") from e
        first = min(self.image.segments, key=lambda seg: seg.offset)
        for line in lines:
            fields = line.split()
            if len(fields) >= 5 and int(fields[2], 16) == first.offset and int(fields[4]) == inode:
                return int(fields[0].split("-")[0], 16) - (first.vaddr & ~0xFFF)
        raise TargetError(f"process {pid} does not map {self.path}; is it running this binary?")

    @cached_property
    def layout(self):
        """``receiver.layout.Layout``: from DWARF when present, else from the committed table."""
        addr = count = None
        if self.has_dwarf:
            try:
                runtime = layout_mod.read_dwarf(self.image.elffile())
                lay = layout_mod.from_dwarf(runtime, self.go_version)
                lay = runtime_structs.with_structs(lay, self.image)
                addr, count = runtime.wait_reasons_addr, runtime.wait_reasons_count
            except CorruptBinary:
                # Damaged DWARF: the table still knows this exact release, if it is there at all.
                if self.go_version not in layout_mod.table():
                    raise
                lay = layout_mod.from_table(self.go_version)
        else:
            lay = layout_mod.from_table(self.go_version)
        if addr is None:
            sym = self.image.symbols(["runtime.waitReasonStrings"], functions_only=False)
            if sym:
                addr, count = sym["runtime.waitReasonStrings"][0], sym["runtime.waitReasonStrings"][1] // 16
        if addr is not None:
            names = layout_mod.decode_wait_reasons(self.image, addr, count)
            lay = dataclasses.replace(lay, wait_reasons=names)
        elif not lay.wait_reasons:
            raise CorruptBinary(f"{self.path}: runtime.waitReasonStrings not found")
        return lay

    def symbolizer(self):
        """A cached ``receiver.symbolizer.Symbolizer`` over this binary's pclntab."""
        from receiver import symbolizer

        return symbolizer.for_binary(self)


def check_not_gccgo(image):
    """gccgo binaries use another runtime (libgo), with other structures and no register ABI."""
    if ".go_export" in image.sections or any(lib.startswith("libgo.so") for lib in image.needed):
        raise UnsupportedBinary(
            f"{image.path}: built by gccgo (libgo runtime); gotel traces binaries of the gc toolchain "
            f"only, rebuild with `go build`")


def check_supported(image, info):
    """Refuse architectures and releases whose calling convention gotel has not verified.

    arm64 is known but untested, so refused: its register ABI passes integer arguments in X0-X15
    (casgstatus(gp, old, new) in X0, X1, X2) with the current g in X28, and its uprobes emulate a
    different instruction set (the stack check is `ldr x16, [x28, #16]; cmp sp, x16; b.ls`).
    """
    if image.machine != EM_X86_64:
        arch = "arm64" if image.machine == EM_AARCH64 else f"ELF machine {image.machine}"
        raise UnsupportedBinary(
            f"{image.path}: {info.go_version} binary for {arch}; gotel supports linux/amd64 only "
            f"(arm64 is planned, not yet tested)")
    version = info.version_tuple
    if version != (0, 0, 0) and version[:2] < MIN_GO:
        raise UnsupportedGoVersion(
            f"{image.path}: built with {info.go_version}; gotel needs Go 1.17 or newer (register ABI); "
            f"rebuild with a current Go")
    if version == (0, 0, 0) and not image.has_dwarf:
        raise UnsupportedGoVersion(
            f"{image.path}: unknown Go version {info.go_version!r} and no DWARF to read the runtime "
            f"layout from; rebuild without -ldflags=-w")
    if any(lib.startswith("libstd.so") for lib in image.needed) or info.settings.get("-linkshared"):
        raise UnsupportedBinary(
            f"{image.path}: the Go runtime lives in a shared library (-linkshared); rebuild without it")
