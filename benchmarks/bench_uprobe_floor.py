"""Row 6: the kernel's own floor for one uprobe hit on this machine, on a C program, not Go.

A BPF program that only increments a counter is attached (pid-filtered, as gotel attaches) to the
first instruction of a leaf function called in a loop: `push %rbp` (what gotel probes in
runtime.casgstatus: emulated, no single-step) and a 5-byte NOP (which kernels with
arch_uprobe_optimize can patch into a call to a trampoline). ns/call traced minus untraced, pair by
pair, is the cost of one hit.

Trust the median ns per hit of `push`: it is the least any uprobe-based tracer can add per goroutine
transition on this machine, whatever its BPF program does; gotel's row 1 figures sit on top of it.
"""

import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "c" / "uprobe_floor.c"

COUNT = r"""
#include <uapi/linux/ptrace.h>
BPF_ARRAY(hits, u64, 1);
int count(struct pt_regs *ctx) {
    int k = 0;
    u64 *v = hits.lookup(&k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}
"""


def build(work_dir):
    out = Path(work_dir) / "uprobe_floor"
    subprocess.run(["cc", "-O2", "-fno-omit-frame-pointer", "-o", str(out), str(SOURCE)], check=True)
    return out


def _symbol_offset(binary, name):
    """File offset of a function of the C binary (uprobes attach at file offsets)."""
    from elftools.elf.elffile import ELFFile

    with open(binary, "rb") as f:
        elf = ELFFile(f)
        sym = elf.get_section_by_name(".symtab").get_symbol_by_name(name)[0]
        vaddr = sym["st_value"]
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_filesz"]:
                return vaddr - seg["p_vaddr"] + seg["p_offset"]
    raise LookupError(name)


def one_run(binary, variant, calls, probed):
    from bcc import BPF, lib

    proc = subprocess.Popen([str(binary), variant, str(calls)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    bpf = BPF(text=COUNT)
    try:
        if probed:
            fn = "starts_with_nop5" if variant == "nop5" else "starts_with_push"
            name = f"gotel_floor_{proc.pid}".encode()
            fd = lib.bpf_attach_uprobe(bpf.load_func("count", BPF.KPROBE).fd, 0, name,
                                       str(binary).encode(), _symbol_offset(binary, fn), proc.pid)
            if fd < 0:
                raise RuntimeError("uprobe attach failed")
        out, _ = proc.communicate("\n", timeout=120)
        hits = bpf["hits"][0].value
    finally:
        proc.kill()
        bpf.cleanup()
    return float(out.split()[1]), hits


def measure(work_dir, repeat=5, calls=1_000_000):
    """{"push": [ns per hit...], "nop5": [...]}: (traced - untraced) ns/call, pair by pair."""
    binary = build(work_dir)
    out = {"push": [], "nop5": []}
    for _ in range(repeat):
        for variant in out:
            base, _ = one_run(binary, variant, calls, probed=False)
            traced, hits = one_run(binary, variant, calls, probed=True)
            if hits != calls:
                raise RuntimeError(f"{variant}: {hits} hits for {calls} calls")
            out[variant].append(traced - base)
    return out


def run(quick=False):
    from benchmarks import harness

    work = Path(__file__).resolve().parent / ".work"
    work.mkdir(exist_ok=True)
    repeat, calls = (2, 100_000) if quick else (5, 1_000_000)
    hits = measure(work, repeat, calls)
    figures = {
        "push.ns_per_hit": harness.figure("one uprobe hit on `push %rbp` (C leaf function)", "ns",
                                          hits["push"], 0),
        "nop5.ns_per_hit": harness.figure("one uprobe hit on a 5-byte NOP (C leaf function)", "ns",
                                          hits["nop5"], 0),
    }
    notes = [f"{calls:,} calls per run, {repeat} interleaved repetitions of untraced/traced per "
             "variant; the BPF program only counts."]
    return harness.row(6, "The kernel's floor: one uprobe hit, no Go", __doc__, figures, (), notes,
                       {"calls": calls, "repeat": repeat})


if __name__ == "__main__":
    from benchmarks import harness

    raise SystemExit(harness.main(run, __doc__))
