"""What a model family contributes: its Hugging Face names and config, and its TensorRT-LLM
architecture and config extras. Formats own their own (family-independent) naming."""

from __future__ import annotations

import re
from typing import Any

from ..errors import SpecError, UnsupportedError
from ..facts import Capabilities, check_carried
from ..rules import Rule
from ..spec import ROPE_TYPES, ModelSpec

# HF activation names -> ferry's (exact-erf "gelu" and the tanh approximation are different functions)
HF_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
}


class ConfigFields:
    """Typed access to a config dict, with errors that name the file and field."""

    def __init__(self, cfg: dict, where: str):
        self.cfg, self.where = cfg, where

    def get(self, key: str, default: Any = ..., kind: type | tuple = (int,)):
        if key not in self.cfg or self.cfg[key] is None:
            if default is ...:
                raise SpecError(f"{self.where}: field {key} is missing")
            return default
        value = self.cfg[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            names = "/".join(k.__name__ for k in kinds)
            raise SpecError(f"{self.where}: field {key} should be {names}, got {value!r}")
        return value

    def activation(self, key: str, default: str | None = None) -> str:
        name = self.get(key, default, str)
        if name not in HF_ACTIVATIONS:
            raise UnsupportedError(f"{self.where}: {key}={name!r} is not a supported activation ({', '.join(HF_ACTIVATIONS)})")
        return HF_ACTIVATIONS[name]


def rope_from_hf(f: ConfigFields, max_positions: int) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from a transformers v5 `rope_parameters` or v4 `rope_theta`/`rope_scaling`.
    The parameters transformers fills in from elsewhere are made explicit (llama3, yarn and longrope
    take `original_max_position_embeddings` from the config's max_position_embeddings when absent),
    so the scaling means the same wherever it is written."""
    params = f.cfg.get("rope_parameters")
    if isinstance(params, dict) and params:
        params = dict(params)
        theta = float(params.pop("rope_theta", f.cfg.get("rope_theta", 10000.0)))
        scaling = params
    else:
        theta = float(f.get("rope_theta", 10000.0, (float,)))
        scaling = dict(f.cfg["rope_scaling"]) if f.cfg.get("rope_scaling") else None
    if scaling is not None:
        kind = scaling.pop("type", None) or scaling.get("rope_type") or "default"
        scaling["rope_type"] = kind
        if "partial_rotary_factor" in scaling and scaling.pop("partial_rotary_factor") not in (None, 1, 1.0):
            raise UnsupportedError(f"{f.where}: partial_rotary_factor is not supported for this architecture")
        if kind == "default":
            return theta, None
        if kind not in ROPE_TYPES:
            raise UnsupportedError(f"{f.where}: rope_type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
        if kind in ("llama3", "yarn", "longrope"):
            original = f.cfg.get("original_max_position_embeddings") or scaling.get("original_max_position_embeddings")
            scaling["original_max_position_embeddings"] = original or max_positions
        scaling = {k: v for k, v in scaling.items() if v is not None}
    return theta, scaling


def rope_to_hf(spec: ModelSpec) -> dict:
    """Both spellings: v5 reads `rope_parameters`, v4 (and vLLM/TRT-LLM readers) `rope_theta`/`rope_scaling`."""
    scaling = dict(spec.rope_scaling) if spec.rope_scaling else None
    params = {"rope_type": "default", "rope_theta": spec.rope_theta}
    if scaling:
        params.update(scaling)
    return {"rope_parameters": params, "rope_theta": spec.rope_theta, "rope_scaling": scaling}


def refuse_unknown_keys(cfg: dict, where: str, keys_and_neutral: dict) -> None:
    """Config keys transformers would act on that this family does not model: refused unless neutral."""
    for key, neutral in keys_and_neutral.items():
        if cfg.get(key) not in (None, *neutral):
            raise UnsupportedError(f"{where}: {key}={cfg[key]!r} is not supported (ferry would lose it)")


class Family:
    name: str = ""
    hf_architectures: tuple[str, ...] = ()
    hf_model_type: str = ""
    hf_base_prefix: str = ""  # some checkpoints store the base model without this prefix
    hf_rules: tuple[Rule, ...] = ()
    hf_ignored: tuple[str, ...] = ()  # regexes: stored tensors deliberately dropped on read
    trtllm_architectures: tuple[str, ...] = ()
    hf_holds: Capabilities = {}  # the facts (facts.py) this family's HF config can hold

    def check(self, spec: ModelSpec) -> None:
        """Raise UnsupportedError when this family's graph cannot express `spec`'s tensors."""

    def check_hf(self, spec: ModelSpec) -> list[str]:
        """Refuse a fact this family's HF config cannot hold (one line naming it); notes otherwise."""
        arch = spec.extra.get("hf_architecture", self.hf_architectures[0])
        return check_carried(spec, self.hf_holds, f"Hugging Face {arch}",
                             "keep it in a Megatron checkpoint (ferry keeps every fact there), or use a family that has it")

    def matches(self, spec: ModelSpec, facts: bool = True) -> bool:
        """Whether the graph (and, with `facts`, every fact) of `spec` fits this family."""
        try:
            self.check(spec)
            if facts:
                self.check_hf(spec)
        except UnsupportedError:
            return False
        return True

    def spec_from_hf(self, cfg: dict, where: str) -> ModelSpec:
        raise NotImplementedError

    def hf_config(self, spec: ModelSpec) -> dict:
        raise NotImplementedError

    def trtllm_extras(self, spec: ModelSpec) -> dict:
        return {}

    def is_ignored_hf(self, name: str, spec: ModelSpec) -> bool:
        if spec.tie_word_embeddings and name == "lm_head.weight":
            return True  # a tied head saved anyway: transformers ties it to the embedding
        return any(re.fullmatch(p, name) for p in self.hf_ignored)


TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def hf_metadata(cfg: dict, family: Family) -> dict:
    """What an HF config says that changes nothing computed but must survive every format: the
    architecture name, token ids, and the whole source config (fields ferry does not model)."""
    arch = (cfg.get("architectures") or [family.hf_architectures[0]])[0]
    meta = {"hf_architecture": arch if arch in family.hf_architectures else family.hf_architectures[0]}
    meta.update({k: cfg[k] for k in TOKEN_IDS if k in cfg})
    meta["hf_config"] = cfg
    return meta


def hf_common(spec: ModelSpec, family: Family) -> dict:
    keep = {k: spec.extra[k] for k in TOKEN_IDS if k in spec.extra}
    return {
        "architectures": [spec.extra.get("hf_architecture", family.hf_architectures[0])],
        "model_type": family.hf_model_type,
        "dtype": spec.dtype,
        "tie_word_embeddings": spec.tie_word_embeddings,
        **keep,
    }
