"""The Go function table (``.gopclntab``): every function's entry, name, and PC -> file/line tables.

It survives ``-ldflags=-s -w`` (the runtime needs it for stack traces), so it is how gotel finds the
runtime functions and symbolizes PCs in stripped binaries. Formats handled (runtime/symtab.go,
cmd/link/internal/ld/pcln.go):

- magic 0xfffffff0 (Go 1.18, 1.19) and 0xfffffff1 (Go 1.20 and later, whose ``_func`` gained
  ``startLine``). Header: magic, pad, pad, minLC, ptrSize, nfunc, nfiles, textStart, then the offsets
  of funcnametab, cutab, filetab, pctab and the function table, all relative to the header.
- Function entries are 32-bit offsets from the start of the Go text. Through Go 1.25 that start is
  the header's ``textStart``. Go 1.26 stores 0 there (the field needed a relocation) and the start is
  only in ``runtime.firstmoduledata.text``, which Go 1.26 puts in its own ``.go.module`` section.
  Tools that trusted ``textStart`` broke on stripped Go 1.26 binaries
  (opentelemetry-go-instrumentation #3869), so it is never trusted when 0.
- In a PIE these pointers may hold 0 in the file, the value being the addend of an
  R_X86_64_RELATIVE relocation; ``ElfImage.read_pointer`` reads either form.

Go 1.16/1.17's format (magic 0xfffffffa, absolute entries) is refused: gotel reads Go 1.17 binaries
from .symtab only.

Errors: only ``receiver.errors`` types (CorruptBinary for anything inconsistent). Cost: the table is
decoded with numpy: ~10 ms for 10k functions; names are decoded on demand.
"""

import re
import struct

import numpy as np

from receiver.errors import CorruptBinary, UnsupportedGoVersion

MAGIC_118 = 0xFFFFFFF0
MAGIC_120 = 0xFFFFFFF1
MAGIC_116 = 0xFFFFFFFA
PCDATA_INLTREE = 2       # PCDATA_InlTreeIndex: the inline tree entry at each PC (-1: none)
FUNCDATA_INLTREE = 3     # FUNCDATA_InlTree: the function's inlinedCall array, in go:func.*
# runtime.inlinedCall (Go 1.20+): funcID u8, pad [3], nameOff i32, parentPc i32, startLine i32.
INLINED_CALL_120 = np.dtype([("funcID", "u1"), ("pad", "V3"), ("nameOff", "<i4"),
                             ("parentPc", "<i4"), ("startLine", "<i4")])
# Go 1.18/1.19: parent i16, funcID u8, pad u8, file i32, line i32, nameOff i32, parentPc i32.
INLINED_CALL_118 = np.dtype([("parent", "<i2"), ("funcID", "u1"), ("pad", "u1"), ("file", "<i4"),
                             ("line", "<i4"), ("nameOff", "<i4"), ("parentPc", "<i4")])
HEADER = struct.Struct("<IBBBBQQQQQQQQ")
# Offsets in runtime.moduledata (Go 1.18 through 1.27 agree on its first fields): pcHeader pointer,
# six slices (funcnametab, cutab, filetab, pctab, pclntable, ftab), findfunctab, minpc, maxpc, text.
MODULEDATA_TEXT = 8 + 6 * 24 + 8 + 8 + 8
MODULEDATA_FUNCNAMETAB = 8


