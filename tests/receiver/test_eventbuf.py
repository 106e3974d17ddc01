"""EventBufferReader over plain arrays laid out like the kernel's maps, written the way bpf/gotel.c's
claim() and commit() write them: every written event comes out once, in position order per CPU,
with its CPU filled in; a slot claimed but not written holds its CPU's later slots back; the tail
each CPU's writers check moves only past what was copied; events dated after a read began wait
for the next one. The same reader on the real kernel maps: tests/receiver/test_probes.py."""

import time

import numpy as np
import pytest

from receiver.eventbuf import POSITION_BYTES, EventBufferReader
from receiver.events import EVENT_DTYPE

CPUS, SLOTS = 2, 8


class Buffers:
    """The two maps and a writer per CPU following the kernel's protocol."""

    def __init__(self):
        self.events = np.zeros(CPUS * SLOTS, dtype=EVENT_DTYPE)
        self.heads = np.zeros(CPUS * POSITION_BYTES // 8, dtype="<u8")
        self.tails = np.zeros(CPUS * POSITION_BYTES // 8, dtype="<u8")
        self.reader = EventBufferReader.over(self.events, self.heads, self.tails, CPUS, SLOTS)

    def tail(self, cpu):
        return int(self.tails[cpu * POSITION_BYTES // 8])

    def claim(self, cpu):
        pos = int(self.heads[cpu * POSITION_BYTES // 8])
        if pos - self.tail(cpu) >= SLOTS:
            return None
        self.heads[cpu * POSITION_BYTES // 8] += 1
        return pos

    def commit(self, cpu, pos, goid, ts=None):
        slot = self.events[cpu * SLOTS + pos % SLOTS]
        slot["ts_ns"] = ts if ts is not None else time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        slot["goid"] = goid
        slot["cpu"] = ((pos // SLOTS) + 1) & 0xFFFF      # the lap tag, stored last

    def write(self, cpu, goid, ts=None):
        pos = self.claim(cpu)
        if pos is None:
            return False
        self.commit(cpu, pos, goid, ts)
        return True


def test_every_written_event_comes_out_once_with_its_cpu():
    b = Buffers()
    for i in range(5):
        b.write(0, 100 + i)
    b.write(1, 200)
    got = b.reader.read()
    assert sorted(got["goid"].tolist()) == [100, 101, 102, 103, 104, 200]
    assert dict(zip(got["goid"].tolist(), got["cpu"].tolist()))[200] == 1
    assert set(got[got["goid"] < 200]["cpu"].tolist()) == {0}
    assert len(b.reader.read()) == 0
    assert (b.tail(0), b.tail(1)) == (5, 1)


def test_positions_wrap_lap_after_lap():
    b = Buffers()
    seen = []
    for lap in range(5):
        for i in range(SLOTS):
            assert b.write(0, lap * SLOTS + i)
        assert not b.write(0, -1)          # full until read
        seen += b.reader.read()["goid"].tolist()
    assert seen == list(range(5 * SLOTS))


def test_a_run_across_the_end_of_the_buffer_comes_out_in_position_order():
    b = Buffers()
    for i in range(5):
        b.write(0, i)
    b.reader.read()
    for i in range(5, 11):                 # slots 5, 6, 7, then 0, 1, 2 of the next lap
        b.write(0, i)
    assert b.reader.read()["goid"].tolist() == list(range(5, 11))
    assert b.tail(0) == 11


def test_a_slot_of_the_lap_before_is_not_taken_for_a_new_one():
    b = Buffers()
    for i in range(SLOTS):
        b.write(0, i)
    assert len(b.reader.read()) == SLOTS
    # The next lap's first slot claimed, not yet written: it still holds lap 1's event and tag.
    pos = b.claim(0)
    assert len(b.reader.read()) == 0
    b.commit(0, pos, 99)
    assert b.reader.read()["goid"].tolist() == [99]


def test_a_claimed_slot_not_yet_written_holds_back_the_later_ones():
    b = Buffers()
    b.write(0, 1)
    preempted = b.claim(0)       # its writer was preempted between claim and commit
    b.write(0, 3)
    b.write(1, 7)
    assert sorted(b.reader.read()["goid"].tolist()) == [1, 7]
    assert b.tail(0) == 1        # the writers may not reuse the held slots
    b.commit(0, preempted, 2)
    assert b.reader.read()["goid"].tolist() == [2, 3]
    assert b.tail(0) == 3


def test_events_dated_after_a_read_began_wait_for_the_next_read():
    b = Buffers()
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    b.write(0, 1, ts=now - 1000)
    b.write(1, 2, ts=now + 60 * 10**9)      # as if written after this CPU's buffer was read
    assert b.reader.read()["goid"].tolist() == [1]
    assert b.reader.pending == 1
    assert b.tail(1) == 1                  # copied out: the slot is free again
    assert b.reader.read(everything=True)["goid"].tolist() == [2]
    assert b.reader.pending == 0


def test_a_new_reader_starts_where_the_last_one_stopped():
    b = Buffers()
    b.write(0, 1)
    b.reader.read()
    b.write(0, 2)
    again = EventBufferReader.over(b.events, b.heads, b.tails, CPUS, SLOTS)
    assert again.read()["goid"].tolist() == [2]


def test_slots_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        EventBufferReader.over(np.zeros(12, dtype=EVENT_DTYPE), np.zeros(16, "<u8"),
                               np.zeros(16, "<u8"), 2, 6)
