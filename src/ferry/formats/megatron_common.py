"""What the two Megatron layouts share: `args` (the argparse.Namespace saved in every checkpoint)
<-> ModelSpec, and the checkpoint / iteration directory structure."""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .. import families
from ..dtypes import BFLOAT16, FLOAT16, FLOAT32, DType, dtype_from_name, dtype_name
from ..errors import CheckpointError, SpecError, UnsupportedError
from ..parallel import even_stages
from ..spec import ModelSpec

# Megatron-core's --use-rope-scaling: the Llama 3.1 recipe with fixed constants
MEGATRON_LLAMA3_SCALING = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def padded_vocab_size(vocab: int, divisible_by: int, tp: int) -> int:
    multiple = divisible_by * tp
    return math.ceil(vocab / multiple) * multiple


def _arg(args: dict, key: str, where: str, default=...):
    if args.get(key) is None:
        if default is ...:
            raise SpecError(f"{where}: args.{key} is missing")
        return default
    return args[key]


def spec_from_args(ns, where: str, vocab_size: int | None = None, dtype: DType | None = None) -> tuple[ModelSpec, dict]:
    """(spec, layout) where layout has tp, pp, padded_vocab, transformer_impl, iteration."""
    args = vars(ns) if isinstance(ns, argparse.Namespace) else dict(ns)
    for flag, what in (("num_experts", "mixture-of-experts"), ("qk_layernorm", "qk-layernorm"),
                       ("apply_residual_connection_post_layernorm", "post-layernorm residuals"),
                       ("apply_layernorm_1p", "zero-centred (1p) layernorm"), ("squared_relu", "squared ReLU"),
                       ("multi_latent_attention", "multi-latent attention")):
        if args.get(flag):
            raise UnsupportedError(f"{where}: args.{flag} is set; {what} models are not supported yet")
    if args.get("virtual_pipeline_model_parallel_size") not in (None, 1):
        raise UnsupportedError(f"{where}: virtual pipeline parallelism is not supported (gather the chunks first)")
    if (args.get("expert_model_parallel_size") or 1) != 1:
        raise UnsupportedError(f"{where}: expert parallelism is not supported")
    if (args.get("rotary_percent") or 1.0) != 1.0:
        raise UnsupportedError(f"{where}: args.rotary_percent {args['rotary_percent']} (partial rotary) is not supported")
    hidden = _arg(args, "hidden_size", where)
    heads = _arg(args, "num_attention_heads", where)
    groups = args.get("num_query_groups") if args.get("group_query_attention") else heads
    position = args.get("position_embedding_type") or ("rope" if args.get("use_rotary_position_embeddings") else "learned_absolute")
    if position not in ("rope", "learned_absolute"):
        raise UnsupportedError(f"{where}: args.position_embedding_type {position!r} is not supported")
    scaling = None
    if args.get("use_rope_scaling"):
        scaling = {"rope_type": "llama3", "factor": float(args.get("rope_scaling_factor") or 8.0), **MEGATRON_LLAMA3_SCALING}
    elif args.get("rotary_seq_len_interpolation_factor"):
        scaling = {"rope_type": "linear", "factor": float(args["rotary_seq_len_interpolation_factor"])}
    normalization = args.get("normalization") or "LayerNorm"
    if normalization not in ("LayerNorm", "RMSNorm"):
        raise UnsupportedError(f"{where}: args.normalization {normalization!r} is not supported")
    padded = args.get("padded_vocab_size")
    true_vocab = vocab_size or args.get("vocab_size")
    if not true_vocab:
        raise SpecError(
            f"{where}: args record no true vocabulary size (padded_vocab_size is {padded}); "
            "pass --vocab-size with your tokenizer's vocabulary size"
        )
    if dtype is None:
        dtype = BFLOAT16 if args.get("bf16") else FLOAT16 if args.get("fp16") else FLOAT32
    bias = bool(args.get("add_bias_linear", True))
    spec = ModelSpec(
        family="",
        num_layers=_arg(args, "num_layers", where),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=groups or heads,
        head_dim=args.get("kv_channels") or hidden // heads,
        ffn_hidden_size=args.get("ffn_hidden_size") or 4 * hidden,
        vocab_size=int(true_vocab),
        norm="rmsnorm" if normalization == "RMSNorm" else "layernorm",
        norm_eps=float(args.get("norm_epsilon") or args.get("layernorm_epsilon") or 1e-5),
        norm_bias=normalization == "LayerNorm",
        activation="silu" if args.get("swiglu") else "gelu_tanh" if args.get("openai_gelu") else "gelu",
        gated_mlp=bool(args.get("swiglu")),
        position_embedding="rope" if position == "rope" else "learned",
        max_position_embeddings=args.get("max_position_embeddings") or args.get("seq_length") or 2048,
        rope_theta=float(args.get("rotary_base") or 10000),
        rope_scaling=scaling,
        rope_interleaved=bool(args.get("rotary_interleaved")),
        qkv_bias=bias or bool(args.get("add_qkv_bias")),
        attn_out_bias=bias,
        mlp_bias=bias,
        tie_word_embeddings=not args.get("untie_embeddings_and_output_weights", False),
        dtype=dtype_name(dtype),
    )
    family = families.infer(spec, where)
    spec = spec.replace(family=family.name)
    layout = {
        "tp": args.get("tensor_model_parallel_size") or 1,
        "pp": args.get("pipeline_model_parallel_size") or 1,
        "padded_vocab": padded,
        "transformer_impl": args.get("transformer_impl"),
        "iteration": args.get("iteration"),
    }
    return spec, layout


