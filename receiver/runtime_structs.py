"""Offsets inside the Go runtime's global structures that gotel reads from a process's memory for
runtime metrics: ``runtime.memstats`` (``mstats``) and its ``heapStats``, ``runtime.gcController``
(``gcControllerState``), ``runtime.sched`` (``schedt``) and its ``timeHistogram``s, and ``runtime.p``.

``STRUCT_FIELDS`` names every field path gotel may read, per structure type. A path descends
through nested structures ("gFree.stack.size"); a field renamed between releases is listed under
each name and the reader uses whichever the release has (e.g. ``schedt.gFree.n`` up to Go 1.25,
``gFree.stack.size`` + ``gFree.noStack.size`` later). Besides field offsets, ``$size`` is a
structure's size in bytes and ``path.$len`` the element count of an array field.

``read(elf)`` resolves them from DWARF; ``scripts/gen_layouts.py`` stores the result per release in
``layouts.json`` for binaries without DWARF, so both paths give the same dict:
{"runtime.mstats": {"heapStats": 0, ...}, ...}. Cost: ~30-60 ms (only the named DIEs are parsed).
"""

import re

from receiver.errors import CorruptBinary

STRUCT_FIELDS = {
    "runtime.mstats": (
        "heapStats", "stacks_sys", "mspan_sys", "mcache_sys", "buckhash_sys", "gcMiscSys", "other_sys",
        "numgc", "numforcedgc", "pause_total_ns", "gcPauseDist",
    ),
    "runtime.consistentHeapStats": ("stats", "stats.$len", "gen", "$size"),
    "runtime.heapStatsDelta": (
        "committed", "released", "inHeap", "inStacks", "inWorkBufs", "inPtrScalarBits",
        "tinyAllocCount", "largeAlloc", "largeAllocCount", "smallAllocCount", "smallAllocCount.$len",
        "largeFree", "largeFreeCount", "smallFreeCount", "smallFreeCount.$len", "$size",
    ),
    "runtime.gcControllerState": (
        "gcPercent", "memoryLimit", "gcPercentHeapGoal", "sweepDistMinTrigger", "triggered",
        "heapMarked", "heapGoal", "heapFree", "totalAlloc", "totalFree", "mappedReady",
    ),
    "runtime.schedt": (
        "timeToRun", "stwTotalTimeGC", "ngsys", "gFree.n", "gFree.stack.size", "gFree.noStack.size",
    ),
    "runtime.p": ("gFree.n", "gFree.size", "status"),
    "runtime.timeHistogram": ("counts", "counts.$len", "underflow", "overflow", "$size"),
    # work.cpuStats: the /cpu/classes/... snapshot the runtime takes at each GC (Go 1.20+).
    "runtime.workType": ("cpuStats",),
    # Exported field names since Go 1.23, lower case in 1.20-1.22.
    "runtime.cpuStats": ("GCTotalTime", "ScavengeTotalTime", "IdleTime", "UserTime",
                         "gcTotalTime", "scavengeTotalTime", "idleTime", "userTime"),
}

_NAMES = re.compile(rb"(?:" + b"|".join(re.escape(n.encode()) for n in STRUCT_FIELDS) + rb")\0")


def read(elf):
    """{struct type: {path: offset}} for every STRUCT_FIELDS path this binary's DWARF has."""
    try:
        dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
        raw = dwarf.debug_info_sec.stream.getvalue()
        dies = {}
        for m in _NAMES.finditer(raw):
            name = m.group()[:-1].decode()
            if name in dies:
                continue
            die = _die_named(dwarf, m.start(), m.group()[:-1])
            if die is not None and die.tag == "DW_TAG_structure_type":
                dies[name] = die
        out = {}
        for name, paths in STRUCT_FIELDS.items():
            die = dies.get(name)
            if die is None:
                continue
            fields = {}
            for path in paths:
                value = resolve(die, path)
                if value is not None:
                    fields[path] = value
            out[name] = fields
        return out
    except CorruptBinary:
        raise
    except Exception as e:  # pyelftools raises many types on damaged DWARF
        raise CorruptBinary(f"unreadable DWARF: {type(e).__name__}: {e}") from e


def resolve(die, path):
    """Offset of ``path`` inside the structure ``die`` (or its ``$size`` / an array's ``$len``);
    None when a component is absent."""
    parts = path.split(".")
    offset = 0
    for i, part in enumerate(parts):
        if part == "$size":
            size = die.attributes.get("DW_AT_byte_size")
            return None if size is None else size.value
        if part == "$len":
            return _array_len(die)
        member = _member(die, part)
        if member is None:
            return None
        loc = member.attributes.get("DW_AT_data_member_location")
        if loc is None or not isinstance(loc.value, int):
            return None
        offset += loc.value
        if i + 1 < len(parts):
            die = _strip_typedefs(member.get_DIE_from_attribute("DW_AT_type"))
    return offset


def _member(die, name):
    want = name.encode()
    for child in die.iter_children():
        attr = child.attributes.get("DW_AT_name")
        if child.tag == "DW_TAG_member" and attr is not None and attr.value == want:
            return child
    return None


def _strip_typedefs(die):
    while die.tag == "DW_TAG_typedef" and "DW_AT_type" in die.attributes:
        die = die.get_DIE_from_attribute("DW_AT_type")
    return die


def _array_len(die):
    if die.tag != "DW_TAG_array_type":
        return None
    for sub in die.iter_children():
        count = sub.attributes.get("DW_AT_count") or sub.attributes.get("DW_AT_upper_bound")
        if count is not None:
            return count.value + (1 if count.name == "DW_AT_upper_bound" else 0)
    return None


def _die_named(dwarf, name_offset, name):
    for back in (1, 2):
        if name_offset - back < 0:
            break
        try:
            die = dwarf.get_DIE_from_refaddr(name_offset - back)
        except Exception:   # not a DIE boundary
            continue
        attr = die.attributes.get("DW_AT_name")
        if attr is not None and attr.value == name:
            return die
    return None


# The size class table: runtime.class_to_size until Go 1.24, internal/runtime/gc.SizeClassToSize since.
CLASS_TO_SIZE_SYMBOLS = ("runtime.class_to_size", "internal/runtime/gc.SizeClassToSize")
MAX_SIZE_CLASSES = 256


def class_to_size(image):
    """Bytes per size class, read from the binary's own table (needs .symtab), or () when absent."""
    found = image.symbols(CLASS_TO_SIZE_SYMBOLS, functions_only=False)
    for name in CLASS_TO_SIZE_SYMBOLS:
        if name in found:
            addr, size = found[name]
            if not 0 < size // 2 <= MAX_SIZE_CLASSES:
                raise CorruptBinary(f"{image.path}: {name} has an implausible size {size}")
            raw = image.read(addr, size)
            return tuple(int.from_bytes(raw[i:i + 2], "little") for i in range(0, size - 1, 2))
    return ()


def with_structs(lay, image):
    """``lay`` (a Layout read from DWARF) with the runtime structures and size classes of ``image``."""
    import dataclasses

    return dataclasses.replace(lay, structs=read(image.elffile()), class_to_size=class_to_size(image))
