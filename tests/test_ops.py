"""Each layout op against its inverse, and the layouts themselves on small labelled tensors."""

import pytest
import torch

from ferry import lazy as L
from ferry import ops as O


def rows(*labels: int, width: int = 2) -> torch.Tensor:
    """A matrix whose row i is filled with labels[i]: layouts become legible."""
    return torch.tensor(labels, dtype=torch.float32)[:, None].repeat(1, width)


def values(x):
    return [x.materialize() for x in x] if isinstance(x, list) else x.materialize()


def labels(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t[:, 0]]


ROUND_TRIPS = [
    (O.Split(0, (2, 1, 1)), [torch.arange(8.0).view(4, 2)]),
    (O.Concat(1, (2, 3)), [torch.randn(3, 2), torch.randn(3, 3)]),
    (O.Interleave(2, (3, 1, 1)), [torch.randn(6, 4), torch.randn(2, 4), torch.randn(2, 4)]),
    (O.Deinterleave(3, (2, 2)), [torch.randn(12, 5)]),
    (O.Transpose(0, 1), [torch.randn(3, 5)]),
    (O.Resize(0, 5, 8), [torch.randn(5, 3)]),
    (O.Repeat(0, 2, 3), [torch.randn(4, 3)]),
    (O.Unrepeat(0, 1, 2), [torch.tensor([[1.0], [1.0], [2.0], [2.0]])]),
    (O.Each((None, O.Transpose(0, 1))), [torch.randn(2, 3), torch.randn(4, 5)]),
    (O.Unstack(0, 3), [torch.randn(3, 2, 4)]),
    (O.Stack(1, 2), [torch.randn(3, 4), torch.randn(3, 4)]),
]


@pytest.mark.parametrize("op,inputs", ROUND_TRIPS, ids=lambda x: type(x).__name__ if isinstance(x, O.Op) else "")
def test_op_then_inverse_is_identity(op, inputs):
    xs = [L.Const(t) for t in inputs]
    back = op.inverse(op(xs))
    assert len(back) == len(inputs)
    for t, b in zip(inputs, back):
        assert torch.equal(b.materialize(), t)
    assert op.inverse.inverse == op


def test_resize_down_then_up_zero_pads():
    x = L.Const(torch.ones(5, 2))
    (small,) = O.Resize(0, 5, 3)([x])
    (big,) = O.Resize(0, 3, 5)([small])
    assert labels(big.materialize()) == [1, 1, 1, 0, 0]


def test_megatron_qkv_is_interleaved_per_query_group():
    # 4 query heads in 2 groups, head_dim 1: q heads 10..13, k heads 20..21, v heads 30..31
    q, k, v = rows(10, 11, 12, 13), rows(20, 21), rows(30, 31)
    (fused,) = O.Interleave(2, (2, 1, 1))([L.Const(q), L.Const(k), L.Const(v)])
    assert labels(fused.materialize()) == [
        10, 11, 20, 30,  # group 0: its two query heads, then its key and value head
        12, 13, 21, 31,  # group 1
    ]


def test_swiglu_fc1_over_tp_ranks_is_gate_up_per_rank():
    gate, up = rows(1, 2, 3, 4), rows(5, 6, 7, 8)
    (fused,) = O.Interleave(2, (2, 2))([L.Const(gate), L.Const(up)])
    assert labels(fused.materialize()) == [1, 2, 5, 6, 3, 4, 7, 8]  # rank 0: [g0 g1 u0 u1], rank 1: [g2 g3 u2 u3]


@pytest.mark.parametrize("tp,expected", [
    # 4 q heads (1x), 2 kv heads (2x, 3x); per rank [Q_r; K_r; V_r]
    (1, [10, 11, 12, 13, 20, 21, 30, 31]),
    (2, [10, 11, 20, 30, 12, 13, 21, 31]),
    (4, [10, 20, 30, 11, 20, 30, 12, 21, 31, 13, 21, 31]),  # tp > kv heads: kv head r // 2 on rank r
])
def test_trtllm_qkv_per_rank_with_kv_duplication(tp, expected):
    q, k, v = rows(10, 11, 12, 13), rows(20, 21), rows(30, 31)
    repeat = max(1, tp // 2)
    kv_rows = max(1, 2 // tp)
    ops = [O.Each((None, O.Repeat(0, 1, repeat), O.Repeat(0, 1, repeat))), O.Interleave(tp, (4 // tp, kv_rows, kv_rows))]
    (fused,) = O.run(ops, [L.Const(q), L.Const(k), L.Const(v)])
    assert labels(fused.materialize()) == expected
    back = O.run(O.invert(ops), [fused])
    assert [labels(b.materialize()) for b in back] == [[10, 11, 12, 13], [20, 21], [30, 31]]


def test_shape_mismatch_names_the_layout():
    with pytest.raises(O.LayoutError, match=r"2 groups of \[2, 1, 1\]: expected size 8 on dim 0, got shape \[7, 2\]"):
        O.Deinterleave(2, (2, 1, 1))([L.Const(torch.zeros(7, 2))])