_DROP = object()


def _portable(value):
    """A source's arg as something Megatron-LM can unpickle: plain data stays, dtypes become torch
    dtypes, foreign objects ferry only saw as inert placeholders (enums, ...) are dropped."""
    if isinstance(value, DType):
        return value.torch
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_portable(v) for v in value]
        return _DROP if any(v is _DROP for v in items) else type(value)(items)
    if isinstance(value, dict):
        items = {k: _portable(v) for k, v in value.items()}
        return _DROP if any(v is _DROP for v in items.values()) else items
    return _DROP


def args_for(spec: ModelSpec, tp: int, pp: int, padded_vocab: int, divisible_by: int, norms: str,
             base: dict | None = None, iteration: int = 0) -> argparse.Namespace:
    """Megatron-LM arguments describing `spec` at this parallelism (model fields of `base`, the
    source's own args, are kept when converting Megatron -> Megatron)."""
    dtype = dtype_from_name(spec.dtype)
    args = {k: v for k, v in ((k, _portable(v)) for k, v in (base or {}).items()) if v is not _DROP}
    scaling = spec.rope_scaling or {}
    args.update(
        num_layers=spec.num_layers,
        hidden_size=spec.hidden_size,
        ffn_hidden_size=spec.ffn_hidden_size,
        num_attention_heads=spec.num_heads,
        kv_channels=spec.head_dim,
        group_query_attention=spec.num_kv_heads != spec.num_heads,
        num_query_groups=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        position_embedding_type="rope" if spec.position_embedding == "rope" else "learned_absolute",
        use_rotary_position_embeddings=spec.position_embedding == "rope",
        add_position_embedding=spec.position_embedding == "learned",
        rotary_base=spec.rope_theta,
        rotary_percent=1.0,
        rotary_interleaved=spec.rope_interleaved,
        rotary_seq_len_interpolation_factor=scaling.get("factor") if scaling.get("rope_type") == "linear" else None,
        use_rope_scaling=scaling.get("rope_type") == "llama3",
        rope_scaling_factor=scaling.get("factor", 8.0) if scaling.get("rope_type") == "llama3" else 8.0,
        normalization="RMSNorm" if spec.norm == "rmsnorm" else "LayerNorm",
        norm_epsilon=spec.norm_eps,
        apply_layernorm_1p=False,
        swiglu=spec.gated_mlp,
        openai_gelu=spec.activation == "gelu_tanh",
        squared_relu=False,
        untie_embeddings_and_output_weights=not spec.tie_word_embeddings,
        add_bias_linear=spec.mlp_bias,
        add_qkv_bias=spec.qkv_bias,
        qk_layernorm=False,
        apply_residual_connection_post_layernorm=False,
        vocab_size=spec.vocab_size,
        padded_vocab_size=padded_vocab,
        make_vocab_size_divisible_by=divisible_by,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=None,
        expert_model_parallel_size=1,
        num_experts=None,
        params_dtype=dtype.torch,
        bf16=dtype == BFLOAT16,
        fp16=dtype == FLOAT16,
        use_mcore_models=True,
        use_legacy_models=False,
        transformer_impl="transformer_engine" if norms == "te" else "local",
        iteration=iteration,
    )
    args.setdefault("seq_length", min(spec.max_position_embeddings, 4096))
    args.setdefault("tokenizer_type", "NullTokenizer" if base is None else args.get("tokenizer_type"))
    return argparse.Namespace(**args)


