"""Addresses of the Go runtime's global variables, in binaries with or without ``.symtab``.

``global_address(binary, name)`` answers from ``.symtab`` when the binary has one. A stripped binary
(``-ldflags=-s``, ``strip``) has no symbol for ``runtime.allgs`` or ``runtime.memstats``, but its
function table (pclntab) survives, and the runtime's own code addresses each global RIP-relatively.
So each global has one or more *instruction patterns*: (runtime function, n-th RIP-relative memory
operand in that function, offset of the referenced field inside the global). The address is the
operand's target minus that offset.

Never guessed:
- Every pattern below was checked against ``.symtab`` on unstripped twins built by every toolchain
  gotel knows (Go 1.19 and 1.21 to 1.27; default, PIE, external-linking/cgo and ``-race`` builds):
  ``tests/receiver/test_globals.py`` re-checks them, and ``scripts/gen_layouts.py`` checks them for
  every release it writes into ``receiver/layouts.json``.
- Patterns are used only for a release in that table (the runtime code they were verified on); any
  other release without ``.symtab`` is refused with ``UnsupportedGoVersion``.
- When a global has several patterns (in different functions), at least two of them must be linked
  in (the linker drops unused functions, e.g. runtime.GOMAXPROCS), all of those must name the same
  address, and
  the address must lie in a writable segment of the file; anything else is ``CorruptBinary``.

Cost: disassembling the few functions involved takes ~1 ms per global; results are cached per binary.
"""

import capstone
from capstone import x86

from receiver import layout as layout_mod
from receiver.buildinfo import parse_go_version
from receiver.errors import CorruptBinary, UnsupportedGoVersion

# name -> ((function, ordinal of the RIP-relative memory operand in it, offset of the field it
# addresses inside the global), ...). Found by scripts/find_global_patterns.py: the (function,
# ordinal, offset) triples common to every verified toolchain and build mode.
PATTERNS = {
    # forEachG: lock(&allglock); for _, gp := range allgs (ptr at +0, len at +8).
    "runtime.allgs": (("runtime.forEachG", 1, 0), ("runtime.allgadd", 7, 0)),
    # forEachGRace -> atomicAllG: atomic.Loaduintptr(&allglen) first. One function only: the census
    # also checks at read time that allglen equals len(allgs).
    "runtime.allglen": (("runtime.forEachGRace", 0, 0),),
    # mcache.refill / mheap.grow update memstats.heapStats (memstats+0 in every release).
    "runtime.memstats": (("runtime.(*mcache).refill", 3, 0), ("runtime.(*mheap).grow", 3, 0),
                         ("runtime.(*mheap).freeSpanLocked", 3, 0)),
    "runtime.gcController": (("runtime.gcinit", 1, 0), ("runtime.gcTrigger.test", 3, 0),
                             ("runtime.gcControllerCommit", 1, 0)),
    "runtime.sched": (("runtime.oneNewExtraM", 3, 0), ("runtime.wakeNetPoller", 0, 8),
                      ("runtime.pollWork", 3, 8)),
    "runtime.gomaxprocs": (("runtime.GOMAXPROCS", 1, 0), ("runtime.procresize", 0, 0),
                           ("runtime.sysmon", 7, 0)),
    "runtime.firstmoduledata": (("runtime.findfunc", 0, 0), ("runtime.(*Func).Entry", 0, 0),
                                ("runtime.resolveNameOff", 0, 0)),
    # preemptall / gcMarkTinyAllocs: for _, pp := range allp (the slice's pointer first).
    "runtime.allp": (("runtime.preemptall", 0, 0), ("runtime.gcMarkTinyAllocs", 0, 0),
                     ("runtime.timeSleepUntil", 1, 0)),
    "runtime.work": (("runtime.putfull", 0, 0), ("runtime.trygetfull", 0, 0)),
}

_CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_CS.detail = True


