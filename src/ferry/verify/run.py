"""`verify`: the two checkpoints' facts first (a differing fact fails, named), then both through
the reference forward on the same token ids, a probe long enough to cross every window and rope
boundary the config has."""

from __future__ import annotations

import torch

from ..facts import FACTS, differing_facts
from ..formats.base import Model
from ..spec import ModelSpec
from .compare import Report, compare, default_tolerance
from .forward import canonical_logits
from .trtllm_ranks import trtllm_logits

SHORT_PROBE = 16
PAST = 8  # tokens the probe runs past the last boundary


def token_ids(vocab_size: int, batch: int = 2, seq_len: int = SHORT_PROBE, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(seed))


def logits_of(model: Model, ids: torch.Tensor) -> torch.Tensor:
    """Per-rank forward for TensorRT-LLM checkpoints; the canonical forward otherwise."""
    if model.format == "trtllm":
        return trtllm_logits(model.path, ids)
    return canonical_logits(model.spec, model.tensors, ids)


def boundaries(spec: ModelSpec) -> list[tuple[int, str]]:
    """(first probe length that shows it, what) for each length-dependent fact of `spec`."""
    out = []
    windows = {w for w in (spec.attention.window or ()) if w is not None}
    if windows:
        out.append((max(windows) + 1, f"attention window {max(windows)} (a query past it no longer sees the first token)"))
    scaling = spec.rope_scaling or {}
    kind = scaling.get("rope_type")
    if kind == "dynamic":
        out.append((spec.max_position_embeddings + 1, f"rope dynamic: the base grows past {spec.max_position_embeddings} tokens"))
    elif kind in ("llama3", "yarn", "longrope"):
        original = scaling["original_max_position_embeddings"]
        out.append((original + 1, f"rope {kind}: positions past the original context {original}"))
    return out


def probe_length(a: ModelSpec, b: ModelSpec, requested: int | None) -> tuple[int, list[str], list[str]]:
    """(length, boundaries crossed, boundaries not crossed) for a probe on both models."""
    marks = sorted(set(boundaries(a) + boundaries(b)))
    limit = None
    if a.position_embedding == "learned" or b.position_embedding == "learned":
        limit = min(a.max_position_embeddings, b.max_position_embeddings)  # no rows past the table
    length = requested or max([SHORT_PROBE] + [n + PAST for n, _ in marks])
    if limit is not None:
        length = min(length, limit)
    crossed = [f"{what} (token {n})" for n, what in marks if n <= length]
    missed = [f"{what} (needs {n} tokens)" for n, what in marks if n > length]
    return length, crossed, missed


def verify_models(a: Model, b: Model, *, batch=None, seq_len=None, seed=0, atol=None, rtol=None) -> Report:
    differences = differing_facts(a.spec, b.spec)
    facts_checked = 8 + sum(len(getattr(a.spec, g).__dataclass_fields__)
                            for g in ("attention", "positions", "norms", "residual", "mlp", "embeddings"))
    d_atol, d_rtol = default_tolerance(a.spec.dtype, b.spec.dtype)
    atol, rtol = d_atol if atol is None else atol, d_rtol if rtol is None else rtol
    same_shapes = all(getattr(a.spec, f) == getattr(b.spec, f) for f in
                      ("vocab_size", "num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "ffn_hidden_size"))
    length, crossed, missed = probe_length(a.spec, b.spec, seq_len)
    if batch is None:
        batch = 2 if length <= 64 else 1
    report = Report(facts_checked=facts_checked, fact_differences=differences, crossed=crossed, not_crossed=missed,
                    atol=atol, rtol=rtol, tokens=batch * length, seq_len=length)
    if not same_shapes:
        return report  # different tensors: nothing to run side by side (the differing sizes are named)
    ids = token_ids(a.spec.vocab_size, batch, length, seed)
    with torch.no_grad():
        ref, other = logits_of(a, ids), logits_of(b, ids)
    return compare(ref, other, report)


__all__ = ["verify_models", "logits_of", "token_ids", "boundaries", "FACTS"]
