"""The CLI contract: convert --dry-run, inspect, verify, exit codes; plans of full-size models
computed from shapes alone (no bytes)."""

import json
from pathlib import Path

import torch
from helpers import leftovers, run

from ferry import formats
from ferry.canonical import canonical_shapes
from ferry.formats.base import Model, WriteOptions
from ferry.lazy import Zeros
from ferry.synthetic import llama_spec


def test_dry_run_prints_every_tensor_and_writes_nothing(gqa, tmp_path):
    code, out, _ = run("convert", gqa, tmp_path / "out", "--to", "trtllm", "--tp", "2", "--dry-run")
    assert code == 0 and not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    lines = out.splitlines()
    # per rank: embedding (replicated), 12 tensors a layer (4 layers), ln_f, lm_head (101 -> 102 rows, 51 each)
    hidden, per_rank_q, per_rank_kv, per_rank_ffn = 64, 32, 8, 48
    layer = (2 * hidden + (per_rank_q + 2 * per_rank_kv) * (hidden + 1) + hidden * (per_rank_q + 1)
             + 2 * per_rank_ffn * (hidden + 1) + hidden * (per_rank_ffn + 1))
    floats = 101 * hidden + 4 * layer + hidden + 51 * hidden
    assert lines[0] == f"plan: trtllm tp=2 pp=1, {2 * (1 + 4 * 12 + 2)} tensors, {2 * 4 * floats} bytes in 5 files"
    assert "rank1.safetensors" in lines
    assert "  transformer.layers.3.attention.qkv.weight  [48, 64]  float32" in lines
    assert "  lm_head.weight  [51, 64]  float32" in lines
    code, out, _ = run("convert", gqa, tmp_path / "out", "--to", "trtllm", "--tp", "2", "--dry-run", "--json", "--recipes")
    plan = json.loads(out)
    rank0 = next(f for f in plan["files"] if f["path"] == "rank0.safetensors")
    qkv = next(t for t in rank0["tensors"] if t["name"] == "transformer.layers.0.attention.qkv.weight")
    assert qkv["shape"] == [48, 64] and "model.layers.0.self_attn.q_proj.weight[0:32, :]" in qkv["recipe"]


def test_inspect_json(gqa):
    code, out, _ = run("inspect", gqa, "--json")
    info = json.loads(out)
    assert code == 0 and (info["format"], info["family"], info["dtype"]) == ("hf", "llama", "float32")
    assert info["spec"]["num_kv_heads"] == 2 and info["tensors"] == 4 * 16 + 3


def test_verify_passes_and_catches_a_tampered_rank(gqa, tmp_path):
    assert run("convert", gqa, tmp_path / "trt", "--to", "trtllm", "--tp", "2")[0] == 0
    code, out, _ = run("verify", gqa, tmp_path / "trt")
    assert code == 0 and out.splitlines()[-1].startswith("OK: max abs logit diff")
    from safetensors.torch import load_file, save_file

    rank1 = tmp_path / "trt" / "rank1.safetensors"
    tensors = load_file(rank1)
    qkv = tensors["transformer.layers.1.attention.qkv.weight"]
    tensors["transformer.layers.1.attention.qkv.weight"] = torch.cat([qkv[32:40], qkv[40:48], qkv[:32]])  # K, V, Q: wrong order
    save_file(tensors, rank1)
    code, out, _ = run("verify", gqa, tmp_path / "trt", "--json")
    report = json.loads(out)
    assert code == 1 and report["passed"] is False and report["fact_differences"] == [] and report["max_abs"] > 1e-2


def plan_for(spec, to, **options):
    """A plan for a full-size model from shapes alone: every canonical tensor is an unread zero."""
    tensors = {name: Zeros(shape, torch.bfloat16) for name, shape in canonical_shapes(spec).items()}
    model = Model(spec=spec, tensors=tensors, format="shapes", path=Path("."))
    return formats.get(to).plan(model, WriteOptions(**options))


def shapes(plan, file):
    return {t.name: list(t.shape) for t in next(f for f in plan.files if f.path == file).tensors}


LLAMA3_8B = dict(layers=32, hidden=4096, heads=32, kv_heads=8, ffn=14336, vocab=128256, dtype="bfloat16", rope_theta=500000.0)


def test_llama3_8b_trtllm_shapes_from_the_reference():
    """Per-rank shapes TensorRT-LLM's own converter produces for Llama-3-8B (trtllm_checkpoint.md 4.1)."""
    rank0 = shapes(plan_for(llama_spec(**LLAMA3_8B), "trtllm", tp=2), "rank0.safetensors")
    assert rank0["transformer.layers.31.attention.qkv.weight"] == [3072, 4096]
    assert rank0["transformer.layers.0.attention.dense.weight"] == [4096, 2048]
    assert rank0["transformer.layers.0.mlp.fc.weight"] == rank0["transformer.layers.0.mlp.gate.weight"] == [7168, 4096]
    assert rank0["transformer.layers.0.mlp.proj.weight"] == [4096, 7168]
    assert rank0["lm_head.weight"] == [64128, 4096] and rank0["transformer.vocab_embedding.weight"] == [128256, 4096]
    tp16 = shapes(plan_for(llama_spec(**LLAMA3_8B), "trtllm", tp=16), "rank15.safetensors")
    assert tp16["transformer.layers.0.attention.qkv.weight"] == [512, 4096]  # 2 q heads + 1 duplicated kv head


def test_llama3_70b_megatron_shapes():
    spec = llama_spec(layers=80, hidden=8192, heads=64, kv_heads=8, ffn=28672, vocab=128256, dtype="bfloat16")
    plan = plan_for(spec, "megatron", tp=8, pp=4)
    assert len(plan.files) == 1 + 32
    rank = shapes(plan, "release/mp_rank_07_003/model_optim_rng.pt")
    assert rank["decoder.layers.19.self_attention.linear_qkv.weight"] == [(64 + 2 * 8) * 128 // 8, 8192]
    assert rank["decoder.layers.0.mlp.linear_fc1.weight"] == [2 * 28672 // 8, 8192]
    assert rank["decoder.layers.0.mlp.linear_fc2.weight"] == [8192, 28672 // 8]
    assert rank["output_layer.weight"] == [-(-128256 // (128 * 8)) * 128, 8192]  # padded to a multiple of 128 * tp, split 8 ways
    assert "embedding.word_embeddings.weight" not in rank and "decoder.layers.20.mlp.linear_fc1.weight" not in rank
