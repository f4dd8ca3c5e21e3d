"""PacketBufferPool and RingQueue: sizing, exhaustion, batches, backpressure, no allocation in steady use."""

from __future__ import annotations

import tracemalloc

import pytest

from usbnetd.core.pool import RX, TX, PacketBufferPool
from usbnetd.core.queues import RingQueue


def test_pool_hands_out_every_slot_once_then_none():
    pool = PacketBufferPool(8, 2048, headroom=16)
    got = [pool.allocate(TX) for _ in range(8)]
    assert all(p is not None for p in got)
    assert len({p.index for p in got}) == 8
    assert pool.allocate() is None  # exhausted: the caller counts a drop, the pool never grows
    assert pool.in_use == 8 and pool.free_count == 0
    assert pool.packet_count == 8
    p = got[0]
    assert p.direction == TX and p.offset == 16 and p.length == 0 and p.capacity == 2048


def test_pool_slots_are_disjoint_views_of_one_buffer():
    pool = PacketBufferPool(4, 64)
    a, b = pool.allocate(), pool.allocate()
    a.view[:] = b"\xaa" * 64
    b.view[:] = b"\xbb" * 64
    assert bytes(a.view) == b"\xaa" * 64 and bytes(b.view) == b"\xbb" * 64
    assert a.view.obj is b.view.obj  # the same preallocated bytearray


def test_pool_carves_the_transports_chunks_slot_by_slot():
    """The transport's memory (usbfs, usb/engine.transfer_memory) comes in chunks of whole slots: every packet
    is a view of exactly one slot of one chunk, none straddles two, and nothing of the pool's own is made."""
    a, b = bytearray(3 * 64), bytearray(2 * 64)
    pool = PacketBufferPool(5, 64, headroom=8, chunks=[memoryview(a), memoryview(b)])
    assert pool.shared and pool.packet_count == 5
    got = [pool.allocate() for _ in range(5)]
    for i, p in enumerate(got):
        p.view[:] = bytes([i]) * 64
    assert a == b"".join(bytes([i]) * 64 for i in range(3)) and b == b"".join(bytes([i]) * 64 for i in (3, 4))
    assert got[0].offset == 8 and got[4].capacity == 64
    assert not PacketBufferPool(2, 64).shared


@pytest.mark.parametrize("chunks", [[bytearray(100)], [bytearray(64), bytearray(0)], [bytearray(64)]])
def test_pool_refuses_chunks_that_do_not_hold_its_slots(chunks):
    with pytest.raises(ValueError):
        PacketBufferPool(2, 64, chunks=[memoryview(c) for c in chunks])


def test_deallocate_resets_and_refuses_double_free_and_foreign_packets():
    pool, other = PacketBufferPool(2, 128), PacketBufferPool(2, 128)
    p = pool.allocate(TX)
    p.offset, p.length = 40, 60
    pool.deallocate(p)
    with pytest.raises(ValueError):
        pool.deallocate(p)
    q = other.allocate()
    with pytest.raises(ValueError):
        pool.deallocate(q)
    again = pool.allocate(RX)
    assert again.offset == 0 and again.length == 0 and again.direction == RX


def test_batch_deallocate():
    pool = PacketBufferPool(5, 64)
    out = [pool.allocate() for _ in range(5)]
    assert pool.free_count == 0
    assert pool.deallocate_batch(out) == 5
    assert pool.free_count == 5


@pytest.mark.parametrize("args", [(0, 64), (4, 0), (4, 16, 16)])
def test_pool_rejects_impossible_sizes(args):
    with pytest.raises(ValueError):
        PacketBufferPool(*args)


def test_ring_backpressure_and_order():
    q: RingQueue[int] = RingQueue("t", 4)
    assert [q.enqueue(i) for i in (1, 2, 3, 4, 5, 6)] == [1, 1, 1, 1, 0, 0]  # full: says so, keeps order
    assert len(q) == 4 and q.space == 0
    out: list[int] = []
    assert q.dequeue_batch(out, 3) == 3
    assert out == [1, 2, 3]
    assert q.enqueue(8) + q.enqueue(9) == 2  # wraps around
    assert q.peek() == 4
    out.clear()
    assert q.dequeue_batch(out) == 3 and out == [4, 8, 9]
    assert q.dequeue() is None and q.dequeue_batch(out) == 0


def test_steady_state_pool_and_queue_cycle_allocates_nothing():
    pool = PacketBufferPool(64, 2048)
    q: RingQueue = RingQueue("q", 64)
    batch: list = []

    def cycle():
        for _ in range(32):
            q.enqueue(pool.allocate())
        q.dequeue_batch(batch)
        pool.deallocate_batch(batch)
        batch.clear()

    for _ in range(100):
        cycle()  # warm-up: lists reach their final capacity
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(10_000):
            cycle()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 1024, f"grew by {after - before} bytes over 320000 packet cycles"
    assert peak - before < 4096
