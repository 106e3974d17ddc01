"""Running a Service from the command line: until its targets exit, a signal or a duration, then
flushing what was collected and printing the summary. SIGINT and SIGTERM stop tracing and flush;
a second one exits at once; SIGUSR1 opens a window of full tracing (receiver/levels.py)."""

import os
import signal
import sys
import threading
import time

from pipeline.service import Service

SHUTDOWN_TIMEOUT_S = 5.0


class Stopper:
    """SIGINT/SIGTERM set an event; a second signal exits at once (the files hold every export
    written so far: each is one complete line; ``on_exit`` runs first, e.g. to wait for a line
    being written)."""

    def __init__(self, on_exit=None):
        self.event = threading.Event()
        self.signal = None
        self.on_exit = on_exit
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.event.is_set():
            print(f"gotel: second {signal.Signals(signum).name}: stopping now, without draining; "
                  f"what was exported so far is in the output", file=sys.stderr)
            if self.on_exit is not None:
                try:
                    self.on_exit()
                except Exception:  # noqa: BLE001
                    pass
            os._exit(128 + signum)
        self.signal = signum
        self.event.set()

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run_service(cfg, duration=None, summary=True, out=sys.stdout, stopper=None):
    """Start a Service, run until the targets exit, a signal, or duration; flush; print the summary,
    then one line on stderr if data was lost (how much and why).

    Returns the Service (shut down); ``service.exit_status`` is what gotel should exit with: the
    launched command's own status when it ended by itself with one that is not 0 (128 + N when a
    signal N killed it), else 1 when data was lost, else 0."""
    service = Service(cfg)
    child_status = None
    with (stopper or Stopper(on_exit=service.abort)) as stop:
        service.start()
        source = getattr(service.receiver, "source", None)
        if hasattr(source, "open_window") and threading.current_thread() is threading.main_thread():
            # SIGUSR1 opens a window of full tracing (`gotel window --pid`, or kill -USR1).
            stop._old.setdefault(signal.SIGUSR1, signal.signal(
                signal.SIGUSR1, lambda signum, frame: source.open_window("signal")))
        deadline = None if duration is None else time.monotonic() + duration
        command = getattr(service.receiver, "command", None)
        try:
            while not stop.event.is_set() and not service.finished():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                stop.event.wait(0.1)
        finally:
            if command is not None:
                child_status = command.popen.poll()    # None: still running, gotel stops it
            service.shutdown(SHUTDOWN_TIMEOUT_S)
            if command is not None and command.popen.poll() is None and not command.keep_running:
                command.popen.terminate()
                try:
                    command.popen.wait(5)
                except Exception:  # noqa: BLE001
                    command.popen.kill()
    if summary:
        print(service.summary().render(), file=out)
    lost = service.losses()
    if lost:
        print(f"gotel: data lost: {'; '.join(lost)}", file=sys.stderr)
    service.exit_status = 1 if lost else 0
    if child_status:
        service.exit_status = child_status if child_status > 0 else 128 - child_status
    return service
