"""Megatron-core torch_dist checkpoints (`--ckpt-format torch_dist`): a
torch.distributed.checkpoint directory, `<root>/iter_NNNNNNN/{.metadata, __R_K.distcp, common.pt,
metadata.json}`. Tensors are stored once, globally (TP=1 layout, whatever the training TP), in
chunks; decoder layers are stacked on a leading axis: `decoder.layers.X` is [L, ...].

Reading uses DCP's own metadata types and storage index, but ferry's allow-list unpickler (DCP's
FileSystemReader.read_metadata runs full pickle.load) and reads each chunk lazily: a layer's
tensor costs only that layer's chunks. Writing produces the same structure, one .distcp file per
(tp, pp) rank, each chunk a torch.save archive, so megatron-core loads it at any parallelism."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..dtypes import DType
from ..errors import CheckpointError, UnsupportedError
from ..io import torch_zip
from ..lazy import Lazy, Tiled, Unsqueeze
from ..plan import (
    CopiedFile,
    JsonFile,
    Plan,
    PlannedFile,
    PlannedTensor,
    TextFile,
    TorchArchiveFile,
)
from ..rules import Geometry, bind, check_shape, read_canonical, shard, write_stored
from . import register
from .base import Format, Model, ReadOptions, WriteOptions, cast_float
from .hf import find_aux_files, read_json
from .megatron_common import (
    TRACKER,
    MegatronTarget,
    args_for,
    iteration_dir,
    iteration_name,
    spec_from_args,
)
from .megatron_names import (
    LAYER,
    LAYOUT,
    LINEARS,
    RULES,
    layer_tensor,
    norm_style,
    vocab_padding,
)

METADATA_JSON = {"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch", "common_backend_version": 1}
IGNORED_PREFIXES = ("optimizer.", "rng_state", "rerun_state_machine")


class MegatronDist(Format):
    name = "megatron-dist"
    description = "Megatron-core torch_dist checkpoint (iter_*/.metadata + *.distcp + common.pt)"

    def detect(self, path):
        found = iteration_dir(path)
        return bool(found) and (found[0] / ".metadata").is_file() and (found[0] / "metadata.json").is_file()

    # -- reading -------------------------------------------------------------------------------
    def read(self, path, options: ReadOptions) -> Model:
        iter_dir, iteration = iteration_dir(path)
        backend = read_json(iter_dir / "metadata.json").get("sharded_backend")
        if backend != "torch_dist":
            raise UnsupportedError(f"{iter_dir / 'metadata.json'}: sharded_backend {backend!r} (only torch_dist is read)")
        model = Model(spec=None, tensors={}, format=self.name, path=path)
        try:
            common = torch_zip.load(model.files.open(iter_dir / "common.pt"))
            if not isinstance(common, dict) or common.get("args") is None:
                raise CheckpointError(f"{iter_dir / 'common.pt'}: no 'args'")
            stored = self._tensors(iter_dir, model)
            embed = stored.get("embedding.word_embeddings.weight")
            spec, layout = spec_from_args(common["args"], str(iter_dir / "common.pt"), options.vocab_size,
                                          embed.dtype if embed is not None else None)
            padded = embed.shape[0] if embed is not None else layout["padded_vocab"]
            consumed: set[str] = set()
            metadata_file = iter_dir / ".metadata"

            def fetch(name, expected, _kind):
                t, key = layer_tensor(stored, name, spec.num_layers, metadata_file)
                consumed.add(key)
                return check_shape(t, expected, name, metadata_file)

            geo = Geometry(spec, vocab_rows=padded)
            model.spec = spec
            model.tensors = read_canonical(bind(RULES[norm_style(stored)], geo), spec, fetch)
            model.vocab_padding = vocab_padding(fetch, spec, padded)
            extra = [k for k in stored if k not in consumed and not k.startswith(IGNORED_PREFIXES)]
            if extra:
                raise CheckpointError(f"{metadata_file}: unexpected tensor {extra[0]}")
            model.parallel = {"tp": layout["tp"], "pp": layout["pp"]}
            model.source_args = vars(common["args"]) if hasattr(common["args"], "__dict__") else dict(common["args"])
            model.aux_files = find_aux_files(iter_dir.parent, path)
            model.info = {
                "iteration": iteration,
                "trained_with": {"tp": layout["tp"], "pp": layout["pp"]},
                "padded_vocab": padded,
                "files": sorted(p.name for p in iter_dir.glob("*.distcp")),
                "tensors": {k: list(v.shape) for k, v in stored.items() if not k.startswith(IGNORED_PREFIXES)},
            }
            return model
        except BaseException:
            model.close()
            raise

    def _tensors(self, iter_dir: Path, model: Model) -> dict[str, Lazy]:
        from torch.distributed.checkpoint.metadata import (
            Metadata,
            TensorStorageMetadata,
        )

        label = iter_dir / ".metadata"
        reader = model.files.open(label)
        md = torch_zip.restricted_loads(reader.read_bytes(0, reader.size), str(label), allow_dcp=True)
        if not isinstance(md, Metadata):
            raise CheckpointError(f"{label}: not torch.distributed.checkpoint metadata")
        storage = {(index.fqn, tuple(index.offset or ())): info for index, info in (md.storage_data or {}).items()}
        tensors = {}
        for fqn, meta in md.state_dict_metadata.items():
            if not isinstance(meta, TensorStorageMetadata):
                continue
            chunks = []
            for chunk in meta.chunks:
                info = storage.get((fqn, tuple(chunk.offsets)))
                if info is None:
                    raise CheckpointError(f"{label}: no storage entry for {fqn} at offset {list(chunk.offsets)}")
                if getattr(info, "transform_descriptors", None):
                    raise UnsupportedError(f"{label}: {fqn} is stored with transforms {info.transform_descriptors}")
                data = iter_dir / info.relative_path
                if Path(info.relative_path).name != info.relative_path or not data.is_file():
                    raise CheckpointError(f"{label}: {fqn} is stored in {info.relative_path!r}, which is not a file of this checkpoint")
                chunk_label = f"{fqn}{list(chunk.offsets)}"
                chunks.append((tuple(chunk.offsets), torch_zip.ArchivedTensor(
                    model.files.open(data), info.offset, info.length, chunk.sizes, meta.properties.dtype, chunk_label)))
            try:
                tensors[fqn] = Tiled.checked(tuple(meta.size), meta.properties.dtype, chunks, fqn)
            except ValueError as e:
                raise CheckpointError(f"{label}: {e}") from None
        return tensors

    # -- writing -------------------------------------------------------------------------------
    def plan(self, model: Model, options: WriteOptions) -> Plan:
        target = MegatronTarget.of(model, options)
        spec, tp, pp, dtype, padded, iteration = target.spec, target.tp, target.pp, target.dtype, target.padded_vocab, target.iteration
        geo = Geometry(spec, vocab_rows=padded, vocab_fill=model.vocab_padding)
        stored = write_stored(bind(RULES["te"], geo), model.tensors)
        it_dir = iteration_name(iteration)
        ledger = Ledger()
        stages = [range(s * spec.num_layers // pp, (s + 1) * spec.num_layers // pp) for s in range(pp)]
        files: list[PlannedFile] = []
        for stage in range(pp):
            for tp_rank in range(tp):
                rank = stage * tp + tp_rank
                items = self._rank_items(stored, spec, tp, tp_rank, stages, stage, dtype)
                files.append(DistcpFile(f"{it_dir}/__{rank}_0.distcp", items, ledger))
        args = args_for(spec, tp, pp, padded, options.make_vocab_size_divisible_by, "local",
                        base=model.source_args, iteration=0 if iteration == "release" else iteration)
        args.ckpt_format = "torch_dist"
        common = {"args": args, "checkpoint_version": 3.0, "iteration": args.iteration, "num_floating_point_operations_so_far": 0}
        files += [
            TorchArchiveFile(f"{it_dir}/common.pt", common, [], []),
            JsonFile(f"{it_dir}/metadata.json", METADATA_JSON),
            MetadataFile(f"{it_dir}/.metadata", ledger),
            TextFile(TRACKER, str(iteration)),
            *[CopiedFile(p.name, p) for p in model.aux_files],
        ]
        return Plan(self.name, spec, files, {"tp": tp, "pp": pp}, list(target.notes))

    @staticmethod
    def _rank_items(stored, spec, tp, tp_rank, stages, stage, dtype) -> list[Item]:
        """This rank's chunks: its slice of every split tensor of its stage, and (tp rank 0 only)
        the replicated ones, as Megatron's ranks write them."""
        items: list[Item] = []
        layers_seen = []
        for name, (value, kind) in stored.items():
            owner, _ = LAYOUT.locate(name, stages)
            if owner != stage or (kind == "replicated" and tp_rank):
                continue
            piece = cast_float(shard(value, kind, tp, tp_rank, name), dtype)
            offsets = [0] * value.ndim
            dim = {"column": 0, "row": 1}.get(kind)
            if dim is not None:
                offsets[dim] = tp_rank * piece.shape[dim]
            m = LAYER.fullmatch(name)
            if m:
                layer = int(m.group(1))
                if tp_rank == 0 and layer not in layers_seen:
                    layers_seen.append(layer)
                items.append(Item(f"decoder.layers.{m.group(2)}", (spec.num_layers, *value.shape), (layer, *offsets), Unsqueeze(piece, 0)))
            else:
                items.append(Item(name, tuple(value.shape), tuple(offsets), piece))
        for layer in layers_seen:  # empty extra state of each linear, stored by tp rank 0
            for linear in LINEARS:
                items.append(Item(f"decoder.layers.{linear}._extra_state/shard_{layer}_{spec.num_layers}", None, None, None))
        return items


