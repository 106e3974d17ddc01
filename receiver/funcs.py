"""Function probes: which Go functions a pattern selects, where their probes go, and bpf/funcs.c.

A pattern is a glob over Go symbol names (``main.(*Server).handle*``, ``net/http.*``), optionally
followed by argument types for binaries without DWARF (``main.add(int, int)``). Each selected
function gets one uprobe after its stack-check prologue (``receiver.placement.place``, as for the
runtime probes) and one on every RET instruction capstone finds in it (``placement.ret_sites``):
returns are never seen through uretprobes, which rewrite the return address on a stack that Go
moves and walks (golang/go#22008, #27077).

Both probes read the goroutine from R14, which Go's ABIInternal keeps pointing at the current g in
Go code. Assembly functions (ABI0) do not: the pclntab marks them (``funcFlag_ASM``, Go 1.21+) and
they are refused, as are the runtime's special functions (a non-zero funcID: goexit, mcall,
systemstack, ...). For Go before 1.21, which has no such flag, only functions with Go's stack check
(``cmp rsp, [r14+0x10]``, which proves R14 is g) are accepted. The kernel side checks R14 again on
every hit (SP inside g.stack) and drops what fails, counted as ``bad_g``.

Refusals (``FunctionError``, one line each): a pattern that matches nothing (saying where a
function of that name was inlined, when DWARF shows it), a pattern set matching more than ``limit``
functions (default 1000, like bcc's funccount), a function whose entry cannot be placed safely.

Cost of attaching, measured here (see ``FuncProbes.attach``/``close``): each uprobe is one
perf_event_open; closing one unregisters it, the slow part.
"""

import dataclasses
import fnmatch
import logging
import os
import re
import threading
import time
from typing import NamedTuple

import numpy as np

from receiver import placement, uprobe
from receiver.errors import GotelError, ProbeError
from receiver.events import BPF_DIR
from receiver.probes import ring_problems

log = logging.getLogger("gotel.funcs")

SOURCE = BPF_DIR / "funcs.c"
HEADER = BPF_DIR / "gotel_func_event.h"
ENTRY, RETURN = 1, 2
NUM_REGS = 9
REGISTERS = ("rax", "rbx", "rcx", "rdi", "rsi", "r8", "r9", "r10", "r11")
COUNTERS = ("lost", "bad_g", "hits")
DEFAULT_LIMIT = 1000
FUNC_FLAG_ASM = 1 << 2      # internal/abi FuncFlagAsm (runtime/symtab.go funcFlag_ASM before 1.21)

FUNC_EVENT_DTYPE = np.dtype(
    [
        ("ts_ns", "<u8"),
        ("ip", "<u8"),
        ("g", "<u8"),
        ("goid", "<u8"),
        ("stack_off", "<u8"),
        ("regs", "<u8", (NUM_REGS,)),
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("kind", "u1"),
        ("flags", "u1"),
        ("cpu", "<u2"),
        ("str_len", "<u4"),
        ("str", "u1", (32,)),
    ]
)
FUNC_EVENT_SIZE = FUNC_EVENT_DTYPE.itemsize  # 160
STR_BYTES = 32
HAS_STR = 1


class FunctionError(GotelError):
    """A function pattern that cannot be probed as asked: no match, too many, unsafe code."""


@dataclasses.dataclass(frozen=True)
class Pattern:
    """One parsed pattern: a glob, and argument types when given (``main.add(int, int)``)."""

    glob: str
    types: tuple = None

    @classmethod
    def parse(cls, text):
        text = text.strip()
        # A method pattern like main.(*T).M has parentheses inside the name: only a trailing group
        # that follows a name character (not a '.') is an argument list.
        m = re.fullmatch(r"(.+[^.])\(([^()]*)\)", text)
        if m:
            name, args = m.group(1), m.group(2)
            types = tuple(t.strip() for t in args.split(",") if t.strip())
            bad = [t for t in types if t not in ARG_TYPES]
            if bad:
                raise FunctionError(
                    f"pattern {text!r}: unknown argument type(s) {', '.join(bad)}; "
                    f"known: {', '.join(ARG_TYPES)}")
            return cls(name, types)
        return cls(text)

    def matches(self, name):
        return fnmatch.fnmatchcase(name, self.glob)


