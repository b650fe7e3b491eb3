"""Checkpoints split over tensor x pipeline ranks (TensorRT-LLM rank files, Megatron mp_rank
dirs): which stage holds a tensor, the rank-local name, gathering pieces on read (with
shape checks and strict accounting) and splitting them on write."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, UnsupportedError
from .lazy import Lazy
from .rules import check_shape, gather, shard, split_shape


@dataclass(frozen=True)
class StageLayout:
    """How names place tensors on pipeline stages: layers by `layer_pattern` (local numbering per
    stage), `first_stage` prefixes on stage 0, everything else on the last stage."""

    layer_pattern: str  # e.g. r"transformer\.layers\.(\d+)\.(.+)"
    layer_template: str  # e.g. "transformer.layers.{layer}.{rest}"
    first_stage: tuple[str, ...]

    def locate(self, name: str, stages: list[range]) -> tuple[int, str]:
        m = re.fullmatch(self.layer_pattern, name)
        if m:
            layer = int(m.group(1))
            for stage, layers in enumerate(stages):
                if layer in layers:
                    return stage, self.layer_template.format(layer=layer - layers.start, rest=m.group(2))
            raise CheckpointError(f"layer {layer} is in no pipeline stage")
        return (0 if name.startswith(self.first_stage) else len(stages) - 1), name

    def local_layers(self, names) -> set[int]:
        return {int(m.group(1)) for n in names if (m := re.fullmatch(self.layer_pattern, n))}


def even_stages(num_layers: int, pp: int) -> list[range]:
    if pp < 1 or num_layers % pp:
        raise UnsupportedError(f"--pp {pp}: {num_layers} layers do not split evenly over {pp} pipeline stages")
    per = num_layers // pp
    return [range(s * per, (s + 1) * per) for s in range(pp)]


def stages_from_files(layout: StageLayout, ranks: Mapping[tuple[int, int], Mapping[str, Lazy]], pp: int,
                      num_layers: int, label) -> list[range]:
    """Layer ranges per stage as found in the files of tp rank 0 of each stage."""
    stages, start = [], 0
    for stage in range(pp):
        layers = layout.local_layers(ranks[(stage, 0)])
        if layers != set(range(len(layers))):
            raise CheckpointError(f"{label(stage, 0)}: layer numbers {sorted(layers)} are not 0..{len(layers) - 1}")
        stages.append(range(start, start + len(layers)))
        start += len(layers)
    if start != num_layers:
        raise CheckpointError(f"{label(0, 0)}: the rank files hold {start} layers, the config says {num_layers}")
    return stages


class RankedReader:
    """Gathers a stored tensor from the ranks of its stage and remembers what was consumed."""

    def __init__(self, ranks: Mapping[tuple[int, int], Mapping[str, Lazy]], tp: int, stages: list[range],
                 layout: StageLayout, label):
        self.ranks, self.tp, self.stages, self.layout, self.label = ranks, tp, stages, layout, label
        self.consumed: set[tuple[tuple[int, int], str]] = set()

    def fetch(self, name: str, expected: tuple[int, ...], kind: str) -> Lazy:
        stage, local = self.layout.locate(name, self.stages)
        parts = []
        for tp_rank in range(self.tp):
            tensors = self.ranks[(stage, tp_rank)]
            if local not in tensors:
                raise CheckpointError(f"{self.label(stage, tp_rank)}: missing tensor {local}")
            self.consumed.add(((stage, tp_rank), local))
            parts.append(check_shape(tensors[local], split_shape(expected, kind, self.tp), local, self.label(stage, tp_rank)))
        return gather(parts, kind)

    def check_all_consumed(self, ignore=lambda name: False) -> None:
        for key, tensors in self.ranks.items():
            extra = [n for n in tensors if (key, n) not in self.consumed and not ignore(n)]
            if extra:
                raise CheckpointError(f"{self.label(*key)}: unexpected tensor {extra[0]}")


def split_to_ranks(stored: Mapping[str, tuple[Lazy, str]], tp: int, stages: list[range],
                   layout: StageLayout) -> dict[tuple[int, int], list[tuple[str, Lazy]]]:
    """(stage, tp rank) -> [(rank-local name, that rank's piece)], in `stored` order."""
    out: dict[tuple[int, int], list[tuple[str, Lazy]]] = {(s, r): [] for s in range(len(stages)) for r in range(tp)}
    for name, (value, kind) in stored.items():
        stage, local = layout.locate(name, stages)
        for tp_rank in range(tp):
            out[(stage, tp_rank)].append((local, shard(value, kind, tp, tp_rank, name)))
    return out


def file_label(root: Path, pattern: str):
    return lambda stage, tp_rank: root / pattern.format(stage=stage, tp_rank=tp_rank)
