"""Bounded ring queues: the four queues that shuttle packets between the bulk engine and the TAP.

Like NetworkingDriverKit's rx/tx submission and completion queues: fixed capacity chosen at start,
`enqueue` reports how much it accepted so the producer sees backpressure, `dequeue_batch` drains in
batches. The storage is a preallocated list indexed modulo capacity, so steady use allocates nothing.
Single-threaded by design: the whole data path runs in one event loop.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class RingQueue(Generic[T]):
    __slots__ = ("name", "capacity", "_slots", "_head", "_count", "high")

    def __init__(self, name: str, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.name = name
        self.capacity = capacity
        self._slots: list[T | None] = [None] * capacity
        self._head = 0
        self._count = 0
        self.high = 0  # high-water mark, for `usbnetd stats`

    def __len__(self) -> int:
        return self._count

    @property
    def space(self) -> int:
        return self.capacity - self._count

    def enqueue(self, item: T) -> int:
        """Add one item; return 1 if accepted, 0 if the queue is full."""
        if self._count == self.capacity:
            return 0
        self._slots[(self._head + self._count) % self.capacity] = item
        self._count += 1
        if self._count > self.high:
            self.high = self._count
        return 1

    def dequeue(self) -> T | None:
        if self._count == 0:
            return None
        item = self._slots[self._head]
        self._slots[self._head] = None
        self._head = (self._head + 1) % self.capacity
        self._count -= 1
        return item

    def dequeue_batch(self, out: list[T], max_items: int | None = None) -> int:
        """Move up to max_items (all when None) into `out`; return how many were moved."""
        n = self._count if max_items is None else min(self._count, max_items)
        for _ in range(n):
            out.append(self._slots[self._head])  # type: ignore[arg-type]
            self._slots[self._head] = None
            self._head = (self._head + 1) % self.capacity
        self._count -= n
        return n

    def peek(self) -> T | None:
        return self._slots[self._head] if self._count else None
