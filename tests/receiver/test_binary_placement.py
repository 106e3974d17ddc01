"""Probe placement on hand-assembled x86-64: the prologue shapes Go emits, and the ones gotel refuses."""

import pytest

from receiver import placement
from receiver.errors import CorruptBinary, UnsupportedBinary

BASE = 0x401000
CMP_RSP = bytes.fromhex("493b6610")                 # cmp rsp, qword ptr [r14 + 0x10]
JBE_FAR = bytes.fromhex("0f8600010000")             # jbe +0x100 (to the morestack call)
JBE_NEAR = bytes.fromhex("7640")                    # jbe +0x40
LEA_R12 = bytes.fromhex("4c8da42400f0ffff")         # lea r12, [rsp - 0x1000]
CMP_R12 = bytes.fromhex("4d3b6610")                 # cmp r12, qword ptr [r14 + 0x10]
PUSH_RBP = bytes.fromhex("55")
MOV_RBP_RSP = bytes.fromhex("4889e5")
SUB_RSP = bytes.fromhex("4883ec40")                 # sub rsp, 0x40
MOV_EAX_1 = bytes.fromhex("b801000000")             # mov eax, 1
RET = bytes.fromhex("c3")
INT3 = bytes.fromhex("cc")


def test_after_the_stack_check():
    code = CMP_RSP + JBE_FAR + PUSH_RBP + MOV_RBP_RSP + RET
    p = placement.place(code, BASE, "f")
    assert (p.kind, p.probe_address, p.instruction, p.emulated) == \
        ("after-prologue", BASE + 10, "push rbp", True)
    assert p.skipped == ("cmp rsp, qword ptr [r14 + 0x10]", "jbe 0x40110a")


def test_after_the_big_frame_stack_check():
    code = LEA_R12 + CMP_R12 + JBE_NEAR + PUSH_RBP + RET
    p = placement.place(code, BASE)
    assert p.kind == "after-prologue" and p.probe_address == BASE + len(LEA_R12 + CMP_R12 + JBE_NEAR)


def test_nosplit_entry():
    p = placement.place(PUSH_RBP + MOV_RBP_RSP + RET, BASE)
    assert (p.kind, p.probe_address, p.emulated, p.skipped) == ("entry", BASE, True, ())


def test_go119_frame_is_single_stepped_but_placed_once():
    p = placement.place(CMP_RSP + JBE_FAR + SUB_RSP + RET, BASE)
    assert p.kind == "after-prologue" and p.instruction == "sub rsp, 0x40" and not p.emulated


def test_refuses_when_arguments_are_clobbered_before_the_probe():
    with pytest.raises(UnsupportedBinary, match="rax"):
        placement.place(MOV_EAX_1 + CMP_RSP + JBE_FAR + PUSH_RBP, BASE, "f")


def test_undecodable_entry():
    with pytest.raises(CorruptBinary):
        placement.place(b"\x0f\x0b"[:1], BASE)   # half an instruction
    with pytest.raises(CorruptBinary):
        placement.place(b"", BASE)


@pytest.mark.parametrize("hexcode,emulated", [
    ("90", True), ("55", True), ("4156", True),                         # nop, push rbp, push r14
    ("e800000000", True), ("eb00", True), ("7400", True), ("0f8400010000", True),  # call, jmp, je, je32
    ("0f1f4000", False), ("e200", False), ("e300", False),              # nopl, loop, jrcxz
    ("493b6610", False), ("c3", False), ("5d", False),                  # cmp, ret, pop
    ("ff10", False), ("6a01", False), ("4883ec40", False),              # call [rax], push imm, sub
])
def test_emulated_instructions(hexcode, emulated):
    insn = placement.decode(bytes.fromhex(hexcode), BASE, 1)[0]
    assert placement.is_emulated(insn) == emulated


def test_ret_sites():
    code = CMP_RSP + JBE_NEAR + PUSH_RBP + RET + PUSH_RBP + RET + INT3 * 4
    assert placement.ret_sites(code, BASE) == [BASE + 7, BASE + 9]


NOP = bytes.fromhex("90")
SPILL_RAX = bytes.fromhex("4889442448")             # mov qword ptr [rsp + 0x48], rax
STORE_VIA_RAX = bytes.fromhex("c7409001000000")     # mov dword ptr [rax + 0x90], 1
JE_BACK_3 = bytes.fromhex("74fd")                   # je -3: back to the instruction before it


def test_go119_frame_walks_to_an_emulated_instruction():
    code = CMP_RSP + JBE_FAR + SUB_RSP + SPILL_RAX + NOP + RET
    p = placement.place(code, BASE)
    assert (p.kind, p.instruction, p.emulated) == ("after-frame-setup", "nop", True)
    assert p.probe_address == BASE + len(CMP_RSP + JBE_FAR + SUB_RSP + SPILL_RAX)


@pytest.mark.parametrize("between", [MOV_EAX_1, STORE_VIA_RAX, RET])
def test_walk_stops_at_writes_and_branches(between):
    # An argument written, a g field stored, or control flow before the nop: stay after the prologue.
    p = placement.place(CMP_RSP + JBE_FAR + SUB_RSP + between + NOP + RET, BASE)
    assert (p.kind, p.instruction, p.emulated) == ("after-prologue", "sub rsp, 0x40", False)


def test_walk_refuses_points_other_branches_reach():
    # The nop is a loop head (the je jumps back to it): a probe there would fire on every iteration.
    code = SUB_RSP + SPILL_RAX + NOP + JE_BACK_3 + RET
    p = placement.place(code, BASE)
    assert (p.kind, p.probe_address, p.emulated) == ("entry", BASE, False)
