"""`verify`: both checkpoints through the reference forward on the same token ids."""

from __future__ import annotations

import torch

from ..errors import FerryError
from ..formats.base import Model
from .compare import Report, compare, default_tolerance
from .forward import canonical_logits
from .trtllm_ranks import trtllm_logits


def token_ids(vocab_size: int, batch: int = 2, seq_len: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(seed))


def logits_of(model: Model, ids: torch.Tensor) -> torch.Tensor:
    """Per-rank forward for TensorRT-LLM checkpoints; the canonical forward otherwise."""
    if model.format == "trtllm":
        return trtllm_logits(model.path, ids)
    return canonical_logits(model.spec, model.tensors, ids)


def verify_models(a: Model, b: Model, *, batch=2, seq_len=16, seed=0, atol=None, rtol=None) -> Report:
    for field in ("vocab_size", "num_layers", "hidden_size", "num_heads", "num_kv_heads"):
        if getattr(a.spec, field) != getattr(b.spec, field):
            raise FerryError(f"the checkpoints describe different models: {field} {getattr(a.spec, field)} vs {getattr(b.spec, field)}")
    if seq_len > min(a.spec.max_position_embeddings, b.spec.max_position_embeddings):
        seq_len = min(a.spec.max_position_embeddings, b.spec.max_position_embeddings)
    ids = token_ids(a.spec.vocab_size, batch, seq_len, seed)
    with torch.no_grad():
        ref, other = logits_of(a, ids), logits_of(b, ids)
    d_atol, d_rtol = default_tolerance(a.spec.dtype, b.spec.dtype)
    return compare(ref, other, d_atol if atol is None else atol, d_rtol if rtol is None else rtol)
