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

import mmap
import os
import re
import struct
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import capstone
import numpy as np

from receiver import buildinfo, layout as layout_mod, placement
from receiver.pclntab import string_offsets
from receiver.errors import (
    CorruptBinary, GotelError, NotAGoBinary, TargetError, UnsupportedBinary, UnsupportedGoVersion,
    denied_hint,
)

# The runtime functions gotel probes. casgstatus is the main probe (every status change of every
# goroutine); the others are the naive reference set the benchmarks compare against.
PROBED_FUNCTIONS = (
    "runtime.casgstatus",
    "runtime.newproc1",
    "runtime.gopark",
    "runtime.ready",
    "runtime.execute",
)
# Functions whose absence makes tracing impossible (the others are only for benchmarks).
REQUIRED_FUNCTIONS = ("runtime.casgstatus",)

EM_X86_64 = 62
EM_AARCH64 = 183
ET_DYN = 3
PT_LOAD = 1
PT_DYNAMIC = 2
PF_X, PF_W = 1, 2
SHT_SYMTAB = 2
SHT_RELA = 4
STT_FUNC = 2
DT_NEEDED, DT_STRTAB, DT_RELA, DT_RELASZ = 1, 5, 7, 8
R_X86_64_RELATIVE = 8
MAX_READ = 1 << 26   # no function or table gotel reads is larger; a bigger size is a damaged header
MIN_GO = (1, 17)   # the register ABI gotel reads arguments with arrived in Go 1.17
# Libraries a cgo or externally linked Go binary normally needs; anything else next to a missing
# runtime means the runtime came from a Go shared library (-linkshared).
SYSTEM_LIB = re.compile(
    r"^(libc|libpthread|libdl|libm|librt|ld-linux[-\w]*|libresolv|libgcc_s|libstdc\+\+)\.so")

SYM_DTYPE = np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"),
                      ("value", "<u8"), ("size", "<u8")])
RELA_DTYPE = np.dtype([("offset", "<u8"), ("info", "<u8"), ("addend", "<i8")])
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")


class Function(NamedTuple):
    """A probed runtime function: ELF virtual addresses of its entry and of the chosen probe."""

    name: str
    address: int
    size: int
    probe_address: int


class Segment(NamedTuple):
    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: int


class Section(NamedTuple):
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


