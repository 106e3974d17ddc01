"""Row 4: loss: the highest sustained goroutine-event rate gotel takes with 0 events lost at the
default ring-buffer size, and what happens above it.

gotel runs as shipped, in this process: the ``Service`` built from the embedded default
configuration (8 MiB ring buffer, decoder, filter, adaptive sampler at its default target, batcher,
OTLP/JSON file exporters into a temporary directory), attached to the benchmarks/go/paced binary by
path, so each step of the ladder is a new process it picks up from its first instruction. Each
step runs ``paced`` for a few seconds at one offered rate (each op: a goroutine created, run and
exited while its creator parks and is readied: 6 events, one goroutine span), pinned to one CPU with
GOMAXPROCS=1; the last step runs as fast as the traced program can. gotel's poller thread, which
drives the whole pipeline, runs on the other CPU.

Per step: the offered rate (probe hits that produced an event, per second, captured or lost), events
captured and lost (ring-buffer reserve failures, counted in the kernel), spans made and the share the
sampler kept, its keep probability at the end of the step, the decoder's live-state bytes, and the
process's peak RSS during the step (VmHWM, reset before each step through /proc/self/clear_refs).

Trust ``max lossless rate``: the highest offered rate of a step with 0 lost. It is bounded by the
slower of two things: how fast the traced program can produce events under the probes (the last
step shows that ceiling) and how fast the pipeline drains them on one CPU (row 3); which one bound
it is stated in the notes. The ladder is coarse: the true limit lies between the last lossless step
and the next one.
"""

import os
import subprocess
import tempfile
import time

from benchmarks import harness

EVENTS_PER_OP = 6
LADDER = (100_000, 300_000, 1_000_000, 2_000_000, 3_000_000, 0)   # events/s; 0: as fast as possible


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def snapshot(service):
    rx = service.receiver
    sampler = next((s for _, _, s in service.processors if type(s).__name__ == "AdaptiveSampler"), None)
    c = rx.probes.counters() if rx.probes is not None else {"hits": 0, "lost": 0}
    return {"events": rx.events, "lost": c["lost"], "hits": c["hits"], "spans": service.tap.spans,
            "sampler_in": sampler.items_in if sampler else 0,
            "sampler_out": sampler.items_out if sampler else 0,
            "probability": sampler.probability if sampler else 1.0,
            "decoder_bytes": service.decoder.nbytes}


def settle(service, timeout=10.0):
    """Wait until the receiver has delivered everything the kernel holds."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        reader = service.receiver.reader
        if reader is not None and reader.pending_bytes == 0 and service.receiver.events == last:
            return
        last = service.receiver.events
        time.sleep(0.3)


def step(service, binary, rate, seconds):
    settle(service)
    reset_peak_rss()
    before = snapshot(service)
    args = [str(binary), "-rate", str(rate / EVENTS_PER_OP), "-duration", f"{seconds}s"]
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=harness.go_env(1),
                         preexec_fn=harness.on_cpu(harness.TARGET_CPU)).stdout
    ran = float(out.split()[3])
    settle(service)
    after = snapshot(service)
    d = {k: after[k] - before[k] for k in ("events", "lost", "hits", "spans", "sampler_in", "sampler_out")}
    return {"target_events_per_s": rate, "offered_events_per_s": d["hits"] / ran,
            "captured": d["events"], "lost": d["lost"], "spans": d["spans"],
            "sampler_kept": d["sampler_out"] / d["sampler_in"] if d["sampler_in"] else None,
            "sampler_probability": after["probability"], "decoder_bytes": after["decoder_bytes"],
            "peak_rss": harness.status_bytes("self", "VmHWM")}


def ladder(seconds, rates):
    from pipeline import config
    from pipeline.service import Service

    binary = harness.workload("paced")
    with tempfile.TemporaryDirectory(prefix="gotel-bench-") as out_dir:
        cfg = config.load(overrides={"GOTEL_OUT": out_dir},
                          receiver_settings={"paths": [os.path.realpath(binary)]})
        service = Service(cfg)
        service.start()
        try:
            return [step(service, binary, rate, seconds) for rate in rates], cfg
        finally:
            service.shutdown(10.0)


def run(quick=False):
    started = time.monotonic()
    seconds, repeats = (1, 1) if quick else (3, 3)
    rates = (100_000, 0) if quick else LADDER
    runs = [ladder(seconds, rates)[0] for _ in range(repeats)]
    figs = {}
    for i, rate in enumerate(rates):
        name = f"{rate // 1000}k" if rate else "max"
        steps = [r[i] for r in runs]
        label = f"step {name} ({'as fast as possible' if not rate else f'{rate:,} events/s asked'})"
        figs[f"{name}.offered"] = harness.figure(f"{label}: offered events/s", "events/s",
                                                 [s["offered_events_per_s"] for s in steps], 0)
        figs[f"{name}.lost"] = harness.figure(f"{label}: events lost", "events", [s["lost"] for s in steps], 0)
        figs[f"{name}.lost_pct"] = harness.figure(
            f"{label}: share lost", "%",
            [100 * s["lost"] / (s["lost"] + s["captured"]) if s["lost"] + s["captured"] else 0
             for s in steps], 2)
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
    bound = ("the traced program itself (its fastest step lost nothing)"
             if figs["max.lost"]["max"] == 0 else "gotel's pipeline draining the ring on one CPU")
    goals = [harness.goal("0 events lost at the default ring size up to the highest rate the probes "
                          "produce on this machine", "max_lossless_rate", top, ceiling,
                          figs["max.lost"]["max"] == 0,
                          "above the pipeline's one-CPU throughput (row 3) the ring fills; the kernel "
                          "counts every event it could not store and gotel reports the count")]
    notes = [f"{len(rates)} steps of {seconds} s each, {repeats} ladders; default ring size "
             f"{cfg_ring_bytes() >> 20} MiB; the lossless rate is bounded by {bound}.",
             f"Row wall time {time.monotonic() - started:.0f} s."]
    return harness.row(4, "Loss at the default ring size", __doc__, figs, goals, notes,
                       {"seconds": seconds, "repeats": repeats, "ladder": rates,
                        "steps": runs})


def cfg_ring_bytes():
    from receiver.receiver import Config

    return Config.ring_bytes


if __name__ == "__main__":
    raise SystemExit(harness.main(run, __doc__))
