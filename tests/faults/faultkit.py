"""Helpers of the fault suite (tests/faults: gotel under collector outages, killed and crowded
targets, reused PIDs, ring overflow storms, its own SIGKILL, and the least capability set; each
test records its figures with the ``figure`` fixture of tests/conftest.py): configurations, a
Service from YAML, spans in an OTLP/JSON file."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# spanfactory (tests/pipeline) and otlp_server (tests/): appended, never ahead of tests/conftest.py.
for _folder in (REPO / "tests", REPO / "tests" / "pipeline"):
    if str(_folder) not in sys.path:
        sys.path.append(str(_folder))


def config_text(out, otlp=None, storage=None, shutdown_timeout="0.5s", collection="1s"):
    """A gotel configuration: every span to a file (the oracle of what was produced) and, with
    ``otlp`` (host:port), to a collector with short back-offs."""
    exporters = {"file/traces": {"path": f"{out}/traces.jsonl"},
                 "file/metrics": {"path": f"{out}/metrics.jsonl"}}
    traces = ["file/traces"]
    if otlp:
        queue = {"num_consumers": 2, "queue_size": 5000}
        if storage:
            queue["storage"] = str(storage)
        exporters["otlp"] = {"endpoint": otlp, "tls": {"insecure": True}, "timeout": "1s",
                             "shutdown_timeout": shutdown_timeout, "sending_queue": queue,
                             "retry_on_failure": {"initial_interval": "200ms", "max_interval": "1s",
                                                  "max_elapsed_time": "120s"}}
        traces.append("otlp")
    return json.dumps({
        "receivers": {"goroutines": {"collection_interval": collection}},
        "processors": {"batch": {"timeout": "100ms"}},
        "exporters": exporters,
        "service": {"pipelines": {
            "traces": {"receivers": ["goroutines"], "processors": ["batch"], "exporters": traces},
            "metrics": {"receivers": ["goroutines"], "exporters": ["file/metrics"]}}}})


def service_for(text, **targets):
    from pipeline import config
    from pipeline.service import Service

    return Service(config.loads(text, receiver_settings=targets))


def file_spans(path):
    """[(pid, executable, span name)] of every span in an OTLP/JSON traces file."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        for rs in json.loads(line).get("resourceSpans", []):
            attrs = {a["key"]: a["value"] for a in rs["resource"].get("attributes", [])}
            pid = int(attrs.get("process.pid", {}).get("intValue", 0))
            exe = attrs.get("process.executable.path", {}).get("stringValue", "")
            for ss in rs.get("scopeSpans", []):
                out.extend((pid, exe, s["name"]) for s in ss.get("spans", []))
    return out


def lingerers(binary, n, seconds, workers=2):
    return [subprocess.Popen([str(binary), "-for", f"{seconds}s", "-workers", str(workers)],
                             stdout=subprocess.DEVNULL) for _ in range(n)]


def wait_until(predicate, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def gotel_cmd(*argv):
    return [sys.executable, "-m", "pipeline.app.cli", *map(str, argv)]


ENV = {**os.environ, "PYTHONPATH": str(REPO)}
