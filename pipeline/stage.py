"""The one contract every pipeline stage follows: consume(batch), tick(), start(), shutdown(timeout).

A stage's logic is the pure function ``process(batch) -> batch``; ``Stage`` counts items in and out
and forwards non-empty results to the next stage, which is passed in, never looked up. A deliberate
drop is an empty result (and a counter in the stage), never an exception. ``tick()`` is called
between batches, at least every poll interval, on the same thread: timers (a batch's timeout, the
end of an exited process's goroutines) fire there, so no stage needs a lock. Not thread-safe: the
pipeline is driven by one thread (the receiver's poller); exporters own their worker threads.

Every component is made by its module's ``create(settings, config, next)``: ``settings`` is a
``Settings`` (the component's id, and ``processes``, the one owner of per-process facts).
"""

import dataclasses
import time

from receiver.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the service hands every component besides its Config: its id as written in the YAML
    (``file/traces``) and ``processes`` (``receiver.processes.Processes``: names, resources,
    lifecycle of the traced processes)."""

    id: str
    processes: object = None


class Stage:
    """Base for pipeline stages: subclasses override process() and, if they buffer, flush().

    A stage with a ``config`` has it validated here (every problem in one ConfigError); the
    integer counters named in ``COUNTERS`` start at 0 and are reported by ``counters()``.
    """

    COUNTERS = ()

    def __init__(self, next_stage=None, config=None):
        if config is not None:
            problems = config.validate()
            if problems:
                raise ConfigError(problems)
            self.config = config
        self.next = next_stage
        self.items_in = 0
        self.items_out = 0
        for name in self.COUNTERS:
            setattr(self, name, 0)

    def counters(self):
        return {name: getattr(self, name) for name in self.COUNTERS}

    def start(self):
        if self.next is not None:
            self.next.start()

    def consume(self, batch):
        self.items_in += len(batch)
        out = self.process(batch)
        self.emit(out)

    def process(self, batch):
        return batch

    def tick(self):
        """Fire what is due (stages with timers override this, then call super().tick())."""
        if self.next is not None:
            self.next.tick()

    def flush(self):
        """Return what the stage still holds (at shutdown); stages that buffer override this."""
        return None

    def shutdown(self, timeout=5.0):
        """Flush what is held, then shut the next stage down within what is left of timeout."""
        deadline = time.monotonic() + timeout
        self.emit(self.flush())
        if self.next is not None:
            self.next.shutdown(max(0.0, deadline - time.monotonic()))

    def emit(self, out):
        """Hand a non-empty batch to the next stage (also for what a stage produces outside
        consume(), e.g. spans of a process that exited)."""
        if out is not None and len(out) and self.next is not None:
            self.items_out += len(out)
            self.next.consume(out)


class Fork(Stage):
    """Hands every batch to several stages (one per traces pipeline)."""

    def __init__(self, stages):
        super().__init__(None)
        self.stages = list(stages)

    def start(self):
        for s in self.stages:
            s.start()

    def consume(self, batch):
        self.items_in += len(batch)
        for s in self.stages:
            s.consume(batch)

    def tick(self):
        for s in self.stages:
            s.tick()

    def shutdown(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        for s in self.stages:
            s.shutdown(max(0.0, deadline - time.monotonic()))


class Discard(Stage):
    """The end of the span path when no traces pipeline is configured."""

    def consume(self, batch):
        self.items_in += len(batch)