@dataclass
class Item:
    """One DCP write item: a tensor chunk (key, global shape, chunk offsets, value) or, with no
    value, an empty extra-state object."""

    key: str
    global_shape: tuple[int, ...] | None
    offsets: tuple[int, ...] | None
    value: Lazy | None


@dataclass
class Ledger:
    """Where each item landed, filled in by the .distcp writers, read by the .metadata writer."""

    tensors: dict[str, tuple[tuple[int, ...], DType, list]] = field(default_factory=dict)
    objects: list[str] = field(default_factory=list)
    storage: list[tuple[str, tuple[int, ...] | None, str, int, int]] = field(default_factory=list)


@dataclass
class DistcpFile(PlannedFile):
    path: str
    items: list[Item]
    ledger: Ledger

    @property
    def tensors(self) -> list[PlannedTensor]:
        return [PlannedTensor(f"{i.key}{list(i.offsets)}", i.value) for i in self.items if i.value is not None]

    def write(self, target, stream):
        planned = self.tensors
        values = iter(stream(planned))
        name = Path(self.path).name
        with open(target, "wb") as f:
            for item in self.items:
                start = f.tell()
                if item.value is None:
                    torch_zip.write_archive(f, [None], [], [])
                    self.ledger.objects.append(item.key)
                    self.ledger.storage.append((item.key, None, name, start, f.tell() - start))
                    continue
                tensor = next(values)
                slot = torch_zip.TensorSlot("0", tensor.shape, tensor.dtype)
                torch_zip.write_archive(f, slot, [slot], [tensor])
                del tensor
                shape, dtype, chunks = self.ledger.tensors.setdefault(item.key, (item.global_shape, item.value.dtype, []))
                chunks.append((item.offsets, tuple(item.value.shape)))
                self.ledger.storage.append((item.key, item.offsets, name, start, f.tell() - start))


