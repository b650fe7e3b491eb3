"""Random checkpoints of any shape, written through ferry's own planner and executor (so a
multi-gigabyte test model costs no more memory than converting one). Used by `ferry demo`, the
tests and bench/."""

from __future__ import annotations

import zlib
from pathlib import Path

from . import formats
from .canonical import canonical_shapes
from .dtypes import dtype_from_name
from .executor import execute
from .formats.base import Model, WriteOptions
from .lazy import Lazy
from .spec import FLAT, ModelSpec


class Random(Lazy):
    """Deterministic pseudo-random values: normal(mean, std), seeded by (seed, name)."""

    def __init__(self, shape, dtype, seed: int, mean: float = 0.0, std: float = 0.02):
        self.shape, self.dtype = tuple(shape), dtype
        self.seed, self.mean, self.std = seed, mean, std

    def fill(self, out):
        import torch

        g = torch.Generator().manual_seed(self.seed)
        out.copy_(torch.randn(self.shape, generator=g, dtype=torch.float32) * self.std + self.mean)

    def describe(self):
        return f"random(seed={self.seed})"


def random_tensors(spec: ModelSpec, seed: int = 0, std: float = 0.02) -> dict[str, Lazy]:
    """Canonical tensors; norms around 1 and biases around 0 but never exactly, so a dropped
    or swapped norm or bias changes the logits."""
    dtype = dtype_from_name(spec.dtype)
    out = {}
    for name, shape in canonical_shapes(spec).items():
        s = seed * 1_000_003 + zlib.crc32(name.encode())
        if "norm" in name and name.endswith("weight"):
            out[name] = Random(shape, dtype, s, mean=1.0, std=0.2)
        elif name.endswith("bias"):
            out[name] = Random(shape, dtype, s, std=0.1)
        else:
            out[name] = Random(shape, dtype, s, std=std)
    return out


def write_checkpoint(spec: ModelSpec, out: Path, to: str = "hf", seed: int = 0, std: float = 0.02, **options) -> Path:
    """Write a random model with `spec` as a checkpoint of format `to` (options as WriteOptions)."""
    model = Model(spec=spec.validated(), tensors=random_tensors(spec, seed, std), format="synthetic", path=Path(out))
    plan = formats.get(to).plan(model, WriteOptions(**options))
    execute(plan, Path(out), overwrite=True, progress=False)
    return Path(out)


def llama_spec(layers=2, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=101, dtype="float32", **kw) -> ModelSpec:
    """A Llama spec; `kw` may name facts by their flat (`rope_theta`) or dotted (`positions.rope_theta`) names."""
    return ModelSpec(
        family="llama", num_layers=layers, hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads,
        head_dim=hidden // heads, ffn_hidden_size=ffn, vocab_size=vocab, dtype=dtype,
    ).replace(**{".".join(FLAT[k]) if k in FLAT else k: v for k, v in kw.items()})
