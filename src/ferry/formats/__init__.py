"""On-disk formats, registered by name; `detect` finds the one a path holds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CheckpointError, FerryError

if TYPE_CHECKING:
    from .base import Format

_FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    if fmt.name in _FORMATS:
        raise ValueError(f"format {fmt.name!r} is already registered")
    _FORMATS[fmt.name] = fmt
    return fmt


def get(name: str) -> Format:
    _load()
    if name not in _FORMATS:
        raise FerryError(f"unknown format {name!r} (known: {', '.join(_FORMATS)})")
    return _FORMATS[name]


def names() -> list[str]:
    _load()
    return list(_FORMATS)


def detect(path: Path) -> Format:
    _load()
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a checkpoint directory")
    for fmt in _FORMATS.values():
        if fmt.detect(path):
            return fmt
    for fmt in _FORMATS.values():
        reason = fmt.why_not(path)
        if reason:
            raise CheckpointError(reason)
    raise CheckpointError(f"{path}: not a checkpoint ferry recognises ({'; '.join(f.description for f in _FORMATS.values())})")


def _load() -> None:
    from . import hf, megatron_dist, megatron_legacy, trtllm  # noqa: F401  (each registers itself on first import)
