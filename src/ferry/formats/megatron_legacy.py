"""Megatron-LM legacy checkpoints (`--ckpt-format torch`): one torch.save archive per model-parallel
rank, `<root>/iter_NNNNNNN/mp_rank_TT[_PPP]/model_optim_rng.pt` = {'args', 'iteration',
'checkpoint_version', 'model': the rank's state dict with local layer numbers, ...}.
Read with the allow-list unpickler, tensors left on disk until an output needs them."""

from __future__ import annotations

import collections
import re
from pathlib import Path

from ..errors import CheckpointError, UnsupportedError
from ..io import torch_zip
from ..lazy import Lazy
from ..parallel import RankedReader, even_stages, split_to_ranks, stages_from_files
from ..plan import CopiedFile, Plan, PlannedTensor, TextFile, TorchArchiveFile
from ..rules import Geometry, bind, read_canonical, write_stored
from . import register
from .base import Format, Model, ReadOptions, WriteOptions, cast_float
from .hf import find_aux_files
from .megatron_common import (
    TRACKER,
    MegatronTarget,
    args_for,
    iteration_dir,
    iteration_name,
    spec_from_args,
)
from .megatron_names import (
    LAYOUT,
    LINEARS,
    RULES,
    norm_style,
    strip_prefix,
    vocab_padding,
)

RANK_DIR = re.compile(r"mp_rank_(\d\d)(?:_(\d\d\d))?(?:_(\d\d\d))?")
FILE = "model_optim_rng.pt"


def rank_dir_name(tp_rank: int, stage: int, pp: int) -> str:
    return f"mp_rank_{tp_rank:02d}" if pp == 1 else f"mp_rank_{tp_rank:02d}_{stage:03d}"


def state_dict_of(tree, where: Path) -> dict:
    if not isinstance(tree, dict):
        raise CheckpointError(f"{where}: expected a dict with 'model' and 'args'")
    if "model" not in tree:
        if "model0" in tree:
            raise UnsupportedError(f"{where}: virtual pipeline checkpoints (model0, model1, ...) are not supported")
        raise CheckpointError(f"{where}: no 'model' state dict")
    state = tree["model"]
    prefix = strip_prefix(state)
    return {k[len(prefix):]: v for k, v in state.items() if isinstance(v, Lazy)}


