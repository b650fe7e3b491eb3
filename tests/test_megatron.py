"""Megatron-core checkpoints (fixtures written by real megatron-core 0.16.1) in and out."""

import shutil
from pathlib import Path

import pytest
import torch
from helpers import Exploit, ferry_logits, hf_logits, leftovers, run

import ferry

DATA = Path(__file__).parent / "data" / "megatron"
FIXTURES = ["llama/tp1", "llama/tp2", "gpt/tp1", "gpt/tp2"]
PIPELINED = {"gpt/tp2pp2": "gpt/tp1", "llama4/tp2pp2": "llama4/tp1"}  # same weights as their tp1 source


def reference(variant: str):
    ref = torch.load(DATA / variant / "ref_logits.pt", weights_only=False)
    return ref["input_ids"], ref["logits"][..., : ref["vocab_size"]]


def megatron_state(path: Path) -> dict:
    return torch.load(path, weights_only=False)["model"]


@pytest.mark.parametrize("layout", ["legacy", "torch_dist"])
@pytest.mark.parametrize("variant", FIXTURES + list(PIPELINED))
def test_to_hf_matches_megatron_logits(tmp_path, variant, layout):
    ferry.convert(DATA / variant / layout, tmp_path / "hf", to="hf")
    ids, expected = reference(PIPELINED.get(variant, variant))
    assert (hf_logits(tmp_path / "hf", ids) - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("layout", ["legacy", "torch_dist"])
@pytest.mark.parametrize("variant", FIXTURES)
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_to_trtllm_per_rank_logits_match_megatron(tmp_path, variant, layout, tp):
    ferry.convert(DATA / variant / layout, tmp_path / "trt", to="trtllm", tp=tp)
    ids, expected = reference(variant)
    assert (ferry_logits(tmp_path / "trt", ids) - expected).abs().max().item() <= 1e-4


def test_bf16_checkpoint_matches_fp32_math_on_bf16_weights(tmp_path):
    ferry.convert(DATA / "llama_bf16/tp1/legacy", tmp_path / "hf", to="hf")
    assert ferry.inspect(tmp_path / "hf")["dtype"] == "bfloat16"
    ref = torch.load(DATA / "llama_bf16/tp1/ref_logits.pt", weights_only=False)
    got = hf_logits(tmp_path / "hf", ref["input_ids"])  # loaded as float32: fp32 math on the bf16 weights
    assert (got - ref["logits_fp32_math"][..., :1000]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("src,expected,tp,pp", [
    ("llama/tp2", "llama/tp1", 1, 1),
    ("gpt/tp2", "gpt/tp1", 1, 1),
    ("llama/tp1", "llama/tp2", 2, 1),
    ("gpt/tp1", "gpt/tp2pp2", 2, 2),
    ("llama4/tp2pp2", "llama4/tp1", 1, 1),
])
def test_legacy_reshard_is_bit_exact_with_megatrons_own(tmp_path, src, expected, tp, pp):
    """Megatron's own TP/PP variants (made by megatron-core's resharding loader) are the oracle,
    padding rows of the vocabulary included."""
    ferry.convert(DATA / src / "legacy", tmp_path / "out", to="megatron", tp=tp, pp=pp)
    theirs = sorted((DATA / expected / "legacy" / "iter_0000001").glob("mp_rank_*"))
    ours = sorted((tmp_path / "out" / "iter_0000001").glob("mp_rank_*"))
    assert [p.name for p in ours] == [p.name for p in theirs]
    for a, b in zip(theirs, ours):
        want, got = megatron_state(a / "model_optim_rng.pt"), megatron_state(b / "model_optim_rng.pt")
        assert list(want) == list(got), a.name
        for key, value in want.items():
            assert (value is None and got[key] is None) or torch.equal(value, got[key]), f"{a.name}: {key}"
    assert (tmp_path / "out" / "latest_checkpointed_iteration.txt").read_text() == "1"


@pytest.mark.parametrize("to", ["megatron", "megatron-dist"])
def test_hf_to_megatron_and_back(tmp_path, models, to):
    ferry.convert(models["gqa"], tmp_path / "mg", to=to, tp=2, pp=2, dtype="bfloat16")
    info = ferry.inspect(tmp_path / "mg")
    assert (info["format"], info["parallel"], info["dtype"]) == (to, {"tp": 2, "pp": 2}, "bfloat16")
    assert (tmp_path / "mg" / "latest_checkpointed_iteration.txt").read_text() == "release"
    ferry.convert(tmp_path / "mg", tmp_path / "hf", to="hf")
    from helpers import safetensors_dir

    original, back = safetensors_dir(models["gqa"]), safetensors_dir(tmp_path / "hf")
    assert original.keys() == back.keys()
    for name, t in original.items():
        assert torch.equal(back[name], t.to(torch.bfloat16)), name


@pytest.mark.parametrize("to", ["megatron", "megatron-dist", "trtllm"])
def test_files_written_at_once_give_the_same_bytes_every_time(tmp_path, models, to):
    def written(out):
        ferry.convert(models["gqa"], out, to=to, tp=2, pp=2, threads=4)
        return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    first, second = written(tmp_path / "a"), written(tmp_path / "b")
    assert len(first) >= 4 and first == second


def test_transformer_engine_names_and_nemo_prefix(tmp_path):
    """Real Megatron-LM runs use the TE layer spec, whose norms live inside the next linear."""
    src = tmp_path / "te" / "iter_0000001" / "mp_rank_00"
    src.mkdir(parents=True)
    state = torch.load(DATA / "llama/tp1/legacy/iter_0000001/mp_rank_00/model_optim_rng.pt", weights_only=False)
    renamed = {}
    for key, value in state["model"].items():
        key = key.replace("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight")
        key = key.replace("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight")
        renamed["module." + key] = value
    state["model"] = renamed
    torch.save(state, src / "model_optim_rng.pt")
    ferry.convert(tmp_path / "te" / "iter_0000001", tmp_path / "hf", to="hf")
    ids, expected = reference("llama/tp1")
    assert (hf_logits(tmp_path / "hf", ids) - expected).abs().max().item() <= 1e-4
    ferry.convert(tmp_path / "te" / "iter_0000001", tmp_path / "again", to="megatron")
    keys = megatron_state(tmp_path / "again" / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt")
    assert "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight" in keys  # the source's layer spec is kept


def test_inspect_shows_iteration_parallelism_and_ranks():
    info = ferry.inspect(DATA / "gpt/tp2pp2/legacy")
    assert (info["format"], info["family"], info["parallel"]) == ("megatron", "gpt2", {"tp": 2, "pp": 2})
    details = info["details"]
    assert details["iteration"] == 1 and details["padded_vocab"] == 1024
    assert [(r["file"], r["layers"]) for r in details["ranks"]] == [
        ("mp_rank_00_000/model_optim_rng.pt", [0, 1]), ("mp_rank_01_000/model_optim_rng.pt", [0, 1]),
        ("mp_rank_00_001/model_optim_rng.pt", [1, 2]), ("mp_rank_01_001/model_optim_rng.pt", [1, 2]),
    ]
    code, out, _ = run("inspect", DATA / "llama/tp2/torch_dist")
    assert code == 0 and "megatron-dist checkpoint, family llama, float32" in out




def test_hostile_model_optim_rng_is_refused(tmp_path):
    root = tmp_path / "evil"
    shutil.copytree(DATA / "gpt/tp1/legacy", root)
    target = root / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"
    state = torch.load(target, weights_only=False)
    state["rng_state"] = Exploit(tmp_path / "pwned")
    target.chmod(0o644)
    torch.save(state, target)
    code, _, stderr = run("convert", root, tmp_path / "out", "--to", "hf")
    assert code == 2
    assert stderr == (f"ferry: error: {target}: refusing to load global 'posix.system' (only tensors, "
                      "argparse.Namespace, numpy RNG state and plain data are allowed); nothing from this file was run\n")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_missing_rank_directory(tmp_path):
    root = tmp_path / "ck"
    shutil.copytree(DATA / "llama4/tp2pp2/legacy", root)
    shutil.rmtree(root / "iter_0000001" / "mp_rank_01_000")
    code, _, stderr = run("convert", root, tmp_path / "out", "--to", "hf")
    assert (code, stderr) == (2, f"ferry: error: {root / 'iter_0000001' / 'mp_rank_01_000'}: missing (other ranks imply tp=2 pp=2)\n")


def test_true_vocab_missing_from_args(tmp_path):
    root = tmp_path / "ck" / "iter_0000001" / "mp_rank_00"
    root.mkdir(parents=True)
    state = torch.load(DATA / "gpt/tp1/legacy/iter_0000001/mp_rank_00/model_optim_rng.pt", weights_only=False)
    state["args"].vocab_size = None  # Megatron-LM records it only for some tokenizers
    torch.save(state, root / "model_optim_rng.pt")
    code, _, stderr = run("convert", root.parent, tmp_path / "out", "--to", "hf")
    assert (code, stderr) == (2, f"ferry: error: {root / 'model_optim_rng.pt'}: args record no true vocabulary size "
                                 "(padded_vocab_size is 1024); pass --vocab-size with your tokenizer's vocabulary size\n")
    code, _, _ = run("convert", root.parent, tmp_path / "out", "--to", "hf", "--vocab-size", "1000")
    ids, expected = reference("gpt/tp1")
    assert code == 0 and (hf_logits(tmp_path / "out", ids) - expected).abs().max().item() <= 1e-4


def test_megatron_tp_must_split_query_groups(tmp_path):
    code, _, stderr = run("convert", DATA / "llama/tp1/legacy", tmp_path / "out", "--to", "megatron", "--tp", "4")
    assert (code, stderr) == (2, "ferry: error: --tp 4: Megatron needs tp to divide num_query_groups (2)\n")