class PcLnTab:
    """A parsed pclntab. ``entries[i]`` is the entry of function i (``entries[nfunc]`` the end of the
    text), ``funcoffs[i]`` the offset of its ``_func`` record in the function table."""

    def __init__(self, data, vaddr, text_start=None):
        self.data = np.frombuffer(data, np.uint8)
        self.raw = bytes(data)
        self.vaddr = vaddr
        if len(self.raw) < HEADER.size:
            raise CorruptBinary(f"pclntab of {len(self.raw)} bytes is truncated")
        (magic, pad1, pad2, self.min_lc, ptr_size, nfunc, nfiles, header_text, funcname_off, cu_off,
         filetab_off, pctab_off, pcln_off) = HEADER.unpack_from(self.raw, 0)
        if magic == MAGIC_116:
            raise UnsupportedGoVersion(
                "Go 1.16/1.17 function table: gotel reads such binaries from .symtab only; "
                "do not strip them, or rebuild with Go 1.18 or newer")
        if magic not in (MAGIC_118, MAGIC_120) or pad1 or pad2 or ptr_size != 8 \
                or self.min_lc not in (1, 2, 4):
            raise CorruptBinary(f"pclntab header not recognised (magic {magic:#x}, ptrsize {ptr_size})")
        size = len(self.raw)
        if not (HEADER.size <= funcname_off <= cu_off <= filetab_off <= pctab_off <= pcln_off < size):
            raise CorruptBinary("pclntab header offsets are out of order or past its end")
        if nfunc <= 0 or pcln_off + (nfunc + 1) * 8 > size:
            raise CorruptBinary(f"pclntab claims {nfunc} functions, more than it holds")
        self.magic, self.nfunc, self.nfiles = magic, nfunc, nfiles
        self.funcname_off, self.cu_off, self.filetab_off = funcname_off, cu_off, filetab_off
        self.pctab_off, self.pcln_off = pctab_off, pcln_off
        self.func_fields = 11 if magic == MAGIC_120 else 10   # u32 words before funcID (startLine since 1.20)

        ftab = np.frombuffer(self.raw, "<u4", 2 * (nfunc + 1), pcln_off).reshape(-1, 2)
        entryoffs = ftab[:, 0].astype(np.uint64)
        self.funcoffs = ftab[:nfunc, 1].astype(np.int64)
        if np.any(np.diff(entryoffs.astype(np.int64)) < 0):
            raise CorruptBinary("pclntab function entries are not sorted")
        if np.any(self.funcoffs < 0) or np.any(pcln_off + self.funcoffs + 4 * self.func_fields > size):
            raise CorruptBinary("pclntab function records lie past its end")
        if text_start is None:
            text_start = header_text
        if not text_start:
            raise CorruptBinary("pclntab has no text start (Go 1.26+ keeps it in moduledata, not found)")
        self.text_start = int(text_start)
        self.entries = entryoffs + np.uint64(self.text_start)
        self._fields = None
        self._names = None
        self.gofunc = None      # vaddr of go:func.* (funcdata base); set by the binary that loads it

    # --- _func records -------------------------------------------------------------------------

    def field(self, index):
        """u32 word ``index`` of every ``_func`` record (1 nameOff, 5 pcfile, 6 pcln, 8 cuOffset)."""
        if self._fields is None:
            idx = (self.pcln_off + self.funcoffs)[:, None] + np.arange(4 * self.func_fields)
            self._fields = self.data[idx].view("<u4").reshape(self.nfunc, self.func_fields)
        return self._fields[:, index]

    @property
    def name_offsets(self):
        return self.field(1).astype(np.int64)

    def name(self, i):
        """Name of function i."""
        start = self.funcname_off + int(self.name_offsets[i])
        end = self.raw.find(b"\0", start, self.cu_off)
        if start >= self.cu_off or end < 0:
            raise CorruptBinary(f"pclntab function {i}: name offset outside funcnametab")
        return self.raw[start:end].decode("utf-8", "replace")

    def names(self):
        """Names of all functions, in table order (decoded once)."""
        if self._names is None:
            self._names = [self.name(i) for i in range(self.nfunc)]
        return self._names

    def functions(self):
        """{name: (entry, size)} of every function; size runs to the next entry (includes padding)."""
        sizes = np.diff(self.entries)
        out = {}
        for name, entry, size in zip(self.names(), self.entries[:-1].tolist(), sizes.tolist()):
            out.setdefault(name, (entry, size))
        return out

    def lookup(self, names):
        """{name: (entry, size)} for the given names that the table holds, without decoding every name."""
        table = self.raw[self.funcname_off:self.cu_off]
        offsets = self.name_offsets
        found = {}
        for name in names:
            hit = np.flatnonzero(np.isin(offsets, string_offsets(table, name)))
            if len(hit):
                i = int(hit[0])
                found[name] = (int(self.entries[i]), int(self.entries[i + 1] - self.entries[i]))
        return found

    def find(self, pcs):
        """Function index of each PC (-1 where a PC is outside the Go text)."""
        pcs = np.asarray(pcs, dtype=np.uint64)
        idx = np.searchsorted(self.entries, pcs, side="right").astype(np.int64) - 1
        idx[(idx < 0) | (idx >= self.nfunc)] = -1
        return idx

    # --- pc-value tables -----------------------------------------------------------------------

    def pcvalue_table(self, func_index, word):
        """(end_pcs, values) of a function's pc-value table (``word`` 4 = pcsp, 5 = pcfile, 6 = pcln):
        value[k] holds for PCs below end_pcs[k] (and at or above end_pcs[k-1])."""
        return self.pcvalue_table_at(func_index, int(self.field(word)[func_index]))

    def _tail_word(self, func_index, k):
        """u32 word k after a function's fixed fields (its pcdata, then its funcdata offsets)."""
        p = self.pcln_off + int(self.funcoffs[func_index]) + 4 * (self.func_fields + k)
        if p + 4 > len(self.raw):
            raise CorruptBinary(f"pclntab function {func_index}: pcdata/funcdata past its end")
        return int.from_bytes(self.raw[p:p + 4], "little")

    def func_ids(self):
        """The funcID byte of every function (runtime special functions, wrappers), as uint8."""
        return (self.field(self.func_fields - 1) & 0xFF).astype(np.uint8)

    def pcdata_offset(self, func_index, table):
        """Offset in pctab of a function's pcdata table ``table`` (e.g. PCDATA_INLTREE), 0 if none."""
        if table >= int(self.field(7)[func_index]):
            return 0
        return self._tail_word(func_index, table)

    def funcdata_offset(self, func_index, index):
        """Offset from moduledata.gofunc of a function's funcdata ``index`` (e.g. FUNCDATA_INLTREE),
        or None when it has none."""
        nfuncdata = int(self.field(self.func_fields - 1)[func_index]) >> 24
        if index >= nfuncdata:
            return None
        off = self._tail_word(func_index, int(self.field(7)[func_index]) + index)
        return None if off == 0xFFFFFFFF else off

    def name_at(self, name_off):
        """A function name by its offset in funcnametab (inline tree entries name functions so)."""
        start = self.funcname_off + int(name_off)
        end = self.raw.find(b"\0", start, self.cu_off)
        if not self.funcname_off <= start < self.cu_off or end < 0:
            raise CorruptBinary(f"pclntab: name offset {name_off} outside funcnametab")
        return self.raw[start:end].decode("utf-8", "replace")

    def pcvalue_table_at(self, func_index, off):
        """(end_pcs, values) of the pc-value table at offset ``off`` in pctab, for func_index."""
        pc = int(self.entries[func_index])
        if off == 0:
            return np.array([int(self.entries[func_index + 1])], np.uint64), np.array([-1], np.int64)
        p = self.pctab_off + off
        limit = self.pcln_off
        raw = self.raw
        val, first = -1, True
        ends, vals = [], []
        while True:
            if p >= limit:
                raise CorruptBinary(f"pclntab function {func_index}: pc-value table runs past pctab")
            uvdelta, p = _uvarint(raw, p, limit)
            if uvdelta == 0 and not first:
                break
            first = False
            val += -(uvdelta & 1) ^ (uvdelta >> 1)
            pcdelta, p = _uvarint(raw, p, limit)
            pc += pcdelta * self.min_lc
            ends.append(pc)
            vals.append(val)
            if len(ends) > 1 << 20:
                raise CorruptBinary(f"pclntab function {func_index}: endless pc-value table")
        return np.array(ends, np.uint64), np.array(vals, np.int64)

    def file_name(self, func_index, file_no):
        """Source file of file number ``file_no`` in function func_index's compilation unit."""
        if file_no < 0:
            return "?"
        slot = self.cu_off + 4 * (int(self.field(8)[func_index]) + file_no)
        if slot + 4 > self.filetab_off:
            raise CorruptBinary(f"pclntab function {func_index}: file {file_no} outside cutab")
        off = int.from_bytes(self.raw[slot:slot + 4], "little")
        if off == 0xFFFFFFFF:
            return "?"
        start = self.filetab_off + off
        end = self.raw.find(b"\0", start, self.pctab_off)
        if start >= self.pctab_off or end < 0:
            raise CorruptBinary(f"pclntab function {func_index}: file name outside filetab")
        return self.raw[start:end].decode("utf-8", "replace")


