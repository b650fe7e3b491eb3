"""Reference forward over the canonical model: full tensors, one layer materialised at a time.
One decoder for every family: it reads the spec's fact groups, never a family name."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..lazy import Lazy
from ..spec import ModelSpec
from . import kernels as K


def canonical_logits(spec: ModelSpec, tensors: Mapping[str, Lazy], input_ids: torch.Tensor) -> torch.Tensor:
    """Logits [batch, seq, vocab] in float32 for `input_ids` [batch, seq]."""

    def get(name: str) -> torch.Tensor | None:
        t = tensors.get(name)
        return None if t is None else t.materialize().float()

    positions = torch.arange(input_ids.shape[1])
    x = get("embed.weight")[input_ids] * spec.embeddings.scale
    if spec.position_embedding == "learned":
        x = x + get("pos_embed.weight")[positions]
    cos, sin = K.rope(spec, positions) if spec.position_embedding == "rope" else (None, None)
    for i in range(spec.num_layers):
        p = f"layers.{i}."
        h = K.norm(spec, x, get(p + "attn_norm.weight"), get(p + "attn_norm.bias"))
        q = K.heads(K.linear(h, get(p + "attn.q.weight"), get(p + "attn.q.bias")), spec.num_heads, spec.head_dim)
        k = K.heads(K.linear(h, get(p + "attn.k.weight"), get(p + "attn.k.bias")), spec.num_kv_heads, spec.head_dim)
        v = K.heads(K.linear(h, get(p + "attn.v.weight"), get(p + "attn.v.bias")), spec.num_kv_heads, spec.head_dim)
        if cos is not None:
            q, k = K.apply_rope(q, cos, sin, spec.rope_interleaved), K.apply_rope(k, cos, sin, spec.rope_interleaved)
        ctx = K.attention(q, k, v, window=spec.attention.window_of(i), scale=spec.attention.scale,
                          softcap=spec.attention.softcap)
        attn = K.linear(ctx, get(p + "attn.o.weight"), get(p + "attn.o.bias"))
        # parallel residual: the MLP reads the layer's input (through its own norm), not x + attn
        x_mlp = x if spec.residual.parallel else x + attn
        h = K.norm(spec, x_mlp, get(p + "mlp_norm.weight"), get(p + "mlp_norm.bias"))
        up = K.linear(h, get(p + "mlp.up.weight"), get(p + "mlp.up.bias"))
        if spec.gated_mlp:
            act = K.activation(spec, K.linear(h, get(p + "mlp.gate.weight"), get(p + "mlp.gate.bias"))) * up
        else:
            act = K.activation(spec, up)
        mlp = K.linear(act, get(p + "mlp.down.weight"), get(p + "mlp.down.bias"))
        x = x_mlp + attn + mlp if spec.residual.parallel else x_mlp + mlp
    x = K.norm(spec, x, get("final_norm.weight"), get("final_norm.bias"))
    head = get("lm_head.weight") if "lm_head.weight" in tensors else get("embed.weight")
    return K.logit_cap(spec, K.linear(x, head))
