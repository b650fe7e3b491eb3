"""Lazy tensors: shape and dtype known up front, bytes read only when an output needs them.

A lazy tensor is a small expression tree over stored tensors (`Stored`), built from a handful of
nodes: `Cat`, `Transpose`, `Squeeze`/`Unsqueeze`, `Pad`, `Cast`, `Zeros`, `Const`, `Tiled`.
`narrow` is pushed down to the leaves wherever it can be, so that a tensor-parallel rank reads
only its own rows or columns from disk. Two ways to get the value:

* `fill(out)` writes it into a caller's torch buffer (a cat fills its parts into views of the
  output), so materialising costs one output-sized allocation;
* `byte_runs()` describes it, when no arithmetic is involved, as runs of bytes of the stored
  files (a column slice is one run per row); a writer then copies file to file and torch is
  never imported.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from . import buffers, dtypes
from .dtypes import DType

if TYPE_CHECKING:
    import torch

class Strip:
    """Bytes of stored files in a regular pattern: `count` rows, row i being, for each part
    (reader, offset, length, stride), the bytes [offset + i*stride, offset + i*stride + length)
    of that reader's file; a reader of None stands for zeros. One strip describes a contiguous
    tensor (count 1), a column slice (one part, a row per matrix row), or column slices of
    several tensor-parallel ranks side by side (one part per rank)."""

    __slots__ = ("parts", "count")

    def __init__(self, parts, count: int = 1):
        self.parts, self.count = tuple(parts), count

    @classmethod
    def run(cls, reader, offset: int, length: int) -> Strip:
        return cls(((reader, offset, length, length),), 1)

    @property
    def row_bytes(self) -> int:
        return sum(p[2] for p in self.parts)

    @property
    def nbytes(self) -> int:
        return self.row_bytes * self.count

    def rows(self) -> list[Strip]:
        """The same bytes as one single-row strip per row (the general, slower form)."""
        return [Strip(((r, o + i * st, n, n) for r, o, n, st in self.parts), 1) for i in range(self.count)]

    def __eq__(self, other):
        return isinstance(other, Strip) and (self.parts, self.count) == (other.parts, other.count)

    def __repr__(self):
        return f"Strip({list(self.parts)}, count={self.count})"


class Lazy:
    shape: tuple[int, ...]
    dtype: DType

    # -- shape facts -----------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    # -- evaluation ------------------------------------------------------------------------
    def materialize(self) -> torch.Tensor:
        out = buffers.empty(self.shape, self.dtype)
        self.fill(out)
        return out

    def fill(self, out: torch.Tensor) -> None:
        """Write this tensor's value into `out` (same shape and dtype, any strides)."""
        raise NotImplementedError

    def byte_runs(self) -> list[Strip] | None:
        """This tensor's bytes (row-major) as consecutive strips of stored data; None when its
        value has to be computed."""
        return None

    # -- structure -------------------------------------------------------------------------
    def narrow(self, dim: int, start: int, length: int) -> Lazy:
        dim = _dim(dim, self.ndim)
        if start < 0 or length < 0 or start + length > self.shape[dim]:
            raise ValueError(f"narrow({dim}, {start}, {length}) out of range for shape {list(self.shape)}")
        if start == 0 and length == self.shape[dim]:
            return self
        if length == 0:
            return Zeros(self.shape[:dim] + (0,) + self.shape[dim + 1:], self.dtype)
        return self._narrow(dim, start, length)

    def _narrow(self, dim: int, start: int, length: int) -> Lazy:
        return Narrowed(self, dim, start, length)

    def children(self) -> Sequence[Lazy]:
        return ()

    def leaves(self) -> Iterator[Stored]:
        for child in self.children():
            yield from child.leaves()

    def describe(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {list(self.shape)} {self.dtype}: {self.describe()}>"


def _dim(dim: int, ndim: int) -> int:
    if not -ndim <= dim < max(ndim, 1):
        raise ValueError(f"dim {dim} out of range for {ndim}-d tensor")
    return dim % max(ndim, 1)


def _region_text(region: tuple[tuple[int, int], ...], shape: tuple[int, ...]) -> str:
    if all(lo == 0 and hi == n for (lo, hi), n in zip(region, shape)):
        return ""
    return "[" + ", ".join(":" if (lo == 0 and hi == n) else f"{lo}:{hi}" for (lo, hi), n in zip(region, shape)) + "]"


def _contiguous_stride(shape: Sequence[int]) -> tuple[int, ...]:
    stride, acc = [], 1
    for n in reversed(shape):
        stride.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(stride))