# Go types an argument can be given as, and how many integer registers each takes.
ARG_TYPES = {"int": 1, "int64": 1, "int32": 1, "int16": 1, "int8": 1, "uint": 1, "uint64": 1,
             "uint32": 1, "uint16": 1, "uint8": 1, "uintptr": 1, "bool": 1, "pointer": 1,
             "string": 2, "slice": 3}


@dataclasses.dataclass(frozen=True)
class ProbedFunction:
    """One function to probe: its entry probe, its RET sites, and the SP correction of the entry."""

    name: str
    address: int
    size: int
    probe_address: int
    ret_addresses: tuple
    sp_delta: int          # bytes the prologue pushed before the entry probe (Go 1.19 frames)
    types: tuple = None    # argument types given in the pattern, if any


def _func_flags(tab, index):
    """(funcID, flag) bytes of function index's ``_func`` record."""
    off = tab.pcln_off + int(tab.funcoffs[index]) + 4 * (tab.func_fields - 1)
    return tab.raw[off], tab.raw[off + 1]


def _sp_delta(where):
    """Bytes pushed between the entry and the probe (``sub rsp, N``, ``push``); None if unknown."""
    delta = 0
    for text in where.skipped:
        mnemonic, _, ops = text.partition(" ")
        if mnemonic == "push":
            delta += 8
        elif mnemonic == "sub" and ops.startswith("rsp, "):
            try:
                delta += int(ops[5:], 0)
            except ValueError:
                return None
        elif "rsp" in ops.split(",")[0] and mnemonic not in ("cmp", "test"):
            return None
    return delta


class Selection(NamedTuple):
    """What patterns selected: the functions to probe, and why others a glob matched were not."""

    functions: list
    skipped: list


def resolve(binary, patterns, limit=DEFAULT_LIMIT):
    """[ProbedFunction] for the functions of a GoBinary that the patterns select (``select``)."""
    return select(binary, patterns, limit).functions


def select(binary, patterns, limit=DEFAULT_LIMIT):
    """Selection of the functions of a GoBinary that the patterns select, sorted by address.

    Raises FunctionError (no match, more than ``limit`` matches, a function that cannot be probed
    safely when named exactly; functions a glob selects are skipped instead, each with its reason
    in ``skipped``)."""
    parsed = [p if isinstance(p, Pattern) else Pattern.parse(p) for p in patterns]
    tab = binary.pclntab
    names = tab.names()
    entries = tab.entries
    chosen = {}
    for p in parsed:
        hits = [i for i, n in enumerate(names) if p.matches(n)]
        if not hits:
            raise FunctionError(_no_match(binary, p))
        for i in hits:
            chosen.setdefault(names[i], (i, p))
    if len(chosen) > limit:
        raise FunctionError(
            f"the patterns {', '.join(p.glob for p in parsed)} match {len(chosen)} functions, more than "
            f"the limit of {limit}; narrow them or raise the limit (--max-functions)")
    out, skipped = [], []
    old_go = binary.info.version_tuple[:2] < (1, 21) if binary.info.version_tuple != (0, 0, 0) else False
    for name, (i, p) in chosen.items():
        exact = not any(ch in p.glob for ch in "*?[")
        try:
            out.append(_probe(binary, tab, i, name, int(entries[i]), int(entries[i + 1] - entries[i]),
                              p.types, old_go))
        except FunctionError as e:
            if exact:
                raise
            skipped.append(str(e))
    if not out:
        raise FunctionError("no probeable function matches: " + "; ".join(skipped[:5]))
    out.sort(key=lambda f: f.address)
    return Selection(out, skipped)


def _probe(binary, tab, i, name, address, size, types, old_go):
    func_id, flag = _func_flags(tab, i)
    if flag & FUNC_FLAG_ASM:
        raise FunctionError(
            f"{name} is written in assembly (ABI0): R14 does not hold the goroutine there, so gotel "
            f"cannot tell which goroutine calls it; probe its Go callers instead")
    if func_id != 0:
        raise FunctionError(f"{name} is a special runtime function (funcID {func_id}); it cannot be probed")
    code = binary.image.read(address, size)
    try:
        where = placement.place(code, address, name)
    except GotelError as e:
        raise FunctionError(f"{name}: {e}") from e
    if old_go and where.kind == "entry":
        raise FunctionError(
            f"{name} has no stack check, and {binary.go_version} does not mark assembly functions: "
            f"gotel cannot prove R14 holds the goroutine there")
    delta = _sp_delta(where)
    if delta is None:
        raise FunctionError(f"{name}: the prologue before the probe ({'; '.join(where.skipped)}) moves "
                            f"the stack pointer in a way gotel does not follow")
    rets = tuple(placement.ret_sites(code, address))
    if not rets:
        raise FunctionError(f"{name} has no RET instruction (it never returns, or leaves by a jump); "
                            f"its calls could not be timed")
    return ProbedFunction(name, address, size, where.probe_address, rets, delta, types)


