"""The arithmetic shared by the reference forwards: norms, activations, RoPE (every scaling
transformers implements), causal attention with windows and soft-caps. Everything runs in float32
and follows the facts of a ModelSpec, never a family name."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import UnsupportedError
from ..spec import ModelSpec


def norm(spec: ModelSpec, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    weight = weight + spec.norms.offset if spec.norms.offset else weight
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
    if spec.activation == "relu":
        return F.relu(x)
    raise UnsupportedError(f"the reference forward does not implement activation {spec.activation!r}")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def _base_inv_freq(theta: float, dim: int) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _yarn(spec: ModelSpec, s: dict, dim: int) -> tuple[torch.Tensor, float]:
    base, factor = spec.rope_theta, float(s["factor"])
    original = s["original_max_position_embeddings"]
    attention = s.get("attention_factor")
    if attention is None:
        def mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
        if s.get("mscale") and s.get("mscale_all_dim"):
            attention = mscale(factor, s["mscale"]) / mscale(factor, s["mscale_all_dim"])
        else:
            attention = mscale(factor)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations):  # the dimension whose wavelength fits `rotations` times in `original`
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolate = 1 - ramp  # share of the unscaled frequency, per channel pair
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
    return inv, float(attention)


def inv_freq(spec: ModelSpec, seq_len: int) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [rotary_dim / 2], cos/sin scale) for a forward over `seq_len`
    positions, as transformers computes them (dynamic and longrope depend on the length)."""
    dim = spec.positions.rotary_dim(spec.head_dim)
    theta = spec.rope_theta
    s = spec.rope_scaling or {}
    kind = s.get("rope_type", "default")
    if kind == "default":
        return _base_inv_freq(theta, dim), 1.0
    if kind == "linear":
        return _base_inv_freq(theta, dim) / float(s["factor"]), 1.0
    if kind == "dynamic":  # NTK: the base grows once the sequence passes the trained length
        trained = spec.max_position_embeddings
        length = max(seq_len, trained)
        factor = float(s["factor"])
        theta = theta * ((factor * length / trained) - (factor - 1)) ** (dim / (dim - 2))
        return _base_inv_freq(theta, dim), 1.0
    if kind == "yarn":
        return _yarn(spec, s, dim)
    if kind == "longrope":
        original = s["original_max_position_embeddings"]
        factor = s.get("factor") or spec.max_position_embeddings / original
        attention = s.get("attention_factor")
        if attention is None:
            attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
        ext = torch.tensor(s["long_factor"] if seq_len > original else s["short_factor"], dtype=torch.float32)
        shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
        return 1.0 / (ext * theta**shape), float(attention)
    if kind == "llama3":
        freq = _base_inv_freq(theta, dim)
        factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
        old_len = float(s["original_max_position_embeddings"])
        wavelen = 2 * math.pi / freq
        scaled = torch.where(wavelen > old_len / low, freq / factor, freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
        return torch.where(medium, smoothed, scaled), 1.0
    raise UnsupportedError(f"the reference forward does not implement rope_type {kind!r}")


def rope(spec: ModelSpec, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [seq, rotary_dim], laid out for `apply_rope` (rotate-half or interleaved)."""
    freq, scale = inv_freq(spec, int(positions.max()) + 1)
    angles = positions.float()[:, None] * freq[None, :]
    if spec.rope_interleaved:
        emb = angles.repeat_interleave(2, dim=-1)
    else:
        emb = torch.cat([angles, angles], dim=-1)
    return emb.cos() * scale, emb.sin() * scale


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """x: [batch, heads, seq, head_dim]; the first cos.shape[-1] channels rotate, the rest pass."""
    rot, rest = x[..., : cos.shape[-1]], x[..., cos.shape[-1]:]
    if interleaved:  # pairs (2i, 2i+1)
        even, odd = rot[..., 0::2], rot[..., 1::2]
        rotated = torch.stack([-odd, even], dim=-1).flatten(-2)
    else:  # pairs (i, i + d/2)
        half = rot.shape[-1] // 2
        rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
    return torch.cat([rot * cos + rotated * sin, rest], dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int | None = None,
              scale: float | None = None, softcap: float | None = None) -> torch.Tensor:
    """Causal attention; q [b, nh, s, d], k/v [b, nkv, s, d] with query head i using kv head
    i // (nh / nkv). A window of W lets each query see itself and the W - 1 tokens before it
    (transformers' sliding_window). Returns [b, s, nh * d]."""
    b, nh, s, d = q.shape
    groups = nh // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-1, -2)) * (1 / math.sqrt(d) if scale is None else scale)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    pos = torch.arange(s)
    distance = pos[:, None] - pos[None, :]  # query - key
    hidden = distance < 0
    if window is not None:
        hidden = hidden | (distance >= window)
    scores = scores.masked_fill(hidden, float("-inf")).softmax(-1)
    return (scores @ v).transpose(1, 2).reshape(b, s, nh * d)


def heads(x: torch.Tensor, n: int, d: int) -> torch.Tensor:
    """[b, s, n*d] -> [b, n, s, d]"""
    b, s, _ = x.shape
    return x.view(b, s, n, d).transpose(1, 2)


def logit_cap(spec: ModelSpec, logits: torch.Tensor) -> torch.Tensor:
    cap = spec.embeddings.logit_softcap
    return logits if cap is None else cap * torch.tanh(logits / cap)
