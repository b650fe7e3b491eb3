"""Synthetic Llama checkpoints of a chosen size, for bench/run.py.

    python bench/make_checkpoints.py --size-gib 2 --out bench/out/2g

writes
    bench/out/2g/hf            Hugging Face: config.json + sharded bfloat16 safetensors
    bench/out/2g/megatron-tp2  Megatron-LM legacy TP=2, made by `ferry convert hf --to megatron --tp 2`

The shape is Llama-like (head_dim 128, 8 kv heads, ffn = 2.6875 x hidden as in Llama 2,
vocab 32000, untied lm_head); the hidden size is fixed (2048 below 8 GiB, 4096 above, or
--hidden) and the number of layers is chosen to come closest to the requested size.

Values are written through ferry's own planner and executor (ferry.synthetic), so memory stays
small whatever the size. Instead of torch.randn per tensor (about 100 MB/s on one core) each
tensor is filled by tiling a fixed block of normal samples, scaled per tensor and started at a
per-tensor offset: finite, not constant, different for every tensor, and about 3.5x faster.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import torch

from ferry.canonical import canonical_shapes
from ferry.executor import execute
from ferry.formats import get as get_format
from ferry.formats.base import Model, WriteOptions
from ferry.lazy import Lazy
from ferry.synthetic import llama_spec

GiB = 1024**3
VOCAB = 32000
BLOCK = (1 << 20) + 7  # samples in the shared block; odd length so rows do not line up with it


def llama_shape(size_gib: float, hidden: int | None = None, vocab: int = VOCAB):
    """A bfloat16 Llama spec whose weights come closest to `size_gib` (at least one layer)."""
    if hidden is None:
        hidden = 2048 if size_gib < 8 else 4096
    head_dim = 128 if hidden >= 2048 else 64
    heads = hidden // head_dim
    kv_heads = min(8, heads)
    ffn = round(hidden * 2.6875 / 128) * 128  # 4096 -> 11008, 2048 -> 5504 (Llama 2 ratio)
    fixed = 2 * vocab * hidden + hidden  # embedding, lm_head, final norm
    per_layer = 2 * hidden * hidden + 2 * kv_heads * head_dim * hidden + 3 * ffn * hidden + 2 * hidden
    layers = max(1, round((size_gib * GiB / 2 - fixed) / per_layer))
    return llama_spec(layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, ffn=ffn, vocab=vocab,
                      dtype="bfloat16", max_position_embeddings=4096)


class TiledNormal(Lazy):
    """normal(mean, std) values made by tiling a shared block of samples from a per-tensor offset."""

    _block: torch.Tensor | None = None

    def __init__(self, shape, dtype, seed: int, mean: float = 0.0, std: float = 0.02):
        self.shape, self.dtype = tuple(shape), dtype
        self.seed, self.mean, self.std = seed, mean, std

    @classmethod
    def block(cls) -> torch.Tensor:
        if cls._block is None:
            cls._block = torch.randn(BLOCK, generator=torch.Generator().manual_seed(1234))
        return cls._block

    def fill(self, out):
        start = self.seed % BLOCK
        pattern = (torch.roll(self.block(), -start) * self.std + self.mean).to(self.dtype)
        target = out if out.is_contiguous() else torch.empty(self.shape, dtype=self.dtype)
        flat = target.view(-1)
        for i in range(0, flat.numel(), BLOCK):
            n = min(BLOCK, flat.numel() - i)
            flat[i:i + n].copy_(pattern[:n])
        if target is not out:
            out.copy_(target)

    def describe(self):
        return f"tiled-normal(seed={self.seed})"


def filled_tensors(spec, seed: int = 0) -> dict[str, Lazy]:
    """Canonical tensors: weights ~ N(0, 0.02), norm weights ~ N(1, 0.2) (as ferry.synthetic)."""
    dtype = getattr(torch, spec.dtype)
    out = {}
    for name, shape in canonical_shapes(spec).items():
        s = seed * 1_000_003 + zlib.crc32(name.encode())
        if "norm" in name:
            out[name] = TiledNormal(shape, dtype, s, mean=1.0, std=0.2)
        else:
            out[name] = TiledNormal(shape, dtype, s, std=0.02)
    return out


def write_hf(spec, out: Path, max_shard_size: str = "2GB") -> None:
    """Like ferry.synthetic.write_checkpoint(spec, out, to="hf"), with the faster filler."""
    from ferry.formats.hf import parse_size

    model = Model(spec=spec, tensors=filled_tensors(spec), format="synthetic", path=out)
    plan = get_format("hf").plan(model, WriteOptions(max_shard_size=parse_size(max_shard_size)))
    execute(plan, out, overwrite=True, progress=False)


def largest_tensor(spec) -> tuple[str, int]:
    shapes = canonical_shapes(spec)
    name = max(shapes, key=lambda n: math.prod(shapes[n]))
    return name, math.prod(shapes[name]) * getattr(torch, spec.dtype).itemsize


def make(size_gib: float, out: Path, hidden: int | None = None, max_shard_size: str = "2GB",
         megatron: bool = True, force: bool = False) -> dict:
    """Write out/hf (and out/megatron-tp2) and out/info.json; a checkpoint already there with the
    same spec and shard size is kept unless force. Returns the info (also what info.json holds)."""
    spec = llama_shape(size_gib, hidden)
    hf, meg, stamp = out / "hf", out / "megatron-tp2", out / "info.json"
    name, nbytes = largest_tensor(spec)
    info = {"made_from": f"{size_gib} GiB, shards {max_shard_size}, {spec!r}", "size_gib": size_gib,
            "max_shard_size": max_shard_size, "spec": spec.to_dict(), "hf": str(hf),
            "megatron": str(meg) if megatron else None, "largest_tensor": name, "largest_bytes": nbytes}
    old = json.loads(stamp.read_text()) if stamp.is_file() else {}
    if force or old.get("made_from") != info["made_from"]:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    if not (hf / "config.json").is_file():
        t = time.perf_counter()
        write_hf(spec, hf, max_shard_size)
        print(f"wrote {hf} ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    if megatron and not meg.is_dir():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ferry", "convert", str(hf), str(meg), "--to", "megatron", "--tp", "2",
                        "--quiet"], check=True, stdout=subprocess.DEVNULL)
        print(f"wrote {meg} ({time.perf_counter() - t:.1f} s)", file=sys.stderr)
    info["bytes"] = sum(f.stat().st_size for f in hf.glob("*.safetensors"))
    stamp.write_text(json.dumps(info, indent=1) + "\n")
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gib", type=float, required=True, help="target size of the weights in GiB")
    p.add_argument("--out", type=Path, required=True, help="directory for hf/ and megatron-tp2/")
    p.add_argument("--hidden", type=int, help="hidden size (default 2048 below 8 GiB, else 4096)")
    p.add_argument("--max-shard-size", default="2GB", help="HF shard size (default 2GB)")
    p.add_argument("--no-megatron", action="store_true", help="only the HF checkpoint")
    p.add_argument("--force", action="store_true", help="rewrite even if present")
    a = p.parse_args()
    info = make(a.size_gib, a.out, a.hidden, a.max_shard_size, not a.no_megatron, a.force)
    s = info["spec"]
    print(f"{info['hf']}: {s['num_layers']} layers, hidden {s['hidden_size']}, heads {s['num_heads']}/{s['num_kv_heads']}, "
          f"ffn {s['ffn_hidden_size']}, vocab {s['vocab_size']}, {info['bytes'] / GiB:.3f} GiB of safetensors; "
          f"largest tensor {info['largest_tensor']} {info['largest_bytes'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
