"""Declarative conversion rules: stored tensor names <-> canonical names, through reversible ops.

A rule says "these stored tensors are these canonical tensors after these ops", e.g.

    Rule("model.layers.{layer}.self_attn.q_proj.weight", "layers.{layer}.attn.q.weight")
    Rule("decoder.layers.{layer}.self_attention.linear_qkv.weight",
         ("layers.{layer}.attn.q.weight", "layers.{layer}.attn.k.weight", "layers.{layer}.attn.v.weight"),
         ops=megatron_qkv, shard=COLUMN)

Reading runs `ops` forward (stored -> canonical); writing runs their inverses in reverse order.
For formats with tensor-parallel ranks, the stored tensor is the concatenation of the ranks'
pieces along the shard dimension. Ops that need numbers (heads, groups, tp) are given as a function
of the `Geometry`, so the table stays data while the numbers come from the spec and the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from . import lazy as L
from . import ops as O
from .canonical import canonical_shapes
from .errors import CheckpointError, UnsupportedError
from .spec import ModelSpec

REPLICATED, COLUMN, ROW = "replicated", "column", "row"
SHARD_DIM = {REPLICATED: None, COLUMN: 0, ROW: 1}


@dataclass(frozen=True)
class Geometry:
    """The numbers a layout needs: the model, the tensor/pipeline split, the stored vocab rows."""

    spec: ModelSpec
    tp: int = 1
    pp: int = 1
    vocab_rows: int | None = None  # rows of stored embedding / lm_head (padded vocabulary)
    parallel_embedding: bool = False  # embedding split over tp ranks (TensorRT-LLM option)
    vocab_fill: Mapping[str, L.Lazy] | None = None  # padding rows to write after the vocabulary

    @property
    def padded_vocab(self) -> int:
        return self.vocab_rows or self.spec.vocab_size


OpsSpec = Sequence[O.Op] | Callable[[Geometry], Sequence[O.Op]]


@dataclass(frozen=True)
class Rule:
    stored: str | tuple[str, ...]
    canonical: str | tuple[str, ...]
    ops: OpsSpec = ()
    shard: str = REPLICATED
    when: Callable[[Geometry], bool] | None = None
    copy: bool = False  # a stored duplicate (tied lm_head): written from canonical, skipped on read

    def stored_names(self) -> tuple[str, ...]:
        return (self.stored,) if isinstance(self.stored, str) else tuple(self.stored)

    def canonical_names(self) -> tuple[str, ...]:
        return (self.canonical,) if isinstance(self.canonical, str) else tuple(self.canonical)


@dataclass(frozen=True)
class Bound:
    """A rule with concrete names (layer filled in) and concrete ops."""

    stored: tuple[str, ...]
    canonical: tuple[str, ...]
    ops: tuple[O.Op, ...]
    shard: str
    layer: int | None
    copy: bool = False

    def read(self, stored: Sequence[L.Lazy]) -> list[L.Lazy]:
        return O.run(self.ops, stored)

    def write(self, canonical: Sequence[L.Lazy]) -> list[L.Lazy]:
        return O.run(O.invert(self.ops), canonical)


def bind(rules: Sequence[Rule], geo: Geometry) -> list[Bound]:
    """Concrete rules for one model, layer-major (globals before the first layer rule, layers,
    then the remaining globals). Every canonical tensor of the spec is covered exactly once;
    `copy` rules (stored duplicates) come on top."""
    spec = geo.spec
    wanted = canonical_shapes(spec)
    keyed: list[tuple[tuple[int, int, int], Bound]] = []
    first_layer_rule = next((i for i, r in enumerate(rules) if "{layer}" in str(r.canonical)), len(rules))
    for index, rule in enumerate(rules):
        if rule.when is not None and not rule.when(geo):
            continue
        ops = tuple(rule.ops(geo) if callable(rule.ops) else rule.ops)
        templated = any("{layer}" in n for n in rule.canonical_names())
        group = 1 if templated else (0 if index < first_layer_rule else 2)
        for layer in range(spec.num_layers) if templated else [None]:
            canonical = tuple(n.format(layer=layer) for n in rule.canonical_names())
            present = [n in wanted for n in canonical]
            if not any(present):
                continue
            if not all(present):
                raise AssertionError(f"rule {rule.stored} -> {canonical}: only some outputs exist in this model")
            stored = tuple(n.format(layer=layer) for n in rule.stored_names())
            keyed.append(((group, layer or 0, index), Bound(stored, canonical, ops, rule.shard, layer, rule.copy)))
    bound = [b for _, b in sorted(keyed, key=lambda kb: kb[0])]
    seen: dict[str, Bound] = {}
    for b in bound:
        for name in b.canonical:
            if b.copy:
                continue
            if name in seen:
                raise AssertionError(f"{name} is produced by two rules: {seen[name].stored} and {b.stored}")
            seen[name] = b
    missing = [n for n in wanted if n not in seen]
    if missing:
        raise UnsupportedError(f"no conversion rule for {missing[0]} (this model's layout is not supported by this format)")
    return bound


def stored_shapes(bound: Sequence[Bound], spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Shape of every stored (rank-gathered) tensor, computed from the spec alone."""
    shapes = canonical_shapes(spec)
    out = {}
    for b in bound:
        fakes = [L.Zeros(shapes[n], spec_dtype(spec)) for n in b.canonical]
        for name, t in zip(b.stored, b.write(fakes)):
            out[name] = t.shape
    return out


