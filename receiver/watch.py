"""Following: how the receiver keeps up with what changes under its targets, on its watcher thread.

A mixin of ``receiver.receiver.GoroutineReceiver`` (which owns every attribute used here): every
``check_interval`` a process that exec'd another program is traced as that program (or dropped,
with a line saying so, when it is not Go) and a binary target whose file was replaced (a deploy's
``mv``: a new inode) is traced in its new file too; every discovery ``interval`` /proc is scanned
for new processes the rules select (receiver/discovery.py). Attaching takes tens of ms a process
and detaching 0.1 s: done on this thread, the poller keeps draining the ring meanwhile.
"""

import logging
import os
import time

from receiver import targets
from receiver.errors import GotelError

log = logging.getLogger("gotel.receiver")


class Following:
    """The watcher thread's work (see the module docstring)."""

    def _watch(self):
        """Every check interval: follow execs and replaced binaries; every discovery interval: scan
        for new processes. Attaching takes tens of ms a process and detaching 0.1 s: done here,
        the poller keeps draining the ring meanwhile."""
        while not self._stop.wait(self.config.check_interval_s):
            try:
                self._follow()
                if self.discovery is not None and time.monotonic() >= self._next_scan:
                    self._discover()
            except Exception:  # noqa: BLE001  (a bad /proc read must not end the watching)
                log.exception("watching the targets failed; trying again")

    def _discover(self):
        """Attach to the processes the discovery rules select that are not traced yet."""
        traced = {p.pid for p in self.registry.alive()} | self._retiring
        for pid in self.discovery.scan(skip=traced):
            try:
                self._attach_pid(targets.Target("discovered", pid), pid)
            except GotelError as e:          # gone, or refused: the others go on
                log.info("discovered process %d not traced: %s", pid, e)
        self._next_scan = time.monotonic() + self.config.discovery.interval_s

    def _follow(self):
        """Follow what changed under the targets: a process that exec'd another program is traced
        as that program (or dropped, said, when it is not Go); a binary target whose file was
        replaced (a deploy's ``mv``: a new inode) is traced in its new file too."""
        for proc in self.registry.alive():
            if proc.popen is not None or proc.pid in self._retiring:
                continue
            now = targets.exe_identity(proc.pid)
            if now is None or proc.exe_id is None or now == proc.exe_id:
                continue
            self.levels.remove(proc.pid)       # every probe of the old program, whatever its level
            proc.attachment = None
            self.registry.mark_exited(proc.pid)
            try:
                new = self._attach_pid(proc.target, proc.pid)
                log.info("process %d exec'd %s; tracing it as that program", proc.pid, new.exe)
            except GotelError as e:
                log.warning("process %d exec'd another program and is no longer traced: %s",
                            proc.pid, e)
        for target, _binary, _att, ident in list(self._path_targets):
            try:
                st = os.stat(target.value)
            except OSError:
                continue                               # removed: its running processes go on
            now = (st.st_dev, st.st_ino)
            if now == ident or any(t[3] == now for t in self._path_targets):
                continue
            try:
                binary = targets.open_binary(target.value)
                att = self._add_path_unit(binary)
            except GotelError as e:
                log.warning("%s was replaced by a file gotel cannot trace: %s", target.value, e)
                self._path_targets.append((target, None, None, now))
                continue
            self._path_targets.append((target, binary, att, now))
            log.info("%s was replaced (new inode); tracing the new file too", target.value)
