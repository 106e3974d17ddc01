"""RingBufferReader: committed records come out once, in order, as one array per read; BUSY records
stop a read and DISCARDed ones are skipped; the consumer position advances; wrap-around works.

The record logic is checked on plain arrays laid out like the kernel's mapping, then the same
reader runs against a real BPF ring buffer fed by a uprobe on a real Go process.
"""

import subprocess
import threading

import numpy as np
import pytest

from receiver.ringbuf import BUSY_BIT, DISCARD_BIT, HEADER_SIZE, RingBufferReader, record_size

SEQ_DTYPE = np.dtype([("seq", "<u8"), ("cpu", "<u8")])
RING = 4096


class FakeRing:
    """The kernel's side of a ring: positions and a data area mapped twice (both halves written)."""

    def __init__(self, size=RING, dtype=SEQ_DTYPE):
        self.size, self.dtype = size, dtype
        self.consumer = np.zeros(1, dtype="<u8")
        self.producer = np.zeros(1, dtype="<u8")
        self.data = np.zeros(2 * size, dtype=np.uint8)
        self.reader = RingBufferReader.over(self.consumer, self.producer, self.data, size, dtype)

    def _write(self, pos, raw):
        for base in (0, self.size):
            start = base + (pos & (self.size - 1))
            n = min(len(raw), 2 * self.size - start)
            self.data[start:start + n] = np.frombuffer(raw[:n], dtype=np.uint8)
        if (pos & (self.size - 1)) + len(raw) > self.size:   # the wrapped tail, at the start
            head = self.size - (pos & (self.size - 1))
            self.data[:len(raw) - head] = np.frombuffer(raw[head:], dtype=np.uint8)

    def reserve(self, seq, flags=BUSY_BIT, payload_size=None):
        size = payload_size or self.dtype.itemsize
        pos = int(self.producer[0])
        rec = bytearray(record_size(size))
        rec[0:4] = (size | flags).to_bytes(4, "little")
        rec[HEADER_SIZE:HEADER_SIZE + 8] = seq.to_bytes(8, "little")
        self._write(pos, bytes(rec))
        self.producer[0] = pos + len(rec)
        return pos

    def commit(self, pos, flags=0):
        hdr = self.data[pos & (self.size - 1):][:4].view("<u4")[0] & ~np.uint32(BUSY_BIT | DISCARD_BIT)
        self._write(pos, (int(hdr) | flags).to_bytes(4, "little"))

    def push(self, seq, flags=0):
        self.commit(self.reserve(seq), flags)


def test_committed_records_come_out_once_in_order():
    ring = FakeRing()
    for seq in range(10):
        ring.push(seq)
    out = ring.reader.read()
    assert out.dtype == SEQ_DTYPE and out["seq"].tolist() == list(range(10))
    assert int(ring.consumer[0]) == int(ring.producer[0]) == 10 * record_size(16)
    assert len(ring.reader.read()) == 0


def test_busy_record_ends_the_read_and_is_picked_up_later():
    ring = FakeRing()
    ring.push(0)
    busy = ring.reserve(1)
    ring.push(2)
    assert ring.reader.read()["seq"].tolist() == [0]
    ring.commit(busy)
    assert ring.reader.read()["seq"].tolist() == [1, 2]


def test_discarded_records_are_skipped_but_consumed():
    ring = FakeRing()
    for seq in range(6):
        ring.push(seq, DISCARD_BIT if seq % 2 else 0)
    assert ring.reader.read()["seq"].tolist() == [0, 2, 4]
    assert int(ring.consumer[0]) == int(ring.producer[0])
    assert ring.reader.records_read == 3


def test_wraps_around_the_ring_many_times():
    ring = FakeRing()
    per_round = RING // record_size(16) // 2 + 3        # not a divisor: records straddle the end
    seen = []
    for r in range(20):
        for i in range(per_round):
            ring.push(r * per_round + i)
        seen += ring.reader.read()["seq"].tolist()
    assert seen == list(range(20 * per_round))


def test_records_of_another_size_take_the_slow_path():
    ring = FakeRing()
    ring.push(0)
    ring.commit(ring.reserve(1, payload_size=24))        # someone else's record: skipped
    ring.push(2)
    assert ring.reader.read()["seq"].tolist() == [0, 2]
    assert int(ring.consumer[0]) == int(ring.producer[0])


SEQUENCED = r"""
#include <uapi/linux/ptrace.h>
struct rec { u64 seq; u64 cpu; };
BPF_RINGBUF_OUTPUT(ring, RING_PAGES);
BPF_ARRAY(state, u64, 2);   /* [0] next sequence number, [1] reserve failures */

int on_casgstatus(struct pt_regs *ctx) {
    int k0 = 0, k1 = 1;
    u64 *next = state.lookup(&k0), *lost = state.lookup(&k1);
    if (!next || !lost)
        return 0;
    u64 seq = __sync_fetch_and_add(next, 1);
    struct rec *r = ring.ringbuf_reserve(sizeof(struct rec));
    if (!r) {
        __sync_fetch_and_add(lost, 1);
        return 0;
    }
    r->seq = seq;
    r->cpu = bpf_get_smp_processor_id();
    if (seq % 3 == 0)
        ring.ringbuf_discard(r, BPF_RB_NO_WAKEUP);
    else
        ring.ringbuf_submit(r, seq % 64 == 0 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
    return 0;
}
"""


@pytest.mark.bpf
def test_real_ring_buffer_from_a_go_process(require_bpf, go_build):
    """A small (16 KiB) kernel ring wraps many times while a uprobe fills it; every record comes
    out exactly once, discarded ones never, and anything missing is counted as a reserve failure."""
    from bcc import BPF

    binary = go_build("spawner", "1.25")
    bpf = BPF(text=SEQUENCED, cflags=["-DRING_PAGES=4"])
    reader = RingBufferReader(bpf["ring"].map_fd, SEQ_DTYPE)
    proc = subprocess.Popen([str(binary), "3000"], env={"WAIT_STDIN": "1"}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    batches, done = [], threading.Event()

    def poll():
        while not done.is_set():
            batches.append(reader.poll(0.001))
        batches.append(reader.read())

    poller = threading.Thread(target=poll)
    try:
        bpf.attach_uprobe(name=str(binary), sym="runtime.casgstatus", fn_name="on_casgstatus",
                          pid=proc.pid)
        poller.start()
        out, _ = proc.communicate("go\n", timeout=60)
        done.set()
        poller.join(10)
        total = bpf["state"][bpf["state"].Key(0)].value
        lost = bpf["state"][bpf["state"].Key(1)].value
    finally:
        done.set()
        proc.kill()
        reader.close()
        bpf.cleanup()
    plain = subprocess.run([str(binary), "3000"], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, out) == (plain.returncode, plain.stdout)
    seqs = np.concatenate(batches)["seq"]
    assert len(np.unique(seqs)) == len(seqs), "a record came out twice"
    assert not np.any(seqs % 3 == 0), "a discarded record came out"
    expected = total - len(range(0, total, 3))
    assert total * 24 > 4 * 16384, "the ring did not wrap around"
    assert expected - lost <= len(seqs) <= expected


def test_a_single_record_is_copied_out_not_viewed():
    ring = FakeRing()
    ring.push(7)
    out = ring.reader.read()
    assert out.base is None or not np.shares_memory(out, ring.data)
    ring.data[:] = 0
    assert out["seq"].tolist() == [7]
