"""The local HTTP endpoint that opens a window of full tracing (``trigger_port``): ``POST /window``
(or GET) on 127.0.0.1 calls ``open_window("http")`` and answers 202; any other path is a 404."""

import http.server
import threading


def serve(port, open_window):
    """Start the endpoint on 127.0.0.1:``port`` (0: any free port) in a daemon thread; returns the
    server (``server_address[1]`` is its port; ``shutdown()`` and ``server_close()`` stop it)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802  (http.server's naming)
            if self.path.rstrip("/") != "/window":
                self.send_error(404, "POST /window opens a window of full tracing")
                return
            open_window("http")
            self.send_response(202)
            self.end_headers()
            self.wfile.write(b"window requested\n")

        do_GET = do_POST  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, name="gotel-trigger", daemon=True).start()
    return server
