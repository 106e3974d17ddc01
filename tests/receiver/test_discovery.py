"""Discovery by rules, and following what changes under the targets, on real processes: Go programs
under different names, paths, cgroups (made by the test, Kubernetes-shaped) and PID namespaces
(``unshare``), a non-Go process, a binary replaced by ``mv`` and a process that ``exec``s another
program. Exactly the selected processes are traced, with the platform's attributes."""

import os
import shutil
import subprocess
import time
import uuid

import pytest

from conftest import wait_for

from collect import Collect, untraced
from receiver import discovery, platform
from receiver.discovery import Candidate, Rules, selects
from receiver.events import Kind
from receiver.processes import Processes
from receiver.receiver import Config, GoroutineReceiver

CGROUP_ROOT = "/sys/fs/cgroup/pids"




def held(argv, **kw):
    return subprocess.Popen([str(a) for a in argv], env={"WAIT_STDIN": "1"}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# --- rules and cgroup shapes, no kernel needed ----------------------------------------------------
def test_rules_need_every_kind_given_and_no_exclusion():
    c = Candidate(7, exe="/srv/api-server", name="api-server", cmdline="/srv/api-server -port 80",
                  cgroups=("/kubepods/burstable/podx/abc",), namespace="shop", pod="api-7f9")
    assert selects(Rules(exe_paths=("*/api-*",)), c)
    assert selects(Rules(exe_paths=("*/api-*",), k8s_namespaces=("shop", "pay")), c)
    assert not selects(Rules(exe_paths=("*/api-*",), k8s_namespaces=("pay",)), c)
    assert not selects(Rules(cmdlines=(r"-port \d+",), exclude_names=("api-*",)), c)
    assert selects(Rules(cmdlines=(r"-port \d+",), cgroups=("/kubepods/*",)), c)
    assert Rules(enabled=True).validate() == [
        "receivers::goroutines::discovery: give at least one criterion (exe_paths, names, "
        "cmdlines, cgroups, containers, k8s_namespaces, k8s_pods)"]
    assert Rules(cmdlines=("(",)).validate()[0].startswith(
        "receivers::goroutines::discovery::cmdlines: '(' is not a regular expression")


CID = "a" * 64
UID = "0d4f1c2e-3b5a-4c6d-8e9f-0a1b2c3d4e5f"


@pytest.mark.parametrize("path", [
    f"/docker/{CID}",
    f"/kubepods/burstable/pod{UID}/{CID}",
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice/"
    f"cri-containerd-{CID}.scope",
    f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{CID}.scope",
])
def test_container_and_pod_from_the_cgroup_path(path):
    container, pod = platform.container_of([path])
    assert container == CID
    assert pod == ("" if path.startswith("/docker") else UID)


def test_no_container_on_a_plain_host():
    assert platform.container_of(["/user.slice/user-0.slice/session-1.scope", "/"]) == ("", "")


# --- real processes ---------------------------------------------------------------------------------
@pytest.fixture
def pod_cgroup():
    """A Kubernetes-shaped cgroup (v1 pids hierarchy) to put processes in; removed after."""
    pod_uid, container = str(uuid.uuid4()), uuid.uuid4().hex + uuid.uuid4().hex
    path = f"/kubepods/burstable/pod{pod_uid}/{container}"
    full = CGROUP_ROOT + path
    os.makedirs(full)
    yield full, path, pod_uid, container
    for d in (full, os.path.dirname(full), CGROUP_ROOT + "/kubepods/burstable",
              CGROUP_ROOT + "/kubepods"):
        try:
            os.rmdir(d)
        except OSError:
            pass


@pytest.mark.bpf
def test_discovery_traces_exactly_the_selected_processes(require_bpf, go_build, tmp_path,
                                                          pod_cgroup):
    spawner = go_build("spawner", "1.25")
    for name in ("api-server", "batch-worker", "api-admin"):
        shutil.copy(spawner, tmp_path / name)
    cg_full, cg_path, pod_uid, container = pod_cgroup
    api = held([tmp_path / "api-server", 30])
    worker = held([tmp_path / "batch-worker", 30])                 # not selected: another name
    admin = held([tmp_path / "api-admin", 30])                     # excluded by name
    sleeper = subprocess.Popen(["sleep", "60"])                    # not Go
    in_pod = held([tmp_path / "batch-worker", 40, "pod"])          # selected by its cgroup
    with open(f"{cg_full}/cgroup.procs", "w") as f:
        f.write(str(in_pod.pid))
    # A Go program in its own PID namespace (as in a container): its PID there is 1 or 2.
    in_ns = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", str(tmp_path / "api-server"),
                              "50"], env={"WAIT_STDIN": "1"}, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rules = Rules(enabled=True, exe_paths=(f"{tmp_path}/api-*",), exclude_names=("api-admin",),
                  interval_s=0.2)
    rules_pod = Rules(enabled=True, cgroups=("/kubepods/*",), interval_s=0.2)
    sink, sink_pod = Collect(), Collect()
    rx = GoroutineReceiver(Config(discovery=rules), sink)
    rx_pod = GoroutineReceiver(Config(discovery=rules_pod), sink_pod, registry=Processes())
    procs = (api, worker, admin, in_pod)
    try:
        assert wait_for(lambda: os.path.exists(f"/proc/{in_ns.pid}/task"))
        time.sleep(0.3)                                            # unshare forks the program
        rx.start()
        rx_pod.start()
        ns_child = [p for p in _children(in_ns.pid)]
        assert wait_for(lambda: api.pid in rx.registry and any(p in rx.registry for p in ns_child)
                        and in_pod.pid in rx_pod.registry)
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        in_ns.stdin.write("go\n")
        in_ns.stdin.flush()
        outs = [p.communicate(timeout=60) for p in (*procs, in_ns)]
        traced = {p.pid for p in rx.registry}
        assert api.pid in traced and not traced & {worker.pid, admin.pid, sleeper.pid, in_pod.pid}
        assert {p.pid for p in rx_pod.registry} == {in_pod.pid}
        assert rx.discovery.last_scan_s < 1.0 and rx.discovery.scans >= 1
        # The pod's process: container.id and k8s.pod.uid from its cgroup.
        attrs = rx_pod.registry.describe(in_pod.pid)
        assert attrs["container.id"] == container and attrs["k8s.pod.uid"] == pod_uid
        # The namespaced one: process.pid as it sees itself, the host's PID beside it.
        (host_pid,) = [p for p in ns_child if p in rx.registry]
        attrs = rx.registry.describe(host_pid)
        assert attrs["gotel.process.host_pid"] == host_pid and attrs["process.pid"] in (1, 2)
    finally:
        rx.shutdown()
        rx_pod.shutdown()
        for p in (*procs, in_ns, sleeper):
            p.kill()
            p.wait()
    assert (api.returncode, *outs[0]) == untraced(tmp_path / "api-server", 30)
    ev = sink.events
    assert (ev[(ev["pid"] == api.pid) & (ev["kind"] == Kind.CREATE)]).size >= 30
    assert (ev[(ev["pid"] == host_pid) & (ev["kind"] == Kind.CREATE)]).size >= 50
    assert not (sink.events["pid"] == worker.pid).any()


