"""The canonical tensor names and shapes of a ModelSpec: one naming for every format.

Full, unsharded, unpadded tensors in torch [out, in] orientation; q, k, v separate; gate and up
separate (`mlp.gate` is the activated branch of a gated MLP, `mlp.up` the linear one, or the only
input projection of a plain MLP); true vocabulary size.
"""

from __future__ import annotations

from .errors import CheckpointError
from .spec import ModelSpec


def layer_shapes(s: ModelSpec, i: int) -> dict[str, tuple[int, ...]]:
    p, H, F = f"layers.{i}.", s.hidden_size, s.ffn_hidden_size
    shapes = {
        p + "attn_norm.weight": (H,),
        p + "attn.q.weight": (s.q_size, H),
        p + "attn.k.weight": (s.kv_size, H),
        p + "attn.v.weight": (s.kv_size, H),
        p + "attn.o.weight": (H, s.q_size),
        p + "mlp_norm.weight": (H,),
        p + "mlp.up.weight": (F, H),
        p + "mlp.down.weight": (H, F),
    }
    if s.norm_bias:
        shapes[p + "attn_norm.bias"] = (H,)
        shapes[p + "mlp_norm.bias"] = (H,)
    if s.qkv_bias:
        shapes.update({p + "attn.q.bias": (s.q_size,), p + "attn.k.bias": (s.kv_size,), p + "attn.v.bias": (s.kv_size,)})
    if s.attn_out_bias:
        shapes[p + "attn.o.bias"] = (H,)
    if s.gated_mlp:
        shapes[p + "mlp.gate.weight"] = (F, H)
    if s.mlp_bias:
        shapes[p + "mlp.up.bias"] = (F,)
        shapes[p + "mlp.down.bias"] = (H,)
        if s.gated_mlp:
            shapes[p + "mlp.gate.bias"] = (F,)
    return shapes


def canonical_shapes(s: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor the spec implies, in a stable order (embedding, layers, head)."""
    shapes = {"embed.weight": (s.vocab_size, s.hidden_size)}
    if s.position_embedding == "learned":
        shapes["pos_embed.weight"] = (s.max_position_embeddings, s.hidden_size)
    for i in range(s.num_layers):
        shapes.update(layer_shapes(s, i))
    shapes["final_norm.weight"] = (s.hidden_size,)
    if s.norm_bias:
        shapes["final_norm.bias"] = (s.hidden_size,)
    if not s.tie_word_embeddings:
        shapes["lm_head.weight"] = (s.vocab_size, s.hidden_size)
    return shapes


def check_shapes(s: ModelSpec, tensors: dict, where: str) -> None:
    """Every tensor present, none extra, each with the shape the spec implies."""
    expected = canonical_shapes(s)
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(f"{where}: no tensor for {name} (internal: the format reader did not produce it)")
        got = tuple(tensors[name].shape)
        if got != shape:
            raise CheckpointError(f"{where}: {name} has shape {list(got)}, but the model config implies {list(shape)}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise CheckpointError(f"{where}: tensors {extra[:3]} are not part of the model the config describes")