class TensorSource:
    """Where one stored tensor's bytes are: a file reader plus offset, dtype, shape and strides."""

    def __init__(self, reader, offset: int, dtype: DType, shape, stride=None, name: str = "", file_label: str = ""):
        self.reader = reader
        self.offset = offset
        self.dtype = dtypes.of(dtype)
        self.shape = tuple(int(n) for n in shape)
        self.stride = tuple(stride) if stride is not None else _contiguous_stride(self.shape)
        self.name = name
        self.file_label = file_label

    def __repr__(self) -> str:
        return f"{self.file_label}:{self.name}"


class Stored(Lazy):
    """A region of a tensor stored in a file. Narrowing shrinks the region; nothing is read."""

    def __init__(self, source: TensorSource, region: tuple[tuple[int, int], ...] | None = None):
        self.source = source
        self.region = region if region is not None else tuple((0, n) for n in source.shape)
        self.shape = tuple(hi - lo for lo, hi in self.region)
        self.dtype = source.dtype

    def _narrow(self, dim, start, length):
        lo, _ = self.region[dim]
        region = list(self.region)
        region[dim] = (lo + start, lo + start + length)
        return Stored(self.source, tuple(region))

    def fill(self, out):
        self.source.reader.read_region(self.source, self.region, out)

    def byte_range(self) -> tuple[int, int] | None:
        """(offset, length) in the file when this region is one contiguous run of bytes."""
        strips = self.byte_runs(plain=True)
        if strips is None or len(strips) != 1 or strips[0].count != 1:
            return None
        _, offset, length, _ = strips[0].parts[0]
        return offset, length

    def byte_runs(self, plain: bool = False):
        """The whole region as one strip, or a column slice as a strip of one row per matrix row
        (one strip per index of any dims further out)."""
        src = self.source
        if src.stride != _contiguous_stride(src.shape) or (not plain and not hasattr(src.reader, "fileno")):
            return None
        if self.numel == 0:
            return []
        # the innermost dims that are whole form a contiguous block together with the last partial dim
        partial = [i for i, ((lo, hi), n) in enumerate(zip(self.region, src.shape)) if (hi - lo) != n]
        last = partial[-1] if partial else 0
        esize = src.dtype.itemsize
        length = (self.region[last][1] - self.region[last][0]) * src.stride[last] * esize
        start = src.offset + self.region[last][0] * src.stride[last] * esize
        if last == 0:
            return [Strip.run(src.reader, start, length)]
        # rows: the dim before `last`, and further-out dims while the ones inside them are whole,
        # so that every row is the same distance from the previous one
        first = last - 1
        while first > 0 and self.region[first] == (0, src.shape[first]):
            first -= 1
        row_stride = src.stride[last - 1] * esize
        rows = math.prod(hi - lo for lo, hi in self.region[first:last])
        starts = [start + self.region[first][0] * src.stride[first] * esize]
        for dim in reversed(range(first)):  # every index of the dims further out starts one strip
            lo, hi = self.region[dim]
            step = src.stride[dim] * esize
            starts = [base + i * step for i in range(lo, hi) for base in starts]
        return [Strip(((src.reader, s, length, row_stride),), rows) for s in starts]

    def leaves(self):
        yield self

    def describe(self):
        return f"{self.source!r}{_region_text(self.region, self.source.shape)}"


class Const(Lazy):
    """An in-memory tensor (tests, small computed values)."""

    def __init__(self, tensor: torch.Tensor, label: str = "const"):
        self.tensor = tensor
        self.shape = tuple(tensor.shape)
        self.dtype = dtypes.of(tensor.dtype)
        self.label = label

    def _narrow(self, dim, start, length):
        return Const(self.tensor.narrow(dim, start, length), self.label)

    def fill(self, out):
        out.copy_(self.tensor)

    def describe(self):
        return self.label


