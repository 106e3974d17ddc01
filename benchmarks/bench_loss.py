"""Row 4: loss: the highest sustained goroutine-event rate gotel takes with 0 events lost at the
default size of the kernel's event buffers, and what happens above it.

Each step of a ladder of offered rates runs benchmarks/go/paced for a few seconds (each op: a
goroutine created, run and exited while its creator parks and is readied: 6 events and one
goroutine span), pinned to one CPU with GOMAXPROCS=1, traced from its first op by a new gotel
``Service`` as shipped, in this process: the embedded default configuration (16 MiB of per-CPU event buffers,
decoder, filter, adaptive sampler at its default target, batcher, OTLP/JSON file exporters into a
temporary directory), attached by PID, its poller thread (which copies the kernel's buffers into the
receiver's event buffer) and its pipeline thread on the other CPU. The last step runs as fast as
the traced program can under the probe. Steps are interleaved across the repetitions of the ladder.

Per step: the offered rate (the program's own op count x 6, per second of its run), events lost
(a CPU's event buffer full, counted in the kernel, plus the receiver's event-buffer overflow) as a
share of those offered, the most events waiting for the pipeline, the longest the buffers went
unread, the share of spans the adaptive sampler kept and its keep probability at the end, the decoder's live-state bytes, and
this process's peak RSS during the step (VmHWM, reset through /proc/self/clear_refs after the BPF
program was compiled).

Trust ``max lossless rate``: the highest offered rate of a step with 0 lost. It is bounded by the
slower of two things: how fast the traced program can produce events under the probe (the last
step shows that ceiling) and how fast gotel drains them on one CPU; which one bound it is stated in
the notes. The ladder is coarse: the true limit lies between the last lossless step and the next.
"""

import tempfile
import time

from benchmarks import harness

EVENTS_PER_OP = 6
LADDER = (100_000, 200_000, 500_000, 1_000_000, 2_000_000, 0)   # events/s; 0: as fast as possible


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def sampler_of(service):
    return next((s for _, _, s in service.processors if type(s).__name__ == "AdaptiveSampler"), None)


def step(binary, rate, seconds):
    """One step: a new gotel Service traces one paced process from its start to its exit."""
    from pipeline import config
    from pipeline.service import Service

    proc = harness.start_waiting(binary, ["-rate", rate / EVENTS_PER_OP, "-duration", f"{seconds}s"])
    with tempfile.TemporaryDirectory(prefix="gotel-bench-") as out_dir:
        cfg = config.load(overrides={"GOTEL_OUT": out_dir}, receiver_settings={"pids": [proc.pid]})
        service = Service(cfg)
        try:
            service.start()
            reset_peak_rss()
            out, _ = harness.release(proc)
            service.wait(60)
            peak = harness.status_bytes("self", "VmHWM")
            sampler = sampler_of(service)
            result = {"decoder_bytes": service.receiver.decoder.nbytes,
                      "sampler_probability": sampler.probability if sampler else 1.0}
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            service.shutdown(30.0)
    ops, ran = int(out.split()[1]), float(out.split()[3])
    rx = service.receiver.source
    result.update({
        "target_events_per_s": rate, "offered_events_per_s": ops * EVENTS_PER_OP / ran,
        "offered": ops * EVENTS_PER_OP, "captured": rx.events, "lost": rx.refused,
        "lost_ring": rx.lost, "lost_buffer": rx.overflowed, "buffer_peak": rx.buffer.peak,
        "max_poll_gap_s": rx.max_poll_gap_s,
        "spans": service.tap.spans, "peak_rss": peak,
        "sampler_kept": sampler.items_out / sampler.items_in if sampler and sampler.items_in else None})
    return result


