"""Row 5: memory: bytes gotel holds per live goroutine it tracks, with 1,000,000 live goroutines.

benchmarks/go/hold starts N goroutines that all park on a channel receive and stay alive. gotel runs
as shipped, in this process: the ``Service`` from the embedded default configuration, attached to
the program by PID before it starts them. Once the decoder tracks all N (plus the runtime's own),
three figures are taken:

- ``decoder state``: ``EventDecoder.nbytes`` (live-goroutine table of pipeline/goroutines.py with its
  hash index and free list, trace table, interned creation sites, held park events) per live
  goroutine;
- ``goroutine table``: the live-goroutine table alone per live goroutine;
- ``RSS growth``: the growth of this process's resident set from just before the program started
  its goroutines to that moment, per live goroutine: everything, including numpy's temporaries of
  the last batches and memory the allocator has not returned.

Also: the RSS that starting gotel adds before it tracks anything (bcc compiling the BPF program in
process with its LLVM, the ring buffer mapping, threads), which sets the floor of gotel's RSS. Then
the goroutines exit and gotel's spans for them flow out as usual.

Trust ``decoder state`` for the goal: it is the memory that grows with live goroutines and stays as
long as they live. RSS growth is an upper bound that also counts transient batch buffers, which do
not scale with live goroutines.
"""

import subprocess
import tempfile
import time

from benchmarks import harness


def measure(n):
    from pipeline import config
    from pipeline.service import Service

    proc = subprocess.Popen([str(harness.workload("hold")), "-n", str(n), "-wait"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=harness.go_env(1), preexec_fn=harness.on_cpu(harness.TARGET_CPU))
    with tempfile.TemporaryDirectory(prefix="gotel-bench-") as out_dir:
        cfg = config.load(overrides={"GOTEL_OUT": out_dir}, receiver_settings={"pids": [proc.pid]})
        service = Service(cfg)
        rss_idle = harness.status_bytes("self", "VmRSS")
        service.start()
        try:
            rss0 = harness.status_bytes("self", "VmRSS")
            started = time.monotonic()
            proc.stdin.write("\n")
            proc.stdin.flush()
            proc.stdout.readline()   # "ready N": every goroutine has started
            deadline = time.monotonic() + 300
            decoder = service.receiver.decoder
            while decoder.live_goroutines < n and time.monotonic() < deadline \
                    and service.receiver.source.lost == 0:
                time.sleep(0.2)
            time.sleep(0.5)
            result = {"live": decoder.live_goroutines, "decoder_bytes": decoder.nbytes,
                      "table_bytes": decoder.goroutines.nbytes,
                      "rss_growth": harness.status_bytes("self", "VmRSS") - rss0,
                      "start_rss": rss0 - rss_idle,
                      "seconds_to_track": time.monotonic() - started,
                      "lost": service.receiver.source.probes.counters()["lost"]}
            proc.stdin.write("\n")
            proc.stdin.close()
            proc.wait(300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            service.shutdown(30.0)
    result["peak_rss"] = harness.status_bytes("self", "VmHWM")
    return result


def run(quick=False):
    started = time.monotonic()
    n, repeats = (10_000, 1) if quick else (1_000_000, 3)
    runs = [measure(n) for _ in range(repeats)]
    figs = {
        "live_goroutines": harness.figure("live goroutines tracked", "goroutines",
                                          [r["live"] for r in runs], 0),
        "decoder_bytes_per_goroutine": harness.figure(
            "decoder state per live goroutine", "B", [r["decoder_bytes"] / r["live"] for r in runs], 1),
        "table_bytes_per_goroutine": harness.figure(
            "live-goroutine table per live goroutine", "B", [r["table_bytes"] / r["live"] for r in runs], 1),
        "rss_growth_per_goroutine": harness.figure(
            "process RSS growth per live goroutine", "B", [r["rss_growth"] / r["live"] for r in runs], 1),
        "start_mb": harness.figure(
            "RSS added by starting gotel (bcc compiling the BPF program, ring buffer, threads)", "MB",
            [r["start_rss"] / 1e6 for r in runs], 1),
        "decoder_mb": harness.figure("decoder state", "MB", [r["decoder_bytes"] / 1e6 for r in runs], 1),
        "seconds_to_track": harness.figure(f"time until all {n:,} were tracked", "s",
                                           [r["seconds_to_track"] for r in runs], 1),
        "lost": harness.figure("events lost", "events", [r["lost"] for r in runs], 0),
        "peak_rss_mb": harness.figure("peak RSS of this process", "MB",
                                      [r["peak_rss"] / 1e6 for r in runs], 1),
    }
    per = figs["decoder_bytes_per_goroutine"]["median"]
    goals = [harness.goal(f"<= 100 B per live tracked goroutine at {n:,} live", "decoder_bytes_per_goroutine",
                          per, 100, per is not None and per <= 100,
                          "columns of the goroutine row plus hash slots and free list")]
    notes = [f"hold -n {n}, GOMAXPROCS=1 on CPU {harness.TARGET_CPU}; {repeats} runs, each with a new "
             "Service; the live count includes the runtime's own goroutines.",
             f"Row wall time {time.monotonic() - started:.0f} s."]
    return harness.row(5, "Memory per live goroutine", __doc__, figs, goals, notes,
                       {"n": n, "repeats": repeats})


if __name__ == "__main__":
    raise SystemExit(harness.main(run, __doc__))
