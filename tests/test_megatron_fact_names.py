"""The Megatron arguments ferry writes a fact under mean, in megatron-core 0.16.1's own code, what
the fact means in transformers (checked piece by piece on CPU: the window mask, which layers are
windowed, and every rope variant's angles and scale)."""

from __future__ import annotations

import argparse
from unittest import mock

import pytest
import torch

from ferry.formats.megatron_common import args_for
from ferry.synthetic import llama_spec
from ferry.verify import kernels as K

pytest.importorskip("megatron.core", reason="megatron-core is not installed (pip install -e '.[test,megatron]')")

LAYERS, HEAD_DIM, SEQ = 4, 12, 24


def spec_with(**facts):
    return llama_spec(layers=LAYERS, hidden=48, heads=4, kv_heads=2, ffn=48, vocab=67).replace(**facts)


def written(spec) -> argparse.Namespace:
    return args_for(spec, 1, 1, 128, 128, "local")


def on_cpu():
    """megatron-core moves rope tables to `torch.cuda.current_device()`; here that is the CPU."""
    return mock.patch.object(torch.cuda, "current_device", lambda: "cpu")


@pytest.mark.parametrize("window", [(5, 5, 5, 5), (5, None, 5, None), (None, None, 3, 3)])
def test_window_size_and_skip_freq_mask_what_transformers_masks(window):
    from megatron.core.transformer.utils import get_sliding_window_causal_mask, is_layer_window_attention

    args = written(spec_with(**{"attention.window": window}))
    ones = torch.ones
    for layer, w in enumerate(window):
        windowed = is_layer_window_attention(args.window_size, args.window_attn_skip_freq, layer + 1)
        assert windowed == (w is not None)
        if windowed:
            with mock.patch.object(torch, "ones", lambda *a, device=None, **k: ones(*a, **k)):
                hidden = get_sliding_window_causal_mask(SEQ, SEQ, args.window_size)  # True: masked
            q, k = torch.arange(SEQ)[:, None], torch.arange(SEQ)[None, :]
            transformers_sees = (k <= q) & (k > q - w)  # transformers' sliding_window_overlay and causal mask
            assert torch.equal(~hidden, transformers_sees)


def megatron_angles(args, rope_type: str | None) -> tuple[torch.Tensor, float]:
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import YarnRotaryEmbedding

    with on_cpu():
        if rope_type == "yarn":
            rope = YarnRotaryEmbedding(
                kv_channels=args.kv_channels, rotary_percent=args.rotary_percent, rotary_base=args.rotary_base,
                scaling_factor=args.yarn_rotary_scaling_factor,
                original_max_position_embeddings=args.yarn_original_max_position_embeddings,
                beta_fast=args.yarn_beta_fast, beta_slow=args.yarn_beta_slow, mscale=args.yarn_mscale,
                mscale_all_dim=args.yarn_mscale_all_dim,
                correction_range_round_to_int=args.yarn_correction_range_round_to_int, use_cpu_initialization=True)
            emb, scale = rope.forward(SEQ)
            return emb[:, 0, 0, :], scale
        rope = RotaryEmbedding(
            kv_channels=args.kv_channels, rotary_percent=args.rotary_percent, rotary_interleaved=args.rotary_interleaved,
            seq_len_interpolation_factor=args.rotary_seq_len_interpolation_factor, rotary_base=args.rotary_base,
            rope_scaling=args.use_rope_scaling, rope_scaling_factor=args.rope_scaling_factor, use_cpu_initialization=True)
        return rope.get_emb(SEQ)[:, 0, 0, :], 1.0


@pytest.mark.parametrize("facts", [
    {},
    {"positions.rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    {"positions.rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 8192}},
    {"positions.rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}},
    {"positions.rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8,
                                "mscale": 0.8, "mscale_all_dim": 0.5, "beta_fast": 16, "beta_slow": 2}},
    {"positions.rotary_fraction": 0.5},
    {"positions.interleaved": True},
], ids=["plain", "linear", "llama3", "yarn", "yarn-mscale", "rotary-percent", "interleaved"])
def test_rope_arguments_give_the_angles_ferrys_forward_uses(facts):
    """ferry's kernels match transformers for each of these (test_facts_roundtrip); megatron-core,
    built from the arguments ferry writes, computes the same angles and cos/sin scale."""
    spec = spec_with(**{"positions.rope_theta": 10000.0, **facts})
    args = written(spec)
    kind = (spec.rope_scaling or {}).get("rope_type")
    assert args.position_embedding_type == ("yarn" if kind == "yarn" else "rope")
    megatron, megatron_scale = megatron_angles(args, kind)
    cos, sin = K.rope(spec, torch.arange(SEQ))
    ferry_angles = torch.atan2(sin, cos)  # back from cos/sin to angles, wrapped to (-pi, pi]
    wrapped = torch.atan2(torch.sin(megatron.float()), torch.cos(megatron.float()))
    assert torch.allclose(ferry_angles, wrapped, atol=1e-5)
    scale = cos.pow(2).add(sin.pow(2)).sqrt().mean().item()
    assert abs(scale - megatron_scale) < 1e-5
