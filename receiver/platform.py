"""Where a process runs, as the platform names it: its container, its Kubernetes pod, its own PIDs.

Read from ``/proc/PID/cgroup`` (v1 and v2), ``/proc/PID/status`` (``NSpid``) and, for pod names,
from the Kubernetes API when gotel runs in a cluster (``KUBERNETES_SERVICE_HOST`` and a service
account token) or a kubelet's pod list when one is given; otherwise only what the cgroup gives
(``container.id``, ``k8s.pod.uid``). Attribute names follow OpenTelemetry's semantic conventions,
as the Collector's k8sattributes processor and the kubelet receiver use them.

Container runtimes write the container id as the last 64-hex-digit part of the cgroup path, in one
of a few shapes: ``/docker/<id>``, ``/kubepods/burstable/pod<uid>/<id>``,
``/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/
cri-containerd-<id>.scope`` (also ``docker-``, ``crio-``, ``libpod-``). Cost: two small /proc reads
per process, once, when it is registered.
"""

import json
import logging
import os
import re
import ssl
import urllib.request
from pathlib import Path

log = logging.getLogger("gotel.platform")

_CONTAINER = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?$")
_POD = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})")
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def cgroup_paths(pid):
    """The cgroup paths of a process, v2's first ("" when it cannot be read)."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return []
    paths = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2] not in paths:
            (paths.insert(0, parts[2]) if parts[0] == "0" else paths.append(parts[2]))
    return paths


def container_of(cgroups):
    """(container id, pod uid) found in cgroup paths; "" for what is not there."""
    container = pod = ""
    for path in cgroups:
        for part in reversed(path.split("/")):
            m = _CONTAINER.search(part)
            if m and not container:
                container = m.group(1)
            p = _POD.search(part)
            if p and not pod:
                pod = p.group(1).replace("_", "-")
    return container, pod


def namespace_pids(pid):
    """The PIDs of a process from the host's namespace to its own (``NSpid``), [pid] if flat."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return [pid]


def describe(pid, pods=None):
    """Platform attributes of a process: container.id, k8s.pod.uid, and from ``pods`` (a PodIndex)
    k8s.pod.name, k8s.namespace.name, k8s.container.name, k8s.node.name; the process's own PID
    when it lives in another PID namespace."""
    attrs = {}
    container, pod_uid = container_of(cgroup_paths(pid))
    if container:
        attrs["container.id"] = container
    if pod_uid:
        attrs["k8s.pod.uid"] = pod_uid
        if pods is not None:
            attrs.update(pods.attributes(pod_uid, container))
    ns = namespace_pids(pid)
    if len(ns) > 1:
        attrs["gotel.process.pid_in_namespace"] = ns[-1]
    return attrs


class PodIndex:
    """Pods of this node by uid, from the Kubernetes API or a kubelet's ``/pods`` (a PodList either
    way), refreshed at most every ``ttl_s``. Unreachable: logged once, attributes stay what the
    cgroup gives."""

    def __init__(self, url, token=None, ca_file=None, node_name="", ttl_s=30.0, clock=None):
        import time

        self.url = url
        self.token = token
        self.ca_file = ca_file
        self.node_name = node_name
        self.ttl_s = ttl_s
        self.clock = clock or time.monotonic
        self._pods = {}
        self._fetched = None
        self._warned = False

    @classmethod
    def from_environment(cls, env=None):
        """The in-cluster API (service account) when gotel runs in a pod, else None."""
        env = os.environ if env is None else env
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
        token_file = SERVICE_ACCOUNT / "token"
        if not host or not token_file.exists():
            return None
        node = env.get("NODE_NAME", "")
        selector = f"?fieldSelector=spec.nodeName%3D{node}" if node else ""
        return cls(f"https://{host}:{port}/api/v1/pods{selector}", token_file.read_text().strip(),
                   str(SERVICE_ACCOUNT / "ca.crt"), node)

    def _refresh(self):
        now = self.clock()
        if self._fetched is not None and now - self._fetched < self.ttl_s:
            return
        self._fetched = now
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        context = None
        if self.url.startswith("https"):
            context = ssl.create_default_context(cafile=self.ca_file if self.ca_file else None)
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                items = json.loads(response.read()).get("items") or []
        except (OSError, ValueError) as e:
            if not self._warned:
                self._warned = True
                log.warning("pod names unavailable from %s (%s); container.id and k8s.pod.uid "
                            "still come from cgroups", self.url, e)
            return
        pods = {}
        for item in items:
            meta, spec = item.get("metadata") or {}, item.get("spec") or {}
            uid = meta.get("uid")
            if not uid:
                continue
            containers = {}
            for st in (item.get("status") or {}).get("containerStatuses") or []:
                cid = (st.get("containerID") or "").rpartition("://")[2]
                if cid:
                    containers[cid] = st.get("name", "")
            pods[uid] = {"name": meta.get("name", ""), "namespace": meta.get("namespace", ""),
                         "node": spec.get("nodeName", ""), "containers": containers}
        self._pods = pods

    def attributes(self, pod_uid, container_id=""):
        self._refresh()
        pod = self._pods.get(pod_uid)
        if pod is None:
            return {}
        attrs = {"k8s.pod.name": pod["name"], "k8s.namespace.name": pod["namespace"]}
        if pod["node"] or self.node_name:
            attrs["k8s.node.name"] = pod["node"] or self.node_name
        name = pod["containers"].get(container_id)
        if name:
            attrs["k8s.container.name"] = name
        return {k: v for k, v in attrs.items() if v}

    def namespace_and_name(self, pod_uid):
        """(namespace, pod name) of a pod uid, ("", "") when unknown."""
        self._refresh()
        pod = self._pods.get(pod_uid) or {}
        return pod.get("namespace", ""), pod.get("name", "")
