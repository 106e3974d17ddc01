"""The Kubernetes manifests in config/kubernetes: valid against Kubernetes' own schemas
(kubernetes-validate ships them), the fields that matter for a node agent, and gotel's own
configuration inside the ConfigMap accepted by ``gotel validate``."""

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((REPO / "config" / "kubernetes").glob("*.yaml"))
GOTEL = Path(sys.executable).parent / "gotel"


def documents(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(path, kind):
    (doc,) = [d for d in documents(path) if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_kubernetes(path):
    version = kubernetes_validate.latest_version()
    for doc in documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_agent_runs_on_every_node_with_least_privilege():
    agent = REPO / "config" / "kubernetes" / "gotel-agent.yaml"
    spec = by_kind(agent, "DaemonSet")["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "SYS_ADMIN" not in sc["capabilities"]["add"] and "privileged" not in sc
    assert set(sc["capabilities"]["add"]) == {"BPF", "PERFMON", "SYS_PTRACE", "DAC_OVERRIDE"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["args"] == ["run", "-c", "/etc/gotel/gotel.yaml"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/gotel", "/sys/kernel/tracing", "/lib/modules", "/usr/src", "/tmp"} <= mounts
    env = {e["name"] for e in container["env"]}
    assert "NODE_NAME" in env
    # The probes ask gotel's health_check extension, on the port its config serves.
    config = yaml.safe_load(by_kind(agent, "ConfigMap")["data"]["gotel.yaml"])
    port = int(config["extensions"]["health_check"]["endpoint"].rsplit(":", 1)[1])
    assert config["service"]["extensions"] == ["health_check"]
    (declared,) = container["ports"]
    assert declared["containerPort"] == port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": declared["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": declared["name"]}
    rules = by_kind(agent, "ClusterRole")["rules"]
    assert rules == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]


def test_the_agent_config_in_the_configmap_is_valid_gotel_config(tmp_path):
    agent = REPO / "config" / "kubernetes" / "gotel-agent.yaml"
    config = tmp_path / "gotel.yaml"
    config.write_text(by_kind(agent, "ConfigMap")["data"]["gotel.yaml"])
    out = subprocess.run([str(GOTEL), "validate", "-c", str(config)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "valid" in out.stdout and "traces (goroutines -> filter -> sampler -> batch -> otlp)" \
        in out.stdout


def test_the_gateway_balances_traces_by_trace_id():
    gateway = REPO / "config" / "kubernetes" / "gotel-gateway.yaml"
    collector = yaml.safe_load(by_kind(gateway, "ConfigMap")["data"]["collector.yaml"])
    lb = collector["exporters"]["loadbalancing"]
    assert lb["routing_key"] == "traceID"
    pipelines = collector["service"]["pipelines"]
    assert pipelines["traces"]["exporters"] == ["loadbalancing"]
    assert pipelines["metrics"]["receivers"] == ["otlp"]
