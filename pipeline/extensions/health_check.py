"""Health check extension (type ``health_check``): liveness and readiness over HTTP, like the
Collector's health_check extension, for Kubernetes probes.

- ``GET /healthz``: 200 while gotel runs (the process answers).
- ``GET /readyz``: 200 once the receiver has attached (probes in place) and the exporters have
  started; 503 before that, during shutdown, and while any exporter has failed every send for
  longer than ``exporter_failure_threshold`` (a Collector that has been unreachable that long).
  The body is JSON: ``{"status": ..., "problems": [...]}`` naming what is not ready.

Served by one daemon thread on ``endpoint`` (default ``localhost:13133``, the Collector's port; port
0 picks a free one, see ``port``). The host (the Service) is only asked for ``health_state()``:
``{"attached": bool, "exporters": {id: seconds failing or None}}``.
"""

import dataclasses
import http.server
import json
import socketserver
import threading

from receiver.errors import ConfigError

TYPE = "health_check"
SIGNALS = ()            # an extension serves no pipeline


@dataclasses.dataclass(frozen=True)
class Config:
    endpoint: str = "localhost:13133"
    exporter_failure_threshold: float = dataclasses.field(default=30.0, metadata={"duration": "s"})

    def validate(self):
        problems = []
        host, sep, port = self.endpoint.strip().rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            problems.append(f"endpoint must be host:port (e.g. localhost:13133), not {self.endpoint!r}")
        if self.exporter_failure_threshold <= 0:
            problems.append("exporter_failure_threshold must be > 0")
        return problems


class HealthCheck:
    """Serves /healthz and /readyz for a host that has ``health_state()``."""

    def __init__(self, name, config):
        self.name = name
        self.config = config
        self.host = None
        self._server = None
        self._thread = None

    @property
    def port(self):
        return self._server.server_address[1] if self._server else None

    def readiness(self):
        """(ready, problems) from the host's state and the failure threshold."""
        try:
            state = self.host.health_state()
        except Exception as e:  # noqa: BLE001  (a probe must answer, not crash)
            return False, [f"health state unavailable: {type(e).__name__}: {e}"]
        problems = []
        if not state.get("attached"):
            problems.append("receiver not attached")
        for eid, failing in sorted(state.get("exporters", {}).items()):
            if failing is not None and failing > self.config.exporter_failure_threshold:
                problems.append(f"exporter {eid} failing for {failing:.0f}s")
        return not problems, problems

    def start(self, host):
        """Serve, asking ``host.health_state()`` (the Service) for readiness."""
        self.host = host
        if self._server is not None:
            return
        check = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                path = self.path.split("?")[0]
                if path == "/healthz":
                    code, body = 200, {"status": "alive"}
                elif path == "/readyz":
                    ready, problems = check.readiness()
                    code = 200 if ready else 503
                    body = {"status": "ready" if ready else "not ready", "problems": problems}
                else:
                    code, body = 404, {"status": "unknown path; use /healthz or /readyz"}
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        host, _, port = self.config.endpoint.strip().rpartition(":")
        try:
            self._server = Server((host.strip("[]") or "0.0.0.0", int(port)), Handler)
        except OSError as e:
            raise ConfigError([f"extensions::{self.name}::endpoint: cannot listen on "
                               f"{self.config.endpoint}: {e.strerror or e}; choose another "
                               "endpoint"]) from e
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name=f"gotel-health-{self.name}", daemon=True)
        self._thread.start()

    def shutdown(self, timeout=5.0):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def create(settings, config, next_stage=None):
    return HealthCheck(settings.id, config)
