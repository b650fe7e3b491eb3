"""In-training export: a live Megatron model's state dict -> TensorRT-LLM, without TensorRT-LLM.

The job of Megatron-core's `TRTLLMHelper.get_trtllm_pretrained_config_and_model_weights`
(single-device path): the full (unsharded) state dict, with layer-numbered keys or stacked
[L, ...] tensors, plus the model's TransformerConfig, becomes per-rank TensorRT-LLM weights and
configs for the inference TP/PP asked for; or a checkpoint directory written atomically, one
output tensor at a time (a GPU state dict is copied to the host slice by slice).

Example:
    >>> from ferry.export import ExportConfig, trtllm_weights
    >>> weights, configs = trtllm_weights(model.state_dict(), model.config,
    ...     ExportConfig(inference_tp_size=2), vocab_size=tokenizer.vocab_size,
    ...     position_embedding_type="rope", max_position_embeddings=4096, rotary_base=500000)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from . import formats
from .dtypes import dtype_from_name
from .errors import FerryError, SpecError
from .executor import execute
from .formats.base import Model, WriteOptions
from .formats.megatron_common import spec_from_args
from .formats.megatron_names import RULES, layer_tensor, norm_style, strip_prefix
from .formats.trtllm import check_split
from .lazy import Const, Lazy
from .plan import Plan
from .rules import Geometry, bind, read_canonical

_ACTIVATIONS = {"silu": "silu", "gelu": "gelu", "openai_gelu": "gelu_tanh", "gelu_tanh": "gelu_tanh", "fast_gelu": "gelu_tanh"}


class ExportConfigError(FerryError):
    """The export configuration cannot describe a valid TensorRT-LLM checkpoint for this model."""


@dataclass
class ExportConfig:
    """How the exported TensorRT-LLM checkpoint is laid out (Megatron's ExportConfig fields, plus dtype)."""

    inference_tp_size: int = 1
    inference_pp_size: int = 1
    use_parallel_embedding: bool = False
    use_embedding_sharing: bool | None = None  # deprecated in Megatron too: say share_embeddings_and_output_weights
    dtype: str = "bfloat16"  # or a torch dtype


def _field(config, name: str, default=None):
    return config.get(name, default) if isinstance(config, Mapping) else getattr(config, name, default)


def _activation(config) -> str:
    func = _field(config, "activation_func")
    name = func if isinstance(func, str) else getattr(func, "__name__", None)
    if name not in _ACTIVATIONS:
        raise SpecError(f"transformer_config.activation_func: {name or func!r} is not supported (silu, gelu, openai_gelu)")
    return _ACTIVATIONS[name]


def megatron_args_from_config(config, *, vocab_size, position_embedding_type, max_position_embeddings, rotary_base,
                              share_embeddings_and_output_weights, seq_len_interpolation_factor) -> dict:
    """The Megatron-LM argument names that ferry reads a model from, from a TransformerConfig."""
    heads = _field(config, "num_attention_heads")
    groups = _field(config, "num_query_groups") or heads
    activation = _activation(config)
    gated = bool(_field(config, "gated_linear_unit", False))
    if gated and activation != "silu":
        raise SpecError(f"transformer_config: gated_linear_unit with {activation} (GeGLU) is not supported")
    return {
        "num_layers": _field(config, "num_layers"),
        "hidden_size": _field(config, "hidden_size"),
        "ffn_hidden_size": _field(config, "ffn_hidden_size"),
        "num_attention_heads": heads,
        "kv_channels": _field(config, "kv_channels"),
        "group_query_attention": groups != heads,
        "num_query_groups": groups,
        "normalization": _field(config, "normalization", "LayerNorm"),
        "norm_epsilon": _field(config, "layernorm_epsilon", 1e-5),
        "apply_layernorm_1p": _field(config, "layernorm_zero_centered_gamma", False),
        "swiglu": gated,
        "openai_gelu": activation == "gelu_tanh",
        "add_bias_linear": _field(config, "add_bias_linear", True),
        "add_qkv_bias": _field(config, "add_qkv_bias", False),
        "qk_layernorm": _field(config, "qk_layernorm", False),
        "num_experts": _field(config, "num_moe_experts"),
        "multi_latent_attention": _field(config, "multi_latent_attention", False),
        "rotary_interleaved": _field(config, "rotary_interleaved", False),
        "window_size": _field(config, "window_size"),
        "window_attn_skip_freq": _field(config, "window_attn_skip_freq"),
        "softmax_scale": _field(config, "softmax_scale"),
        "position_embedding_type": position_embedding_type,
        "max_position_embeddings": max_position_embeddings,
        "rotary_base": rotary_base,
        "rotary_seq_len_interpolation_factor": seq_len_interpolation_factor,
        "untie_embeddings_and_output_weights": not share_embeddings_and_output_weights,
        "vocab_size": vocab_size,
    }


def _validate(export_config: ExportConfig, share: bool, vocab_size) -> None:
    tp, pp = export_config.inference_tp_size, export_config.inference_pp_size
    if not (isinstance(tp, int) and tp >= 1 and isinstance(pp, int) and pp >= 1):
        raise ExportConfigError(f"inference_tp_size and inference_pp_size must be positive integers, got {tp} and {pp}")
    if export_config.use_embedding_sharing is not None:
        warnings.warn("ExportConfig.use_embedding_sharing is deprecated; pass share_embeddings_and_output_weights",
                      DeprecationWarning, stacklevel=3)
        if export_config.use_embedding_sharing != share:
            raise ExportConfigError(
                f"ExportConfig.use_embedding_sharing={export_config.use_embedding_sharing} contradicts "
                f"share_embeddings_and_output_weights={share}")
    if vocab_size is None:
        raise ExportConfigError("vocab_size is required: the tokenizer's vocabulary (the state dict holds only padded rows)")
    dtype_from_name(export_config.dtype if isinstance(export_config.dtype, str) else str(export_config.dtype), "ExportConfig.dtype")


def canonical_model(model_state_dict: Mapping[str, torch.Tensor | None], transformer_config, *, vocab_size: int,
                    position_embedding_type: str = "learned_absolute", max_position_embeddings: int | None = None,
                    rotary_base: float = 10000, share_embeddings_and_output_weights: bool = False,
                    seq_len_interpolation_factor: float | None = None) -> Model:
    """The canonical model of a full Megatron state dict (layer-numbered or stacked keys)."""
    prefix = strip_prefix(model_state_dict)
    stored: dict[str, Lazy] = {}
    for key, value in model_state_dict.items():
        if "_extra_state" in key or value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise ExportConfigError(f"model_state_dict[{key!r}] is a {type(value).__name__}, not a tensor")
        stored[key[len(prefix):]] = Const(value.detach(), f"state_dict[{key}]")
    args = megatron_args_from_config(
        transformer_config, vocab_size=vocab_size, position_embedding_type=position_embedding_type,
        max_position_embeddings=max_position_embeddings, rotary_base=rotary_base,
        share_embeddings_and_output_weights=share_embeddings_and_output_weights,
        seq_len_interpolation_factor=seq_len_interpolation_factor)
    embed = stored.get("embedding.word_embeddings.weight")
    if embed is None:
        raise ExportConfigError("model_state_dict has no embedding.word_embeddings.weight")
    spec, _ = spec_from_args(args, "transformer_config", dtype=embed.dtype)
    if spec.vocab_size > embed.shape[0]:
        raise ExportConfigError(f"vocab_size {spec.vocab_size} is larger than the {embed.shape[0]} embedding rows "
                                "(a tensor-parallel shard? pass the full, unsharded state dict)")
    consumed: set[str] = set()

    def fetch(name, expected, _kind):
        t, key = layer_tensor(stored, name, spec.num_layers, "model_state_dict")
        consumed.add(key)
        if tuple(t.shape) != tuple(expected):
            raise ExportConfigError(
                f"model_state_dict[{key!r}] has shape {list(t.shape)}, the transformer config implies {list(expected)} "
                "for the full model (pass the unsharded state dict, tensor-parallel size 1)")
        return t

    geo = Geometry(spec, vocab_rows=embed.shape[0])
    tensors = read_canonical(bind(RULES[norm_style(stored)], geo), spec, fetch)
    extra = [k for k in stored if k not in consumed and not (share_embeddings_and_output_weights and k == "output_layer.weight")]
    if extra:
        raise ExportConfigError(f"model_state_dict: no TensorRT-LLM counterpart for {extra[0]}")
    return Model(spec=spec, tensors=tensors, format="megatron-state-dict", path=Path("."))


def _plan(model: Model, export_config: ExportConfig) -> Plan:
    tp, pp = export_config.inference_tp_size, export_config.inference_pp_size
    try:
        check_split(model.spec, tp, pp)
    except FerryError as e:
        raise ExportConfigError(str(e).replace("--tp", "inference_tp_size").replace("--pp", "inference_pp_size")) from None
    dtype = dtype_from_name(export_config.dtype, "ExportConfig.dtype")
    options = WriteOptions(tp=tp, pp=pp, dtype=dtype, parallel_embedding=export_config.use_parallel_embedding)
    return formats.get("trtllm").plan(model, options)


def trtllm_weights(model_state_dict, transformer_config, export_config: ExportConfig | None = None, *, vocab_size: int | None,
                   share_embeddings_and_output_weights: bool = False, **model_facts) -> tuple[list[dict], list[dict]]:
    """Per-rank TensorRT-LLM weights ({name: tensor} on the CPU) and configs (config.json plus
    the rank in `mapping`), rank r = pp_rank * tp + tp_rank.

    Args:
        model_state_dict: the full model's state dict (`model.state_dict()`); `_extra_state`
            entries are skipped; keys may carry layer numbers or be stacked [L, ...].
        transformer_config: the model's TransformerConfig (or a mapping with its field names).
        export_config: inference tp/pp, parallel embedding, dtype.
        vocab_size: the true vocabulary size.
        share_embeddings_and_output_weights: tied embeddings.
        model_facts: position_embedding_type ("rope" or "learned_absolute"),
            max_position_embeddings, rotary_base, seq_len_interpolation_factor.
    """
    export_config = export_config or ExportConfig()
    _validate(export_config, share_embeddings_and_output_weights, vocab_size)
    model = canonical_model(model_state_dict, transformer_config, vocab_size=vocab_size,
                            share_embeddings_and_output_weights=share_embeddings_and_output_weights, **model_facts)
    plan = _plan(model, export_config)
    config = next(f.data for f in plan.files if f.path == "config.json")
    weights, configs = [], []
    for f in plan.files:
        if f.path.startswith("rank"):
            rank = int(f.path[4:].split(".")[0])
            weights.append({t.name: t.value.materialize() for t in f.tensors})
            configs.append({**config, "mapping": {**config["mapping"], "rank": rank}})
    return weights, configs


def write_trtllm(out: str | Path, model_state_dict, transformer_config, export_config: ExportConfig | None = None, *,
                 vocab_size: int | None, share_embeddings_and_output_weights: bool = False, overwrite: bool = False,
                 **model_facts) -> Plan:
    """Like `trtllm_weights`, but writes the checkpoint directory (config.json + rank*.safetensors)
    that `trtllm-build` reads, streaming one tensor at a time."""
    export_config = export_config or ExportConfig()
    _validate(export_config, share_embeddings_and_output_weights, vocab_size)
    model = canonical_model(model_state_dict, transformer_config, vocab_size=vocab_size,
                            share_embeddings_and_output_weights=share_embeddings_and_output_weights, **model_facts)
    plan = _plan(model, export_config)
    execute(plan, Path(out), overwrite=overwrite, progress=False, threads=1)
    return plan
