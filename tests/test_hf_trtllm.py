"""Hugging Face <-> TensorRT-LLM against transformers: per-rank logits, bit-exact round trips."""

import json

import pytest
import torch
from helpers import (
    ferry_logits,
    hf_logits,
    input_ids,
    read_config,
    safetensors_dir,
    safetensors_file,
)

import ferry


@pytest.fixture(scope="module")
def reference(models):
    """transformers' own logits for each tiny model."""
    out = {}
    for name, path in models.items():
        ids = input_ids(read_config(path).get("vocab_size"))
        out[name] = (ids, hf_logits(path, ids))
    return out


@pytest.mark.parametrize("model", ["gqa", "mha"])
@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("pp", [1, 2])
def test_hf_to_trtllm_per_rank_logits_match_transformers(models, reference, tmp_path, model, tp, pp):
    out = tmp_path / "trt"
    ferry.convert(models[model], out, to="trtllm", tp=tp, pp=pp)
    cfg = read_config(out)
    assert cfg["mapping"] == {"world_size": tp * pp, "tp_size": tp, "pp_size": pp}
    assert sorted(p.name for p in out.iterdir()) == (["config.json", "ferry_record.json", "generation_config.json"]
                                                     + [f"rank{r}.safetensors" for r in range(tp * pp)])
    ids, expected = reference[model]
    got = ferry_logits(out, ids)  # each rank computes with its own file only
    assert (got - expected).abs().max().item() <= 1e-4


def test_trtllm_per_rank_shapes_with_kv_duplication(models, tmp_path):
    ferry.convert(models["gqa"], tmp_path / "t", to="trtllm", tp=4, pp=2)  # 8 heads, 2 kv heads, head_dim 8
    ranks = [safetensors_file(tmp_path / "t" / f"rank{r}.safetensors") for r in range(8)]
    for r in range(8):
        t = ranks[r]
        assert t["transformer.layers.0.attention.qkv.weight"].shape == (8 * (2 + 2), 64)  # 2 q + 1 k + 1 v heads
        assert t["transformer.layers.1.attention.dense.weight"].shape == (64, 16)
        assert "transformer.layers.2.attention.dense.weight" not in t  # 4 layers over pp=2: local 0, 1
        assert ("transformer.vocab_embedding.weight" in t) == (r < 4)
        assert ("lm_head.weight" in t) == (r >= 4)
    # vocab 101 padded to 104, split 26 rows per rank; padding rows are zero
    assert ranks[7]["lm_head.weight"].shape == (26, 64)
    assert torch.all(ranks[7]["lm_head.weight"][-3:] == 0) and torch.any(ranks[7]["lm_head.weight"][-4] != 0)
    # rank r holds kv head r // 2 (duplicated consecutively): ranks 0 and 1 carry the same k rows
    k = lambda r: ranks[r]["transformer.layers.0.attention.qkv.weight"][16:24]  # noqa: E731
    assert torch.equal(k(0), k(1)) and torch.equal(k(2), k(3)) and not torch.equal(k(1), k(2))
    # row-parallel biases are full copies on every rank
    assert torch.equal(ranks[0]["transformer.layers.0.attention.dense.bias"], ranks[3]["transformer.layers.0.attention.dense.bias"])



@pytest.mark.parametrize("model", ["gqa", "mha", "tied", "gpt2"])
def test_trtllm_round_trip_is_bit_exact(models, tmp_path, model):
    ferry.convert(models[model], tmp_path / "trt", to="trtllm", tp=2, pp=2 if model != "gpt2" else 1)
    ferry.convert(tmp_path / "trt", tmp_path / "back", to="hf")
    original, back = safetensors_dir(models[model]), safetensors_dir(tmp_path / "back")
    assert original.keys() == back.keys()
    for name in original:
        assert torch.equal(original[name], back[name]), name


def test_tied_embeddings_become_an_explicit_lm_head(models, tmp_path):
    ferry.convert(models["tied"], tmp_path / "trt", to="trtllm", tp=2)
    embed = safetensors_dir(models["tied"])["model.embed_tokens.weight"]  # [101, 64]
    heads = [safetensors_file(tmp_path / "trt" / f"rank{r}.safetensors")["lm_head.weight"] for r in (0, 1)]
    padded = torch.cat(heads)
    assert padded.shape == (102, 64) and torch.equal(padded[:101], embed) and torch.all(padded[101] == 0)
    assert read_config(tmp_path / "trt")["tie_word_embeddings"] is True


