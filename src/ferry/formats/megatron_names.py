"""Megatron-core GPTModel tensor names and layouts (both legacy and torch_dist use these names;
torch_dist stacks `decoder.layers.<i>.X` into one `decoder.layers.X` of shape [L, ...]).

Gathered over TP ranks (what the rules see):
  linear_qkv   [ng * (nh/ng + 2) * hd, H], per query group: its nh/ng query heads, its k, its v;
               each TP rank holds whole groups, so the gather is a plain concatenation.
  linear_fc1   gated: each rank holds [gate_r; up_r], so the gather is [g_0; u_0; g_1; u_1; ...]
               (at tp=1, and in torch_dist always, simply [gate; up]).
  embeddings   vocabulary padded to a multiple of make_vocab_size_divisible_by * tp.
Norm names depend on the layer spec: local (`input_layernorm`, `pre_mlp_layernorm`) or
Transformer Engine, where the norms are fused into the next linear (`linear_qkv.layer_norm_weight`,
`linear_fc1.layer_norm_weight`); torch_dist always uses the TE names.
"""

from __future__ import annotations

import re

from ..errors import CheckpointError
from ..lazy import Lazy, Squeeze
from ..ops import Deinterleave, Resize
from ..parallel import StageLayout
from ..rules import COLUMN, ROW, Geometry, Rule

D, C = "decoder.layers.{layer}.", "layers.{layer}."
QKV = (C + "attn.q.weight", C + "attn.k.weight", C + "attn.v.weight")
QKV_BIAS = (C + "attn.q.bias", C + "attn.k.bias", C + "attn.v.bias")

LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")
LAYOUT = StageLayout(r"decoder\.layers\.(\d+)\.(.+)", "decoder.layers.{layer}.{rest}", ("embedding.",))

NORM_NAMES = {
    "local": {"attn": "input_layernorm", "mlp": "pre_mlp_layernorm"},
    "te": {"attn": "self_attention.linear_qkv.layer_norm", "mlp": "mlp.linear_fc1.layer_norm"},
}
LINEARS = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")


def per_query_group(g: Geometry):
    s = g.spec
    return (Deinterleave(s.num_kv_heads, (s.heads_per_group * s.head_dim, s.head_dim, s.head_dim)),)


def gate_up_per_rank(g: Geometry):
    f = g.spec.ffn_hidden_size // g.tp
    return (Deinterleave(g.tp, (f, f)),)


def _padded(name: str):
    def ops(g: Geometry):  # stored rows: vocabulary, then padding (the source's own rows, or zeros)
        return (Resize(0, g.padded_vocab, g.spec.vocab_size, (g.vocab_fill or {}).get(name)),)

    return ops


padded_embedding, padded_head = _padded("embed.weight"), _padded("lm_head.weight")


def _gated(g):
    return g.spec.gated_mlp


def _plain(g):
    return not g.spec.gated_mlp


def _tied_copy(g):  # the last pipeline stage keeps its own copy of a tied embedding
    return g.spec.tie_word_embeddings and g.pp > 1


def _norm(which: str, spec_names: dict, suffix: str) -> str:
    name = spec_names[which]
    return D + (f"{name}_{suffix}" if name.endswith("layer_norm") else f"{name}.{suffix}")


def rules(norms: str) -> tuple[Rule, ...]:
    """In the order of Megatron's own state_dict (so written files list keys as Megatron does)."""
    n = NORM_NAMES[norms]
    return (
        Rule("embedding.word_embeddings.weight", "embed.weight", ops=padded_embedding, shard=COLUMN),
        Rule("embedding.position_embeddings.weight", "pos_embed.weight"),
        Rule(_norm("attn", n, "weight"), C + "attn_norm.weight"),
        Rule(_norm("attn", n, "bias"), C + "attn_norm.bias"),
        Rule(D + "self_attention.linear_proj.weight", C + "attn.o.weight", shard=ROW),
        Rule(D + "self_attention.linear_proj.bias", C + "attn.o.bias"),
        Rule(D + "self_attention.linear_qkv.weight", QKV, ops=per_query_group, shard=COLUMN),
        Rule(D + "self_attention.linear_qkv.bias", QKV_BIAS, ops=per_query_group, shard=COLUMN),
        Rule(_norm("mlp", n, "weight"), C + "mlp_norm.weight"),
        Rule(_norm("mlp", n, "bias"), C + "mlp_norm.bias"),
        Rule(D + "mlp.linear_fc1.weight", (C + "mlp.gate.weight", C + "mlp.up.weight"), ops=gate_up_per_rank, shard=COLUMN, when=_gated),
        Rule(D + "mlp.linear_fc1.bias", (C + "mlp.gate.bias", C + "mlp.up.bias"), ops=gate_up_per_rank, shard=COLUMN, when=_gated),
        Rule(D + "mlp.linear_fc1.weight", C + "mlp.up.weight", shard=COLUMN, when=_plain),
        Rule(D + "mlp.linear_fc1.bias", C + "mlp.up.bias", shard=COLUMN, when=_plain),
        Rule(D + "mlp.linear_fc2.weight", C + "mlp.down.weight", shard=ROW),
        Rule(D + "mlp.linear_fc2.bias", C + "mlp.down.bias"),
        Rule("decoder.final_layernorm.weight", "final_norm.weight"),
        Rule("decoder.final_layernorm.bias", "final_norm.bias"),
        Rule("output_layer.weight", "lm_head.weight", ops=padded_head, shard=COLUMN),
        Rule("output_layer.weight", "embed.weight", ops=padded_embedding, shard=COLUMN, when=_tied_copy, copy=True),
    )


RULES = {norms: rules(norms) for norms in NORM_NAMES}


def strip_prefix(names) -> str:
    """NeMo wraps the model: every key starts with `model.` (NeMo 1) or `module.` (NeMo 2)."""
    names = [n for n in names]
    for prefix in ("model.", "module."):
        if names and all(n.startswith(prefix) for n in names):
            return prefix
    return ""


def norm_style(names) -> str:
    return "te" if any(".linear_qkv.layer_norm_weight" in n for n in names) else "local"


def vocab_padding(fetch, spec, padded: int) -> dict:
    """The rows a Megatron checkpoint keeps after the true vocabulary (trained along with it:
    they take part in the softmax), so that a Megatron -> Megatron reshard keeps them."""
    out = {}
    names = {"embed.weight": "embedding.word_embeddings.weight"}
    if not spec.tie_word_embeddings:
        names["lm_head.weight"] = "output_layer.weight"
    for canonical, stored in names.items():
        full = fetch(stored, (padded, spec.hidden_size), COLUMN)
        out[canonical] = full.narrow(0, spec.vocab_size, padded - spec.vocab_size)
    return out


def layer_tensor(stored: dict, name: str, num_layers: int, where) -> tuple[Lazy, str]:
    """`decoder.layers.<i>.X` from a dict that has it per layer, or stacked as `decoder.layers.X`
    [L, ...] (torch_dist, and the state dicts NeMo hands to exporters). Returns (tensor, key used)."""
    if name in stored:
        return stored[name], name
    m = LAYER.fullmatch(name)
    stacked = f"decoder.layers.{m.group(2)}" if m else None
    if stacked in stored:
        t = stored[stacked]
        if t.shape[0] != num_layers:
            raise CheckpointError(f"{where}: {stacked} stacks {t.shape[0]} layers, the config says {num_layers}")
        return Squeeze(t.narrow(0, int(m.group(1)), 1), 0), stacked
    raise CheckpointError(f"{where}: missing tensor {stacked or name}")
