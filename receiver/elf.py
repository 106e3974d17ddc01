"""``ElfImage``: a little-endian ELF64 file mapped into memory, read by gotel itself.

Segments, sections, the symbol table, the dynamic section and reads by virtual address (PIE
relocations applied), with every header checked, so that a damaged file surfaces as one
``CorruptBinary`` and never as an IndexError from deep inside a library. Nothing here knows Go:
``receiver.binary`` builds Go inspection on top. pyelftools is opened on demand, for DWARF only.
"""

import mmap
import os
import struct
from functools import cached_property
from typing import NamedTuple

import numpy as np

from receiver.errors import CorruptBinary, GotelError, NotAGoBinary, TargetError, UnsupportedBinary
from receiver.pclntab import string_offsets

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

SYM_DTYPE = np.dtype([("name", "<u4"), ("info", "u1"), ("other", "u1"), ("shndx", "<u2"),
                      ("value", "<u8"), ("size", "<u8")])
RELA_DTYPE = np.dtype([("offset", "<u8"), ("info", "<u8"), ("addend", "<i8")])
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")


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


def map_file(path):
    """The file at path, mmapped read-only; errors say what to do."""
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