def _children(pid):
    try:
        text = open(f"/proc/{pid}/task/{pid}/children").read()
    except OSError:
        return []
    return [int(x) for x in text.split()]


@pytest.mark.bpf
def test_a_binary_replaced_by_mv_is_still_traced(require_bpf, go_build, tmp_path):
    deploy = tmp_path / "srv"
    shutil.copy(go_build("spawner", "1.25"), deploy)
    sink = Collect()
    rx = GoroutineReceiver(Config(paths=(str(deploy),)), sink).start()
    try:
        first = held([deploy, 20])
        first.communicate("go\n", timeout=60)
        new = tmp_path / "srv.new"
        shutil.copy(go_build("spawner", "1.21"), new)
        os.rename(new, deploy)                                    # a deploy: new inode, same path
        assert wait_for(lambda: len(rx._path_targets) == 2)
        second = held([deploy, 25])
        assert wait_for(lambda: second.pid in rx.registry)     # adopted while it starts
        out = second.communicate("go\n", timeout=60)
    finally:
        rx.shutdown()
    assert (second.returncode, *out) == untraced(deploy, 25)
    assert rx.registry.get(second.pid).binary.go_version.startswith("go1.21")
    ev = sink.events
    assert (ev[(ev["pid"] == second.pid) & (ev["kind"] == Kind.CREATE)]).size >= 25