def _no_match(binary, pattern):
    """The refusal for a pattern that selects nothing: where it was inlined, if DWARF says, or
    that it was inlined, if only the function name table still holds its name (inline trees name
    the functions they inlined there)."""
    msg = f"no function in {binary.path} matches {pattern.glob!r}"
    if any(ch in pattern.glob for ch in "*?["):
        return msg
    sites = inlined_into(binary, pattern.glob)
    if sites:
        where = ", ".join(sites[:5]) + (f" and {len(sites) - 5} more" if len(sites) > 5 else "")
        return (f"{pattern.glob} was inlined everywhere (into {where}) and has no code of its own to "
                f"probe; probe its callers, or rebuild it with //go:noinline")
    tab = binary.pclntab
    if names_function(tab, pattern.glob):
        return (f"{pattern.glob} was inlined everywhere (only inline records name it) and has no "
                f"code of its own to probe; probe its callers, or rebuild it with //go:noinline")
    return msg + " (absent, or inlined and optimized away)"


def names_function(tab, name):
    """True when the pclntab's function name table holds ``name`` as a whole string."""
    from receiver.pclntab import string_offsets

    table = tab.raw[tab.funcname_off:tab.cu_off]
    return any(off == 0 or table[off - 1] == 0 for off in string_offsets(table, name))


def inlined_into(binary, name, limit=20):
    """Names of the functions DWARF records ``name`` as inlined into (empty without DWARF).

    Go writes the abstract copy of an inlined function into the unit of each caller, so every unit
    is read: seconds on a large binary, paid only on this refusal path."""
    if not binary.has_dwarf:
        return []
    try:
        dwarf = binary.image.elffile().get_dwarf_info()
        want = name.encode()
        abstract, sites = set(), []
        for cu in dwarf.iter_CUs():
            stack = []
            for die in cu.iter_DIEs():
                if die.is_null():
                    continue
                if die.tag == "DW_TAG_subprogram":
                    n = die.attributes.get("DW_AT_name")
                    if n is not None and n.value == want and "DW_AT_inline" in die.attributes:
                        abstract.add(die.offset)
                    elif n is not None:
                        stack = [n.value.decode(errors="replace")]
                elif die.tag == "DW_TAG_inlined_subroutine" and stack:
                    origin = die.attributes.get("DW_AT_abstract_origin")
                    if origin is not None:
                        off = origin.value if origin.form == "DW_FORM_ref_addr" else origin.value + cu.cu_offset
                        sites.append((off, stack[0]))
    except Exception:   # noqa: BLE001  (damaged DWARF only loses the hint)
        return []
    found = []
    for off, caller in sites:
        if off in abstract and caller not in found:
            found.append(caller)
            if len(found) >= limit:
                break
    return found


class AddressMap:
    """Maps the ``ip`` of events to (function index, is-entry) for one process (its load bias).

    Built once per process from the resolved functions; ``lookup`` is one searchsorted."""

    def __init__(self, functions, bias=0):
        addrs, index, kind = [], [], []
        for i, f in enumerate(functions):
            addrs.append(f.probe_address)
            index.append(i)
            kind.append(ENTRY)
            for r in f.ret_addresses:
                addrs.append(r)
                index.append(i)
                kind.append(RETURN)
        order = np.argsort(np.array(addrs, np.uint64), kind="stable")
        self.addresses = np.array(addrs, np.uint64)[order] + np.uint64(bias)
        self.index = np.array(index, np.int32)[order]
        self.kind = np.array(kind, np.uint8)[order]
        self.sp_delta = np.array([f.sp_delta for f in functions], np.uint64)

    def lookup(self, ips):
        """Function index of each ip (-1 where the ip is not a probe address of these functions).
        The kernel reports the probed instruction's address; one past it is accepted too."""
        ips = np.asarray(ips, np.uint64)
        out = np.full(len(ips), -1, np.int32)
        if not len(self.addresses):
            return out
        for shift in (0, 1):
            probe = ips - np.uint64(shift)
            pos = np.clip(np.searchsorted(self.addresses, probe), 0, len(self.addresses) - 1)
            hit = (self.addresses[pos] == probe) & (out < 0)
            out[hit] = self.index[pos[hit]]
        return out