TRACKER = "latest_checkpointed_iteration.txt"


def iteration_dir(path: Path) -> tuple[Path, int | str] | None:
    """The iteration directory a Megatron checkpoint path stands for: a root with the tracker
    file, an `iter_NNNNNNN` / `release` directory, or a root holding exactly one of those."""
    tracker = path / TRACKER
    if tracker.is_file():
        text = tracker.read_text().strip()
        if text == "release":
            return path / "release", "release"
        try:
            n = int(text)
        except ValueError:
            raise CheckpointError(f"{tracker}: expected an iteration number or 'release', got {text[:40]!r}") from None
        return path / f"iter_{n:07d}", n
    if path.name == "release":
        return path, "release"
    if re.fullmatch(r"iter_\d+", path.name):
        return path, int(path.name[5:])
    found = sorted(p for p in path.glob("iter_*") if p.is_dir()) + ([path / "release"] if (path / "release").is_dir() else [])
    if len(found) == 1:
        return iteration_dir(found[0])
    return None


def iteration_name(iteration: int | str) -> str:
    return "release" if iteration == "release" else f"iter_{int(iteration):07d}"


def check_megatron_split(spec, tp: int, pp: int) -> None:
    problems = []
    if spec.num_heads % tp:
        problems.append(f"num_attention_heads ({spec.num_heads})")
    if spec.num_kv_heads % tp:
        problems.append(f"num_query_groups ({spec.num_kv_heads})")
    if spec.ffn_hidden_size % tp:
        problems.append(f"ffn_hidden_size ({spec.ffn_hidden_size})")
    if problems:
        raise UnsupportedError(f"--tp {tp}: Megatron needs tp to divide {', '.join(problems)}")
    even_stages(spec.num_layers, pp)
    if spec.attn_out_bias != spec.mlp_bias:
        raise UnsupportedError("Megatron's add_bias_linear covers the attention output and the MLP together; this model has one without the other")


@dataclass(frozen=True)
class MegatronTarget:
    """What both Megatron writers decide first: the output spec and dtype, the padded
    vocabulary at this tp, and the iteration (the source's, else a weights-only "release")."""

    spec: ModelSpec
    tp: int
    pp: int
    dtype: DType
    padded_vocab: int
    iteration: int | str

    @classmethod
    def of(cls, model, options) -> MegatronTarget:
        from .base import output_dtype

        check_megatron_split(model.spec, options.tp, options.pp)
        dtype = output_dtype(model, options)
        spec = model.spec.replace(dtype=dtype.name)
        padded = padded_vocab_size(spec.vocab_size, options.make_vocab_size_divisible_by, options.tp)
        iteration = options.iteration if options.iteration is not None else model.info.get("iteration", "release")
        return cls(spec, options.tp, options.pp, dtype, padded, iteration)