class Zeros(Lazy):
    def __init__(self, shape, dtype):
        self.shape = tuple(shape)
        self.dtype = dtypes.of(dtype)

    def _narrow(self, dim, start, length):
        shape = list(self.shape)
        shape[dim] = length
        return Zeros(shape, self.dtype)

    def fill(self, out):
        out.zero_()

    def byte_runs(self):
        return [Strip.run(None, 0, self.nbytes)]

    def describe(self):
        return f"zeros{list(self.shape)}"


class Cat(Lazy):
    def __init__(self, parts: Sequence[Lazy], dim: int):
        if not parts:
            raise ValueError("cat of no tensors")
        ndim = parts[0].ndim
        self.dim = _dim(dim, ndim)
        for p in parts:
            if p.ndim != ndim or p.dtype != parts[0].dtype or any(
                a != b for i, (a, b) in enumerate(zip(p.shape, parts[0].shape)) if i != self.dim
            ):
                raise ValueError(
                    f"cat on dim {self.dim}: {[list(q.shape) for q in parts]} {[str(q.dtype) for q in parts]} do not fit"
                )
        self.parts = list(parts)
        shape = list(parts[0].shape)
        shape[self.dim] = sum(p.shape[self.dim] for p in parts)
        self.shape = tuple(shape)
        self.dtype = parts[0].dtype

    def children(self):
        return self.parts

    def _narrow(self, dim, start, length):
        if dim != self.dim:
            return Cat([p.narrow(dim, start, length) for p in self.parts], self.dim)
        pieces, offset, stop = [], 0, start + length
        for p in self.parts:
            size = p.shape[dim]
            lo, hi = max(start, offset), min(stop, offset + size)
            if lo < hi:
                pieces.append(p.narrow(dim, lo - offset, hi - lo))
            offset += size
        return pieces[0] if len(pieces) == 1 else Cat(pieces, dim)

    def fill(self, out):
        offset = 0
        for p in self.parts:
            p.fill(out.narrow(self.dim, offset, p.shape[self.dim]))
            offset += p.shape[self.dim]

    def byte_runs(self):
        return _joined_runs(self.shape, self.dim, self.parts)

    def describe(self):
        return f"cat{self.dim}(" + ", ".join(p.describe() for p in self.parts) + ")"


class Transpose(Lazy):
    def __init__(self, x: Lazy, d0: int, d1: int):
        self.x = x
        self.d0, self.d1 = _dim(d0, x.ndim), _dim(d1, x.ndim)
        shape = list(x.shape)
        shape[self.d0], shape[self.d1] = shape[self.d1], shape[self.d0]
        self.shape = tuple(shape)
        self.dtype = x.dtype

    def children(self):
        return (self.x,)

    def _swap(self, dim):
        return self.d1 if dim == self.d0 else self.d0 if dim == self.d1 else dim

    def _narrow(self, dim, start, length):
        return Transpose(self.x.narrow(self._swap(dim), start, length), self.d0, self.d1)

    def fill(self, out):
        self.x.fill(out.transpose(self.d0, self.d1))

    def describe(self):
        return f"transpose{self.d0}{self.d1}({self.x.describe()})"


class Unsqueeze(Lazy):
    def __init__(self, x: Lazy, dim: int):
        self.x = x
        self.dim = _dim(dim, x.ndim + 1)
        shape = list(x.shape)
        shape.insert(self.dim, 1)
        self.shape = tuple(shape)
        self.dtype = x.dtype

    def children(self):
        return (self.x,)

    def _narrow(self, dim, start, length):
        return Unsqueeze(self.x.narrow(dim - (dim > self.dim), start, length), self.dim)

    def fill(self, out):
        self.x.fill(out.squeeze(self.dim))

    def byte_runs(self):
        return self.x.byte_runs()

    def describe(self):
        return f"unsqueeze{self.dim}({self.x.describe()})"


