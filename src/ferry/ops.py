"""Layout ops: small, reversible changes between lists of lazy tensors.

Every op takes its numbers explicitly (sizes, groups, ranks come from the `ModelSpec` and the
plan) and declares its inverse, so one rule table serves reading (ops run forward: stored layout
-> canonical) and writing (inverses run in reverse order: canonical -> stored layout). Ops only
build lazy expressions; no bytes move until the executor materialises an output tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import lazy as L
from .errors import CheckpointError


class LayoutError(CheckpointError):
    """A tensor's shape does not fit the layout an op expects."""


class Op:
    n_in: int = 1
    n_out: int = 1

    def __call__(self, xs: Sequence[L.Lazy]) -> list[L.Lazy]:
        raise NotImplementedError

    @property
    def inverse(self) -> Op:
        raise NotImplementedError

    def _one(self, xs: Sequence[L.Lazy]) -> L.Lazy:
        if len(xs) != 1:
            raise ValueError(f"{self} takes one tensor, got {len(xs)}")
        return xs[0]

    def _size(self, x: L.Lazy, dim: int, expected: int, what: str) -> None:
        if x.ndim <= dim or x.shape[dim] != expected:
            raise LayoutError(f"{what}: expected size {expected} on dim {dim}, got shape {list(x.shape)}")


def _offsets(sizes: Sequence[int]) -> list[int]:
    out, acc = [], 0
    for s in sizes:
        out.append(acc)
        acc += s
    return out


@dataclass(frozen=True)
class Split(Op):
    """One tensor -> consecutive pieces of `sizes` on `dim` (fused [q; k; v] -> q, k, v)."""

    dim: int
    sizes: tuple[int, ...]

    @property
    def n_out(self):
        return len(self.sizes)

    def __call__(self, xs):
        x = self._one(xs)
        self._size(x, self.dim, sum(self.sizes), f"split into {list(self.sizes)}")
        return [x.narrow(self.dim, off, size) for off, size in zip(_offsets(self.sizes), self.sizes)]

    @property
    def inverse(self):
        return Concat(self.dim, self.sizes)


@dataclass(frozen=True)
class Concat(Op):
    dim: int
    sizes: tuple[int, ...]

    @property
    def n_in(self):
        return len(self.sizes)

    def __call__(self, xs):
        if len(xs) != len(self.sizes):
            raise ValueError(f"{self} takes {len(self.sizes)} tensors, got {len(xs)}")
        for i, (x, size) in enumerate(zip(xs, self.sizes)):
            self._size(x, self.dim, size, f"concat input {i}")
        return [L.cat(list(xs), self.dim)]

    @property
    def inverse(self):
        return Split(self.dim, self.sizes)


@dataclass(frozen=True)
class Interleave(Op):
    """n tensors, each cut into `groups` blocks of `parts[j]` on `dim`, woven block by block.

    Input j has shape [groups * parts[j], ...]; the output is
    [x0 block 0; x1 block 0; ...; x0 block 1; x1 block 1; ...]. This one op describes Megatron's
    fused QKV (groups = query groups, parts = [q heads per group * hd, hd, hd]), Megatron's
    per-rank SwiGLU fc1 gathered over ranks (groups = tp, parts = [F/tp, F/tp]) and
    TensorRT-LLM's per-rank [Q_r; K_r; V_r] gathered over ranks (groups = tp).
    """

    groups: int
    parts: tuple[int, ...]
    dim: int = 0

    @property
    def n_in(self):
        return len(self.parts)

    def __call__(self, xs):
        if len(xs) != len(self.parts):
            raise ValueError(f"{self} takes {len(self.parts)} tensors, got {len(xs)}")
        for j, (x, part) in enumerate(zip(xs, self.parts)):
            self._size(x, self.dim, self.groups * part, f"interleave input {j} ({self.groups} groups of {part})")
        blocks = [x.narrow(self.dim, g * part, part) for g in range(self.groups) for x, part in zip(xs, self.parts)]
        return [L.cat([b for b in blocks if b.shape[self.dim]], self.dim)]

    @property
    def inverse(self):
        return Deinterleave(self.groups, self.parts, self.dim)


@dataclass(frozen=True)
class Deinterleave(Op):
    groups: int
    parts: tuple[int, ...]
    dim: int = 0

    @property
    def n_out(self):
        return len(self.parts)

    def __call__(self, xs):
        x = self._one(xs)
        group = sum(self.parts)
        self._size(x, self.dim, self.groups * group, f"{self.groups} groups of {list(self.parts)}")
        return [
            L.cat([x.narrow(self.dim, g * group + off, part) for g in range(self.groups)], self.dim)
            for off, part in zip(_offsets(self.parts), self.parts)
        ]

    @property
    def inverse(self):
        return Interleave(self.groups, self.parts, self.dim)


