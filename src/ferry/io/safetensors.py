"""safetensors: a header parser that validates before anything is read, and a streaming writer
that writes the header from the plan, then each tensor as it arrives, and frees it.

Layout: 8-byte little-endian header length N, N bytes of JSON
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the data,
offsets relative to the end of the header.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import dtypes
from ..dtypes import BY_CODE, DType
from ..errors import CheckpointError
from ..lazy import Stored, TensorSource
from .files import FileReader, Runs, _write_all, tensor_buffer

MAX_HEADER = 100 * 1024 * 1024


def read_index(reader: FileReader) -> tuple[dict[str, Stored], dict[str, str]]:
    """Tensors (as lazy `Stored` leaves) and `__metadata__` of one safetensors file."""
    where = reader.path
    if reader.size < 8:
        raise CheckpointError(f"{where}: not a safetensors file ({reader.size} bytes, shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", reader.read_bytes(0, 8))
    if n > MAX_HEADER or 8 + n > reader.size:
        raise CheckpointError(f"{where}: truncated or not safetensors: header length {n} does not fit in a {reader.size}-byte file")
    try:
        header = json.loads(reader.read_bytes(8, n))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{where}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_start, data_len = 8 + n, reader.size - 8 - n
    tensors: dict[str, Stored] = {}
    spans = []
    for name, entry in header.items():
        try:
            code, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            shape = [int(d) for d in shape]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{where}: tensor {name}: malformed header entry {entry!r}") from None
        if code not in BY_CODE:
            raise CheckpointError(f"{where}: tensor {name}: unsupported dtype {code!r}")
        dtype = BY_CODE[code]
        nbytes = math.prod(shape) * dtype.itemsize
        if any(d < 0 for d in shape) or end - begin != nbytes or begin < 0:
            raise CheckpointError(
                f"{where}: tensor {name}: data_offsets [{begin}, {end}] do not hold a {code} tensor of shape {shape} ({nbytes} bytes)"
            )
        if end > data_len:
            raise CheckpointError(
                f"{where}: truncated: tensor {name} needs bytes up to {data_start + end}, file has {reader.size}"
            )
        spans.append((begin, end, name))
        tensors[name] = Stored(TensorSource(reader, data_start + begin, dtype, shape, name=name, file_label=reader.label))
    spans.sort()
    for (_, e0, n0), (b1, _, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CheckpointError(f"{where}: tensors {n0} and {n1} overlap in the file")
    return tensors, {str(k): str(v) for k, v in metadata.items()}


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    dtype: DType

    def __post_init__(self):
        object.__setattr__(self, "dtype", dtypes.of(self.dtype))  # a torch dtype is accepted too

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def header_bytes(entries: Sequence[Entry], metadata: dict[str, str] | None = None) -> bytes:
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for e in entries:
        header[e.name] = {"dtype": e.dtype.code, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def write(path: Path, entries: Sequence[Entry], tensors: Iterable, metadata=None) -> None:
    """Write the header for `entries`, then each tensor of `tensors` in the same order; an item
    may also be a `Runs` (bytes to copy straight from source files)."""
    with open(path, "wb", buffering=0) as f:
        f.write(header_bytes(entries, metadata))
        count = 0
        for entry, t in zip(entries, tensors):
            if isinstance(t, Runs):
                if t.nbytes != entry.nbytes:
                    raise AssertionError(f"{entry.name}: planned {entry.nbytes} bytes, runs have {t.nbytes}")
                t.copy_to(f.fileno())
            else:
                if tuple(t.shape) != entry.shape or entry.dtype != t.dtype:
                    raise AssertionError(f"{entry.name}: planned {list(entry.shape)} {entry.dtype}, produced {list(t.shape)} {t.dtype}")
                _write_all(f.fileno(), tensor_buffer(t.contiguous()))
            count += 1
            del t
        if count != len(entries):
            raise AssertionError(f"{path.name}: planned {len(entries)} tensors, produced {count}")