class Squeeze(Lazy):
    def __init__(self, x: Lazy, dim: int):
        self.x = x
        self.dim = _dim(dim, x.ndim)
        if x.shape[self.dim] != 1:
            raise ValueError(f"squeeze({self.dim}) of shape {list(x.shape)}")
        self.shape = x.shape[: self.dim] + x.shape[self.dim + 1:]
        self.dtype = x.dtype

    def children(self):
        return (self.x,)

    def _narrow(self, dim, start, length):
        return Squeeze(self.x.narrow(dim + (dim >= self.dim), start, length), self.dim)

    def fill(self, out):
        self.x.fill(out.unsqueeze(self.dim))

    def byte_runs(self):
        return self.x.byte_runs()

    def describe(self):
        return f"squeeze{self.dim}({self.x.describe()})"


class Pad(Lazy):
    """Zero rows appended on `dim` up to `size` (vocabulary padding)."""

    def __init__(self, x: Lazy, dim: int, size: int):
        self.x = x
        self.dim = _dim(dim, x.ndim)
        if size < x.shape[self.dim]:
            raise ValueError(f"pad to {size} is smaller than {x.shape[self.dim]}")
        shape = list(x.shape)
        shape[self.dim] = size
        self.shape = tuple(shape)
        self.dtype = x.dtype

    def children(self):
        return (self.x,)

    def _zeros(self) -> Zeros:
        shape = list(self.shape)
        shape[self.dim] -= self.x.shape[self.dim]
        return Zeros(shape, self.dtype)

    def _narrow(self, dim, start, length):
        if dim != self.dim:
            return Pad(self.x.narrow(dim, start, length), self.dim, self.shape[self.dim])
        return Cat([self.x, self._zeros()], dim).narrow(dim, start, length)

    def fill(self, out):
        n = self.x.shape[self.dim]
        self.x.fill(out.narrow(self.dim, 0, n))
        out.narrow(self.dim, n, self.shape[self.dim] - n).zero_()

    def byte_runs(self):
        return _joined_runs(self.shape, self.dim, [self.x, self._zeros()])

    def describe(self):
        return f"pad{self.dim}:{self.shape[self.dim]}({self.x.describe()})"


class Cast(Lazy):
    def __init__(self, x: Lazy, dtype: DType):
        self.x = x
        self.shape = x.shape
        self.dtype = dtypes.of(dtype)

    def children(self):
        return (self.x,)

    def _narrow(self, dim, start, length):
        return cast(self.x.narrow(dim, start, length), self.dtype)

    def fill(self, out):
        out.copy_(self.x.materialize())

    def describe(self):
        return f"{self.dtype}({self.x.describe()})"


class Narrowed(Lazy):
    """Fallback when a node cannot push a narrow down: materialise, then slice."""

    def __init__(self, x: Lazy, dim: int, start: int, length: int):
        self.x, self.dim, self.start, self.length = x, dim, start, length
        shape = list(x.shape)
        shape[dim] = length
        self.shape = tuple(shape)
        self.dtype = x.dtype

    def children(self):
        return (self.x,)

    def fill(self, out):
        out.copy_(self.x.materialize().narrow(self.dim, self.start, self.length))

    def describe(self):
        return f"{self.x.describe()}.narrow({self.dim},{self.start},{self.length})"