def infer_bias(functions, ips, page=4096):
    """A PIE's load bias from the addresses its probes fired at, or None when they do not settle it.

    Every ip is some probe address plus the bias, and the bias is page-aligned: of the candidates
    ``ips[0] - address`` that are, the one under which every ip is a probe address wins; more than
    one winner (or none) is no answer."""
    ips = np.unique(np.asarray(ips, np.uint64))
    if not len(ips):
        return None
    addrs = np.array(sorted({f.probe_address for f in functions} |
                            {r for f in functions for r in f.ret_addresses}), np.uint64)
    candidates = ips[0] - addrs[addrs <= ips[0]]
    candidates = candidates[candidates % np.uint64(page) == 0]
    winners = []
    for bias in candidates.tolist():
        probe = ips - np.uint64(bias)
        pos = np.clip(np.searchsorted(addrs, probe), 0, len(addrs) - 1)
        if (addrs[pos] == probe).all():
            winners.append(bias)
    return winners[0] if len(winners) == 1 else None


@dataclasses.dataclass(frozen=True)
class Config:
    """Tunables of bpf/funcs.c."""

    ring_bytes: int = 8 << 20
    wakeup_bytes: int = 0
    capture_registers: bool = False

    def validate(self):
        return ring_problems(self.ring_bytes, self.wakeup_bytes)

    def cflags(self, goid_offset):
        wakeup = self.wakeup_bytes or self.ring_bytes // 4
        return [f"-I{BPF_DIR}", f"-DGOTEL_FUNC_RING_BYTES={self.ring_bytes}",
                f"-DGOTEL_FUNC_WAKEUP_BYTES={wakeup}", f"-DGOTEL_FUNC_GOID={goid_offset}",
                f"-DGOTEL_FUNC_REGS={int(self.capture_registers)}"]


def dump_bpf(config, goid_offset):
    defines = "".join(f"#define {flag[2:].replace('=', ' ', 1)}\n"
                      for flag in config.cflags(goid_offset) if flag.startswith("-D"))
    return f"/* cflags: {' '.join(config.cflags(goid_offset))} */\n{defines}{SOURCE.read_text()}"


