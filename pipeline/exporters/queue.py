"""Sending queues of exporters, like the Collector's exporterhelper ``sending_queue``.

``sending_queue: {enabled, num_consumers, queue_size, storage}``: a bounded queue of export
requests between the pipeline thread and an exporter's worker threads, sized in requests. Without
``storage`` it lives in memory (``MemoryQueue``): what is queued when gotel stops is lost, and
counted. With ``storage: DIR`` it is a directory of files (``PersistentQueue``), one per request,
written to ``NAME.tmp``, fsync'd, renamed to ``SEQ.SIGNAL.COUNT.req`` and the directory fsync'd:
after a crash a request is either wholly there or absent. A request leaves the disk only once it
was delivered or refused for good, so what could not be sent survives an outage of any length
(within ``queue_size`` requests) and a restart of gotel, and is sent when the peer is back, oldest
first. Each exporter gets its own folder under DIR (its id, ``/`` written as ``-``), locked by one
gotel at a time.

Both queues: ``put(payload) -> bool`` never blocks (False: full); ``get(timeout) -> Item | None``;
then exactly one of ``ack(item)`` (done: delivered or dropped) or ``keep(item)`` (back to the head,
for later). Thread-safe.
"""

import collections
import dataclasses
import errno
import fcntl
import logging
import os
import re
import threading
from pathlib import Path

from receiver.errors import ConfigError

log = logging.getLogger("gotel.exporter")


@dataclasses.dataclass(frozen=True)
class QueueConfig:
    """sending_queue: the Collector's exporterhelper queue, sized in requests."""

    enabled: bool = True
    num_consumers: int = 10
    queue_size: int = 1000
    storage: str = ""          # a directory: the queue is kept on disk there (survives restarts)

    def validate(self):
        problems = []
        if self.num_consumers < 1:
            problems.append("num_consumers must be >= 1")
        if self.queue_size < 1:
            problems.append("queue_size must be >= 1")
        if self.storage:
            if not self.enabled:
                problems.append("storage needs enabled: true")
            path = Path(self.storage).expanduser()
            found = next((p for p in (path, *path.parents) if p.exists()), None)
            if found is not None and not found.is_dir():
                problems.append(f"storage: {found} is not a directory")
        return problems


class Item:
    """One queued request: its Payload and, for a persistent queue, its file."""

    __slots__ = ("payload", "path")

    def __init__(self, payload, path=None):
        self.payload = payload
        self.path = path


class MemoryQueue:
    """A bounded in-memory FIFO of payloads."""

    persistent = False
    where = "memory"

    def __init__(self, capacity):
        self.capacity = capacity
        self._items = collections.deque()
        self._in_flight = 0
        self._cond = threading.Condition()

    def put(self, payload):
        with self._cond:
            if len(self._items) >= self.capacity:
                return False
            self._items.append(self._store(payload))
            self._cond.notify()
            return True

    def _store(self, payload):
        return Item(payload)

    def get(self, timeout=None):
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            self._in_flight += 1
            item = self._items.popleft()
        return self._load(item)

    def _load(self, item):
        return item

    def ack(self, item):
        self._forget(item)
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def _forget(self, item):
        pass

    def keep(self, item):
        """Put an item back at the head, to be sent later (or left on disk at shutdown)."""
        with self._cond:
            self._in_flight -= 1
            item.payload = self._unload(item)
            self._items.appendleft(item)
            self._cond.notify_all()

    def _unload(self, item):
        return item.payload

    def qsize(self):
        """Requests waiting for a worker (those being sent are not counted, as in the Collector)."""
        with self._cond:
            return len(self._items)

    def idle(self):
        """Nothing queued and nothing being sent."""
        with self._cond:
            return not self._items and not self._in_flight

    def wait_idle(self, timeout=None):
        """Wait until idle (at most timeout); True if it is."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._items and not self._in_flight, timeout)

    def take_all(self):
        """Remove and return every queued item that no worker holds."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items

    def held(self):
        """{signal: (requests, items)} queued now (not those a worker holds)."""
        with self._cond:
            out = {}
            for item in self._items:
                r, n = out.get(item.payload.signal, (0, 0))
                out[item.payload.signal] = (r + 1, n + item.payload.count)
            return out

    def close(self):
        pass