@dataclass(frozen=True)
class Transpose(Op):
    d0: int = 0
    d1: int = 1

    def __call__(self, xs):
        x = self._one(xs)
        if x.ndim < 2:
            raise LayoutError(f"transpose needs a matrix, got shape {list(x.shape)}")
        return [L.Transpose(x, self.d0, self.d1)]

    @property
    def inverse(self):
        return Transpose(self.d1, self.d0)


@dataclass(frozen=True)
class Resize(Op):
    """Truncate or grow `dim` from `from_size` to `to_size` (vocabulary padding). Growing appends
    rows of `fill` (a checkpoint's own padding rows, kept on a Megatron -> Megatron reshard), then
    zeros."""

    dim: int
    from_size: int
    to_size: int
    fill: L.Lazy | None = None

    def __call__(self, xs):
        x = self._one(xs)
        self._size(x, self.dim, self.from_size, f"resize to {self.to_size}")
        if self.to_size <= self.from_size:
            return [x.narrow(self.dim, 0, self.to_size)]
        extra = self.to_size - self.from_size
        parts = [x]
        if self.fill is not None and self.fill.shape[self.dim]:
            rows = min(extra, self.fill.shape[self.dim])
            parts.append(L.cast(self.fill.narrow(self.dim, 0, rows), x.dtype))
            extra -= rows
        grown = L.cat(parts, self.dim)
        return [L.Pad(grown, self.dim, self.to_size) if extra else grown]

    @property
    def inverse(self):
        return Resize(self.dim, self.to_size, self.from_size, self.fill)


@dataclass(frozen=True)
class Repeat(Op):
    """Repeat each block of `unit` rows `times` times in place: [k0, k1] -> [k0, k0, k1, k1]."""

    dim: int
    unit: int
    times: int

    def __call__(self, xs):
        x = self._one(xs)
        if self.times == 1:
            return [x]
        if x.ndim <= self.dim or x.shape[self.dim] % self.unit:
            raise LayoutError(f"repeat blocks of {self.unit}: shape {list(x.shape)} does not divide")
        blocks = x.shape[self.dim] // self.unit
        return [L.cat([x.narrow(self.dim, b * self.unit, self.unit) for b in range(blocks) for _ in range(self.times)], self.dim)]

    @property
    def inverse(self):
        return Unrepeat(self.dim, self.unit, self.times)


@dataclass(frozen=True)
class Unrepeat(Op):
    """Keep the first copy of each repeated block (inverse of `Repeat`)."""

    dim: int
    unit: int
    times: int

    def __call__(self, xs):
        x = self._one(xs)
        if self.times == 1:
            return [x]
        span = self.unit * self.times
        if x.ndim <= self.dim or x.shape[self.dim] % span:
            raise LayoutError(f"{self.times} copies of blocks of {self.unit}: shape {list(x.shape)} does not divide")
        blocks = x.shape[self.dim] // span
        return [L.cat([x.narrow(self.dim, b * span, self.unit) for b in range(blocks)], self.dim)]

    @property
    def inverse(self):
        return Repeat(self.dim, self.unit, self.times)


@dataclass(frozen=True)
class Each(Op):
    """Apply one single-tensor op per tensor (None = leave it as it is)."""

    ops: tuple[Op | None, ...]

    @property
    def n_in(self):
        return len(self.ops)

    n_out = n_in

    def __call__(self, xs):
        if len(xs) != len(self.ops):
            raise ValueError(f"{self} takes {len(self.ops)} tensors, got {len(xs)}")
        return [x if op is None else op([x])[0] for x, op in zip(xs, self.ops)]

    @property
    def inverse(self):
        return Each(tuple(None if op is None else op.inverse for op in self.ops))


@dataclass(frozen=True)
class Unstack(Op):
    """[n, ...] -> n tensors (one per layer or expert)."""

    dim: int
    count: int

    @property
    def n_out(self):
        return self.count

    def __call__(self, xs):
        x = self._one(xs)
        self._size(x, self.dim, self.count, "unstack")
        return [L.Squeeze(x.narrow(self.dim, i, 1), self.dim) for i in range(self.count)]

    @property
    def inverse(self):
        return Stack(self.dim, self.count)


@dataclass(frozen=True)
class Stack(Op):
    dim: int
    count: int

    @property
    def n_in(self):
        return self.count

    def __call__(self, xs):
        if len(xs) != self.count:
            raise ValueError(f"{self} takes {self.count} tensors, got {len(xs)}")
        return [L.cat([L.Unsqueeze(x, self.dim) for x in xs], self.dim)]

    @property
    def inverse(self):
        return Unstack(self.dim, self.count)


def run(ops: Sequence[Op], xs: Sequence[L.Lazy]) -> list[L.Lazy]:
    out = list(xs)
    for op in ops:
        out = op(out)
    return out


def invert(ops: Sequence[Op]) -> list[Op]:
    return [op.inverse for op in reversed(ops)]
