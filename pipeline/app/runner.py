"""Running a Service from the command line: until its targets exit, a signal or a duration, then
flushing what was collected and printing the summary. SIGINT and SIGTERM stop tracing and flush;
a second one exits at once."""

import os
import signal
import sys
import threading
import time

from pipeline.service import Service

SHUTDOWN_TIMEOUT_S = 5.0


class Stopper:
    """SIGINT/SIGTERM set an event; a second signal exits at once."""

    def __init__(self):
        self.event = threading.Event()
        self.signal = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.event.is_set():
            os._exit(128 + signum)
        self.signal = signum
        self.event.set()

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_service(cfg, duration=None, summary=True, out=sys.stdout, stopper=None):
    """Start a Service, run until the targets exit, a signal, or duration; flush; print the summary.

    Returns the Service (shut down)."""
    service = Service(cfg)
    with (stopper or Stopper()) as stop:
        service.start()
        deadline = None if duration is None else time.monotonic() + duration
        try:
            while not stop.event.is_set() and not service.finished():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                stop.event.wait(0.1)
        finally:
            command = getattr(service.receiver, "command", None)
            service.shutdown(SHUTDOWN_TIMEOUT_S)
            if command is not None and command.popen.poll() is None:
                command.popen.terminate()
                try:
                    command.popen.wait(5)
                except Exception:  # noqa: BLE001
                    command.popen.kill()
    if summary:
        print(service.summary().render(), file=out)
    return service
