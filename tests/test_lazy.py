"""Lazy tensors: narrowing is pushed down to the stored region, so a rank reads only its slice."""

import pytest
import torch

from ferry import lazy as L
from ferry.io import safetensors as st
from ferry.io.files import FileReader


class CountingReader:
    """Wraps a FileReader and records the regions read."""

    def __init__(self, reader):
        self.reader, self.regions = reader, []

    def read_region(self, source, region, out):
        self.regions.append(region)
        self.reader.read_region(source, region, out)


def stored(tmp_path, t: torch.Tensor):
    from safetensors.torch import save_file

    save_file({"w": t}, tmp_path / "a.safetensors")
    tensors, _ = st.read_index(FileReader(tmp_path / "a.safetensors"))
    leaf = tensors["w"]
    counting = CountingReader(leaf.source.reader)
    leaf.source.reader = counting
    return leaf, counting


def test_narrow_reads_only_the_slice(tmp_path):
    t = torch.arange(24.0).view(6, 4)
    leaf, reader = stored(tmp_path, t)
    piece = L.Cat([leaf, L.Zeros((2, 4), torch.float32)], 0).narrow(0, 2, 2).narrow(1, 1, 2)
    assert torch.equal(piece.materialize(), t[2:4, 1:3])
    assert reader.regions == [((2, 4), (1, 3))]


def test_column_slice_of_transpose_is_a_row_slice_on_disk(tmp_path):
    t = torch.arange(24.0).view(6, 4)
    leaf, reader = stored(tmp_path, t)
    piece = L.Transpose(leaf, 0, 1).narrow(1, 3, 3)
    assert torch.equal(piece.materialize(), t.t()[:, 3:6])
    assert reader.regions == [((3, 6), (0, 4))]


def test_pad_narrow_mixes_data_and_zeros():
    x = L.Pad(L.Const(torch.ones(5, 2)), 0, 8)
    assert torch.equal(x.narrow(0, 4, 3).materialize(), torch.tensor([[1.0, 1], [0, 0], [0, 0]]))
    assert isinstance(x.narrow(0, 6, 2), L.Zeros)


def test_cast_equals_torch_to():
    t = torch.randn(64, 33) * 100
    assert torch.equal(L.cast(L.Const(t), torch.bfloat16).materialize(), t.to(torch.bfloat16))
    assert torch.equal(L.cast(L.Const(t), torch.float16).materialize(), t.to(torch.float16))


def test_byte_range_only_for_contiguous_regions(tmp_path):
    leaf, _ = stored(tmp_path, torch.zeros(6, 4))
    base = leaf.source.offset
    assert leaf.narrow(0, 2, 3).byte_range() == (base + 2 * 16, 3 * 16)
    assert leaf.narrow(0, 1, 1).narrow(1, 1, 2).byte_range() == (base + 16 + 4, 8)
    assert leaf.narrow(1, 0, 2).byte_range() is None


def test_empty_narrow_is_an_empty_tensor():
    x = L.Cat([L.Const(torch.ones(2, 3)), L.Const(torch.zeros(1, 3))], 0)
    assert x.narrow(0, 3, 0).materialize().shape == (0, 3)


def _stored_pair(tmp_path):
    from safetensors.torch import save_file

    a = torch.arange(6 * 8 * 4, dtype=torch.float32).view(6, 8, 4)
    b = -torch.arange(6 * 8 * 4, dtype=torch.float32).view(6, 8, 4) - 1
    save_file({"a": a, "b": b}, tmp_path / "ab.safetensors")
    tensors, _ = st.read_index(FileReader(tmp_path / "ab.safetensors"))
    return tensors["a"], tensors["b"]


def _expressions(a, b):
    return [
        a, a.narrow(0, 1, 3), a.narrow(1, 2, 4), a.narrow(2, 1, 2), a.narrow(0, 1, 2).narrow(2, 0, 3),
        L.Cat([a, b], 0), L.Cat([a.narrow(1, 0, 3), b.narrow(1, 5, 3)], 1), L.Cat([a, b], 2),
        L.Cat([a.narrow(2, 1, 2), b.narrow(2, 0, 1)], 2), L.Cat([a.narrow(1, 0, 3), b], 1),
        L.Pad(a, 1, 10), L.Pad(a.narrow(2, 0, 3), 2, 5), L.Squeeze(L.Unsqueeze(a, 1), 1),
        a.narrow(0, 1, 2).narrow(1, 2, 3).narrow(2, 1, 2), a.narrow(1, 2, 3).narrow(2, 0, 1),
        L.Cat([L.Unsqueeze(a.narrow(0, 0, 1).narrow(2, 1, 3), 0), L.Unsqueeze(b.narrow(0, 2, 1).narrow(2, 1, 3), 0)], 0),
        L.Tiled((6, 8, 4), a.dtype, [((0, 0, 0), a.narrow(1, 0, 5)), ((0, 5, 0), b.narrow(1, 0, 3))]),
        L.Tiled((6, 8, 4), a.dtype, [((0, 0, 0), a.narrow(2, 0, 1)), ((0, 0, 1), b.narrow(2, 1, 3))]),
    ]


@pytest.mark.parametrize("small", [False, True], ids=["default", "tiny-buffers"])
def test_byte_runs_equal_the_materialized_bytes(tmp_path, monkeypatch, small):
    """Every tensor a writer copies as runs of file bytes has exactly the bytes it would compute."""
    from ferry.io import files

    if small:  # force every batching and chunking path
        monkeypatch.setattr(files, "_SPAN", 40)
        monkeypatch.setattr(files, "_IOV_MAX", 3)
        monkeypatch.setattr(files, "_BIG", 24)
    a, b = _stored_pair(tmp_path)
    for i, expr in enumerate(_expressions(a, b)):
        strips = expr.byte_runs()
        assert strips is not None, expr
        with open(tmp_path / f"out{i}", "wb", buffering=0) as f:
            files.Runs(strips, expr.nbytes).copy_to(f.fileno())
        expected = expr.materialize().contiguous()
        assert (tmp_path / f"out{i}").read_bytes() == bytes(files.tensor_buffer(expected)), expr


def test_column_slices_side_by_side_are_one_strip(tmp_path):
    a, b = _stored_pair(tmp_path)
    two_ranks = L.Cat([a.narrow(2, 0, 2), b.narrow(2, 0, 2)], 2)  # e.g. a row-parallel weight gathered from 2 ranks
    (strip,) = two_ranks.byte_runs()
    assert strip.count == 6 * 8 and [(p[2], p[3]) for p in strip.parts] == [(8, 16), (8, 16)]
