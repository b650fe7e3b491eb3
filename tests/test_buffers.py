"""The executor's buffer pool hands memory out again only once no tensor, nor view of one, uses it,
and keeps no more than its limit of free memory mapped."""

import torch

from ferry import buffers
from ferry.dtypes import dtype_from_name

F32 = dtype_from_name("float32")
MIB = 1 << 20


def mapped(pool) -> int:
    return sum(slot.size for slot in pool._slots)


def test_a_buffer_is_reused_only_when_nothing_uses_it():
    with buffers.pooled(keep=64 * MIB):
        a = buffers.empty((1024, 1024), F32)  # 4 MiB
        first = a.data_ptr()
        a.fill_(1.0)
        row = a[3]  # a view keeps the memory in use
        del a
        b = buffers.empty((1024, 1024), F32)
        b.fill_(2.0)
        assert b.data_ptr() != first
        assert torch.equal(row, torch.ones(1024))
        del row
        c = buffers.empty((512, 1024), F32)  # smaller: the freed 4 MiB buffer is the best fit
        assert c.data_ptr() == first
        assert b.data_ptr() != first


def test_free_buffers_beyond_the_limit_are_unmapped():
    with buffers.pooled(keep=8 * MIB) as pool:
        for mib in range(1, 7):  # 1..6 MiB, each freed before the next: only growing requests
            t = buffers.empty((mib * MIB // 4,), F32)
            assert mapped(pool) <= 8 * MIB
            del t
        held = [buffers.empty((4 * MIB // 4,), F32) for _ in range(3)]  # in use: allowed past the limit
        assert mapped(pool) >= 12 * MIB
        del held
        buffers.empty((7 * MIB // 4,), F32)
        assert mapped(pool) <= 8 * MIB


def test_outside_the_pool_and_small_tensors_use_torchs_allocator():
    assert buffers.empty((4, 4), F32).shape == (4, 4)
    with buffers.pooled(keep=64 * MIB) as pool:
        buffers.empty((16,), F32)
        assert mapped(pool) == 0
