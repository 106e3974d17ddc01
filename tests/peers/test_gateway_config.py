"""The Collector gateway of config/kubernetes/gotel-gateway.yaml, checked by the real Collector.

The module proxy refuses the loadbalancing exporter (``exporter/loadbalancingexporter`` v0.165.1:
403, "This module version is not available"), so the Collector built here cannot hold it: the test
has the real Collector ``validate`` the gateway's configuration with the loadbalancing exporter
replaced by an ``otlp`` exporter of the same protocol settings to its backends (receivers,
processors, the metrics pipeline, the health_check extension and the environment references are
the gateway's own), and checks the loadbalancing part by its keys."""

import copy
import subprocess

import yaml

import realpeers

from tests.test_kubernetes import by_kind, REPO

GATEWAY = REPO / "config" / "kubernetes" / "gotel-gateway.yaml"


def gateway_config():
    return yaml.safe_load(by_kind(GATEWAY, "ConfigMap")["data"]["collector.yaml"])


def buildable(config):
    """The gateway's configuration with its loadbalancing exporter as an otlp exporter."""
    c = copy.deepcopy(config)
    lb = c["exporters"].pop("loadbalancing")
    dns = lb["resolver"]["dns"]
    c["exporters"]["otlp/traces"] = {"endpoint": f"{dns['hostname']}:{dns['port']}",
                                     **lb["protocol"]["otlp"]}
    c["service"]["pipelines"]["traces"]["exporters"] = ["otlp/traces"]
    return c


def test_the_real_collector_accepts_the_gateway_configuration(tmp_path):
    config = gateway_config()
    assert config["exporters"]["loadbalancing"]["routing_key"] == "traceID"
    assert set(config["exporters"]["loadbalancing"]) == {"routing_key", "protocol", "resolver"}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(buildable(config)))
    env = {"BACKENDS": "otel-backend.observability.svc.cluster.local",
           "METRICS_BACKEND": "otel-backend.observability.svc.cluster.local:4317"}
    ok = subprocess.run([str(realpeers.binary("otelcol-gotel")), "validate", "--config", str(path)],
                        capture_output=True, text=True, timeout=60, env=env)
    assert ok.returncode == 0, ok.stderr
    broken = buildable(config)
    broken["processors"]["batch"]["send_batch_sizes"] = 1        # a typo the Collector must refuse
    path.write_text(yaml.safe_dump(broken))
    bad = subprocess.run([str(realpeers.binary("otelcol-gotel")), "validate", "--config", str(path)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode != 0 and "send_batch_sizes" in bad.stderr
