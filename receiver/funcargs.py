"""Arguments and results of probed Go functions, from the registers of Go's ABIInternal (amd64).

Go passes integer-class values in RAX, RBX, RCX, RDI, RSI, R8, R9, R10, R11, assigned argument by
argument in order (a string takes two, a slice three, an interface two), floats in X0-X14, and
returns results in the same registers, starting again at RAX, at the RET (cmd/compile ABI
internal.md). An argument that does not fit in the registers left goes to the stack, and later ones
may still use registers. The probes copy the nine integer registers (``receiver.funcs.Config
(capture_registers=True)``); floats live in XMM registers, which a uprobe's BPF program cannot read,
and structs, arrays and complex numbers are split field by field by rules gotel does not follow, so
those values, and for safety every value after a struct, are reported as not captured.

Names and types come from DWARF (``DW_TAG_formal_parameter`` of the function's subprogram, with
Go's ``DW_AT_go_kind``; ``DW_AT_variable_parameter`` marks results), else from types given in the
pattern (``main.add(int, int)``: arguments named arg0, arg1; no results). What is recorded per value:
ints and bools as numbers, pointers (and chans, maps, funcs) as addresses, strings and slices by
their length; and the first 32 bytes of the first string argument and of the first string result,
copied by the probe (where the kernel has uprobe_multi links, whose cookies name the function).
"""

from typing import NamedTuple

import numpy as np

from receiver.funcs import ARG_TYPES

INT_REGS = 9
_GO_KIND = 0x2900           # DW_AT_go_kind: reflect.Kind of a type
# reflect.Kind -> gotel's type name
_KINDS = {1: "bool", 2: "int", 3: "int8", 4: "int16", 5: "int32", 6: "int64", 7: "uint", 8: "uint8",
          9: "uint16", 10: "uint32", 11: "uint64", 12: "uintptr", 13: "float32", 14: "float64",
          18: "pointer", 19: "pointer", 20: "interface", 21: "pointer", 22: "pointer", 23: "slice",
          24: "string", 26: "pointer"}
_REGS = {**ARG_TYPES, "interface": 2}
_FLOATS = ("float32", "float64")
_BITS = {"int8": 8, "int16": 16, "int32": 32, "uint8": 8, "uint16": 16, "uint32": 32}


class Value(NamedTuple):
    """One argument or result: where it is, and how to read it."""

    name: str
    type: str          # a key of _KINDS' values, or "unsupported"
    result: bool
    reg: int           # first integer register (index into RAX..R11), -1 when not in one


def assign(params):
    """[(name, type, result)] in declaration order -> [Value] with registers assigned."""
    out = []
    for results in (False, True):
        next_reg, stop = 0, False
        for name, typ, res in params:
            if res != results:
                continue
            need = _REGS.get(typ)
            if stop or typ in _FLOATS or need is None:
                out.append(Value(name, typ if typ in _FLOATS else "unsupported", res, -1))
                stop = stop or need is None and typ not in _FLOATS
                continue
            if next_reg + need > INT_REGS:
                out.append(Value(name, typ, res, -1))     # on the stack
                continue
            out.append(Value(name, typ, res, next_reg))
            next_reg += need
    return out


def from_types(types):
    """Values for argument types given in a pattern."""
    return assign([(f"arg{i}", t, False) for i, t in enumerate(types)])


def from_dwarf(binary, function):
    """Values of a function (a ProbedFunction) from DWARF, or None when DWARF does not have it."""
    if not binary.has_dwarf:
        return None
    name = function.name
    slash = name.rfind("/")
    package = name[:name.index(".", slash + 1)] if "." in name[slash + 1:] else name
    try:
        dwarf = binary.image.elffile().get_dwarf_info()
        for cu in dwarf.iter_CUs():
            top = cu.get_top_DIE()
            n = top.attributes.get("DW_AT_name")
            if n is None or n.value.decode(errors="replace") != package:
                continue
            for die in top.iter_children():
                if die.tag != "DW_TAG_subprogram":
                    continue
                low = die.attributes.get("DW_AT_low_pc")
                if low is None or low.value != function.address:
                    continue
                params = []
                for child in die.iter_children():
                    if child.tag != "DW_TAG_formal_parameter" or "DW_AT_name" not in child.attributes:
                        continue
                    params.append((child.attributes["DW_AT_name"].value.decode(errors="replace"),
                                   _type_name(child), bool(child.attributes.get(
                                       "DW_AT_variable_parameter") and
                                       child.attributes["DW_AT_variable_parameter"].value)))
                return assign(params)
    except Exception:   # noqa: BLE001  (damaged DWARF: no names, not a failure)
        return None
    return None


def _type_name(param):
    try:
        t = param.get_DIE_from_attribute("DW_AT_type")
    except Exception:   # noqa: BLE001
        return "unsupported"
    for _ in range(8):
        kind = t.attributes.get(_GO_KIND)
        if kind is not None:
            return _KINDS.get(kind.value, "unsupported")
        if t.tag == "DW_TAG_typedef" and "DW_AT_type" in t.attributes:
            t = t.get_DIE_from_attribute("DW_AT_type")
            continue
        break
    return "unsupported"


def string_registers(values):
    """(register of the first string argument, of the first string result), 0xff for none: the
    strings whose first bytes the probes copy (one each way per call)."""
    def first(result):
        return next((v.reg for v in values if v.result == result and v.type == "string"
                     and 0 <= v.reg < INT_REGS - 1), 0xFF)

    return first(False), first(True)


def decode(values, args, results, limit=16, arg_str=None, result_str=None):
    """{attribute key: value} for one call: ``args``/``results`` are the 9 registers at entry and
    at the RET (results only if the call returned). At most ``limit`` values. ``arg_str`` and
    ``result_str`` are the copied starts (bytes) of the strings ``string_registers`` named."""
    out = {}
    copied = {False: string_registers(values)[0], True: string_registers(values)[1]}
    for v in values[:limit]:
        key = f"gotel.function.{'result' if v.result else 'arg'}.{v.name}"
        regs = results if v.result else args
        if regs is None:
            continue
        if v.reg < 0:
            out[key] = "(not captured: float register)" if v.type in _FLOATS else \
                "(not captured: on the stack)" if v.type in _REGS else "(not captured)"
            continue
        raw = int(regs[v.reg])
        t = v.type
        if t == "bool":
            out[key] = bool(raw & 0xFF)
        elif t in ("int", "int64"):
            out[key] = int(np.int64(np.uint64(raw)))
        elif t in _BITS:
            bits = _BITS[t]
            x = raw & ((1 << bits) - 1)
            out[key] = x - (1 << bits) if t.startswith("int") and x >> (bits - 1) else x
        elif t in ("uint", "uint64", "uintptr"):
            out[key] = raw if raw < (1 << 63) else f"{raw:#x}"
        elif t == "pointer":
            out[key] = f"{raw:#x}"
        elif t in ("string", "slice"):
            out[key + ".len"] = int(regs[v.reg + 1])
            text = result_str if v.result else arg_str
            if t == "string" and text is not None and v.reg == copied[v.result]:
                out[key] = text[:min(int(regs[v.reg + 1]), len(text))].decode("utf-8", "replace")
        elif t == "interface":
            out[key] = f"{int(regs[v.reg + 1]):#x}"
    return out
