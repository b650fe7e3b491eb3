"""The property behind "nothing silently lost": for every family, every fact variant ferry
supports and every format (several tp/pp), HF -> X -> HF gives back the same config facts (as
transformers reads them), the same metadata, and the same logits in transformers at a length that
crosses every window and rope boundary of the config -- or the conversion is refused with one
line naming the fact. Tiny models: 2 layers, hidden 32, 16 trained positions, probe of 24 tokens."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from helpers import hf_logits, make_tiny, run

import ferry
from ferry.facts import differing_facts

SEQ = 24  # > max_position_embeddings (16), > every original_max_position_embeddings (8), > the window (5)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
VARIANTS = {
    "llama": ("llama", {}),
    "llama-tied": ("llama", {"tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True}),
    "llama-gated-gelu": ("llama", {"hidden_act": "gelu"}),
    "llama-gated-relu": ("llama", {"hidden_act": "relu"}),
    "llama-rope-linear": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "llama-rope-dynamic": ("llama", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}),
    "llama-rope-yarn": ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 8}}),
    "llama-rope-yarn-mscale": ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8,
                                                          "mscale": 0.8, "mscale_all_dim": 0.5, "beta_fast": 16}}),
    "llama-rope-yarn-attention-factor": ("llama", {"rope_scaling": {"rope_type": "yarn", "factor": 2.0, "attention_factor": 1.3,
                                                                    "original_max_position_embeddings": 8}}),
    "llama-rope-longrope": ("llama", {"rope_scaling": {"rope_type": "longrope", "original_max_position_embeddings": 8,
                                                       "short_factor": [1.0, 1.1, 1.3, 1.7, 1.9, 2.0],
                                                       "long_factor": [1.5, 2.0, 3.0, 4.0, 5.0, 6.0]}}),
    "llama-rope-llama3": ("llama", {"rope_scaling": {**LLAMA3, "original_max_position_embeddings": 8}}),
    "llama-rope-llama3-megatron": ("llama", {"rope_scaling": {**LLAMA3, "original_max_position_embeddings": 8192}}),
    "mistral-window": ("mistral", {"sliding_window": 5}),
    "mistral-no-window": ("mistral", {"sliding_window": None}),
    "gpt2-gelu-tanh": ("gpt2", {"activation_function": "gelu_new"}),
    "gpt2-gelu": ("gpt2", {"activation_function": "gelu"}),
    "gpt2-relu": ("gpt2", {"activation_function": "relu"}),
}
PATHS = {
    "hf": ("hf", {}),
    "trtllm-tp1": ("trtllm", {}),
    "trtllm-tp2-pp2": ("trtllm", {"tp": 2, "pp": 2}),
    "megatron-tp1": ("megatron", {}),
    "megatron-tp2-pp2": ("megatron", {"tp": 2, "pp": 2}),
    "megatron-dist-tp2": ("megatron-dist", {"tp": 2}),
    "megatron-dist-pp2": ("megatron-dist", {"pp": 2}),
}
# the only refusals: TensorRT-LLM's checkpoint config has no attention window
REFUSED = {(v, p): "attention.window = 5 tokens on every layer: TensorRT-LLM MistralForCausalLM (release 1.2 config) cannot hold it"
           for v in ("mistral-window",) for p in PATHS if p.startswith("trtllm")}
# facts Megatron-LM's arguments cannot hold: kept in ferry's record, with a note naming them
RECORDED = {"llama-gated-gelu": "mlp.activation", "llama-gated-relu": "mlp.activation", "gpt2-relu": "mlp.activation",
            "llama-rope-dynamic": "positions.rope_scaling", "llama-rope-longrope": "positions.rope_scaling",
            "llama-rope-llama3": "positions.rope_scaling", "llama-rope-yarn-attention-factor": "positions.rope_scaling"}
# what transformers reads from config.json that changes the computation, or is metadata to keep
CONFIG_FIELDS = ("architectures", "model_type", "rope_parameters", "sliding_window", "hidden_act", "activation_function",
                 "tie_word_embeddings", "attention_bias", "mlp_bias", "head_dim", "max_position_embeddings",
                 "bos_token_id", "eos_token_id", "pad_token_id", "dtype", "rms_norm_eps", "layer_norm_epsilon")
OUTCOMES: Counter = Counter()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Each variant as an HF checkpoint, with transformers' logits on a probe longer than every boundary."""
    root = tmp_path_factory.mktemp("facts")
    ids = torch.randint(0, 67, (2, SEQ), generator=torch.Generator().manual_seed(7))
    out = {}
    for name, (arch, config) in VARIANTS.items():
        path = make_tiny(root / name, arch, **json.loads(json.dumps(config)))
        (path / "tokenizer_config.json").write_text('{"model_max_length": 16}')
        out[name] = (path, hf_logits(path, ids))
    return out, ids


def transformers_config(path) -> dict:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path)
    return {k: getattr(cfg, k, "absent") for k in CONFIG_FIELDS}


