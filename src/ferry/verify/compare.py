"""Logit comparison and its report."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

import torch

# (atol, rtol relative to the largest reference logit) by the less precise of the two dtypes
TOLERANCES = {"float32": (1e-4, 1e-4), "float16": (1e-2, 2e-2), "bfloat16": (2e-2, 5e-2)}
_PRECISION = ["float32", "float16", "bfloat16"]


def default_tolerance(*dtypes: str) -> tuple[float, float]:
    worst = max((d if d in TOLERANCES else "float32" for d in dtypes), key=_PRECISION.index)
    return TOLERANCES[worst]


@dataclass
class Report:
    """What `verify` checked and found. `passed` needs the facts to agree and the logits to be
    within tolerance."""

    facts_checked: int
    fact_differences: list[str]
    crossed: list[str]  # length-dependent facts the probe went past
    not_crossed: list[str]  # ... and those it did not reach (a shorter --seq-len)
    atol: float
    rtol: float
    tokens: int
    seq_len: int
    max_abs: float | None = None  # None: the logits were not compared (the models' sizes differ)
    max_rel: float | None = None
    argmax_agreement: float | None = None
    logits_ok: bool = False
    passed: bool = field(init=False, default=False)

    def __post_init__(self):
        self.passed = not self.fact_differences and self.logits_ok

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        out = []
        if self.fact_differences:
            out.append(f"MISMATCH: facts differ: {'; '.join(self.fact_differences)}")
        else:
            out.append(f"facts: the {self.facts_checked} sizes and facts that change the computation are the same")
        probe = f"probe: {self.tokens // self.seq_len} x {self.seq_len} tokens"
        if self.crossed:
            probe += f", past {'; '.join(self.crossed)}"
        out.append(probe)
        if self.not_crossed:
            out.append(f"not checked (probe too short): {'; '.join(self.not_crossed)}")
        if self.max_abs is None:
            out.append("logits: not compared (the models' sizes differ)")
        else:
            out.append(f"{'OK' if self.logits_ok else 'MISMATCH'}: max abs logit diff {self.max_abs:.3e}, max rel "
                       f"{self.max_rel:.3e} (tolerance {self.atol:g} + {self.rtol:g}*max|logit|), top-1 agreement "
                       f"{self.argmax_agreement:.1%} over {self.tokens} tokens")
        return out

    def line(self) -> str:
        """The verdict in one line (the last of `lines`, or the facts that differ)."""
        return self.lines()[0] if self.fact_differences else self.lines()[-1]


def compare(reference: torch.Tensor, other: torch.Tensor, report: Report) -> Report:
    diff = (reference - other).abs()
    scale = reference.abs().max().item()
    max_abs = diff.max().item()
    agree = (reference.argmax(-1) == other.argmax(-1)).float().mean().item()
    ok = bool(torch.isfinite(other).all()) and max_abs <= report.atol + report.rtol * scale
    fields = {f.name: getattr(report, f.name) for f in dataclasses.fields(report) if f.init}
    return Report(**{**fields, "max_abs": max_abs, "max_rel": max_abs / max(scale, 1e-30), "argmax_agreement": agree,
                     "logits_ok": ok})
