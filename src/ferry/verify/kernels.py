"""The arithmetic shared by the reference forwards: norms, activations, RoPE, causal attention.
Everything runs in float32."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import UnsupportedError
from ..spec import ModelSpec


def norm(spec: ModelSpec, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if spec.norm == "rmsnorm":
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + spec.norm_eps) * weight
        return y if bias is None else y + bias
    return F.layer_norm(x, (x.shape[-1],), weight, bias, spec.norm_eps)


def activation(spec: ModelSpec, x: torch.Tensor) -> torch.Tensor:
    if spec.activation == "silu":
        return F.silu(x)
    if spec.activation == "gelu":
        return F.gelu(x)
    if spec.activation == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    return F.relu(x)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def inv_freq(spec: ModelSpec) -> torch.Tensor:
    d = spec.head_dim
    freq = 1.0 / (spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    scaling = spec.rope_scaling or {}
    kind = scaling.get("rope_type", "default")
    if kind in ("default", "dynamic"):  # dynamic only rescales past the trained length
        return freq
    if kind == "linear":
        return freq / float(scaling["factor"])
    if kind == "llama3":
        factor, low, high = float(scaling["factor"]), float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / freq
        scaled = torch.where(wavelen > old_len / low, freq / factor, freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
        return torch.where(medium, smoothed, scaled)
    raise UnsupportedError(f"the reference forward does not implement rope_type {kind!r}")


def rope(spec: ModelSpec, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [seq, head_dim] (rotate-half layout)."""
    angles = positions.float()[:, None] * inv_freq(spec)[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [batch, heads, seq, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention; q [b, nh, s, d], k/v [b, nkv, s, d] with query head i using kv head
    i // (nh / nkv). Returns [b, s, nh * d]."""
    b, nh, s, d = q.shape
    groups = nh // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
    mask = torch.ones(s, s, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(mask, float("-inf")).softmax(-1)
    return (scores @ v).transpose(1, 2).reshape(b, s, nh * d)


def heads(x: torch.Tensor, n: int, d: int) -> torch.Tensor:
    """[b, s, n*d] -> [b, n, s, d]"""
    b, s, _ = x.shape
    return x.view(b, s, n, d).transpose(1, 2)
