"""GoBinary's probe points, attached for real: at the file offsets it computes, after the prologue,
the kernel fires the probe once per call and the argument registers hold the arguments.

runtime.newproc1(fn, callergp, callerpc) runs once per `go` statement; each one also makes exactly
one _Gdead -> _Grunnable change through casgstatus(gp, old, new). inspectme starts N workers from
main.main, so exactly N newproc1 calls have callerpc (RCX) inside main.main.
"""

import subprocess

import pytest

from receiver.binary import GoBinary

WORKERS = 300
DEAD, RUNNABLE = 6, 1

PROGRAM = r"""
#include <uapi/linux/ptrace.h>
BPF_ARRAY(counts, u64, 4);

static void bump(int i) {
    u64 *n = counts.lookup(&i);
    if (n)
        __sync_fetch_and_add(n, 1);
}

int on_newproc1(struct pt_regs *ctx) {
    bump(0);
    if (ctx->cx >= MAIN_START && ctx->cx < MAIN_END)   /* callerpc: the go statement */
        bump(1);
    return 0;
}

int on_casgstatus(struct pt_regs *ctx) {
    if ((ctx->bx & 0xffff) == DEAD_ && (ctx->cx & 0xffff) == RUNNABLE_)
        bump(2);
    return 0;
}
"""


@pytest.mark.bpf
@pytest.mark.parametrize("version,variant", [("1.19", "default"), ("1.25", "stripped"), ("1.27", "pie")])
def test_probes_fire_once_with_arguments_intact(require_bpf, inspectme, version, variant):
    from bcc import BPF, lib

    path = inspectme(version, variant)
    binary = GoBinary.open(path)
    main = binary.image.symbols(["main.main"]) or binary.pclntab.lookup(["main.main"])
    start, size = main["main.main"]
    proc = subprocess.Popen([str(path), str(WORKERS)], env={"INSPECTME_WAIT": "1"},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    bpf = None
    try:
        assert proc.stdout.readline().strip() == "ready"
        bias = binary.load_bias(proc.pid)   # a PIE runs at an ASLR address: callerpc is biased
        assert (bias != 0) == (variant == "pie")
        bpf = BPF(text=PROGRAM, cflags=[
            f"-DMAIN_START={start + bias}ULL", f"-DMAIN_END={start + size + bias}ULL",
            f"-DDEAD_={DEAD}", f"-DRUNNABLE_={RUNNABLE}"])
        for name, fn in (("runtime.newproc1", "on_newproc1"), ("runtime.casgstatus", "on_casgstatus")):
            f = binary.function(name)
            # The raw libbcc call takes the file offset, exactly what a uprobe is defined by.
            offset = binary.file_offset(f.probe_address)
            prog = bpf.load_func(fn.encode(), BPF.KPROBE)
            ev = f"p_gotel_test_{offset:x}_{proc.pid}".encode()
            fd = lib.bpf_attach_uprobe(prog.fd, 0, ev, str(path).encode(), offset, proc.pid)
            assert fd >= 0, f"attach {name} at offset {offset:#x} failed"
            bpf._add_uprobe_fd(ev, fd)
        out, _ = proc.communicate("go\n", timeout=60)
        counts = [bpf["counts"][i].value for i in range(3)]
    finally:
        proc.kill()
        proc.wait()
        if bpf is not None:
            bpf.cleanup()
    assert f"workers {WORKERS}" in out
    calls, from_main, created = counts
    assert from_main == WORKERS          # RCX intact at the after-prologue probe
    assert calls == created              # once per call: no double hit from a stack-growth restart
