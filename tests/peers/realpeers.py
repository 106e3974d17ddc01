"""The real peers the tests run gotel against: the OpenTelemetry Collector and Jaeger v2 (built by
``make peers`` into .cache/peers from pinned versions), and Debian's Prometheus. Each runs as a
child process on free loopback ports with a config the test writes, logs to a file in the test's
directory, and is stopped with SIGTERM (which flushes the Collector's file exporter)."""

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / ".cache" / "peers"


def binary(name):
    """Path of a peer binary; fails with what to run when set-up has not built it."""
    if name == "prometheus":
        path = shutil.which("prometheus")
        if path is None:
            pytest.fail("Debian's prometheus is not installed: run `make setup`")
        return Path(path)
    path = PEERS / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make peers` (builds the pinned Collector and Jaeger)")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, log, timeout=60.0):
    """Wait until something accepts on 127.0.0.1:port; fail with the peer's log if it exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"peer exited with {proc.returncode}:\n{Path(log).read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    pytest.fail(f"peer did not listen on {port} within {timeout}s:\n{Path(log).read_text()[-3000:]}")


class Peer:
    """A running peer process. ``stop()`` sends SIGTERM and waits (kills after a timeout)."""

    def __init__(self, name, argv, directory, ports, wait_on, stop_timeout=20.0):
        self.name = name
        self.stop_timeout = stop_timeout
        self.directory = Path(directory)
        self.ports = ports
        self.log = self.directory / f"{name}.log"
        self._log = open(self.log, "w")
        self.proc = subprocess.Popen([str(a) for a in argv], stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=self.directory)
        try:
            for port in wait_on:
                wait_port(port, self.proc, self.log)
        except BaseException:
            self.stop()
            raise

    def url(self, key, path=""):
        return f"http://127.0.0.1:{self.ports[key]}{path}"

    def endpoint(self, key="grpc"):
        return f"127.0.0.1:{self.ports[key]}"

    def stop(self, timeout=None):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def write_yaml(path, tree):
    Path(path).write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


QUIET_TELEMETRY = {"metrics": {"level": "none"}, "logs": {"level": "warn"}}


def collector(directory, receiver_grpc=None, exporters=None, extensions=None, name="collector",
              batch=True, prometheus=False):
    """Start the Collector: an OTLP/gRPC receiver (extra settings in ``receiver_grpc``), the batch
    processor, file exporters writing ``traces.json``/``metrics.json`` in ``directory``, plus any
    ``exporters`` (id -> settings) on the traces pipeline; with ``prometheus``, its prometheus
    exporter on the metrics pipeline (port ``ports["prometheus"]``). Internal telemetry off, so no
    fixed port."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ports = {"grpc": free_port()}
    metrics_exporters = {}
    if prometheus:
        ports["prometheus"] = free_port()
        metrics_exporters["prometheus"] = {"endpoint": f"127.0.0.1:{ports['prometheus']}"}
    grpc = {"endpoint": f"127.0.0.1:{ports['grpc']}", **(receiver_grpc or {})}
    exporters = dict(exporters or {})
    trace_exporters = ["file/traces", *exporters]
    config = {
        "receivers": {"otlp": {"protocols": {"grpc": grpc}}},
        "processors": {"batch": {}} if batch else {},
        "exporters": {"file/traces": {"path": str(directory / "traces.json")},
                      "file/metrics": {"path": str(directory / "metrics.json")}, **exporters,
                      **metrics_exporters},
        "extensions": dict(extensions or {}),
        "service": {
            "extensions": list(extensions or {}),
            "telemetry": QUIET_TELEMETRY,
            "pipelines": {
                "traces": {"receivers": ["otlp"], "processors": ["batch"] if batch else [],
                           "exporters": trace_exporters},
                "metrics": {"receivers": ["otlp"], "processors": ["batch"] if batch else [],
                            "exporters": ["file/metrics", *metrics_exporters]},
            },
        },
    }
    path = write_yaml(directory / f"{name}.yaml", config)
    return Peer(name, [binary("otelcol-gotel"), "--config", path], directory, ports, [ports["grpc"]])


def jaeger(directory, name="jaeger"):
    """Start Jaeger v2 with in-memory storage: OTLP/gRPC in, the query HTTP API out."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ports = {"grpc": free_port(), "http": free_port(), "query_grpc": free_port()}
    config = {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "telemetry": QUIET_TELEMETRY,
            "pipelines": {"traces": {"receivers": ["otlp"], "processors": ["batch"],
                                     "exporters": ["jaeger_storage_exporter"]}},
        },
        "extensions": {
            "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 1000000}}}},
            "jaeger_query": {"storage": {"traces": "memstore"},
                             "http": {"endpoint": f"127.0.0.1:{ports['http']}"},
                             "grpc": {"endpoint": f"127.0.0.1:{ports['query_grpc']}"}},
        },
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{ports['grpc']}"}}}},
        "processors": {"batch": {}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
    }
    path = write_yaml(directory / f"{name}.yaml", config)
    # in-memory storage: nothing to flush, so a slow graceful stop is not waited for long
    return Peer(name, [binary("jaeger"), "--config", path], directory, ports,
                [ports["grpc"], ports["http"]], stop_timeout=3.0)


def prometheus(directory, targets, interval="1s", flags=()):
    """Start Debian's Prometheus scraping ``targets`` (host:port list) every ``interval``, with
    ``honor_labels`` (as the README advises): ``job``/``instance`` are the traced service's."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ports = {"http": free_port()}
    config = {"global": {"scrape_interval": interval, "scrape_timeout": interval},
              "scrape_configs": [{"job_name": "gotel", "honor_labels": True, "static_configs": [{"targets": targets}]}]}
    path = write_yaml(directory / "prometheus.yml", config)
    return Peer("prometheus", [binary("prometheus"), f"--config.file={path}",
                               f"--storage.tsdb.path={directory / 'data'}",
                               f"--web.listen-address=127.0.0.1:{ports['http']}", *flags],
                directory, ports, [ports["http"]])


def get_json(url, timeout=10.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def read_jsonl(path):
    """Every line of an OTLP/JSON file as a dict (the Collector's file exporter writes one per batch)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate, timeout=30.0, interval=0.2):
    """Poll predicate() until it returns something truthy; return its last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value



class CountingProxy:
    """A TCP pass-through on a free loopback port to ``target`` (host:port) that counts the bytes
    clients send: what an exporter really puts on the wire. One thread per direction."""

    def __init__(self, target):
        import threading

        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.sent = 0
        self._lock = threading.Lock()
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen()
        self.endpoint = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._threads = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading

        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for src, dst, count in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(src, dst, count), daemon=True).start()

    def _pipe(self, src, dst, count):
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if count:
                    with self._lock:
                        self.sent += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self):
        self._closed = True
        self._server.close()