class ElfImage:
    """A little-endian ELF64 file mapped into memory: segments, sections, reads by virtual address.

    Parses only the headers itself (so damage surfaces as CorruptBinary, never as an IndexError from
    deep inside a library); pyelftools is opened on demand for DWARF.
    """

    def __init__(self, path, data):
        self.path = str(path)
        self.data = data
        if len(data) < 4 or data[:4] != b"\x7fELF":
            raise NotAGoBinary(f"{self.path}: not an ELF file; gotel traces Linux Go executables")
        if len(data) < _EHDR.size:
            raise CorruptBinary(f"{self.path}: ELF header is truncated")
        ident, self.type, self.machine, _, self.entry, phoff, shoff, _, _, phentsize, phnum, \
            shentsize, shnum, shstrndx = _EHDR.unpack_from(data, 0)
        if ident[4] != 2 or ident[5] != 1:
            raise UnsupportedBinary(
                f"{self.path}: a 32-bit or big-endian ELF; gotel supports 64-bit little-endian "
                f"(linux/amd64) Go binaries"
            )
        self.segments = []
        if phnum and phentsize < _PHDR.size:
            raise CorruptBinary(f"{self.path}: program header entries of {phentsize} bytes")
        for i in range(phnum):
            p_type, p_flags, off, vaddr, _, filesz, memsz, _ = self._unpack(_PHDR, phoff + i * phentsize)
            if p_type == PT_LOAD:
                self.segments.append(Segment(vaddr, memsz, off, filesz, p_flags))
            elif p_type == PT_DYNAMIC:
                self._dynamic = (off, filesz)
        self.section_list, self.sections = [], {}
        if shnum and shoff + shnum * shentsize > len(data):
            raise CorruptBinary(f"{self.path}: section headers lie past the end of the file (truncated?)")
        if shnum and shentsize >= _SHDR.size and shoff:
            raw = [self._unpack(_SHDR, shoff + i * shentsize) for i in range(shnum)]
            names = raw[shstrndx] if shstrndx < len(raw) else None
            for s in raw:
                name = self._cstring(names[4] + s[0]) if names else ""
                self.section_list.append(Section(name, s[1], s[2], s[3], s[4], s[5], s[6], s[9]))
                self.sections.setdefault(name, self.section_list[-1])
        if not self.segments:
            raise CorruptBinary(f"{self.path}: ELF file without loadable segments")

    _dynamic = None

    def _unpack(self, fmt, offset):
        if offset < 0 or offset + fmt.size > len(self.data):
            raise CorruptBinary(f"{self.path}: ELF header table runs past the end of the file (truncated?)")
        return fmt.unpack_from(self.data, offset)

    def _cstring(self, offset, limit=4096):
        if not 0 <= offset < len(self.data):
            raise CorruptBinary(f"{self.path}: string offset {offset:#x} outside the file (truncated?)")
        end = self.data.find(b"\0", offset, offset + limit)
        if end < 0:
            raise CorruptBinary(f"{self.path}: unterminated string at {offset:#x}")
        return bytes(self.data[offset:end]).decode("utf-8", "replace")

    @property
    def pie(self):
        return self.type == ET_DYN

    def section(self, name):
        """(vaddr, bytes) of a section with file contents, or None."""
        s = self.sections.get(name)
        if s is None or s.type == 8:  # SHT_NOBITS
            return None
        if s.offset + s.size > len(self.data):
            raise CorruptBinary(f"{self.path}: section {name} runs past the end of the file (truncated?)")
        return s.addr, memoryview(self.data)[s.offset:s.offset + s.size]

    def writable_segments(self):
        for seg in self.segments:
            if seg.flags & PF_W:
                yield seg.vaddr, bytes(self.data[seg.offset:seg.offset + seg.filesz])

    def file_offset(self, vaddr):
        """File offset of a virtual address, from the PT_LOAD segment holding it (uprobes attach at
        file offsets). Raises CorruptBinary when no segment maps that address from the file."""
        for seg in self.segments:
            if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return vaddr - seg.vaddr + seg.offset
        raise CorruptBinary(f"{self.path}: address {vaddr:#x} is not in any loadable segment of the file")

    def read(self, vaddr, size):
        """``size`` bytes at a virtual address (bytes past filesz read as zeros, like .bss)."""
        if not 0 <= size <= MAX_READ:
            raise CorruptBinary(f"{self.path}: implausible read of {size} bytes at {vaddr:#x}")
        for seg in self.segments:
            if seg.vaddr <= vaddr and vaddr + size <= seg.vaddr + seg.memsz:
                start = vaddr - seg.vaddr
                end = min(start + size, seg.filesz)
                if seg.offset + end > len(self.data):
                    raise CorruptBinary(f"{self.path}: segment data past the end of the file (truncated?)")
                chunk = bytes(self.data[seg.offset + start:seg.offset + end]) if end > start else b""
                return chunk + bytes(size - len(chunk))
        raise CorruptBinary(f"{self.path}: {size} bytes at {vaddr:#x} are not in any loadable segment")

    def read_pointer(self, vaddr):
        """The pointer stored at vaddr as the loader will see it: in a PIE the file often holds 0 and
        the value is the addend of an R_X86_64_RELATIVE relocation (relative to load address 0)."""
        value = int.from_bytes(self.read(vaddr, 8), "little")
        if value == 0 and self.pie:
            offsets, addends = self._relative_relocs
            i = np.searchsorted(offsets, vaddr)
            if i < len(offsets) and offsets[i] == vaddr:
                return int(addends[i])
        return value

    @cached_property
    def _relative_relocs(self):
        offsets, addends = [], []
        tables = [(s.offset, s.size) for s in self.sections.values() if s.type == SHT_RELA]
        if not tables and self.dynamic.get(DT_RELA):
            # No section headers: the dynamic segment still says where the loader's relocations are.
            tables = [(self.file_offset(self.dynamic[DT_RELA]), self.dynamic.get(DT_RELASZ, 0))]
        for offset, size in tables:
            if offset + size <= len(self.data):
                rela = np.frombuffer(self.data, RELA_DTYPE, size // RELA_DTYPE.itemsize, offset)
                keep = (rela["info"] & 0xFFFFFFFF) == R_X86_64_RELATIVE
                offsets.append(rela["offset"][keep])
                addends.append(rela["addend"][keep])
        if not offsets:
            return np.zeros(0, "<u8"), np.zeros(0, "<i8")
        offsets, addends = np.concatenate(offsets), np.concatenate(addends)
        order = np.argsort(offsets, kind="stable")
        return offsets[order], addends[order]

    @cached_property
    def dynamic_entries(self):
        """[(tag, value)] of the PT_DYNAMIC segment (empty for a static binary)."""
        if self._dynamic is None:
            return []
        off, size = self._dynamic
        if off + size > len(self.data):
            raise CorruptBinary(f"{self.path}: dynamic section past the end of the file (truncated?)")
        entries = np.frombuffer(self.data, "<u8", size // 8 // 2 * 2, off).reshape(-1, 2)
        return [(int(t), int(v)) for t, v in entries.tolist()]

    @cached_property
    def dynamic(self):
        """{tag: value} of the dynamic entries (the first of each tag)."""
        out = {}
        for tag, value in self.dynamic_entries:
            out.setdefault(tag, value)
        return out

    @cached_property
    def needed(self):
        """DT_NEEDED library names (empty for a static binary)."""
        if DT_STRTAB not in self.dynamic:
            return []
        str_off = self.file_offset(self.dynamic[DT_STRTAB])
        return [self._cstring(str_off + v) for t, v in self.dynamic_entries if t == DT_NEEDED]

    @cached_property
    def symtab(self):
        """(symbols array of SYM_DTYPE, string table bytes) of .symtab, or None when stripped."""
        s = self.sections.get(".symtab")
        if s is None or s.type != SHT_SYMTAB:
            return None
        strs = self.section_list[s.link] if 0 < s.link < len(self.section_list) else None
        if s.offset + s.size > len(self.data) or strs is None or strs.offset + strs.size > len(self.data):
            raise CorruptBinary(f"{self.path}: .symtab or its string table runs past the end of the file")
        syms = np.frombuffer(self.data, SYM_DTYPE, s.size // SYM_DTYPE.itemsize, s.offset)
        return syms, memoryview(self.data)[strs.offset:strs.offset + strs.size]

    def symbols(self, names, functions_only=True):
        """{name: (value, size)} of the defined symbols named in ``names`` (from .symtab); only
        function symbols unless ``functions_only`` is False."""
        if self.symtab is None:
            return {}
        syms, strtab = self.symtab
        raw = bytes(strtab)
        defined = syms[syms["shndx"] != 0]
        if functions_only:
            defined = defined[(defined["info"] & 0xF) == STT_FUNC]
        found = {}
        for name in names:
            # Linkers may share string tails, so any NUL-terminated occurrence can be a symbol's name.
            hit = defined[np.isin(defined["name"], string_offsets(raw, name))]
            if len(hit):
                found[name] = (int(hit["value"][0]), int(hit["size"][0]))
        return found

    def function_symbols(self):
        """{name: (value, size)} of every defined function symbol in .symtab."""
        if self.symtab is None:
            return {}
        syms, strtab = self.symtab
        raw = bytes(strtab)
        funcs = syms[((syms["info"] & 0xF) == STT_FUNC) & (syms["shndx"] != 0)]
        out = {}
        for off, value, size in zip(funcs["name"].tolist(), funcs["value"].tolist(), funcs["size"].tolist()):
            end = raw.find(b"\0", off)
            out.setdefault(raw[off:end].decode("utf-8", "replace"), (value, size))
        return out

    @cached_property
    def has_dwarf(self):
        return ".debug_info" in self.sections or ".zdebug_info" in self.sections

    def elffile(self):
        """A pyelftools ELFFile over the same bytes (for DWARF)."""
        import io

        from elftools.elf.elffile import ELFFile

        return ELFFile(io.BytesIO(self.data))


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


def _map(path):
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise NotAGoBinary(f"{path}: empty file; not a Go executable")
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except IsADirectoryError as e:
        raise TargetError(f"{path}: is a directory; give the path of a Go executable or a PID") from e
    except PermissionError as e:
        raise TargetError(f"{path}: permission denied reading it; "
                          + ("check the file's permissions" if os.geteuid() == 0 else
                             "give gotel's user read access, or run gotel as root")) from e
    except OSError as e:
        if isinstance(e, GotelError):
            raise
        raise TargetError(f"{path}: cannot read ({e.strerror or e})") from e


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
        return cls.from_bytes(_map(path), path, pid, attach)

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

        return pclntab.load(self.image)

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
            lay = layout_mod.Layout(lay.g, lay.m, lay.statuses, names, lay.source, lay.notes)
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
