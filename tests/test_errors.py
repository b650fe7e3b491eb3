"""Bad input: one line on stderr naming the file / tensor / field, exit 2, nothing written."""

import json
import shutil
import struct

import pytest
import torch
from helpers import leftovers, run

import ferry


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def rewrite(path, change):
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def fails(tmp_path, args, message, out_name="out"):
    code, stdout, stderr = run("convert", *args)
    assert code == 2
    assert stderr == f"ferry: error: {message}\n"
    assert not (tmp_path / out_name).exists() or out_name == "existing"
    assert leftovers(tmp_path) == []


def test_tp_that_splits_neither_heads_nor_kv_groups(gqa, tmp_path):
    fails(tmp_path, [gqa, tmp_path / "out", "--to", "trtllm", "--tp", "3"],
          "--tp 3: cannot split attention: num_attention_heads (8) must be divisible by tp, "
          "and num_key_value_heads (2) must be a multiple or a divisor of tp")


def test_missing_tensor(gqa, tmp_path):
    src = copy_model(gqa, tmp_path / "src")
    rewrite(src / "model.safetensors", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    fails(tmp_path, [src, tmp_path / "out", "--to", "trtllm"],
          f"{src / 'model.safetensors'}: missing tensor model.layers.1.mlp.up_proj.weight")


def test_unexpected_tensor(gqa, tmp_path):
    src = copy_model(gqa, tmp_path / "src")
    rewrite(src / "model.safetensors", lambda t: t.update({"model.layers.0.self_attn.extra.weight": torch.zeros(2)}))
    fails(tmp_path, [src, tmp_path / "out", "--to", "hf"],
          f"{src / 'model.safetensors'}: unexpected tensor model.layers.0.self_attn.extra.weight "
          "(not part of a LlamaForCausalLM with this config)")


def test_wrong_shape_names_the_tensor_and_the_expected_shape(gqa, tmp_path):
    src = copy_model(gqa, tmp_path / "src")
    rewrite(src / "model.safetensors", lambda t: t.update({"model.layers.2.self_attn.k_proj.weight": torch.zeros(8, 64)}))
    fails(tmp_path, [src, tmp_path / "out", "--to", "trtllm", "--tp", "2"],
          f"{src / 'model.safetensors'}: tensor model.layers.2.self_attn.k_proj.weight has shape [8, 64], "
          "the model config implies [16, 64]")


def test_truncated_safetensors(gqa, tmp_path):
    src = copy_model(gqa, tmp_path / "src")
    f = src / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__")
    name, entry = next((k, v) for k, v in header.items() if 8 + n + v["data_offsets"][1] > len(data) - 1000)
    fails(tmp_path, [src, tmp_path / "out", "--to", "hf"],
          f"{f}: truncated: tensor {name} needs bytes up to {8 + n + entry['data_offsets'][1]}, file has {len(data) - 1000}")


def test_index_naming_a_file_outside_the_checkpoint(gqa, tmp_path):
    ferry.convert(gqa, tmp_path / "src", to="hf", max_shard_size="200KB")
    index_path = tmp_path / "src" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    shutil.copy(tmp_path / "src" / index["weight_map"][first], tmp_path / "evil.safetensors")
    index["weight_map"][first] = "../evil.safetensors"
    index_path.write_text(json.dumps(index))
    fails(tmp_path, [tmp_path / "src", tmp_path / "out", "--to", "trtllm"],
          f"{index_path}: weight_map names file '../evil.safetensors', which is outside the checkpoint directory")


def test_existing_output_is_refused_unless_overwrite(gqa, tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    fails(tmp_path, [gqa, existing, "--to", "trtllm"], f"{existing}: already exists (pass --overwrite to replace it)", "existing")
    assert (existing / "keep.txt").read_text() == "mine"
    code, _, _ = run("convert", gqa, existing, "--to", "trtllm", "--overwrite")
    assert code == 0
    assert sorted(p.name for p in existing.iterdir()) == ["config.json", "ferry_record.json", "generation_config.json", "rank0.safetensors"]
    assert leftovers(tmp_path) == []


def test_usage_error_is_one_line(gqa, tmp_path):
    code, _, stderr = run("convert", gqa, tmp_path / "out", "--to", "onnx")
    assert code == 2
    assert stderr == ("ferry: error: argument --to: invalid choice: 'onnx' (choose from 'hf', 'megatron', 'megatron-dist', 'trtllm') "
                      "(see 'ferry convert --help')\n")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    fails(tmp_path, [tmp_path / "src", tmp_path / "out", "--to", "hf"],
          f"{tmp_path / 'src' / 'config.json'}: architecture 'BertModel' is not supported "
          "(supported: GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM)")


def test_failure_while_writing_leaves_nothing(gqa, tmp_path, monkeypatch):
    from ferry.plan import SafetensorsFile

    original = SafetensorsFile.write
    calls = []

    def explode_on_second_file(self, target, stream):
        calls.append(target)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-conversion
        original(self, target, stream)

    monkeypatch.setattr(SafetensorsFile, "write", explode_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        ferry.convert(gqa, tmp_path / "out", to="trtllm", tp=2)
    assert len(calls) == 2 and calls[0].exists() is False  # the first file was written, then removed with the rest
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_full_disk_is_one_line_and_leaves_nothing(gqa, tmp_path, monkeypatch):
    import errno
    import os

    def no_space(path, *args, **kwargs):
        open(path, "wb").write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("ferry.io.safetensors.write", no_space)
    fails(tmp_path, [gqa, tmp_path / "out", "--to", "hf"],
          f"{tmp_path / 'out' / 'model.safetensors'}: cannot write (No space left on device); nothing was written")


def test_a_file_failing_among_several_written_at_once_stops_the_rest(gqa, tmp_path, monkeypatch):
    import errno
    import os
    import threading

    from ferry.io import safetensors

    original = safetensors.write
    all_started = threading.Barrier(4, timeout=30)  # only passes if the four ranks are written at once

    def rank2_has_no_space(path, *args, **kwargs):
        all_started.wait()
        if path.name == "rank2.safetensors":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        original(path, *args, **kwargs)

    monkeypatch.setattr("ferry.io.safetensors.write", rank2_has_no_space)
    fails(tmp_path, [gqa, tmp_path / "out", "--to", "trtllm", "--tp", "4", "--threads", "4"],
          f"{tmp_path / 'out' / 'rank2.safetensors'}: cannot write (No space left on device); nothing was written")