def test_gpt2_to_trtllm_matches_transformers(models, reference, tmp_path):
    ferry.convert(models["gpt2"], tmp_path / "trt", to="trtllm", tp=2)
    cfg = read_config(tmp_path / "trt")
    assert cfg["architecture"] == "GPTForCausalLM" and cfg["position_embedding_type"] == "learned_absolute"
    assert cfg["hidden_act"] == "gelu_new"
    ids, expected = reference["gpt2"]
    assert (ferry_logits(tmp_path / "trt", ids) - expected).abs().max().item() <= 1e-4


def test_parallel_embedding(models, reference, tmp_path):
    ferry.convert(models["gpt2"], tmp_path / "trt", to="trtllm", tp=2, parallel_embedding=True)
    rank1 = safetensors_file(tmp_path / "trt" / "rank1.safetensors")
    assert rank1["transformer.vocab_embedding.weight"].shape == (49, 64)  # 97 -> 98 rows, 49 per rank
    assert rank1["transformer.position_embedding.weight"].shape == (32, 64)
    ids, expected = reference["gpt2"]
    assert (ferry_logits(tmp_path / "trt", ids) - expected).abs().max().item() <= 1e-4


def test_hf_reshard_is_bit_exact(models, tmp_path):
    ferry.convert(models["gqa"], tmp_path / "a", to="hf", max_shard_size="100KB")
    index = json.loads((tmp_path / "a" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    for f in files:
        assert (tmp_path / "a" / f).stat().st_size <= 100_000 + 64 * 101 * 4 + 4096  # one tensor may overflow a shard
    original, resharded = safetensors_dir(models["gqa"]), safetensors_dir(tmp_path / "a")
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in original.values())
    assert original.keys() == resharded.keys() and all(torch.equal(original[n], resharded[n]) for n in original)
    # and back into one file
    ferry.convert(tmp_path / "a", tmp_path / "b", to="hf")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    assert all(torch.equal(original[n], t) for n, t in safetensors_dir(tmp_path / "b").items())
    assert read_config(tmp_path / "b") == read_config(models["gqa"])


@pytest.mark.parametrize("dtype,torch_dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_cast_equals_tensor_to(models, tmp_path, dtype, torch_dtype):
    ferry.convert(models["gqa"], tmp_path / "h", to="hf", dtype=dtype)
    original, cast = safetensors_dir(models["gqa"]), safetensors_dir(tmp_path / "h")
    for name, t in original.items():
        assert cast[name].dtype == torch_dtype and torch.equal(cast[name], t.to(torch_dtype)), name
    assert read_config(tmp_path / "h")["dtype"] == dtype
    ferry.convert(models["gqa"], tmp_path / "t", to="trtllm", tp=2, dtype=dtype)
    assert read_config(tmp_path / "t")["dtype"] == dtype
    q = original["model.layers.0.self_attn.q_proj.weight"].to(torch_dtype)
    rank0 = safetensors_file(tmp_path / "t" / "rank0.safetensors")
    assert torch.equal(rank0["transformer.layers.0.attention.qkv.weight"][:32], q[:32])


def test_mistral_is_carried_through(tmp_path):
    from helpers import make_llama

    src = make_llama(tmp_path / "m", arch="mistral", heads=4, kv_heads=2, layers=2, sliding_window=None)
    ferry.convert(src, tmp_path / "trt", to="trtllm", tp=2)
    assert read_config(tmp_path / "trt")["architecture"] == "MistralForCausalLM"
    ids = input_ids(101)
    expected = hf_logits(src, ids)
    assert (ferry_logits(tmp_path / "trt", ids) - expected).abs().max().item() <= 1e-4
    ferry.convert(tmp_path / "trt", tmp_path / "back", to="hf")
    cfg = read_config(tmp_path / "back")
    assert cfg["architectures"] == ["MistralForCausalLM"] and cfg["model_type"] == "mistral"
    assert "sliding_window" in cfg and cfg["sliding_window"] is None  # absent, transformers would use 4096
    assert (hf_logits(tmp_path / "back", ids) - expected).abs().max().item() <= 1e-5


def test_windowed_mistral_to_trtllm_is_refused_naming_the_window(tmp_path):
    from helpers import make_llama, run

    src = make_llama(tmp_path / "m", arch="mistral", heads=4, kv_heads=2, layers=2, sliding_window=5)
    code, out, err = run("convert", src, tmp_path / "trt", "--to", "trtllm")
    assert code == 2 and not (tmp_path / "trt").exists()
    assert err.splitlines() == [
        "ferry: error: attention.window = 5 tokens on every layer: TensorRT-LLM MistralForCausalLM (release 1.2 config) "
        "cannot hold it (it holds only none (full attention)); TensorRT-LLM would run another model; serve the Hugging "
        "Face checkpoint instead (TensorRT-LLM's PyTorch backend and vLLM read it)"]


def test_llama3_rope_scaling_is_carried_and_computed(tmp_path):
    from helpers import make_llama

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8}
    src = make_llama(tmp_path / "l3", heads=4, kv_heads=2, layers=2, rope_scaling=dict(scaling))
    ferry.convert(src, tmp_path / "trt", to="trtllm", tp=2)
    rotary = read_config(tmp_path / "trt")["rotary_scaling"]
    assert {k: rotary[k] for k in scaling} == scaling
    ids = input_ids(101)
    expected = hf_logits(src, ids)
    got = ferry_logits(tmp_path / "trt", ids)
    assert (got - expected).abs().max().item() <= 1e-4
    ferry.convert(tmp_path / "trt", tmp_path / "back", to="hf")
    assert (hf_logits(tmp_path / "back", ids) - expected).abs().max().item() <= 1e-5


def test_pytorch_bin_source(models, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models["gqa"])
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    (tmp_path / "bin").mkdir()
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((models["gqa"] / "config.json").read_text())
    ferry.convert(tmp_path / "bin", tmp_path / "st", to="hf")
    original = safetensors_dir(models["gqa"])
    assert all(torch.equal(original[n], t) for n, t in safetensors_dir(tmp_path / "st").items())


def test_byte_copies_without_copy_file_range(models, tmp_path, monkeypatch):
    """Unchanged tensors are copied file to file (copy_file_range); the read+write fallback for
    systems without it gives the same bytes, vocab zero padding included."""
    import os

    ferry.convert(models["tied"], tmp_path / "fast", to="trtllm", tp=2)
    monkeypatch.delattr(os, "copy_file_range")
    ferry.convert(models["tied"], tmp_path / "slow", to="trtllm", tp=2)
    for r in (0, 1):
        assert (tmp_path / "fast" / f"rank{r}.safetensors").read_bytes() == (tmp_path / "slow" / f"rank{r}.safetensors").read_bytes()


def test_which_tensors_move_as_bytes(models):
    """Without arithmetic a tensor is runs of source bytes: row splits, fused qkv, padded heads,
    column slices (one run per row); transposes and casts are computed."""
    import ferry.formats as F
    from ferry.formats.base import WriteOptions

    with ferry.read(models["gqa"]) as model:
        plan = F.get("trtllm").plan(model, WriteOptions(tp=2))
        rank1 = {t.name: t.value for t in next(f for f in plan.files if f.path == "rank1.safetensors").tensors}
        assert rank1["transformer.layers.0.attention.qkv.weight"].byte_runs() is not None
        assert rank1["lm_head.weight"].byte_runs()[-1].parts[0][0] is None  # the zero padding row
        (dense,) = rank1["transformer.layers.0.attention.dense.weight"].byte_runs()  # o_proj [64, 64] -> columns 32:64
        ((_, offset, length, stride),) = dense.parts
        assert (dense.count, length, stride) == (64, 32 * 4, 64 * 4)
        gpt2 = F.get("trtllm").plan(ferry.read(models["gpt2"]), WriteOptions(tp=1))
        qkv = next(t.value for f in gpt2.files for t in f.tensors if t.name == "transformer.layers.0.attention.qkv.weight")
        assert qkv.byte_runs() is None  # Conv1D [in, out] transposed
        plan16 = F.get("trtllm").plan(model, WriteOptions(tp=2, dtype=torch.float16))
        assert all(t.value.byte_runs() is None for f in plan16.files for t in f.tensors)


def test_dtype_comes_from_the_weights_and_mixed_dtypes_survive(models, tmp_path):
    """A config may claim bfloat16 over float32 weights; norms are sometimes kept in float32."""
    import shutil

    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(models["gqa"], src)
    cfg = read_config(src)
    cfg["dtype"] = "bfloat16"
    (src / "config.json").write_text(json.dumps(cfg))
    tensors = load_file(src / "model.safetensors")
    mixed = {k: (v if "norm" in k else v.to(torch.bfloat16)) for k, v in tensors.items()}
    save_file(mixed, src / "model.safetensors", metadata={"format": "pt"})
    plan = ferry.convert(src, tmp_path / "out", to="hf")
    assert read_config(tmp_path / "out")["dtype"] == "bfloat16"  # the embedding's dtype
    back = safetensors_dir(tmp_path / "out")
    assert all(back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in mixed.items())
    trt = ferry.convert(src, tmp_path / "trt", to="trtllm")  # one dtype throughout, as TensorRT-LLM requires
    assert {t.dtype.name for f in trt.files for t in f.tensors} == {"bfloat16"}
    assert plan.notes == [] and trt.notes == []
    cfg["dtype"] = "float16"
    (src / "config.json").write_text(json.dumps(cfg))
    plan = ferry.convert(src, tmp_path / "out2", to="hf")
    assert plan.notes == [f"{src / 'config.json'}: says dtype float16, the weights are bfloat16"]
