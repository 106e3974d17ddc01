"""What one uprobe hit costs on this machine, measured at start in a few milliseconds.

The overhead budget (receiver/levels.py) prices each probe hit of a target. The kernel's trap is
most of that price and differs between hosts by up to 2x (FACTS.md), so it is measured here, not
assumed: a small C program (bpf/calibrate.c, built once with ``cc`` and cached) calls two identical
``push %rbp`` leaf functions in alternating blocks, one of them carrying gotel's own compiled
``probe_casgstatus`` program on a disabled layout slot (so the BPF side does what any hit does
before it knows whether to keep the event: count the hit, look the layout up). The difference
per call is the floor. Benchmark row 6 reports the same measurement (and a 5-byte NOP leaf).

What is measured and what is fitted:

- Measured here, at every start: ``floor_ns``, one hit in a tight loop.
- Fitted: ``IN_SITU``, what a hit costs a real program over that floor, per probe point. In a tight
  loop the trap finds the kernel's uprobe path and the BPF program warm in the caches, in a server
  it does not. The factors were fitted on the net/http workload of benchmark row 10 (Go 1.25,
  2-vCPU KVM guest, calibrated floor 527-600 ns), two runs on 2026-12-02: full tracing added 60.4%
  and 57.4% of the server's CPU per request (~16 casgstatus hits per request: 2.5x and 2.0x the
  floor a hit), the lifecycle probes 16.8% and 13.2% (2 hits per request: 2.4x and 1.8x). The
  factors are the means; on that workload the estimate agrees with them by construction.
  - The factors fitted before (2.85 and 5) came from runs where wrk shared gotel's CPU: gotel's own
    work there slowed the server with no probe at all (its wakeups of wrk became rescheduling
    interrupts, ~10 us each on this guest, and a starved wrk left the server idling, which costs
    more per request), and the lifecycle level, with the least to trap, took most of that
    (48.6% measured then).
- Measured, per target, by the budget (receiver/levels.py): the price is never charged beyond the
  target's own system time, where the traps are accounted. That bound, not the price, is what
  holds the estimate on programs that make few syscalls.

Out of sample (row 10 on ping-pong and spawn, the same runs): a casgstatus hit cost the ping-pong
loop ~0.86 us (1.6x the floor), a lifecycle hit the spawn loop ~0.92 us (1.7x), both under their
prices; with the system-time bound the estimate was 0.84-0.87 of the measured overhead on ping-pong
(full), 0.79-0.82 on spawn (full) and 0.81-0.83 on spawn (lifecycle). Under budgets of 1-5% the
measured overheads were within the noise of those runs, so the estimate is unchecked there. Read
``gotel.target.overhead`` as good to about 30% at high overheads on these programs, not as a
prediction for others.

Costs ~60-100 ms (60,000 probed calls in three runs). Without ``cc``, or if anything fails,
``DEFAULT_FLOOR_NS`` is used and the reason logged.
"""

import atexit
import dataclasses
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from receiver.events import BPF_DIR

log = logging.getLogger("gotel.calibrate")

SOURCE = BPF_DIR / "calibrate.c"
CALLS = 60000
ROUNDS = 3                   # the least of three runs (each the fastest of 100 blocks; see calibrate.c)
DEFAULT_FLOOR_NS = 400.0     # what this calibration measured on the project's 2-vCPU machine
# What a hit costs a real program, over the floor in a tight loop, per probe point: FITTED on row
# 10's net/http server (see the module docstring for the out-of-sample error).
IN_SITU = {"casgstatus": 2.3, "create": 2.1, "exit": 2.1}


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Per-hit costs, in ns: ``floor_ns`` is one trap in a tight loop, ``hit_ns[point]`` what a
    hit of a probe point costs a real program (the price the budget uses)."""

    floor_ns: float
    measured: bool           # False: DEFAULT_FLOOR_NS, calibration failed (see the log)

    @property
    def hit_ns(self):
        return {point: self.floor_ns * factor for point, factor in IN_SITU.items()}


def _binary():
    """The calibration program, built once per source and cached; where the cache cannot be written
    (a user with a few capabilities and no writable home, a read-only root file system), built
    for this process alone in a private temporary directory, removed at exit."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gotel"
    out = cache / f"calibrate-{digest}"
    if out.exists():
        return out
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            built = _build(Path(tmp) / "calibrate")
            os.replace(built, out)
        return out
    except OSError as e:
        if digest not in _PRIVATE:
            log.debug("calibration: cache not writable (%s); building in a private directory", e)
            tmp = tempfile.mkdtemp(prefix="gotel-calibrate-")       # mode 0700, ours alone
            atexit.register(shutil.rmtree, tmp, True)
            _PRIVATE[digest] = _build(Path(tmp) / "calibrate")
        return _PRIVATE[digest]


_PRIVATE = {}   # source digest -> this process's own build, where the cache was not writable


def _build(out):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc) to build the calibration program")
    subprocess.run([cc, "-O2", "-pthread", "-fno-omit-frame-pointer", "-o", str(out), str(SOURCE)],
                   check=True, capture_output=True, timeout=60)
    return out


def _symbol_offset(path, name):
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        elf = ELFFile(f)
        sym = elf.get_section_by_name(".symtab").get_symbol_by_name(name)[0]
        vaddr = sym["st_value"]
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_filesz"]:
                return vaddr - seg["p_vaddr"] + seg["p_offset"]
    raise LookupError(name)


LEAVES = {"push": "probed", "nop5": "probed_nop5"}   # first instruction -> probed function


def measure(fn_fd, calls=CALLS, leaf="push", links=False, threads=1):
    """ns per hit of the BPF program whose fd is ``fn_fd`` (loaded as a kprobe/uprobe program, for
    a BPF link if ``links``), on a leaf function starting with ``leaf`` (a key of LEAVES), called
    ``calls`` times (a multiple of 100: calibrate.c runs 100 blocks) by each of ``threads`` threads
    at once. Raises on failure."""
    from receiver import uprobe

    binary = _binary()
    proc = subprocess.Popen([str(binary), str(calls), leaf, str(threads)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    probe = None
    try:
        probe = uprobe.Uprobe(fn_fd, str(binary), _symbol_offset(binary, LEAVES[leaf]), proc.pid,
                              f"gotel_calibrate_{proc.pid}", links)
        out, _ = proc.communicate("\n", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if probe is not None:
            probe.close()
    with_probe, without = (float(x) for x in out.split())
    return max(with_probe - without, 1.0)


def calibrate(fn_fd, links=False):
    """A Calibration, measured with the program ``fn_fd`` (loaded for BPF links if ``links``); the
    default (logged) on any failure."""
    try:
        floor = min(measure(fn_fd, CALLS // ROUNDS, links=links) for _ in range(ROUNDS))
        log.info("one uprobe hit costs %.0f ns on this machine (calibrated)", floor)
        return Calibration(floor, True)
    except Exception as e:  # noqa: BLE001  (the budget still works, with a stated default)
        log.warning("uprobe cost calibration failed (%s); assuming %.0f ns per hit", e,
                    DEFAULT_FLOOR_NS)
        return Calibration(DEFAULT_FLOOR_NS, False)
