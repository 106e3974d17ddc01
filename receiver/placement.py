"""Where on a Go function a uprobe goes: decoded with capstone, chosen to cost least and fire once.

A uprobe replaces one instruction with int3. On x86 the kernel *emulates* only a few instructions
(jmp/jcc/call, nop, ``push reg``); every other one is single-stepped out of line, a second trap.
Measured here (FACTS.md): a probe on a Go function's entry, the stack-check ``cmp``, costs ~2.6-4.2 us
a hit, and fires twice when the stack grows (the prologue calls morestack, which restarts the
function); the ``push rbp`` right after the prologue costs ~0.18 us and fires once. So:

- a split function (Go's stack check ``cmp rsp,[r14+0x10]`` or ``lea r12,[rsp-N]; cmp r12,[r14+0x10]``,
  then ``jbe`` to morestack): the instruction right after the ``jbe``;
- a nosplit function (no stack check; casgstatus): its entry, typically ``push rbp``.

Go 1.19's frames start with ``sub rsp, N`` (Go 1.21's and later with ``push rbp``), which is not
emulated. There the probe moves on along the straight-line frame set-up to the first instruction the
kernel emulates (often a one-byte nop or a jcc), when that is provably safe (``_walk_to_emulated``);
otherwise it stays on ``sub rsp`` and is single-stepped, still firing once. ``Placement.emulated``
says which case a function is in.

The probe address is always an instruction boundary capstone decoded by a linear sweep from the
function's start. The argument registers of Go's ABIInternal (RAX, RBX, RCX, RDI, RSI, R8-R11) must
be intact at the probe, since the kernel side reads the arguments there: every instruction between
the entry and the probe is checked with capstone's ``regs_write``, and a placement that clobbers one
is refused (``UnsupportedBinary``) rather than silently reading a wrong goroutine.

Return values are captured by probing RET instructions (``ret_sites``), never uretprobes: those
rewrite the return address on the stack, which Go moves and walks (golang/go#22008, #27077).
"""

from dataclasses import dataclass
from functools import lru_cache

import capstone
from capstone import x86

from receiver.errors import CorruptBinary, UnsupportedBinary

# Go ABIInternal integer argument registers (amd64), with every sub-register name capstone uses.
ARGUMENT_REGISTERS = {
    "rax": ("rax", "eax", "ax", "al", "ah"),
    "rbx": ("rbx", "ebx", "bx", "bl", "bh"),
    "rcx": ("rcx", "ecx", "cx", "cl", "ch"),
    "rdi": ("rdi", "edi", "di", "dil"),
    "rsi": ("rsi", "esi", "si", "sil"),
    "r8": ("r8", "r8d", "r8w", "r8b"),
    "r9": ("r9", "r9d", "r9w", "r9b"),
    "r10": ("r10", "r10d", "r10w", "r10b"),
    "r11": ("r11", "r11d", "r11w", "r11b"),
}
_ARG_NAMES = {sub: reg for reg, subs in ARGUMENT_REGISTERS.items() for sub in subs}
G_REGISTER = "r14"         # the current g, in Go's register ABI
STACKGUARD0 = 0x10         # offsetof(runtime.g, stackguard0)
STACKGUARD1 = 0x18         # stackguard1: what //go:systemstack functions (preemptPark) check
# The stack check sits in the first few instructions; a function longer than this without one is nosplit.
PROLOGUE_WINDOW = 8
# How far past the prologue to look for an emulated instruction (Go 1.19 frames: see _walk_to_emulated).
WALK_LIMIT = 12
_CONTROL_FLOW = (x86.X86_GRP_JUMP, x86.X86_GRP_CALL, x86.X86_GRP_RET, x86.X86_GRP_INT, x86.X86_GRP_IRET)
# Branches the x86 uprobe code emulates instead of single-stepping (arch/x86/kernel/uprobes.c,
# branch_setup_xol_ops: jmp/call rel, jcc rel8/rel32; not loop/jrcxz, not indirect branches).
_EMULATED_BRANCHES = {
    x86.X86_INS_JMP, x86.X86_INS_CALL, x86.X86_INS_JA, x86.X86_INS_JAE, x86.X86_INS_JB, x86.X86_INS_JBE,
    x86.X86_INS_JE, x86.X86_INS_JG, x86.X86_INS_JGE, x86.X86_INS_JL, x86.X86_INS_JLE, x86.X86_INS_JNE,
    x86.X86_INS_JNO, x86.X86_INS_JNP, x86.X86_INS_JNS, x86.X86_INS_JO, x86.X86_INS_JP, x86.X86_INS_JS,
}


