"""``gotel inspect TARGET``: what gotel sees in a Go binary, as a readable report or one JSON object.

``report(target)`` returns the dict (the JSON form); ``command(target, as_json)`` prints it and
returns the exit status. Errors are ``receiver.errors`` types, which the CLI prints as one line.
"""

import json
import sys

from receiver import globals as runtime_globals
from receiver.binary import GoBinary


def report(target):
    """The inspection of a path or PID as a JSON-ready dict (addresses are ELF virtual addresses)."""
    binary = target if isinstance(target, GoBinary) else GoBinary.open(target)
    lay = binary.layout
    functions = {}
    for name, f in binary.functions.items():
        where = binary.placement(name)
        functions[name] = {
            "address": f.address,
            "size": f.size,
            "probe_address": f.probe_address,
            "probe_file_offset": binary.file_offset(f.probe_address),
            "placement": where.kind,
            "instruction": where.instruction,
            "emulated": where.emulated,
        }
    return {
        "path": binary.path,
        "go_version": binary.go_version,
        "goarch": binary.goarch,
        "module": binary.module,
        "module_version": binary.info.module_version,
        "build_settings": binary.build_settings,
        "stripped": binary.stripped,
        "has_dwarf": binary.has_dwarf,
        "pie": binary.pie,
        "functions": functions,
        "layout": lay.as_json(),
        "layout_source": lay.source,
        "notes": list(lay.notes),
        "statuses": lay.statuses,
        "wait_reasons": lay.wait_reasons,
        "globals": runtime_globals.describe(binary),
    }


def render(rep):
    """The readable form of a report."""
    yes = {True: "yes", False: "no"}
    lines = [
        f"{rep['path']}",
        f"  Go {rep['go_version']} {rep['goarch']}, "
        f"module {rep['module'] or '?'} {rep['module_version']}".rstrip(),
        f"  stripped: {yes[rep['stripped']]}   DWARF: {yes[rep['has_dwarf']]}   PIE: {yes[rep['pie']]}",
        "  build: " + " ".join(f"{k}={v}" for k, v in rep["build_settings"].items()
                               if k in ("-buildmode", "-compiler", "CGO_ENABLED", "-race", "-ldflags",
                                        "GOAMD64", "vcs.revision")),
        "",
        "  probes (virtual address, file offset):",
    ]
    for name, f in rep["functions"].items():
        emulated = "emulated" if f["emulated"] else "single-stepped"
        lines.append(
            f"    {name:<22} entry {f['address']:#x}  probe {f['probe_address']:#x} "
            f"(+{f['probe_address'] - f['address']:#x}, off {f['probe_file_offset']:#x}) "
            f"{f['placement']}: {f['instruction']} [{emulated}]")
    lines += ["", f"  layout (from {rep['layout_source']}):"]
    for struct, fields in rep["layout"].items():
        lines.append(f"    {struct:<10} " + ", ".join(f"{k}={v}" for k, v in fields.items()))
    for note in rep["notes"]:
        lines.append(f"    note: {note}")
    lines.append("  runtime globals (virtual address, from):")
    for name, g in rep["globals"].items():
        lines.append(f"    {name:<24} " + (f"{g['address']:#x} {g['source']}" if "address" in g
                                           else f"not found: {g['error']}"))
    lines.append("  statuses: " + ", ".join(f"{k}={v}" for k, v in rep["statuses"].items()))
    lines.append(f"  wait reasons ({len(rep['wait_reasons'])}):")
    reasons = [f"{i}={r!r}" for i, r in enumerate(rep["wait_reasons"])]
    for i in range(0, len(reasons), 6):
        lines.append("    " + ", ".join(reasons[i:i + 6]))
    return "\n".join(lines)


def command(target, as_json=False, out=None):
    """Print the inspection of target (path or PID); return the exit status (0)."""
    out = out or sys.stdout
    rep = report(target)
    if as_json:
        json.dump(rep, out, indent=1)
        out.write("\n")
    else:
        out.write(render(rep) + "\n")
    return 0