class FuncProbes:
    """bpf/funcs.c compiled for one Go binary (its goid offset), and its uprobes.

    ``attach(pid)`` puts an entry probe on every function and a probe on every RET of it;
    ``attach_seconds``/``detach_seconds`` say what that cost. ``events_fd`` is the ring buffer for a
    ``RingBufferReader(fd, FUNC_EVENT_DTYPE)``. Not thread-safe (control path only).
    """

    def __init__(self, binary, functions, config=Config(), links=None, strings=None):
        problems = config.validate()
        if problems:
            raise ProbeError("function probe configuration: " + "; ".join(problems))
        try:
            from bcc import BPF
        except ImportError as e:
            raise ProbeError("bcc is not importable: install Debian's python3-bpfcc (make setup)") from e
        self.binary = binary
        self.functions = list(functions)
        self.config = config
        self.goid_offset = binary.layout.g["goid"]
        cflags = config.cflags(self.goid_offset) + [f"-DGOTEL_FUNC_MAX={max(1024, len(self.functions))}"]
        try:
            self.bpf = BPF(src_file=str(SOURCE).encode(), cflags=cflags)
        except Exception as e:
            raise ProbeError(f"compiling {SOURCE} failed: {e}") from e
        # strings: per function, (register of a string argument, register of a string result) to
        # copy the start of, 0xff for none (needs capture_registers and uprobe_multi cookies).
        self.strings = strings if config.capture_registers and strings and any(
            r != 0xFF for pair in strings for r in pair) else None
        if self.strings:
            table = self.bpf["funcstr"]
            for i, (entry_reg, ret_reg) in enumerate(self.strings):
                leaf = table.Leaf()
                leaf.entry_reg, leaf.ret_reg = entry_reg, ret_reg
                table[table.Key(i)] = leaf
        self._counters = self.bpf["funccounters"]
        self._progs = {}
        if links is None:
            links = uprobe.links_available()
        self._multi = None if links else False   # uprobe_multi: None untried, True working, False not used
        self._links = []
        self._uprobes = []                       # one uprobe.Uprobe per site, without uprobe_multi
        self.probe_count = 0
        self.attach_seconds = 0.0
        self.detach_seconds = 0.0

    @property
    def events_fd(self):
        return self.bpf["funcevents"].map_fd

    def attach(self, pid=-1):
        """Attach every probe for one PID (or every process running the binary, pid -1).

        One BPF uprobe_multi link per program (Linux 6.6+) holds all of them: removing it waits in
        the kernel once, where removing single uprobes waits ~0.1 s each (benchmarks/bench_funcs.py).
        Kernels without uprobe_multi get one perf uprobe per site."""
        path = os.path.realpath(self.binary.path) if pid == -1 else str(self.binary.path)
        started = time.monotonic()
        entries = [self.binary.file_offset(f.probe_address) for f in self.functions]
        rets = [self.binary.file_offset(r) for f in self.functions for r in f.ret_addresses]
        entry_ids = list(range(len(self.functions)))
        ret_ids = [i for i, f in enumerate(self.functions) for _ in f.ret_addresses]
        if self._multi is not False:
            try:
                links = [uprobe.link(self._prog(name, True).fd, path, offs, pid, ids)
                         for name, offs, ids in ((b"probe_func_entry", entries, entry_ids),
                                                 (b"probe_func_return", rets, ret_ids))]
                self._links.extend(links)
                self._multi = True
                if self.strings:
                    opts = self.bpf["funcopts"]
                    opts[opts.Key(0)] = opts.Leaf(1)   # cookies carry the function index
                self.probe_count += len(entries) + len(rets)
                self.attach_seconds += time.monotonic() - started
                return
            except OSError as e:
                if self._multi is True:   # worked before: this target is the problem
                    self.close()
                    raise ProbeError(f"attaching {len(entries) + len(rets)} uprobes to {path} (pid {pid}) "
                                     f"failed: {e}; does the process still exist?") from e
                log.info("uprobe_multi links unavailable (%s); attaching uprobes one by one", e)
                self._multi = False
        sites = [(self._prog(b"probe_func_entry", False), o) for o in entries] + \
                [(self._prog(b"probe_func_return", False), o) for o in rets]
        for prog, offset in sites:
            ev = f"gotelf_{os.getpid()}_{offset:x}_{pid if pid >= 0 else 'all'}"
            try:
                self._uprobes.append(uprobe.Uprobe(prog.fd, path, offset, pid, ev, False))
            except OSError as e:
                self.close()
                raise ProbeError(f"attaching a uprobe to {path} at file offset {offset:#x} (pid {pid}) "
                                 f"failed ({e}); is gotel running as root?") from e
            self.probe_count += 1
        self.attach_seconds += time.monotonic() - started

    def _prog(self, name, multi):
        """The program loaded for uprobe_multi links (expected attach type) or for perf uprobes."""
        key = (name, multi)
        if key not in self._progs:
            self._progs[key] = uprobe.load(self.bpf, name, multi)
        return self._progs[key]

    def counters(self):
        if self.bpf is None:
            return dict(self._final)
        return {name: int(sum(self._counters[self._counters.Key(i)])) for i, name in enumerate(COUNTERS)}

    def close(self, threads=8):
        """Remove every uprobe (in parallel: each removal waits in the kernel) and free the program.
        Idempotent."""
        if self.bpf is None:
            return
        self._final = self.counters()
        started = time.monotonic()
        for link in self._links:
            os.close(link)
        self._links = []
        probes, self._uprobes = self._uprobes, []

        def worker(chunk):
            for probe in chunk:
                probe.close()

        chunks = [probes[i::threads] for i in range(threads)]
        workers = [threading.Thread(target=worker, args=(c,)) for c in chunks if c]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        self.detach_seconds += time.monotonic() - started
        self.bpf.cleanup()
        self.bpf = None


def main(argv=None):
    """``python -m receiver.funcs --dump-bpf BINARY``: print bpf/funcs.c as compiled for BINARY."""
    import argparse

    from receiver.binary import GoBinary

    parser = argparse.ArgumentParser(prog="python -m receiver.funcs", description=main.__doc__)
    parser.add_argument("--dump-bpf", action="store_true", required=True)
    parser.add_argument("binary")
    parser.add_argument("--registers", action="store_true", help="with argument capture")
    args = parser.parse_args(argv)
    goid = GoBinary.open(args.binary).layout.g["goid"]
    print(dump_bpf(Config(capture_registers=args.registers), goid))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