@pytest.mark.bpf
def test_a_process_that_execs_another_program_is_followed(require_bpf, go_build):
    execer, spawner = go_build("execer", "1.25"), go_build("spawner", "1.23")
    # execer waits for a line, then execs spawner, which (WAIT_STDIN) waits for another.
    proc = held([execer, spawner, 30])
    sink = Collect()
    try:
        rx = GoroutineReceiver(Config(pids=(proc.pid,)), sink).start()
        try:
            before = rx.registry.get(proc.pid)
            assert before.binary.go_version.startswith("go1.25")
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert wait_for(lambda: rx.registry.get(proc.pid) is not before)
            after = rx.registry.get(proc.pid)
            out = proc.communicate("go\n", timeout=60)
            assert wait_for(lambda: not rx.registry.get(proc.pid).alive)
        finally:
            rx.shutdown()
    finally:
        proc.kill()
        proc.wait()
    assert after.binary.go_version.startswith("go1.23") and after.exe == str(spawner)
    assert (proc.returncode, *out) == untraced(spawner, 30)
    ev = sink.events
    creates = ev[(ev["pid"] == proc.pid) & (ev["kind"] == Kind.CREATE)]
    assert creates.size >= 30                 # spawner's workers, after the exec


def test_discovery_ignores_non_go_processes_and_counts_them():
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        d = discovery.Discovery(Rules(enabled=True, names=("sleep",)))
        assert d.scan() == [] and d.not_go >= 1
    finally:
        sleeper.kill()
        sleeper.wait()


def test_pod_names_from_a_pod_list_served_over_http(pod_cgroup):
    """No Kubernetes runs here: a local HTTP server serves a PodList shaped like the API's (and the
    kubelet's /pods), and the index is pointed at it."""
    import http.server
    import json
    import threading

    from receiver.processes import Process
    from receiver.targets import Target

    cg_full, _path, pod_uid, container = pod_cgroup
    body = json.dumps({"kind": "PodList", "items": [{
        "metadata": {"name": "checkout-7d9f", "namespace": "shop", "uid": pod_uid},
        "spec": {"nodeName": "node-3"},
        "status": {"containerStatuses": [{"name": "app", "containerID": f"containerd://{container}"}]},
    }]}).encode()
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        with open(f"{cg_full}/cgroup.procs", "w") as f:
            f.write(str(sleeper.pid))
        pods = platform.PodIndex(f"http://127.0.0.1:{server.server_port}/pods", token="t0k")
        reg = Processes(host_name="h", pods=pods)
        reg.add(Process.found(sleeper.pid, None, Target.pid(sleeper.pid)))
        attrs = reg.describe(sleeper.pid)
        assert attrs["k8s.pod.name"] == "checkout-7d9f" and attrs["k8s.namespace.name"] == "shop"
        assert attrs["k8s.container.name"] == "app" and attrs["k8s.node.name"] == "node-3"
        assert attrs["container.id"] == container and seen == ["Bearer t0k"]
        c = discovery.inspect(sleeper.pid, pods)
        assert (c.namespace, c.pod) == ("shop", "checkout-7d9f")
        assert selects(Rules(k8s_namespaces=("shop",), k8s_pods=("checkout-*",)), c)
    finally:
        server.shutdown()
        sleeper.kill()
        sleeper.wait()
