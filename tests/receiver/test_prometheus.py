"""A real program from Debian against the execution trace it serves: Debian's prometheus (stripped
go1.19.8, cgo) serves ``/debug/pprof/trace?seconds=N``. gotel attaches to the running server first
(attaching takes 2-3 s), then the trace is taken while HTTP clients query the server, and the same
figures as tests/receiver/test_fidelity.py are computed over the goroutines created inside the
trace window, printed and asserted."""

import http.client
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest

import oracle
from collect import Collect
from pipeline.decoder import Config as DecoderConfig, EventDecoder
from pipeline.exporters.encode import span_name
from receiver.receiver import Config, GoroutineReceiver

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
TRACE_SECONDS = 3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("prometheus did not become ready")


def load(port, stop):
    """Queries over new and kept-alive connections: net/http's conn goroutines, background reads."""
    paths = ["/metrics", "/api/v1/query?query=up", "/api/v1/query?query=rate(prometheus_http_requests_total[1m])",
             "/api/v1/labels"]
    i = 0
    while not stop.is_set():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            for _ in range(5):
                conn.request("GET", paths[i % len(paths)])
                conn.getresponse().read()
                i += 1
        except OSError:
            pass
        finally:
            conn.close()


@pytest.mark.bpf
@pytest.mark.slow
def test_gotel_agrees_with_prometheus_own_trace(require_bpf, tmp_path):
    if not shutil.which("prometheus"):
        pytest.fail("prometheus is not installed: run make setup (scripts/setup-system.sh installs it)")
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: self\n"
                   f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n")
    server = subprocess.Popen(
        [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sink, rx, stop = Collect(), None, threading.Event()
    clients = [threading.Thread(target=load, args=(port, stop), daemon=True) for _ in range(2)]
    try:
        wait_ready(port)
        rx = GoroutineReceiver(Config(pids=(server.pid,)), sink).start()   # attached on return
        for c in clients:
            c.start()
        with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/debug/pprof/trace?seconds={TRACE_SECONDS}",
                timeout=TRACE_SECONDS + 30) as r:
            (tmp_path / "trace.out").write_bytes(r.read())
        # The goroutine profile's stacks, while the load still runs: their bottom frames are the
        # start functions pprof shows.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/debug/pprof/goroutine?debug=2",
                                    timeout=30) as r:
            profile = r.read().decode(errors="replace")
        time.sleep(0.2)
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=10)
        if rx is not None:
            rx.shutdown()
        server.terminate()
        server.wait(timeout=30)
    proc = rx.registry.get(server.pid)
    assert proc.binary.go_version.startswith("go1.19") and rx.lost == 0
    events = sink.events
    decoder = EventDecoder(DecoderConfig())
    spans = np.concatenate([decoder.process(b[b["pid"] == server.pid].copy()) for b in sink.batches]
                           + [decoder.flush()])

    pcs = np.unique(events["pc_start"][events["kind"] == 1])
    names = proc.binary.symbolizer().function_names(
        proc.binary.start_pcs(pcs - np.uint64(proc.pc_bias())))
    trace = oracle.go_tool_trace(tmp_path / "trace.out")
    view = oracle.from_events(events, proc.binary.layout, server.pid, dict(zip(pcs.tolist(), names.tolist())))
    f = oracle.fidelity(trace, view, rx.clock.offset_ns, spans,
                         opaque=oracle.opaque_wrappers(proc.binary))
    print(f"\nprometheus {proc.binary.go_version}: {f.line()}")
    assert len(trace.goroutines) >= 100, f.line()
    assert f.recall >= 0.99 and f.extra <= 0.01 * f.tracer_parks, f.line()
    assert f.reason_agreement >= 0.99, f.reason_mismatches.most_common(5)
    assert f.median_duration_diff_ns <= 50_000, f.line()
    assert abs(f.schedule_ratio - 1) <= 0.05, f.line()
    assert f.name_agreement >= 0.99, f.name_mismatches.most_common(5)
    assert f.zero_length == 0, f.line()
    # Names against /debug/pprof/goroutine, for every goroutine the profile shows that gotel named:
    # created while traced, or alive at attach (read from the runtime's allgs then).
    pprof = oracle.pprof_start_functions(profile)
    mine = events[(events["pid"] == server.pid) & np.isin(events["kind"], [1, 10])
                  & (events["pc_start"] != 0)]
    pcs = np.unique(mine["pc_start"])
    named = dict(zip(pcs.tolist(), proc.binary.symbolizer().function_names(
        proc.binary.start_pcs(pcs - np.uint64(proc.pc_bias()))).tolist()))
    gotel_names = {int(goid): named[int(pc)] for goid, pc in zip(mine["goid"], mine["pc_start"])}
    # The span name, as the exporter gives it (runtime.main is main.main, as in pprof, which hides
    # runtime frames); goroutines started by an opaque wrapper are named by it (as Go 1.19's tracer
    # names them; pprof shows the closure from the stack): counted, not compared.
    # A goroutine that has not run yet shows only its start PC, the wrapper itself: not compared.
    opaque, unstarted = oracle.opaque_wrappers(proc.binary), oracle.wrappers(proc.binary)
    both = [(pprof[goid], span_name(gotel_names[goid], "")) for goid in pprof
            if goid in gotel_names and gotel_names[goid] not in opaque and pprof[goid] not in unstarted]
    n_opaque = sum(gotel_names.get(goid) in opaque for goid in pprof)
    same = sum(a == b for a, b in both)
    print(f"prometheus: start names equal to pprof's for {same}/{len(both)} "
          f"({n_opaque} started by an opaque wrapper, not compared)")
    assert len(both) >= 10 and same >= 0.99 * len(both), [x for x in both if x[0] != x[1]]