def string_offsets(table, name):
    """Offsets in a table of NUL-terminated strings where ``name`` + NUL occurs (whole strings and
    shared tails alike: a name offset points at one or the other, and either is that name)."""
    return [m.start() for m in re.finditer(re.escape(name.encode()) + b"\0", table)]


def _uvarint(raw, p, limit):
    value = shift = 0
    while True:
        if p >= limit or shift > 35:
            raise CorruptBinary("pclntab varint runs past its table")
        b = raw[p]
        p += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, p
        shift += 7


def locate(image):
    """(vaddr, bytes) of the pclntab: the ``.gopclntab`` section, else the magic searched in the
    read-only segments (the header is recognisable: pads 0, minLC 1, ptrsize 8)."""
    for name in (".gopclntab", ".data.rel.ro.gopclntab"):
        sect = image.section(name)
        if sect is not None:
            return sect
    for seg in image.segments:
        if seg.flags & 2 or seg.flags & 1:   # skip writable and executable segments
            continue
        data = bytes(image.data[seg.offset:seg.offset + seg.filesz])
        for magic in (MAGIC_120, MAGIC_118):
            for m in re.finditer(re.escape(struct.pack("<I", magic) + b"\0\0\x01\x08"), data):
                if m.start() % 8 == 0:
                    start = seg.offset + m.start()
                    return seg.vaddr + m.start(), memoryview(image.data)[start:seg.offset + seg.filesz]
    raise CorruptBinary(f"{image.path}: no Go function table (.gopclntab) found")


