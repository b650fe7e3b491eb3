"""File formats at the byte level: safetensors (ferry's writer read by the safetensors library
and the reverse), torch.save archives through the allow-list unpickler."""

import argparse
import collections
import pickle
import struct

import pytest
import torch
from helpers import Exploit

from ferry.errors import CheckpointError, UnsafePickleError
from ferry.io import safetensors as st
from ferry.io import torch_zip
from ferry.io.files import FileReader


def test_streaming_writer_is_read_by_the_safetensors_library(tmp_path):
    from safetensors.torch import load_file

    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int64).view(2, 3),
        "d": torch.randn(4, 4).to(torch.float16),
        "e": torch.zeros(0, 3),
    }
    entries = [st.Entry(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    st.write(tmp_path / "x.safetensors", entries, iter(tensors.values()))
    back = load_file(tmp_path / "x.safetensors")
    assert back.keys() == tensors.keys()
    for name, t in tensors.items():
        assert torch.equal(back[name], t), name


def test_reader_reads_the_safetensors_library(tmp_path):
    from safetensors.torch import save_file

    tensors = {"w": torch.randn(8, 3), "b": torch.randn(3).to(torch.bfloat16)}
    save_file(tensors, tmp_path / "y.safetensors", metadata={"format": "pt"})
    read, metadata = st.read_index(FileReader(tmp_path / "y.safetensors"))
    assert metadata == {"format": "pt"}
    for name, t in tensors.items():
        assert torch.equal(read[name].materialize(), t)
        assert torch.equal(read[name].narrow(0, 1, 2).materialize(), t[1:3])


def _write_raw(path, header: bytes, body: bytes = b""):
    path.write_bytes(struct.pack("<Q", len(header)) + header + body)
    return FileReader(path)


@pytest.mark.parametrize("header,body,message", [
    (b"{not json", b"", "safetensors header is not valid JSON"),
    (b'{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}', b"\0" * 8,
     "truncated: tensor w needs bytes up to 89, file has 81"),  # 8 + 65-byte header + 16 > 8 + 65 + 8
    (b'{"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}', b"\0" * 16,
     "tensor w: data_offsets [0, 12] do not hold a F32 tensor of shape [2, 2] (16 bytes)"),
    (b'{"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}}', b"\0" * 2, "tensor w: unsupported dtype 'Q4'"),
    (b'{"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}',
     b"\0" * 6, "tensors a and b overlap in the file"),
])
def test_bad_headers_are_named(tmp_path, header, body, message):
    reader = _write_raw(tmp_path / "bad.safetensors", header, body)
    with pytest.raises(CheckpointError) as e:
        st.read_index(reader)
    assert str(e.value) == f"{tmp_path / 'bad.safetensors'}: {message}"


def test_header_length_past_end_of_file(tmp_path):
    (tmp_path / "t.safetensors").write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(CheckpointError, match="header length 1000 does not fit in a 10-byte file"):
        st.read_index(FileReader(tmp_path / "t.safetensors"))


# -- torch.save archives ------------------------------------------------------------------


def test_torch_save_tree_loads_lazily_with_the_same_values(tmp_path):
    w = torch.randn(6, 4)
    state = {
        "args": argparse.Namespace(num_layers=2, params_dtype=torch.bfloat16),
        "model": collections.OrderedDict(w=w, view=w[2:4], b=torch.arange(5, dtype=torch.int32), none=None),
        "iteration": 7,
        "rng": {"cpu": torch.get_rng_state(), "python": ("tuple", [1, 2]), "set": {1, 2}},
    }
    torch.save(state, tmp_path / "c.pt")
    tree = torch_zip.load(FileReader(tmp_path / "c.pt"))
    assert tree["args"] == state["args"] and tree["iteration"] == 7 and tree["rng"]["set"] == {1, 2}
    model = tree["model"]
    assert isinstance(model, collections.OrderedDict) and list(model) == ["w", "view", "b", "none"]
    assert torch.equal(model["w"].materialize(), w)
    assert torch.equal(model["view"].materialize(), w[2:4])  # a view into a shared storage
    assert torch.equal(model["b"].materialize(), state["model"]["b"])
    assert torch.equal(tree["rng"]["cpu"].materialize(), state["rng"]["cpu"])


def test_numpy_rng_state_becomes_inert(tmp_path):
    import numpy as np

    torch.save({"np_rng_state": np.random.get_state()}, tmp_path / "n.pt")
    tree = torch_zip.load(FileReader(tmp_path / "n.pt"))
    assert tree["np_rng_state"][0] == "MT19937"
    assert isinstance(tree["np_rng_state"][1], torch_zip.Inert)




def test_hostile_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {"w": torch.zeros(2)}, "args": Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafePickleError) as e:
        torch_zip.load(FileReader(tmp_path / "evil.pt"))
    assert str(e.value) == (
        f"{tmp_path / 'evil.pt'}: refusing to load global 'posix.system' (only tensors, argparse.Namespace, "
        "numpy RNG state and plain data are allowed); nothing from this file was run"
    )
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    pickle.dumps(eval),  # builtins.eval
    b"cbuiltins\ngetattr\n(cbuiltins\nobject\nS'__subclasses__'\ntR.",  # getattr gadget
])
def test_restricted_loads_refuses_dangerous_builtins(payload):
    with pytest.raises(UnsafePickleError, match="refusing to load global 'builtins"):
        torch_zip.restricted_loads(payload, "x")


def test_truncated_archive(tmp_path):
    torch.save({"w": torch.randn(100)}, tmp_path / "t.pt")
    data = (tmp_path / "t.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a torch.save zip archive"):
        torch_zip.load(FileReader(tmp_path / "t.pt"))