def spec_dtype(spec: ModelSpec):
    from .dtypes import dtype_from_name

    return dtype_from_name(spec.dtype)


def read_canonical(bound: Sequence[Bound], spec: ModelSpec, fetch: Callable[[str, tuple[int, ...], str], L.Lazy]) -> dict[str, L.Lazy]:
    """Canonical lazy tensors from stored ones. `fetch(name, expected_shape, shard_kind)` returns
    the stored (rank-gathered) tensor, raising a CheckpointError that names the file when it is missing or
    has the wrong shape. Copies (tied heads) are fetched, so they count as consumed, but unused."""
    expected = stored_shapes(bound, spec)
    out: dict[str, L.Lazy] = {}
    for b in bound:
        stored = [fetch(name, expected[name], b.shard) for name in b.stored]
        if b.copy:
            continue
        for name, t in zip(b.canonical, b.read(stored)):
            out[name] = t
    return out


def write_stored(bound: Sequence[Bound], canonical: Mapping[str, L.Lazy]) -> dict[str, tuple[L.Lazy, str]]:
    """Stored (rank-gathered) lazy tensors from canonical ones, with their shard kind, in rule order."""
    out: dict[str, tuple[L.Lazy, str]] = {}
    for b in bound:
        for name, t in zip(b.stored, b.write([canonical[n] for n in b.canonical])):
            out[name] = (t, b.shard)
    return out


def split_shape(shape: tuple[int, ...], kind: str, tp: int) -> tuple[int, ...]:
    dim = SHARD_DIM[kind]
    if dim is None:
        return tuple(shape)
    out = list(shape)
    out[dim] //= tp
    return tuple(out)


def shard(x: L.Lazy, kind: str, tp: int, rank: int, name: str = "") -> L.Lazy:
    """Rank `rank`'s piece of a stored tensor split `kind`-wise over `tp` ranks."""
    dim = SHARD_DIM[kind]
    if dim is None or tp == 1:
        return x
    if x.shape[dim] % tp:
        raise UnsupportedError(f"{name}: dimension {dim} of shape {list(x.shape)} does not split evenly over tp={tp}")
    size = x.shape[dim] // tp
    return x.narrow(dim, rank * size, size)


def gather(parts: Sequence[L.Lazy], kind: str) -> L.Lazy:
    dim = SHARD_DIM[kind]
    return parts[0] if dim is None else L.cat(list(parts), dim)


def check_shape(t: L.Lazy, expected: tuple[int, ...], name: str, where: str) -> L.Lazy:
    if tuple(t.shape) != tuple(expected):
        raise CheckpointError(f"{where}: tensor {name} has shape {list(t.shape)}, the model config implies {list(expected)}")
    return t
