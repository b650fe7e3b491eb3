"""Logit comparison and its report."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

# (atol, rtol relative to the largest reference logit) by the less precise of the two dtypes
TOLERANCES = {"float32": (1e-4, 1e-4), "float16": (1e-2, 2e-2), "bfloat16": (2e-2, 5e-2)}
_PRECISION = ["float32", "float16", "bfloat16"]


def default_tolerance(*dtypes: str) -> tuple[float, float]:
    worst = max((d if d in TOLERANCES else "float32" for d in dtypes), key=_PRECISION.index)
    return TOLERANCES[worst]


@dataclass
class Report:
    max_abs: float
    max_rel: float
    argmax_agreement: float
    atol: float
    rtol: float
    tokens: int
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        verdict = "OK" if self.passed else "MISMATCH"
        return (
            f"{verdict}: max abs logit diff {self.max_abs:.3e}, max rel {self.max_rel:.3e} "
            f"(tolerance {self.atol:g} + {self.rtol:g}*max|logit|), top-1 agreement {self.argmax_agreement:.1%} "
            f"over {self.tokens} tokens"
        )


def compare(reference: torch.Tensor, other: torch.Tensor, atol: float, rtol: float) -> Report:
    diff = (reference - other).abs()
    scale = reference.abs().max().item()
    max_abs = diff.max().item()
    agree = (reference.argmax(-1) == other.argmax(-1)).float().mean().item()
    passed = bool(torch.isfinite(other).all()) and max_abs <= atol + rtol * scale
    return Report(max_abs, max_abs / max(scale, 1e-30), agree, atol, rtol, reference.shape[0] * reference.shape[1], passed)