_FILE = re.compile(r"^(\d{16})\.(traces|metrics)\.(\d+)\.req$")


class _Meta:
    """What a persistent item keeps in memory while its bytes are on disk."""

    __slots__ = ("signal", "count")

    def __init__(self, signal, count):
        self.signal = signal
        self.count = count


class PersistentQueue(MemoryQueue):
    """A bounded FIFO kept as one file per request in ``directory``; see the module docstring.
    In memory only the names are held; a request's bytes are read when a worker takes it."""

    persistent = True

    def __init__(self, capacity, directory, payload_type):
        super().__init__(capacity)
        self.payload_type = payload_type    # makes a request read back: (signal, data, count)
        self.directory = Path(directory).expanduser()
        self.where = str(self.directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.directory / ".lock", "a+")
        except OSError as e:
            raise ConfigError([f"sending_queue::storage: cannot use {self.directory}: "
                               f"{e.strerror or e}"]) from e
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._lock_file.close()
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError([f"sending_queue::storage: {self.directory} is in use by "
                                   f"another gotel; give each one its own storage"]) from None
            raise
        self._seq = 0
        self.recovered = (0, 0)         # requests and items found on disk at start
        self._recover()

    def _recover(self):
        found = []
        for entry in os.scandir(self.directory):
            if entry.name.endswith(".tmp"):
                os.unlink(entry.path)     # a write cut by a crash: never acknowledged to anyone
                continue
            m = _FILE.match(entry.name)
            if m is None:
                continue
            found.append((int(m.group(1)), m.group(2), int(m.group(3)), Path(entry.path)))
        found.sort()
        for seq, signal, count, path in found:
            self._items.append(Item(_Meta(signal, count), path))
            self._seq = seq + 1
        if found:
            self.recovered = (len(found), sum(f[2] for f in found))

    def _store(self, payload):
        name = f"{self._seq:016d}.{payload.signal}.{payload.count}"
        self._seq += 1
        tmp = self.directory / (name + ".tmp")
        final = self.directory / (name + ".req")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(payload.data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
        self._sync_dir()
        return Item(_Meta(payload.signal, payload.count), final)

    def _sync_dir(self):
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def put(self, payload):
        with self._cond:
            if len(self._items) >= self.capacity:
                return False
            try:
                item = self._store(payload)
            except OSError as e:
                log.error("sending queue in %s: cannot write a request (%s); dropped",
                          self.directory, e.strerror or e)
                return False
            self._items.append(item)
            self._cond.notify()
            return True

    def _load(self, item):
        meta = item.payload
        try:
            data = item.path.read_bytes()
        except OSError as e:
            log.error("sending queue in %s: cannot read %s (%s); skipped", self.directory,
                      item.path.name, e.strerror or e)
            data = b""
        return Item(self.payload_type(meta.signal, data, meta.count), item.path)

    def _unload(self, item):
        return _Meta(item.payload.signal, item.payload.count)

    def _forget(self, item):
        try:
            os.unlink(item.path)
        except FileNotFoundError:
            pass

    def take_all(self):
        return []          # they stay on disk

    def close(self):
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        finally:
            self._lock_file.close()


def storage_folder(storage, exporter_id):
    """The folder of one exporter's queue under a storage directory."""
    return Path(storage).expanduser() / re.sub(r"[^A-Za-z0-9_.-]", "-", exporter_id)


def create(config, exporter_id, payload_type):
    """The queue a QueueConfig asks for, or None when it is disabled (send on the caller's thread).
    ``payload_type(signal, data, count)`` makes the requests a queue on disk reads back."""
    if not config.enabled:
        return None
    if config.storage:
        return PersistentQueue(config.queue_size, storage_folder(config.storage, exporter_id),
                               payload_type)
    return MemoryQueue(config.queue_size)
