"""A conversion plan: every output file and tensor (name, shape, dtype, recipe) before any byte
moves. `--dry-run` prints it; the executor runs it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .dtypes import DType, dtype_name
from .io import safetensors as st
from .lazy import Lazy
from .spec import ModelSpec


@dataclass
class PlannedTensor:
    name: str
    value: Lazy

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @property
    def dtype(self) -> DType:
        return self.value.dtype

    @property
    def nbytes(self) -> int:
        return self.value.nbytes


# (tensors, runs_ok) -> their values in order; with runs_ok, unread `Runs` where bytes only move
TensorStream = Callable[..., Iterator]


class PlannedFile:
    path: str
    tensors: list[PlannedTensor]

    def write(self, target: Path, stream: TensorStream) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return self.path


@dataclass
class SafetensorsFile(PlannedFile):
    path: str
    tensors: list[PlannedTensor]
    metadata: dict[str, str] = field(default_factory=lambda: {"format": "pt"})

    def write(self, target, stream):
        entries = [st.Entry(t.name, t.shape, t.dtype) for t in self.tensors]
        st.write(target, entries, stream(self.tensors, True), self.metadata)


@dataclass
class JsonFile(PlannedFile):
    path: str
    data: dict
    tensors: list[PlannedTensor] = field(default_factory=list)

    def write(self, target, stream):
        target.write_text(json.dumps(self.data, indent=2, sort_keys=False) + "\n")


@dataclass
class CopiedFile(PlannedFile):
    path: str
    source: Path
    tensors: list[PlannedTensor] = field(default_factory=list)

    def write(self, target, stream):
        shutil.copyfile(self.source, target)

    def describe(self):
        return f"{self.path} (copied from {self.source})"


@dataclass
class Plan:
    format: str
    spec: ModelSpec
    files: list[PlannedFile]
    parallel: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def tensors(self) -> list[tuple[PlannedFile, PlannedTensor]]:
        return [(f, t) for f in self.files for t in f.tensors]

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for _, t in self.tensors)

    @property
    def largest_tensor_bytes(self) -> int:
        return max((t.nbytes for _, t in self.tensors), default=0)

    def to_json(self, recipes: bool = False) -> dict:
        files = []
        for f in self.files:
            entry = {"path": f.path, "tensors": []}
            for t in f.tensors:
                row = {"name": t.name, "shape": list(t.shape), "dtype": dtype_name(t.dtype), "bytes": t.nbytes}
                if recipes:
                    row["recipe"] = t.value.describe()
                entry["tensors"].append(row)
            files.append(entry)
        return {
            "format": self.format,
            "parallel": self.parallel,
            "spec": {k: v for k, v in self.spec.to_dict().items() if k != "extra"},
            "total_bytes": self.total_bytes,
            "notes": self.notes,
            "files": files,
        }

    def render(self, recipes: bool = False) -> str:
        lines = [
            f"plan: {self.format} {' '.join(f'{k}={v}' for k, v in self.parallel.items())}, "
            f"{len(self.tensors)} tensors, {self.total_bytes} bytes in {len(self.files)} files"
        ]
        for note in self.notes:
            lines.append(f"note: {note}")
        for f in self.files:
            lines.append(f.describe())
            for t in f.tensors:
                row = f"  {t.name}  {list(t.shape)}  {dtype_name(t.dtype)}"
                if recipes:
                    row += f"  <- {t.value.describe()}"
                lines.append(row)
        return "\n".join(lines)


@dataclass
class TextFile(PlannedFile):
    path: str
    text: str
    tensors: list[PlannedTensor] = field(default_factory=list)

    def write(self, target, stream):
        target.write_text(self.text)


@dataclass
class TorchArchiveFile(PlannedFile):
    """A torch.save-compatible archive: `obj` with TensorSlots, the slots' tensors streamed after."""

    path: str
    obj: object
    slots: list
    tensors: list[PlannedTensor]

    def write(self, target, stream):
        from .io.torch_zip import write_archive

        with open(target, "wb") as f:
            write_archive(f, self.obj, self.slots, stream(self.tensors), archive=Path(self.path).stem)
