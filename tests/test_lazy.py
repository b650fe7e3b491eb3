"""Lazy tensors: narrowing is pushed down to the stored region, so a rank reads only its slice."""

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
