"""The executor's read-ahead: tensors come out in plan order with their values, and the tensors
held at once (the one being written plus those computed ahead of it) are at most `threads` and
fit in the memory budget together; a tensor larger than the budget is held alone."""

import threading
import time

import pytest
import torch

from ferry import lazy as L
from ferry.executor import Materializer
from ferry.plan import PlannedTensor


class Watched(L.Const):
    """A constant whose fill is logged, so the test can see how far ahead the reader runs."""

    def __init__(self, tensor, log):
        super().__init__(tensor)
        self.log = log

    def fill(self, out):
        with self.log["lock"]:
            self.log["started"] += 1
        super().fill(out)


def held_at_once(threads, max_memory, count=12, nbytes=1000):
    """Consumes `count` tensors of `nbytes` each slowly; returns the most tensors computed (or being
    computed) and not yet done with, the one in the writer's hands included; checks every value."""
    log = {"lock": threading.Lock(), "started": 0}
    values = [torch.full((nbytes // 4,), float(i)) for i in range(count)]
    planned = [PlannedTensor(f"t{i}", Watched(v, log)) for i, v in enumerate(values)]
    most = 0
    for i, got in enumerate(Materializer(threads, max_memory)(planned)):
        time.sleep(0.02)  # a slow writer: a reader that ignores its limits would run ahead now
        with log["lock"]:
            most = max(most, log["started"] - i)
        assert torch.equal(got, values[i])
    assert log["started"] == count
    return most


@pytest.mark.parametrize("threads,max_memory,limit", [
    (1, 10**9, 1),  # one thread: no read-ahead at all
    (4, 1, 1),  # a budget below one tensor: each goes through alone
    (4, 3000, 3),  # three 1000-byte tensors fit
    (8, 5999, 5),  # five fit, not six
    (3, 10**9, 3),  # the thread count bounds it
])
def test_tensors_held_at_once_are_bounded_by_threads_and_budget(threads, max_memory, limit):
    assert held_at_once(threads, max_memory) == limit