class Tiled(Lazy):
    """A tensor stored as chunks that tile it (torch.distributed.checkpoint): narrowing keeps only
    the chunks that overlap the region, so a reader touches just those chunks' bytes."""

    def __init__(self, shape, dtype, chunks: Sequence[tuple[tuple[int, ...], Lazy]], label: str = ""):
        self.shape, self.dtype, self.label = tuple(shape), dtypes.of(dtype), label
        self.chunks = list(chunks)

    @classmethod
    def checked(cls, shape, dtype, chunks, label: str):
        volume = 0
        for offsets, chunk in chunks:
            if len(offsets) != len(shape) or any(o < 0 or o + n > s for o, n, s in zip(offsets, chunk.shape, shape)):
                raise ValueError(f"{label}: chunk at {list(offsets)} of shape {list(chunk.shape)} is outside {list(shape)}")
            volume += chunk.numel
        if volume != math.prod(shape):
            raise ValueError(f"{label}: chunks cover {volume} of {math.prod(shape)} elements")
        return cls(shape, dtype, chunks, label)

    def children(self):
        return [c for _, c in self.chunks]

    def _narrow(self, dim, start, length):
        stop = start + length
        kept = []
        for offsets, chunk in self.chunks:
            lo, hi = max(start, offsets[dim]), min(stop, offsets[dim] + chunk.shape[dim])
            if lo < hi:
                new_offsets = list(offsets)
                new_offsets[dim] = lo - start
                kept.append((tuple(new_offsets), chunk.narrow(dim, lo - offsets[dim], hi - lo)))
        shape = list(self.shape)
        shape[dim] = length
        if len(kept) == 1 and all(o == 0 for o in kept[0][0]):
            return kept[0][1]
        return Tiled(shape, self.dtype, kept, self.label)

    def fill(self, out):
        for offsets, chunk in self.chunks:
            view = out
            for dim, (o, n) in enumerate(zip(offsets, chunk.shape)):
                view = view.narrow(dim, o, n)
            chunk.fill(view)

    def byte_runs(self):
        # chunks stacked along one dim (whole in every other) are a concatenation on that dim
        split = [d for d in range(self.ndim) if any(c.shape[d] != self.shape[d] for _, c in self.chunks)]
        if len(split) > 1:
            return None
        dim = split[0] if split else 0
        ordered = [c for _, c in sorted(self.chunks, key=lambda oc: oc[0][dim])]
        return _joined_runs(self.shape, dim, ordered)

    def describe(self):
        return f"{self.label}[{len(self.chunks)} chunks]"


def _joined_runs(shape, dim: int, parts: Sequence[Lazy]) -> list[Strip] | None:
    """Strips of parts joined on `dim`. With no dims before `dim`, one part after another.
    Otherwise, for each index of the dims before it (a "row"), each part's block of that row in
    turn: one strip with a part per input when every input is one row-per-block strip (the
    common case: column slices side by side), else one strip per block."""
    rows = math.prod(shape[:dim])
    per_part = []
    for p in parts:
        strips = p.byte_runs()
        if strips is None:
            return None
        per_part.append(strips)
    if rows <= 1:
        return [s for strips in per_part for s in strips]
    as_rows = [_as_rows(strips, p.nbytes // rows, rows) for strips, p in zip(per_part, parts)]
    if all(r is not None for r in as_rows):
        return [Strip([part for strip in as_rows for part in strip.parts], rows)]
    blocks = [_cut(strips, p.nbytes // rows, rows) for strips, p in zip(per_part, parts)]
    return [s for row in range(rows) for part in blocks for s in part[row]]


def _as_rows(strips: list[Strip], block: int, rows: int) -> Strip | None:
    """The strips as one strip of `rows` rows of `block` bytes, when they are that regular."""
    if len(strips) != 1:
        return None
    (strip,) = strips
    if strip.count == rows and strip.row_bytes == block:
        return strip
    if strip.count == 1 and len(strip.parts) == 1:  # one contiguous run: rows follow each other
        reader, offset, _, _ = strip.parts[0]
        return Strip(((reader, offset, block, block if reader is not None else 0),), rows)
    return None


def _cut(strips: list[Strip], block: int, count: int) -> list[list[Strip]]:
    """Split strips into `count` consecutive blocks of `block` bytes each (one run at a time)."""
    out: list[list[Strip]] = [[] for _ in range(count)]
    index, used = 0, 0
    for strip in strips:
        for row in strip.rows():
            for reader, offset, length, _ in row.parts:
                while length:
                    take = min(length, block - used)
                    out[index].append(Strip.run(reader, offset if reader is not None else 0, take))
                    offset, length, used = offset + take, length - take, used + take
                    if used == block:
                        index, used = index + 1, 0
    return out


def cast(x: Lazy, dtype) -> Lazy:
    dtype = dtypes.of(dtype)
    if x.dtype == dtype:
        return x
    if isinstance(x, Zeros):
        return Zeros(x.shape, dtype)
    return Cast(x, dtype)  # never fold casts: fp32 -> bf16 -> fp32 is not the identity


def cat(parts: Sequence[Lazy], dim: int) -> Lazy:
    return parts[0] if len(parts) == 1 else Cat(parts, dim)


def lazy(t, label: str = "const") -> Lazy:
    return t if isinstance(t, Lazy) else Const(t, label)
