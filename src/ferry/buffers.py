"""Reused memory for the tensors that pass through the executor.

A conversion that computes its tensors (a cast, a Megatron archive) allocates and frees one
tensor-sized buffer after another. glibc serves buffers under 32 MiB from its heaps, where the
holes the freed ones leave, spread over one heap per read-ahead thread, keep the resident set
growing for most of the run; larger ones it maps and unmaps each time, paying a page fault per
4 KiB on every tensor. A pool of anonymous memory maps avoids both: a buffer is handed out
again once torch reports that no tensor (nor view of one) still uses it, and the pages stay
resident in between, up to `keep` bytes of maps in all.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import mmap
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import dtypes

if TYPE_CHECKING:
    import torch

    from .dtypes import DType

SMALLEST = 1 << 20  # below this the C allocator is as good; rounding unit for map sizes


class _Slot:
    __slots__ = ("map", "size", "user")

    def __init__(self, size: int):
        self.map = mmap.mmap(-1, size)
        self.size = size
        self.user = None  # weak reference to the storage of the last tensor handed out

    def free(self) -> bool:
        return self.user is None or self.user.expired()


class BufferPool:
    def __init__(self, keep: int):
        self.keep = keep
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()

    def empty(self, shape, dtype: DType) -> torch.Tensor:
        import torch
        from torch.multiprocessing.reductions import StorageWeakRef

        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < SMALLEST:
            return torch.empty(shape, dtype=dtype.torch)
        with self._lock:
            slot = self._take(nbytes)
            flat = torch.frombuffer(slot.map, dtype=torch.uint8, count=nbytes)
            slot.user = StorageWeakRef(flat.untyped_storage())
        return flat.view(dtype.torch).view(shape)

    def _take(self, nbytes: int) -> _Slot:
        free = [s for s in self._slots if s.free()]
        fitting = [s for s in free if s.size >= nbytes]
        if fitting:
            return min(fitting, key=lambda s: s.size)
        size = -(-nbytes // SMALLEST) * SMALLEST
        total = sum(s.size for s in self._slots)
        for slot in sorted(free, key=lambda s: s.size):  # none of them fits: drop the smallest first
            if total + size <= self.keep:
                break
            self._drop(slot)
            total -= slot.size
        slot = _Slot(size)
        self._slots.append(slot)
        return slot

    def _drop(self, slot: _Slot) -> None:
        self._slots.remove(slot)
        slot.map.close()

    def close(self) -> None:
        """Unmap every free buffer; one still in use is unmapped when its last tensor goes."""
        with self._lock:
            for slot in list(self._slots):
                if slot.free():
                    self._drop(slot)
            self._slots.clear()


_active: contextvars.ContextVar[BufferPool | None] = contextvars.ContextVar("ferry_buffer_pool", default=None)


def empty(shape, dtype: DType) -> torch.Tensor:
    """An uninitialised tensor: from the active pool inside `pooled`, else torch's allocator."""
    dtype = dtypes.of(dtype)  # a torch dtype is accepted too
    pool = _active.get()
    if pool is None:
        import torch

        return torch.empty(shape, dtype=dtype.torch)
    return pool.empty(shape, dtype)


@contextlib.contextmanager
def pooled(keep: int) -> Iterator[BufferPool]:
    """Serve `empty` from a pool of at most `keep` bytes of maps (more only while in use) within
    this context; threads see it when their work runs in a copy of the context."""
    pool = BufferPool(keep)
    token = _active.set(pool)
    try:
        yield pool
    finally:
        _active.reset(token)
        pool.close()
