"""Hugging Face checkpoints: config.json plus model.safetensors, sharded safetensors with
model.safetensors.index.json, or pytorch_model*.bin (read with ferry's allow-list unpickler)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .. import families
from ..dtypes import dtype_name
from ..errors import CheckpointError, FerryError
from ..io import safetensors as st
from ..io import torch_zip
from ..lazy import Lazy
from ..plan import CopiedFile, JsonFile, Plan, PlannedTensor, SafetensorsFile
from ..rules import Geometry, bind, check_shape, read_canonical, write_stored
from . import register
from .base import Format, Model, ReadOptions, WriteOptions, cast_float, output_dtype

SAFE_INDEX, BIN_INDEX = "model.safetensors.index.json", "pytorch_model.bin.index.json"
SAFE_SINGLE, BIN_SINGLE = "model.safetensors", "pytorch_model.bin"
AUX_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)


def find_aux_files(*dirs: Path) -> list[Path]:
    """Tokenizer files, generation_config.json and such in the first of `dirs` that has any."""
    for d in dirs:
        found = [d / n for n in AUX_FILES if (d / n).is_file()]
        if found:
            return found
    return []


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def inside(root: Path, name: str, index: Path) -> Path:
    """The file `name` that an index names, refusing anything outside the checkpoint directory."""
    candidate = (root / name).resolve()
    if Path(name).is_absolute() or ".." in Path(name).parts or root.resolve() not in candidate.parents:
        raise CheckpointError(f"{index}: weight_map names file {name!r}, which is outside the checkpoint directory")
    if not candidate.is_file():
        raise CheckpointError(f"{index}: weight_map names {name}, which does not exist")
    return candidate


class HuggingFace(Format):
    name = "hf"
    description = "Hugging Face (config.json + safetensors or pytorch_model.bin)"

    def detect(self, path):
        if not (path / "config.json").is_file():
            return False
        try:
            cfg = json.loads((path / "config.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
        return isinstance(cfg, dict) and "architectures" in cfg

    def why_not(self, path):
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            return None
        cfg = read_json(cfg_path)  # raises, naming the file, when it is not a JSON object
        if "architecture" in cfg:
            return None  # TensorRT-LLM's config: its own detection says what is missing
        if "architectures" not in cfg:
            return (f"{cfg_path}: field architectures is missing (a Hugging Face config names the model class there, "
                    "e.g. [\"LlamaForCausalLM\"])")
        return None

    # -- reading -------------------------------------------------------------------------------
    def read(self, path, options: ReadOptions) -> Model:
        cfg_path = path / "config.json"
        cfg = read_json(cfg_path)
        arch = (cfg.get("architectures") or [None])[0]
        if not isinstance(arch, str):
            raise CheckpointError(f"{cfg_path}: field architectures is missing")
        family = families.by_hf_architecture(arch, str(cfg_path))
        spec = family.spec_from_hf(cfg, str(cfg_path))
        family.check(spec)
        family.check_hf(spec)
        model = Model(spec=spec, tensors={}, format=self.name, path=path, hf_config=cfg)
        try:
            stored, where = self._stored_tensors(path, model)
            stored = self._with_base_prefix(stored, family, spec)
            consumed: set[str] = set()

            def fetch(name, shape, _kind):
                if name not in stored:
                    raise CheckpointError(f"{where.get(None, path)}: missing tensor {name}")
                consumed.add(name)
                return check_shape(stored[name], shape, name, where.get(name, path))

            bound = bind(family.hf_rules, Geometry(spec))
            model.tensors = read_canonical(bound, spec, fetch)
            stored_dtype = model.tensors["embed.weight"].dtype
            if stored_dtype.is_floating_point and dtype_name(stored_dtype) != spec.dtype:  # "some finetunes lie"
                model.notes.append(f"{cfg_path}: says dtype {spec.dtype}, the weights are {dtype_name(stored_dtype)}")
                model.spec = spec = spec.replace(dtype=dtype_name(stored_dtype))
            extra = [n for n in stored if n not in consumed and not family.is_ignored_hf(n, spec)]
            if extra:
                raise CheckpointError(
                    f"{where.get(extra[0], path)}: unexpected tensor {extra[0]} (not part of a {arch} with this config)"
                )
            model.aux_files = find_aux_files(path)
            model.info = {"files": sorted({str(Path(w).name) for w in where.values()}), "architecture": arch}
            return model
        except BaseException:
            model.close()
            raise

    def _stored_tensors(self, path: Path, model: Model) -> tuple[dict[str, Lazy], dict]:
        """name -> lazy tensor, and name -> file (None -> where a missing tensor should be)."""
        for index_name, single, loader in ((SAFE_INDEX, SAFE_SINGLE, self._safetensors), (BIN_INDEX, BIN_SINGLE, self._torch_bin)):
            index_path = path / index_name
            if index_path.is_file():
                index = read_json(index_path)
                weight_map = index.get("weight_map")
                if not isinstance(weight_map, dict) or not weight_map:
                    raise CheckpointError(f"{index_path}: field weight_map is missing or empty")
                stored, where = {}, {None: index_path}
                for file_name in dict.fromkeys(weight_map.values()):
                    file_path = inside(path, str(file_name), index_path)
                    tensors = loader(file_path, model)
                    for name, t in tensors.items():
                        if weight_map.get(name) != file_name:
                            raise CheckpointError(f"{file_path}: tensor {name} is not listed for this file in {index_name}")
                        stored[name], where[name] = t, file_path
                for name, file_name in weight_map.items():
                    if name not in stored:
                        raise CheckpointError(f"{path / file_name}: missing tensor {name} (listed in {index_name})")
                return stored, where
            if (path / single).is_file():
                tensors = loader(path / single, model)
                return tensors, {None: path / single, **{n: path / single for n in tensors}}
        raise CheckpointError(f"{path}: no weights (expected {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX})")

    def _safetensors(self, file_path: Path, model: Model) -> dict[str, Lazy]:
        tensors, _ = st.read_index(model.files.open(file_path))
        return tensors

    def _torch_bin(self, file_path: Path, model: Model) -> dict[str, Lazy]:
        tree = torch_zip.load(model.files.open(file_path))
        if not isinstance(tree, dict) or not all(isinstance(v, Lazy) for v in tree.values()):
            raise CheckpointError(f"{file_path}: expected a flat state dict of tensors")
        torch_zip.name_tensors(tree)
        return dict(tree)

    def _with_base_prefix(self, stored: dict, family, spec) -> dict:
        prefix = family.hf_base_prefix
        if not prefix or any(n.startswith(prefix) for n in stored):
            return stored
        wanted = {n[len(prefix):] for b in bind(family.hf_rules, Geometry(spec)) for n in b.stored if n.startswith(prefix)}
        if wanted & set(stored):  # a bare base-model checkpoint (e.g. GPT-2 "h.0.attn...")
            return {(prefix + n if n in wanted or family.is_ignored_hf(prefix + n, spec) else n): t for n, t in stored.items()}
        return stored

    # -- writing -------------------------------------------------------------------------------
    def plan(self, model: Model, options: WriteOptions) -> Plan:
        if options.tp != 1 or options.pp != 1:
            raise FerryError("--tp/--pp do not apply to Hugging Face output (it is unsharded; use --max-shard-size)")
        spec = model.spec
        family = families.get(spec.family)
        family.check(spec)
        notes = family.check_hf(spec)
        dtype = output_dtype(model, options)
        spec = spec.replace(dtype=dtype_name(dtype))
        stored = write_stored(bind(family.hf_rules, Geometry(spec)), model.tensors)
        # without --dtype every tensor keeps its own dtype (a checkpoint may keep norms in float32)
        planned = [PlannedTensor(name, cast_float(t, dtype) if options.dtype else t) for name, (t, _) in stored.items()]
        shards = split_shards(planned, options.max_shard_size)
        files = []
        if len(shards) == 1:
            files.append(SafetensorsFile(SAFE_SINGLE, shards[0]))
        else:
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                files.append(SafetensorsFile(name, shard))
                weight_map.update({t.name: name for t in shard})
            total = sum(t.nbytes for t in planned)
            files.append(JsonFile(SAFE_INDEX, {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}))
        files.append(JsonFile("config.json", self._config(model, spec, family)))
        files += [CopiedFile(p.name, p) for p in model.aux_files]
        return Plan(self.name, spec, files, {"shards": len(shards)}, notes)

    def _config(self, model: Model, spec, family) -> dict:
        """The family's config for `spec` over the source's own config.json (an HF source's, or
        the one ferry's record kept through other formats), so fields ferry does not model stay
        while every field that changes the computation is written from the spec."""
        source = spec.extra.get("hf_config") or model.hf_config or {}
        if (source.get("architectures") or [None])[0] not in family.hf_architectures:
            source = {}  # another family's config: its fields mean something else here
        cfg = {**source, **family.hf_config(spec)}
        if "rope_parameters" in source:  # a transformers v5 config: keep its one spelling
            cfg = {k: v for k, v in cfg.items() if k in source or k not in ("rope_theta", "rope_scaling")}
        if "torch_dtype" in cfg:
            cfg["torch_dtype"] = spec.dtype
        return cfg


def split_shards(tensors: list[PlannedTensor], max_bytes: int) -> list[list[PlannedTensor]]:
    """Greedy, in order: a new shard when the next tensor would pass `max_bytes` (a tensor larger
    than that gets a shard of its own), as transformers' save_pretrained does."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def parse_size(text: str | int) -> int:
    """'5GB' -> 5*10**9, '2GiB' -> 2*2**30, '500MB', or a plain byte count."""
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    s = str(text).strip().upper()
    number = s.rstrip("KMGTIB")
    unit = s[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if unit not in units or not value > 0:
        raise FerryError(f"--max-shard-size: cannot read {text!r} (examples: 5GB, 500MB, 2GiB)")
    return int(value * units[unit])


register(HuggingFace())
