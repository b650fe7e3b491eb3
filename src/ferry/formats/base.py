"""What every format adapter provides: detect a path, read it into the canonical model, plan a
write of the canonical model, describe what is on disk."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..dtypes import DType
from ..io.files import FileSet
from ..lazy import Lazy, cast
from ..spec import ModelSpec


@dataclass
class Model:
    """A checkpoint read into the canonical form: spec plus lazy full tensors."""

    spec: ModelSpec
    tensors: dict[str, Lazy]
    format: str
    path: Path
    parallel: dict = field(default_factory=lambda: {"tp": 1, "pp": 1})
    files: FileSet = field(default_factory=FileSet)
    hf_config: dict | None = None  # the original config.json of an HF source (passed through)
    aux_files: list[Path] = field(default_factory=list)  # tokenizer files and such
    info: dict = field(default_factory=dict)  # format details for `inspect`
    source_args: dict | None = None  # a Megatron source's args (kept when writing Megatron again)
    vocab_padding: dict[str, Lazy] = field(default_factory=dict)  # a Megatron source's padding rows
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        self.files.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class ReadOptions:
    vocab_size: int | None = None  # true vocabulary when the checkpoint does not say (Megatron)
    family: str | None = None  # override family detection


@dataclass
class WriteOptions:
    tp: int = 1
    pp: int = 1
    dtype: DType | None = None  # None: keep the source dtype
    max_shard_size: int = 5 * 10**9
    parallel_embedding: bool = False
    megatron_spec: str | None = None  # legacy norm names: "local" or "te"; default: the source's, else local
    make_vocab_size_divisible_by: int = 128
    iteration: int | str | None = None  # Megatron output; default: the source's, else "release"


class Format:
    name: str = ""
    description: str = ""

    def detect(self, path: Path) -> bool:
        raise NotImplementedError

    def why_not(self, path: Path) -> str | None:
        """When `path` looks like this format but is not readable as it, the one-line reason."""
        return None

    def read(self, path: Path, options: ReadOptions) -> Model:
        raise NotImplementedError

    def plan(self, model: Model, options: WriteOptions):
        raise NotImplementedError


def output_dtype(model: Model, options: WriteOptions) -> DType:
    from ..dtypes import dtype_from_name

    return options.dtype or dtype_from_name(model.spec.dtype)


def cast_float(t: Lazy, dtype: DType) -> Lazy:
    return cast(t, dtype) if t.dtype.is_floating_point else t