def text_start(image, vaddr, data):
    """The Go text start the function entries are relative to (see the module docstring)."""
    if len(data) >= HEADER.size:
        from_header = image.read_pointer(vaddr + 24)
        if from_header:
            return from_header
    md = find_moduledata(image, vaddr)
    if md is None:
        raise CorruptBinary(f"{image.path}: the Go text start is neither in the pclntab header nor in a "
                            f"moduledata found in the binary")
    return image.read_pointer(md + MODULEDATA_TEXT)


def find_moduledata(image, pclntab_vaddr):
    """Virtual address of runtime.firstmoduledata: the ``.go.module`` section (Go 1.26+), else the
    first 8-aligned pointer to the pclntab in the writable segments whose funcnametab points right."""
    sect = image.section(".go.module")
    if sect is not None and image.read_pointer(sect[0]) == pclntab_vaddr:
        return sect[0]
    funcname_off = int.from_bytes(image.read(pclntab_vaddr + 32, 8), "little")
    candidates = []
    for seg in image.segments:
        if not seg.flags & 2:
            continue
        words = np.frombuffer(image.data, "<u8", seg.filesz // 8, seg.offset)
        candidates += (seg.vaddr + 8 * np.flatnonzero(words == pclntab_vaddr)).tolist()
    offsets, addends = image._relative_relocs if image.pie else (np.zeros(0), np.zeros(0))
    candidates += offsets[addends == pclntab_vaddr].tolist()
    for addr in candidates:
        if image.read_pointer(int(addr) + MODULEDATA_FUNCNAMETAB) == pclntab_vaddr + funcname_off:
            return int(addr)
    return None


# Index of moduledata.gofunc in words after moduledata.text, by release (fields were added before it:
# covctrs/ecovctrs in Go 1.20, typedesclen/itaboffset/itabsize in Go 1.27).
_GOFUNC_AFTER_TEXT = (((1, 27), 21), ((1, 20), 18), ((1, 18), 16))


def gofunc_address(image, tab, version):
    """Virtual address of ``go:func.*`` (moduledata.gofunc), which funcdata offsets are relative to:
    the symbol when .symtab has it, else the field of runtime.firstmoduledata for this release
    (``version`` a (major, minor, patch) tuple). None when neither is found or it is implausible."""
    for name in ("go:func.*", "go.func.*"):
        sym = image.symbols([name], functions_only=False).get(name)
        if sym is not None:
            return sym[0]
    md = find_moduledata(image, tab.vaddr)
    index = next((i for since, i in _GOFUNC_AFTER_TEXT if tuple(version[:2]) >= since), None)
    if md is None or index is None:
        return None
    addr = image.read_pointer(md + MODULEDATA_TEXT + 8 * index)
    in_rodata = any(not seg.flags & 3 and seg.vaddr <= addr < seg.vaddr + seg.filesz
                    for seg in image.segments)
    return addr if in_rodata else None


def load(image):
    """PcLnTab of an ``receiver.binary.ElfImage``. Raises CorruptBinary or UnsupportedGoVersion."""
    vaddr, data = locate(image)
    start = text_start(image, vaddr, data)
    tab = PcLnTab(data, vaddr, start)
    end = int(tab.entries[-1])
    if not any(seg.flags & 1 and seg.vaddr <= start and end <= seg.vaddr + seg.memsz
               for seg in image.segments):
        raise CorruptBinary(f"{image.path}: pclntab functions ({start:#x}-{end:#x}) are not in executable code")
    return tab