@dataclass(frozen=True)
class Placement:
    """Where the probe of one function goes, and why."""

    function: str
    address: int            # function entry
    probe_address: int      # an instruction boundary
    kind: str               # "after-prologue", "entry" or "after-frame-setup" (see _walk_to_emulated)
    instruction: str        # the probed instruction, e.g. "push rbp"
    emulated: bool          # the kernel emulates it (no single-step)
    skipped: tuple = ()     # instructions between entry and probe: ("cmp rsp, qword ptr [r14 + 0x10]", ...)


@lru_cache(maxsize=1)
def _disassembler():
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def decode(code, address, count=0):
    """Instructions capstone decodes linearly from address (stops at the first undecodable byte)."""
    return list(_disassembler().disasm(bytes(code), address, count))


def is_emulated(insn):
    """True for the instructions the kernel's x86 uprobe emulates: direct jmp/jcc/call, the one-byte
    nop, push reg. Multi-byte nops count as stepped: only some kernels emulate them."""
    if insn.id == x86.X86_INS_NOP:
        return bytes(insn.bytes) == b"\x90"
    if insn.id == x86.X86_INS_PUSH:
        return len(insn.operands) == 1 and insn.operands[0].type == x86.X86_OP_REG
    if insn.id in _EMULATED_BRANCHES:
        return all(op.type == x86.X86_OP_IMM for op in insn.operands)
    return False


def _is_stack_check(insn):
    """``cmp reg, qword ptr [r14 + 0x10]`` (g.stackguard0), the heart of Go's split-stack prologue;
    ``[r14 + 0x18]`` (g.stackguard1) in a function that must run on the system stack."""
    if insn.id != x86.X86_INS_CMP or len(insn.operands) != 2:
        return False
    mem = [op for op in insn.operands if op.type == x86.X86_OP_MEM]
    return bool(mem) and insn.reg_name(mem[0].mem.base) == G_REGISTER and mem[0].mem.disp in (
        STACKGUARD0, STACKGUARD1)


def _written(insn):
    _, written = insn.regs_access()
    return {insn.reg_name(r) for r in written}


def _written_arguments(insn):
    return sorted({_ARG_NAMES[n] for n in _written(insn) if n in _ARG_NAMES})


def place(code, address, name="function"):
    """Placement of the probe for the function whose machine code (from its entry) is ``code``.

    Raises CorruptBinary when the entry does not decode, UnsupportedBinary when the only candidate
    would see clobbered argument registers.
    """
    insns = decode(code, address, PROLOGUE_WINDOW + 2 + WALK_LIMIT)
    if not insns or insns[0].address != address:
        raise CorruptBinary(f"{name} at {address:#x}: the disassembler cannot decode its first instruction")
    probe_index, kind = 0, "entry"
    for i, insn in enumerate(insns[:PROLOGUE_WINDOW]):
        if _is_stack_check(insn):
            nxt = insns[i + 1] if i + 1 < len(insns) else None
            # The check branches to morestack with jbe (unsigned <=); the probe goes right after it.
            if nxt is not None and nxt.id in (x86.X86_INS_JBE, x86.X86_INS_JB) and i + 2 < len(insns):
                probe_index, kind = i + 2, "after-prologue"
            break
    if not is_emulated(insns[probe_index]):
        later = _walk_to_emulated(code, address, insns, probe_index)
        if later is not None:
            probe_index, kind = later, "after-frame-setup"
    probe = insns[probe_index]
    skipped = insns[:probe_index]
    for insn in skipped:
        clobbered = _written_arguments(insn)
        if clobbered:
            raise UnsupportedBinary(
                f"{name}: `{insn.mnemonic} {insn.op_str}` at {insn.address:#x} before the probe point "
                f"writes argument register(s) {', '.join(clobbered)}; this code shape is not supported")
    return Placement(
        function=name, address=address, probe_address=probe.address, kind=kind,
        instruction=f"{probe.mnemonic} {probe.op_str}".strip(), emulated=is_emulated(probe),
        skipped=tuple(f"{i.mnemonic} {i.op_str}" for i in skipped),
    )