def run(quick=False):
    started = time.monotonic()
    seconds, repeats = (1, 1) if quick else (3, 3)
    rates = (100_000, 0) if quick else LADDER
    binary = harness.workload("paced")
    runs = [[None] * len(rates) for _ in range(repeats)]
    for i, (j, rate) in harness.interleaved(tuple(enumerate(rates)), repeats):
        runs[i][j] = step(binary, rate, seconds)
    figs = {}
    for i, rate in enumerate(rates):
        name = f"{rate // 1000}k" if rate else "max"
        steps = [r[i] for r in runs]
        label = f"step {name} ({'as fast as possible' if not rate else f'{rate:,} events/s asked'})"
        figs[f"{name}.offered"] = harness.figure(f"{label}: offered events/s", "events/s",
                                                 [s["offered_events_per_s"] for s in steps], 0)
        figs[f"{name}.lost"] = harness.figure(f"{label}: events lost", "events", [s["lost"] for s in steps], 0)
        figs[f"{name}.lost_ring"] = harness.figure(
            f"{label}: of which lost in the kernel's buffers (poller not scheduled in time)", "events",
            [s["lost_ring"] for s in steps], 0)
        figs[f"{name}.lost_buffer"] = harness.figure(
            f"{label}: of which lost in gotel's event buffer (pipeline behind)", "events",
            [s["lost_buffer"] for s in steps], 0)
        figs[f"{name}.buffer_peak"] = harness.figure(
            f"{label}: most events waiting for the pipeline", "events",
            [s["buffer_peak"] for s in steps], 0)
        figs[f"{name}.max_poll_gap_ms"] = harness.figure(
            f"{label}: longest the buffers went unread", "ms",
            [1e3 * s["max_poll_gap_s"] for s in steps], 1)
        figs[f"{name}.lost_pct"] = harness.figure(
            f"{label}: share lost", "%", [100 * s["lost"] / s["offered"] for s in steps], 2)
        figs[f"{name}.sampler_kept"] = harness.figure(f"{label}: share of spans the sampler kept", "x",
                                                      [s["sampler_kept"] for s in steps], 4)
        figs[f"{name}.peak_rss_mb"] = harness.figure(f"{label}: gotel peak RSS", "MB",
                                                     [s["peak_rss"] / 1e6 for s in steps], 1)
    lossless = []
    for r in runs:
        ok = [s["offered_events_per_s"] for s in r if s["lost"] == 0]
        lossless.append(max(ok) if ok else 0)
    figs["max_lossless_rate"] = harness.figure("highest offered rate with 0 events lost", "events/s",
                                               lossless, 0)
    top = figs["max_lossless_rate"]["median"]
    ceiling = figs["max.offered"]["median"]
    names = [f"{rate // 1000}k" if rate else "max" for rate in rates]
    bound = bound_of(figs, names)
    goals = [harness.goal("0 events lost at the default buffer size up to the highest rate the probes "
                          "produce on this machine", "max_lossless_rate", top, ceiling,
                          all(figs[f"{n}.lost"]["max"] == 0 for n in names), bound)]
    notes = [f"{len(rates)} steps of {seconds} s each, {repeats} ladders, steps interleaved; default "
             f"event buffers {cfg_ring_bytes() >> 20} MiB (all CPUs); the lossless rate is bounded by {bound}.",
             f"Row wall time {time.monotonic() - started:.0f} s."]
    return harness.row(4, "Loss at the default buffer size", __doc__, figs, goals, notes,
                       {"seconds": seconds, "repeats": repeats, "ladder": rates, "steps": runs})


def bound_of(figs, names):
    """What bounds the lossless rate, from which steps lost events and where."""
    if all(figs[f"{n}.lost"]["max"] == 0 for n in names):
        return "the traced program itself (no step lost anything, its fastest included)"
    causes = []
    if any(figs[f"{n}.lost_buffer"]["max"] for n in names):
        causes.append("gotel's CPU on its one core: the pipeline and the exporters (OTLP/JSON "
                      "encoding of the sampled spans) fell more than buffer_events behind")
    if any(figs[f"{n}.lost_ring"]["max"] for n in names):
        causes.append("the kernel's ring filling while the poller was not scheduled for longer "
                      "than the ring holds (~0.1 s at the top rate; see the longest unread gap): "
                      "it shares one core and the GIL with the pipeline and exporter threads")
    return "; ".join(causes)


def cfg_ring_bytes():
    from receiver.receiver import Config

    return Config.ring_bytes


if __name__ == "__main__":
    raise SystemExit(harness.main(run, __doc__))
