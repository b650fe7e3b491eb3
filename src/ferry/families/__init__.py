"""Model families, registered by name; looked up by HF or TensorRT-LLM architecture, or inferred
from the architecture facts of a checkpoint that names none (Megatron)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UnsupportedError

if TYPE_CHECKING:
    from ..spec import ModelSpec
    from .base import Family

_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    if not family.name or not family.hf_architectures:
        raise TypeError(f"{type(family).__name__} needs a name and an HF architecture")
    if family.name in _FAMILIES:
        raise ValueError(f"family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def get(name: str) -> Family:
    _load()
    if name not in _FAMILIES:
        raise UnsupportedError(f"model family {name!r} is not supported (supported: {', '.join(sorted(_FAMILIES))})")
    return _FAMILIES[name]


def all_families() -> list[Family]:
    _load()
    return list(_FAMILIES.values())


def by_hf_architecture(arch: str, where: str) -> Family:
    for f in all_families():
        if arch in f.hf_architectures:
            return f
    known = sorted(a for f in all_families() for a in f.hf_architectures)
    raise UnsupportedError(f"{where}: architecture {arch!r} is not supported (supported: {', '.join(known)})")


def by_trtllm_architecture(arch: str, where: str) -> Family:
    for f in all_families():
        if arch in f.trtllm_architectures:
            return f
    known = sorted(a for f in all_families() for a in f.trtllm_architectures)
    raise UnsupportedError(f"{where}: TensorRT-LLM architecture {arch!r} is not supported (supported: {', '.join(known)})")


def infer(spec: ModelSpec, where: str) -> Family:
    """The family whose graph and facts are exactly this spec (for checkpoints that do not name
    one); else the first whose graph fits (writing HF then names the fact its config cannot hold)."""
    for facts in (True, False):
        for f in all_families():
            if f.matches(spec, facts):
                return f
    reasons = []
    for f in all_families():
        try:
            f.check(spec)
        except UnsupportedError as e:
            reasons.append(str(e))
    raise UnsupportedError(f"{where}: no supported model family has this architecture ({' | '.join(reasons)})")


def _load() -> None:
    from . import gpt2, llama  # noqa: F401  (each registers itself on first import)
