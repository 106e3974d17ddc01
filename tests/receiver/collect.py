"""Helpers for receiver tests: a sink stage that keeps every batch, and a traced run of a Go program."""

import subprocess

import numpy as np

from receiver.events import EVENT_DTYPE


class Collect:
    """The last stage of a test pipeline: keeps each batch it is given (thread-safe enough: the
    receiver's poller is the only caller of consume)."""

    def __init__(self):
        self.batches = []
        self.started = self.shut = False

    def start(self):
        self.started = True

    def consume(self, batch):
        assert batch.dtype == EVENT_DTYPE
        self.batches.append(batch)

    def shutdown(self, timeout=5.0):
        self.shut = True

    @property
    def events(self):
        """Every event so far. Merges only the batches that came since the last call: tests poll
        this in loops, and re-joining millions of events each time would starve the poller."""
        merged = getattr(self, "_merged", None)
        if merged is None:
            merged = self._merged = [np.zeros(0, EVENT_DTYPE), 0]
        if merged[1] < len(self.batches):
            new = self.batches[merged[1]:]
            merged[0] = np.concatenate([merged[0], *new])
            merged[1] += len(new)
        return merged[0]


class Sink:
    """The last stage of a test pipeline of any kind of batch (events or spans): keeps a copy of
    each."""

    def __init__(self):
        self.batches = []

    def consume(self, batch):
        self.batches.append(batch.copy())

    def start(self):
        pass

    def shutdown(self, timeout=None):
        pass

    def events(self):
        return np.concatenate(self.batches) if self.batches else np.zeros(0)


def untraced(binary, *args, env=None, timeout=60):
    """(exit code, stdout, stderr) of a plain run, to compare traced runs with."""
    p = subprocess.run([str(binary), *map(str, args)], env=env, capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def start_held(binary, *args):
    """A Go program (tests/go/spawner or oracle) that waits for a line on stdin before it starts."""
    return subprocess.Popen([str(binary), *map(str, args)], env={"WAIT_STDIN": "1"},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