def rip_targets(code, address):
    """Virtual addresses of every RIP-relative memory operand in ``code`` (at ``address``), in order."""
    out = []
    for ins in _CS.disasm(code, address):
        for op in ins.operands:
            if op.type == x86.X86_OP_MEM and op.mem.base == x86.X86_REG_RIP:
                out.append(ins.address + ins.size + op.mem.disp)
    return out


def verified_release(go_version):
    """True when the patterns were verified on this exact release's runtime (it is in layouts.json)."""
    return go_version in layout_mod.table()


def symtab_address(binary, name):
    """Address of ``name`` from .symtab, or None."""
    hit = binary.image.symbols([name], functions_only=False).get(name)
    return None if hit is None else hit[0]


def pattern_address(binary, name, verified=None):
    """Address of ``name`` from the instruction patterns (ignores .symtab). Raises
    UnsupportedGoVersion for a release the patterns were not verified on (``verified=True``: the
    caller is verifying them, as scripts/gen_layouts.py does), CorruptBinary when the patterns
    disagree or point outside the writable data."""
    patterns = PATTERNS.get(name)
    if patterns is None:
        raise UnsupportedGoVersion(
            f"{binary.path}: gotel has no way to locate {name} in a binary without .symtab "
            f"(known: {', '.join(sorted(PATTERNS))})")
    if not (verified or verified_release(binary.go_version)):
        raise UnsupportedGoVersion(
            f"{binary.path}: stripped {binary.go_version} binary; gotel locates runtime globals without "
            f".symtab only for releases it verified ({_known()}); rebuild without -ldflags=-s")
    funcs = binary.image.symbols([p[0] for p in patterns])
    missing = [p[0] for p in patterns if p[0] not in funcs]
    if missing:
        funcs.update(binary.pclntab.lookup(missing))
    present = [p for p in patterns if p[0] in funcs]
    if len(present) < min(2, len(patterns)):
        raise CorruptBinary(
            f"{binary.path}: too few of {', '.join(p[0] for p in patterns)} (needed to locate {name}) "
            f"are in its function table")
    found = {}
    for func, ordinal, delta in present:
        start, size = funcs[func]
        targets = rip_targets(binary.image.read(start, size), start)
        if ordinal >= len(targets):
            raise CorruptBinary(
                f"{binary.path}: {func} has {len(targets)} RIP-relative operands, expected more than "
                f"{ordinal}; its code is not the verified {binary.go_version} runtime")
        found[func] = targets[ordinal] - delta
    addresses = set(found.values())
    if len(addresses) != 1:
        detail = ", ".join(f"{f}: {a:#x}" for f, a in found.items())
        raise CorruptBinary(f"{binary.path}: the instruction patterns for {name} disagree ({detail}); "
                            f"not a verified {binary.go_version} runtime")
    address = addresses.pop()
    if not any(seg.flags & 2 and seg.vaddr <= address < seg.vaddr + seg.memsz for seg in binary.image.segments):
        raise CorruptBinary(f"{binary.path}: {name} located at {address:#x}, outside the writable data")
    return address


def global_address(binary, name):
    """Virtual address (in the file, before any PIE load bias) of the runtime global ``name``:
    from .symtab when present, else from the verified instruction patterns. Cached per binary."""
    cache = binary.__dict__.setdefault("_global_addresses", {})
    if name not in cache:
        address = symtab_address(binary, name)
        cache[name] = address if address is not None else pattern_address(binary, name)
    return cache[name]


def describe(binary):
    """{name: {"address": int, "source": "symtab" | "instructions"} or {"error": str}} for every global
    gotel can locate (``gotel inspect`` shows it)."""
    from receiver.errors import GotelError

    out = {}
    for name in PATTERNS:
        try:
            source = "symtab" if symtab_address(binary, name) is not None else "instructions"
            out[name] = {"address": global_address(binary, name), "source": source}
        except GotelError as e:
            out[name] = {"error": str(e)}
    return out


def _known():
    return ", ".join(sorted(layout_mod.table(), key=parse_go_version)) or "none"