@dataclass
class MetadataFile(PlannedFile):
    path: str
    ledger: Ledger
    tensors: list[PlannedTensor] = field(default_factory=list)

    def write(self, target, stream):
        import pickle

        import torch
        from torch.distributed.checkpoint.filesystem import _StorageInfo
        from torch.distributed.checkpoint.metadata import (
            BytesStorageMetadata,
            ChunkStorageMetadata,
            Metadata,
            MetadataIndex,
            StorageMeta,
            TensorProperties,
            TensorStorageMetadata,
        )

        # the .distcp files were written concurrently: sorted, and keys interned (pickle shares equal
        # objects by identity), so that the same plan gives the same bytes
        state = {}
        for key, (shape, dtype, chunks) in sorted(self.ledger.tensors.items()):
            state[sys.intern(key)] = TensorStorageMetadata(
                properties=TensorProperties(dtype=dtype.torch), size=torch.Size(shape),
                chunks=[ChunkStorageMetadata(offsets=torch.Size(o), sizes=torch.Size(s)) for o, s in sorted(chunks)])
        for key in sorted(self.ledger.objects):
            state[sys.intern(key)] = BytesStorageMetadata()
        storage = {
            MetadataIndex(sys.intern(key), None if offsets is None else torch.Size(offsets)): _StorageInfo(file, offset, length)
            for key, offsets, file, offset, length in sorted(self.ledger.storage, key=lambda e: (e[0], e[1] or ()))
        }
        md = Metadata(state_dict_metadata=state, storage_data=storage, storage_meta=StorageMeta())
        buf = io.BytesIO()
        pickle.dump(md, buf)
        target.write_bytes(buf.getvalue())


register(MegatronDist())
