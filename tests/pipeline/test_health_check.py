"""The health_check extension: its configuration (extensions + service::extensions, Collector-style)
and its HTTP answers for each state of its host. tests/peers/test_prometheus_health.py checks it on
a real Service tracing a real program."""

import json
import urllib.error
import urllib.request

import pytest

from pipeline import config
from pipeline.extensions import health_check
from pipeline.stage import Settings
from receiver.errors import ConfigError

BASE = """
receivers:
  goroutines: {pids: [1]}
exporters:
  debug: {}
service:
  pipelines:
    traces: {receivers: [goroutines], exporters: [debug]}
"""


def test_extensions_are_configured_like_the_collectors():
    cfg = config.loads(BASE + "  extensions: [health_check]\nextensions:\n"
                       "  health_check: {endpoint: 127.0.0.1:0, exporter_failure_threshold: 2s}\n")
    assert cfg.service_extensions == ("health_check",)
    assert cfg.extensions["health_check"].config.exporter_failure_threshold == 2.0
    # defined but not enabled: built, not run
    cfg = config.loads(BASE + "extensions:\n  health_check: {}\n")
    assert cfg.service_extensions == () and "health_check" in cfg.extensions


@pytest.mark.parametrize("text, expected", [
    ("extensions:\n  zpages: {}\n", "extensions::zpages: unknown extension type (known: health_check)"),
    ("extensions:\n  health_check: {endpoint: nowhere}\n",
     "extensions::health_check::endpoint"),
    ("  extensions: [health_check]\n", "service::extensions: health_check is not defined"),
])
def test_extension_problems_name_their_path(text, expected):
    with pytest.raises(ConfigError) as e:
        config.loads(BASE + text)
    assert any(p.startswith(expected) for p in e.value.problems), e.value.problems


class Host:
    def __init__(self):
        self.state = {"attached": False, "exporters": {"otlp": None}}

    def health_state(self):
        return self.state


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_readiness_follows_the_host():
    host = Host()
    check = health_check.create(Settings("health_check"),
                                health_check.Config("127.0.0.1:0", exporter_failure_threshold=2.0))
    check.start(host)
    try:
        url = f"http://127.0.0.1:{check.port}"
        assert get(url + "/healthz") == (200, {"status": "alive"})
        assert get(url + "/readyz") == (503, {"status": "not ready",
                                              "problems": ["receiver not attached"]})
        host.state = {"attached": True, "exporters": {"otlp": 1.5}}        # failing, not for long
        assert get(url + "/readyz") == (200, {"status": "ready", "problems": []})
        host.state = {"attached": True, "exporters": {"otlp": 2.5}}
        assert get(url + "/readyz") == (503, {"status": "not ready",
                                              "problems": ["exporter otlp failing for 2s"]})
    finally:
        check.shutdown()
