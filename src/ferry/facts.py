"""The facts that change what a model computes, one by one, and the one check that a target
format can hold the facts a model has: carried, or refused with one line naming the fact.

A format (or, for Hugging Face, a family's config class) declares what it holds as a table
{fact name: Holds or tuple of Holds}; a fact missing from a table is held only at its neutral
value, so a fact added here is refused everywhere until a format says it can hold it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import UnsupportedError
from .spec import ModelSpec, uniform_window

_NONE = object()  # a fact with no neutral value: every format must declare it


def show_window(window) -> str:
    if window is None:
        return "none (full attention)"
    layers = [i for i, w in enumerate(window) if w is not None]
    sizes = sorted({w for w in window if w is not None})
    where = "every layer" if len(layers) == len(window) else f"layers {layers}"
    return f"{'/'.join(map(str, sizes))} tokens on {where}"


def show_scaling(scaling) -> str:
    if not scaling:
        return "none"
    params = ", ".join(f"{k}={v}" for k, v in scaling.items() if k != "rope_type")
    return f"{scaling['rope_type']} ({params})"


@dataclass(frozen=True)
class Fact:
    name: str  # dotted: group.field
    neutral: Any = _NONE
    show: Callable[[Any], str] = repr

    def get(self, spec: ModelSpec):
        group, key = self.name.split(".")
        return getattr(getattr(spec, group), key)


FACTS = (
    Fact("attention.window", None, show_window),
    Fact("attention.softcap", None),
    Fact("attention.scale", None),
    Fact("positions.rope_scaling", None, show_scaling),
    Fact("positions.rotary_fraction", 1.0),
    Fact("positions.interleaved", False),
    Fact("norms.offset", 0.0),
    Fact("residual.parallel", False),
    Fact("mlp.activation"),
    Fact("embeddings.scale", 1.0),
    Fact("embeddings.logit_softcap", None),
)
FACT_NAMES = tuple(f.name for f in FACTS)


@dataclass(frozen=True)
class Holds:
    """Values of one fact a format can hold. `recorded`: kept only in ferry's own record inside
    the checkpoint, so the round trip is lossless but the target framework does not compute it."""

    accepts: Callable[[Any, ModelSpec], bool] = lambda value, spec: True
    values: str = "any value"
    recorded: bool = False
    note: str | None = None  # said whenever a value is carried this way


ANY = Holds()


def one_of(*values, note: str | None = None) -> Holds:
    return Holds(lambda v, s: v in values, " or ".join(map(repr, values)), note=note)


def rope_types(*kinds: str) -> Holds:
    return Holds(lambda v, s: v["rope_type"] in kinds, "rope_type " + "/".join(kinds))


def single_window() -> Holds:
    def ok(window, spec):
        try:
            return uniform_window(window) is None or all(w is not None for w in window)
        except ValueError:
            return False
    return Holds(ok, "one window for every layer")


Capabilities = Mapping[str, "Holds | tuple[Holds, ...]"]


def check_carried(spec: ModelSpec, holds: Capabilities, target: str, instead: str) -> list[str]:
    """Raise UnsupportedError naming the first fact `spec` has that `target` cannot hold (with
    what to do instead); return the notes for facts carried with a caveat."""
    notes = []
    for fact in FACTS:
        value = fact.get(spec)
        if fact.neutral is not _NONE and value == fact.neutral:
            continue
        options = holds.get(fact.name, ())
        options = options if isinstance(options, tuple) else (options,)
        chosen = next((h for h in options if h.accepts(value, spec)), None)
        if chosen is None:
            can = "; ".join(h.values for h in options) or f"only {fact.show(fact.neutral)}"
            raise UnsupportedError(f"{fact.name} = {fact.show(value)}: {target} cannot hold it (it holds {can}); {instead}")
        if chosen.recorded:
            notes.append(f"{fact.name} = {fact.show(value)}: kept in ferry's record in the checkpoint; {target} will not "
                         "compute it (ferry reads it back exactly)")
        if chosen.note:
            notes.append(chosen.note)
    return notes


def differing_facts(a: ModelSpec, b: ModelSpec) -> list[str]:
    """'name: a vs b' for every size or fact in which two specs differ (dtype aside)."""
    out = []
    for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "ffn_hidden_size",
                 "vocab_size", "max_position_embeddings"):
        if getattr(a, name) != getattr(b, name):
            out.append(f"{name}: {getattr(a, name)} vs {getattr(b, name)}")
    for group in ("attention", "positions", "norms", "residual", "mlp", "embeddings"):
        ga, gb = getattr(a, group), getattr(b, group)
        for key in ga.__dataclass_fields__:
            va, vb = getattr(ga, key), getattr(gb, key)
            if _norm(va) != _norm(vb):
                fact = next((f for f in FACTS if f.name == f"{group}.{key}"), None)
                show = fact.show if fact else repr
                out.append(f"{group}.{key}: {show(va)} vs {show(vb)}")
    return out


def _norm(value):
    """Compare 8 and 8.0 alike, and a rope dict regardless of key order."""
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_norm(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