@pytest.mark.parametrize("path_name", PATHS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_hf_through_every_format_and_back(sources, tmp_path, variant, path_name):
    by_name, ids = sources
    src, expected = by_name[variant]
    fmt, parallel = PATHS[path_name]
    mid, back = tmp_path / "mid", tmp_path / "back"
    if (variant, path_name) in REFUSED:
        code, out, err = run("convert", src, mid, "--to", fmt, *[f"--{k}={v}" for k, v in parallel.items()])
        assert code == 2 and not mid.exists() and len(err.splitlines()) == 1
        assert err.startswith(f"ferry: error: {REFUSED[variant, path_name]}"), err
        OUTCOMES["refused"] += 1
        return
    plan = ferry.convert(src, mid, to=fmt, **parallel)
    if fmt.startswith("megatron") and variant in RECORDED:
        assert any(n.startswith(RECORDED[variant]) and "ferry's record" in n for n in plan.notes), plan.notes
    ferry.convert(mid, back, to="hf")
    problems = []
    with ferry.read(src) as a, ferry.read(mid) as m, ferry.read(back) as b:
        problems += [f"{path_name}: {d}" for d in differing_facts(a.spec, m.spec)]
        problems += [f"back: {d}" for d in differing_facts(a.spec, b.spec)]
    want, got = transformers_config(src), transformers_config(back)
    problems += [f"config {k}: {want[k]!r} -> {got[k]!r}" for k in CONFIG_FIELDS if want[k] != got[k]]
    for aux in ("generation_config.json", "tokenizer_config.json"):
        if (back / aux).read_bytes() != (src / aux).read_bytes():
            problems.append(f"{aux} changed")
    diff = (hf_logits(back, ids) - expected).abs().max().item()
    if diff > 1e-5:
        problems.append(f"logits differ by {diff:.3g}")
    OUTCOMES["silently changed" if problems else "carried"] += 1
    assert problems == []


def test_matrix_counts():
    """Runs after the matrix: every case carried or refused, none silently changed."""
    cases = len(VARIANTS) * len(PATHS)
    if sum(OUTCOMES.values()) != cases:
        pytest.skip("run with the whole matrix to count it")
    print(f"\nfacts round trip: {len(VARIANTS)} variants x {len(PATHS)} paths = {cases} cases: "
          f"{OUTCOMES['carried']} carried, {OUTCOMES['refused']} refused, {OUTCOMES['silently changed']} silently changed")
    assert OUTCOMES["silently changed"] == 0 and OUTCOMES["refused"] == len(REFUSED)


NEUTRAL = {"positions.rope_scaling": None, "attention.window": None, "mlp.activation": "silu"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_forward_matches_transformers_past_every_boundary(sources, variant):
    """ferry's forward (what `verify` runs) reproduces transformers for every variant; and with
    the variant's fact dropped it would not, so the probe does cross that fact's boundary."""
    from ferry.verify.forward import canonical_logits

    by_name, ids = sources
    src, expected = by_name[variant]
    with ferry.read(src) as model, torch.no_grad():
        assert (canonical_logits(model.spec, model.tensors, ids) - expected).abs().max().item() <= 1e-5
        for fact, neutral in NEUTRAL.items():
            group, key = fact.split(".")
            if getattr(getattr(model.spec, group), key) not in (neutral, None) and model.spec.mlp.gated:
                dropped = model.spec.replace(**{fact: neutral})
                assert (canonical_logits(dropped, model.tensors, ids) - expected).abs().max().item() > 1e-3, fact


@pytest.mark.parametrize("facts, args", [
    ({"attention.window": (5, 5)}, {"window_size": (4, 0), "window_attn_skip_freq": None}),
    ({"attention.window": (5, None)}, {"window_size": (4, 0), "window_attn_skip_freq": [1, 0]}),
    ({"positions.rope_scaling": {"rope_type": "linear", "factor": 2.0}}, {"rotary_seq_len_interpolation_factor": 2.0}),
    ({"positions.rope_scaling": {**LLAMA3, "original_max_position_embeddings": 8192}},
     {"use_rope_scaling": True, "rope_scaling_factor": 8.0}),
    ({"positions.rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}},
     {"position_embedding_type": "yarn", "yarn_rotary_scaling_factor": 4.0, "yarn_original_max_position_embeddings": 8}),
    ({"positions.rotary_fraction": 0.5}, {"rotary_percent": 0.5}),
    ({"positions.interleaved": True}, {"rotary_interleaved": True}),
    ({"norms.offset": 1.0}, {"apply_layernorm_1p": True}),
    ({"attention.scale": 0.25}, {"softmax_scale": 0.25}),
    ({"mlp.activation": "gelu", "mlp.gated": False}, {"swiglu": False, "openai_gelu": False}),
    ({"mlp.activation": "gelu_tanh", "mlp.gated": False}, {"swiglu": False, "openai_gelu": True}),
])
def test_megatron_arguments_hold_these_facts_without_ferrys_record(facts, args):
    """Written under megatron-core 0.16.1's names and read back from them alone (no args.ferry)."""
    import argparse

    from ferry.formats.megatron_common import args_for, check_facts, spec_from_args
    from ferry.synthetic import llama_spec

    spec = llama_spec(layers=2, hidden=32, heads=4, kv_heads=2, ffn=48, vocab=67)
    if facts.get("mlp.gated") is False:  # a GPT-2 graph
        spec = spec.replace(family="gpt2", num_kv_heads=4, head_dim=8, **{
            "norms.kind": "layernorm", "norms.bias": True, "positions.kind": "learned", "attention.qkv_bias": True,
            "attention.out_bias": True, "mlp.bias": True})
    spec = spec.replace(**facts)
    assert check_facts(spec) == []  # nothing left to the record
    written = vars(args_for(spec, 1, 1, 128, 128, "local"))
    assert {k: written[k] for k in args} == args
    del written["ferry"]
    back, _ = spec_from_args(argparse.Namespace(**written), "args")
    assert differing_facts(spec, back) == []