def _walk_to_emulated(code, address, insns, start):
    """Index of the first emulated instruction on the straight line from insns[start], or None.

    Go 1.19 sets frames up with ``sub rsp; mov [rsp+N], rbp; lea rbp`` and spills its arguments,
    none of which the kernel emulates; a few instructions on there is often a one-byte nop or a
    direct jcc that it does. Moving the probe there is safe only if every path into the function
    runs the skipped instructions exactly once: they are straight-line code (no branch among them),
    no branch anywhere in the function targets them or the new point, and none of them writes an
    argument register.
    """
    targets = None
    for k in range(start, min(len(insns), start + WALK_LIMIT)):
        insn = insns[k]
        if k > start:
            if targets is None:
                targets = _branch_targets(code, address)
            if insn.address in targets:
                return None
            if is_emulated(insn):
                return k
        if _written_arguments(insn) or _stores_outside_frame(insn) or G_REGISTER in _written(insn) \
                or any(g in insn.groups for g in _CONTROL_FLOW):
            return None
    return None


def _stores_outside_frame(insn):
    """True when the instruction writes memory other than its own stack frame ([rsp/rbp + N]):
    the probe would then see g or m fields the function has already changed."""
    return any(op.type == x86.X86_OP_MEM and op.access & capstone.CS_AC_WRITE
               and insn.reg_name(op.mem.base) not in ("rsp", "rbp") for op in insn.operands)


def _branch_targets(code, address):
    """Targets of the direct branches in a function (a linear sweep of its code)."""
    return {op.imm for i in _disassembler().disasm(bytes(code), address)
            if any(g in i.groups for g in (x86.X86_GRP_JUMP, x86.X86_GRP_CALL))
            for op in i.operands if op.type == x86.X86_OP_IMM}


def ret_sites(code, address):
    """Virtual addresses of the RET instructions in a function's code (linear sweep from its entry).

    The sweep stops at the first byte capstone cannot decode; Go pads between functions with int3,
    which decodes, so a function's own code is covered completely.
    """
    return [i.address for i in _disassembler().disasm(bytes(code), address) if i.id == x86.X86_INS_RET]


def after_call(code, address, callee, name="function"):
    """Placement of a probe just after ``call callee`` in a function, and the argument register
    that holds the callee's result (RAX) there: ``(Placement, register)``.

    Not a return probe: the probe sits in the caller, on an instruction the linear sweep decoded.
    From the return site it moves along straight-line code to the first instruction the kernel
    emulates (often the next call), following the result through register-to-register moves
    (``mov rbx, rax``), as long as one argument register still holds it and no instruction on the
    way is a branch target; otherwise it stays on the return site (single-stepped, RAX).
    Raises UnsupportedBinary when the function holds no such call, or more than one.
    """
    insns = decode(code, address)
    sites = [i for i, insn in enumerate(insns) if insn.id == x86.X86_INS_CALL
             and insn.operands and insn.operands[0].type == x86.X86_OP_IMM
             and insn.operands[0].imm == callee]
    if len(sites) != 1 or sites[0] + 1 >= len(insns):
        raise UnsupportedBinary(f"{name}: expected one direct call to {callee:#x}, found {len(sites)}")
    start = sites[0] + 1
    targets = _branch_targets(code, address)
    if insns[start].address in targets:
        raise UnsupportedBinary(f"{name}: the return site {insns[start].address:#x} is also a branch "
                                f"target; the result register is not known to hold the callee's result")
    probe_index, holder = start, "rax"
    holders = ["rax"]   # argument registers holding the result, in the order they got it
    for k in range(start, min(len(insns), start + WALK_LIMIT)):
        insn = insns[k]
        if k > start and insn.address in targets:
            break
        if k > start and is_emulated(insn):
            probe_index, holder = k, holders[0]
            break
        if any(g in insn.groups for g in _CONTROL_FLOW):
            break
        written = {_ARG_NAMES.get(n) for n in _written(insn)} - {None}
        copied = _register_copy(insn)
        holders = [r for r in holders if r not in written]
        if copied is not None and copied[1] in holders and copied[0] in ARGUMENT_REGISTERS:
            holders.append(copied[0])
        if not holders:
            break
    probe = insns[probe_index]
    return Placement(
        function=name, address=address, probe_address=probe.address,
        kind="after-call" if probe_index == start else "after-call-emulated",
        instruction=f"{probe.mnemonic} {probe.op_str}".strip(), emulated=is_emulated(probe),
        skipped=tuple(f"{i.mnemonic} {i.op_str}" for i in insns[start:probe_index]),
    ), holder


def _register_copy(insn):
    """(destination, source) of a 64-bit ``mov reg, reg``, else None."""
    if insn.id != x86.X86_INS_MOV or len(insn.operands) != 2:
        return None
    dst, src = insn.operands
    if dst.type != x86.X86_OP_REG or src.type != x86.X86_OP_REG or dst.size != 8 or src.size != 8:
        return None
    return insn.reg_name(dst.reg), insn.reg_name(src.reg)
