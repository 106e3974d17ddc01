"""A real uprobe on runtime.casgstatus of a real Go process counts its goroutine creations and exits.

This is the foundation check: bcc compiles, the kernel attaches a uprobe to a Go binary, and the
counts agree with what the program does. bcc resolves the symbol here on purpose, independently of
gotel's own binary inspection.
"""

import subprocess

import pytest

SPAWNED = 2000

COUNT_TRANSITIONS = r"""
#include <uapi/linux/ptrace.h>
BPF_HASH(transitions, u32, u64, 256);

int on_casgstatus(struct pt_regs *ctx) {
    /* Go register ABI: casgstatus(gp *g, oldval, newval uint32) in RAX, RBX, RCX. */
    u32 key = ((ctx->bx & 0xff) << 8) | (ctx->cx & 0xff);
    u64 zero = 0, *n = transitions.lookup_or_try_init(&key, &zero);
    if (n)
        __sync_fetch_and_add(n, 1);
    return 0;
}
"""

DEAD, RUNNABLE, RUNNING = 6, 1, 2


def trace_spawner(binary, probed_binary):
    """Run binary with a casgstatus probe on probed_binary (pid-filtered); return (output, counts)."""
    from bcc import BPF

    proc = subprocess.Popen(
        [str(binary), str(SPAWNED)], env={"WAIT_STDIN": "1"},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    bpf = BPF(text=COUNT_TRANSITIONS)
    try:
        bpf.attach_uprobe(name=str(probed_binary), sym="runtime.casgstatus",
                          fn_name="on_casgstatus", pid=proc.pid)
        out, err = proc.communicate("go\n", timeout=60)
        counts = {(k.value >> 8, k.value & 0xff): v.value for k, v in bpf["transitions"].items()}
    finally:
        proc.kill()
        bpf.cleanup()
    return proc.returncode, out, err, counts


@pytest.mark.bpf
@pytest.mark.parametrize("version", ["1.21", "1.25"])
def test_casgstatus_counts_match_program(require_bpf, go_build, version):
    binary = go_build("spawner", version)
    untraced = subprocess.run([str(binary), str(SPAWNED)], capture_output=True, text=True, timeout=60)

    code, out, err, counts = trace_spawner(binary, binary)

    assert (code, out, err) == (untraced.returncode, untraced.stdout, untraced.stderr)
    created = counts.get((DEAD, RUNNABLE), 0)
    exited = counts.get((RUNNING, DEAD), 0)
    # The workers, plus the few the runtime starts after main begins (GC workers, finalizers).
    assert SPAWNED <= created <= SPAWNED + 50, counts
    # A worker's wg.Done runs before it exits, so main may end the process before the last
    # few workers reach goexit: their exits are never made.
    assert SPAWNED - 20 <= exited <= created, counts
    assert counts.get((RUNNABLE, RUNNING), 0) >= SPAWNED


@pytest.mark.bpf
def test_probe_on_another_binary_sees_nothing(require_bpf, go_build):
    """The same probe on a different binary (the other toolchain's build) must count nothing."""
    traced = go_build("spawner", "1.25")
    other = go_build("spawner", "1.21")
    code, out, err, counts = trace_spawner(traced, other)
    assert code == 0 and out.startswith(f"spawned {SPAWNED}")
    assert counts == {}