class MegatronLegacy(Format):
    name = "megatron"
    description = "Megatron-LM legacy checkpoint (iter_*/mp_rank_*/model_optim_rng.pt)"

    def detect(self, path):
        found = iteration_dir(path)
        return bool(found) and found[0].is_dir() and any((found[0] / d.name / FILE).is_file() for d in found[0].glob("mp_rank_*"))

    # -- reading -------------------------------------------------------------------------------
    def read(self, path, options: ReadOptions) -> Model:
        iter_dir, iteration = iteration_dir(path)
        grid = self._rank_grid(iter_dir)
        tp = 1 + max(t for t, _ in grid)
        pp = 1 + max(s for _, s in grid)
        model = Model(spec=None, tensors={}, format=self.name, path=path, parallel={"tp": tp, "pp": pp})
        try:
            trees = {key: torch_zip.load(model.files.open(iter_dir / d / FILE)) for key, d in grid.items()}
            label = lambda stage, tp_rank: iter_dir / grid[(tp_rank, stage)] / FILE  # noqa: E731
            first = trees[(0, 0)]
            args = first.get("args") if isinstance(first, dict) else None
            if args is None:
                raise CheckpointError(f"{label(0, 0)}: no 'args' (pass a checkpoint saved by Megatron-LM)")
            ranks = {(s, t): state_dict_of(tree, label(s, t)) for (t, s), tree in trees.items()}
            embed = ranks[(0, 0)].get("embedding.word_embeddings.weight")
            spec, layout = spec_from_args(args, str(label(0, 0)), options.vocab_size, embed.dtype if embed is not None else None)
            if (layout["tp"], layout["pp"]) != (tp, pp):
                raise CheckpointError(f"{iter_dir}: holds tp={tp} pp={pp} rank directories, args say tp={layout['tp']} pp={layout['pp']}")
            padded = embed.shape[0] * tp if embed is not None else layout["padded_vocab"]
            if spec.vocab_size > padded:
                raise CheckpointError(f"{label(0, 0)}: vocabulary {spec.vocab_size} is larger than the {padded} embedding rows")
            norms = norm_style(ranks[(0, 0)])
            stages = stages_from_files(LAYOUT, ranks, pp, spec.num_layers, label)
            reader = RankedReader(ranks, tp, stages, LAYOUT, label)
            geo = Geometry(spec, tp, pp, vocab_rows=padded)
            model.spec = spec
            model.tensors = read_canonical(bind(RULES[norms], geo), spec, reader.fetch)
            model.vocab_padding = vocab_padding(reader.fetch, spec, padded)
            reader.check_all_consumed()
            model.info = {
                "iteration": iteration,
                "tp": tp,
                "pp": pp,
                "layer_spec": norms,
                "padded_vocab": padded,
                "ranks": [
                    {"file": str(label(s, t).relative_to(iter_dir)), "layers": [stages[s].start, stages[s].stop],
                     "tensors": len(ranks[(s, t)]), "bytes": sum(v.nbytes for v in ranks[(s, t)].values())}
                    for (s, t) in sorted(ranks)
                ],
            }
            model.source_args = vars(args) if hasattr(args, "__dict__") else dict(args)
            model.aux_files = find_aux_files(iter_dir.parent, path)
            return model
        except BaseException:
            model.close()
            raise

    def _rank_grid(self, iter_dir: Path) -> dict[tuple[int, int], str]:
        grid = {}
        for d in sorted(iter_dir.glob("mp_rank_*")):
            m = RANK_DIR.fullmatch(d.name)
            if not m:
                continue
            if m.group(3) is not None:
                raise UnsupportedError(f"{d}: expert-parallel checkpoints are not supported")
            if not (d / FILE).is_file():
                raise CheckpointError(f"{d / FILE}: missing")
            grid[(int(m.group(1)), int(m.group(2) or 0))] = d.name
        if not grid:
            raise CheckpointError(f"{iter_dir}: no mp_rank_* directories")
        tp, pp = 1 + max(t for t, _ in grid), 1 + max(s for _, s in grid)
        for t in range(tp):
            for s in range(pp):
                if (t, s) not in grid:
                    raise CheckpointError(f"{iter_dir / rank_dir_name(t, s, pp)}: missing (other ranks imply tp={tp} pp={pp})")
        return grid

    # -- writing -------------------------------------------------------------------------------
    def plan(self, model: Model, options: WriteOptions) -> Plan:
        target = MegatronTarget.of(model, options)
        spec, tp, pp, dtype, padded, iteration = target.spec, target.tp, target.pp, target.dtype, target.padded_vocab, target.iteration
        norms = options.megatron_spec or model.info.get("layer_spec") or "local"
        geo = Geometry(spec, tp, pp, vocab_rows=padded, vocab_fill=model.vocab_padding)
        stored = write_stored(bind(RULES[norms], geo), model.tensors)
        args = args_for(spec, tp, pp, padded, options.make_vocab_size_divisible_by, norms,
                        base=model.source_args, iteration=0 if iteration == "release" else iteration)
        files = [TextFile(TRACKER, str(iteration))]
        for (stage, tp_rank), tensors in split_to_ranks(stored, tp, even_stages(spec.num_layers, pp), LAYOUT).items():
            state, slots, planned = collections.OrderedDict(), [], []
            for name, value in with_extra_states(tensors, norms, last_stage=stage == pp - 1):
                if value is None:
                    state[name] = None
                    continue
                slot = torch_zip.TensorSlot(str(len(slots)), value.shape, dtype if value.dtype.is_floating_point else value.dtype)
                state[name] = slot
                slots.append(slot)
                planned.append(PlannedTensor(name, cast_float(value, dtype)))
            obj = {"args": args, "checkpoint_version": 3.0, "iteration": args.iteration, "model": state}
            path = f"{iteration_name(iteration)}/{rank_dir_name(tp_rank, stage, pp)}/{FILE}"
            files.append(TorchArchiveFile(path, obj, slots, planned))
        files += [CopiedFile(p.name, p) for p in model.aux_files]
        notes = [*target.notes,
                 f"Megatron-LM loads this with --load {{OUT}}{' (a release checkpoint: weights only)' if iteration == 'release' else ''}"]
        return Plan(self.name, spec, files, {"tp": tp, "pp": pp, "layer_spec": norms}, notes)


def with_extra_states(tensors, norms: str, last_stage: bool):
    """The rank's tensors with `<module>._extra_state: None` after each linear module's last
    tensor, as Megatron's state_dict has them (a strict load_state_dict wants those keys)."""
    tensors = list(tensors)
    last = {}
    for i, (name, _) in enumerate(tensors):
        module = name.rsplit(".", 1)[0]
        if module.endswith(LINEARS):
            last[module] = i
    for i, (name, value) in enumerate(tensors):
        yield name, value
        module = name.rsplit(".", 1)[0]
        if last.get(module) == i:
            yield f"{module}._extra_state", None
            if norms == "te" and module.endswith("self_attention.linear_proj"):  # TE's attention has state too
                yield module.replace("linear_proj", "core_attention") + "._extra_state", None
    if last_stage:
        yield "output_layer._extra_state", None


register(MegatronLegacy())
