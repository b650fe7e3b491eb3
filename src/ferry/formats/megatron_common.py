"""What the two Megatron layouts share: `args` (the argparse.Namespace saved in every checkpoint)
<-> ModelSpec, and the checkpoint / iteration directory structure."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .. import families, record
from ..dtypes import BFLOAT16, FLOAT16, FLOAT32, DType, dtype_from_name, dtype_name
from ..errors import CheckpointError, SpecError, UnsupportedError
from ..facts import FACTS, Holds, check_carried
from ..parallel import even_stages
from ..spec import MLP, Attention, Embeddings, ModelSpec, Norms, Positions, uniform_window

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


def _window_holds(window, spec) -> bool:
    try:
        return uniform_window(window) is not None
    except ValueError:
        return False


def _llama3_holds(scaling, spec) -> bool:
    return all(scaling.get(k) == v for k, v in MEGATRON_LLAMA3_SCALING.items())


def _yarn_holds(scaling, spec) -> bool:
    both_or_neither = bool(scaling.get("mscale")) == bool(scaling.get("mscale_all_dim"))
    return "attention_factor" not in scaling and both_or_neither


NATIVE_ACTIVATIONS = {("silu", True): "swiglu", ("gelu", False): "", ("gelu_tanh", False): "openai_gelu"}
RECORDED = Holds(recorded=True)
# What Megatron-LM's own arguments (megatron-core 0.16.1 names) hold; anything else is kept in
# ferry's record (args.ferry), read back exactly, with a note that Megatron-LM will not compute it.
HOLDS = {
    "attention.window": (Holds(_window_holds, "one window size (window_size, window_attn_skip_freq)"), RECORDED),
    "positions.rope_scaling": (Holds(lambda v, s: v["rope_type"] == "linear", "linear"),
                               Holds(lambda v, s: v["rope_type"] == "llama3" and _llama3_holds(v, s), "llama3 with Megatron's constants"),
                               Holds(lambda v, s: v["rope_type"] == "yarn" and _yarn_holds(v, s), "yarn"), RECORDED),
    "positions.rotary_fraction": Holds(),
    "positions.interleaved": Holds(),
    "norms.offset": (Holds(lambda v, s: v == 1.0, "1 (apply_layernorm_1p)"), RECORDED),
    "mlp.activation": (Holds(lambda v, s: (v, s.mlp.gated) in NATIVE_ACTIVATIONS, "swiglu, gelu, openai_gelu"), RECORDED),
    "attention.softcap": RECORDED,
    "attention.scale": Holds(values="any (softmax_scale)"),
    "residual.parallel": RECORDED,
    "embeddings.scale": RECORDED,
    "embeddings.logit_softcap": RECORDED,
}


def check_facts(spec: ModelSpec) -> list[str]:
    return check_carried(spec, HOLDS, "Megatron-LM", "")


def _native(fact_name: str, value, spec) -> bool:
    options = HOLDS.get(fact_name, ())
    options = options if isinstance(options, tuple) else (options,)
    return any(not h.recorded and h.accepts(value, spec) for h in options)


def window_from_args(args: dict, num_layers: int, where: str) -> tuple | None:
    size = args.get("window_size")
    if not size:
        return None
    left, right = (list(size) + [0])[:2]
    if right not in (0, -1) or (right == -1 and left != -1):
        raise UnsupportedError(f"{where}: args.window_size {tuple(size)} looks ahead ({right} tokens); only causal windows are supported")
    if left == -1:
        return None
    skip = args.get("window_attn_skip_freq")

    def windowed(layer_number: int) -> bool:  # 1-based, as megatron-core's is_layer_window_attention
        if skip is None:
            return True
        if isinstance(skip, int):
            return layer_number % skip != 0
        return bool(skip[layer_number - 1])

    return tuple(left + 1 if windowed(i + 1) else None for i in range(num_layers))


def rope_scaling_from_args(args: dict, position: str) -> dict | None:
    if position == "yarn":  # parameters at transformers' defaults are left out, as an HF config does
        given = {
            "rope_type": "yarn", "factor": float(args.get("yarn_rotary_scaling_factor") or 1.0),
            "original_max_position_embeddings": args.get("yarn_original_max_position_embeddings"),
            "beta_fast": args.get("yarn_beta_fast"), "beta_slow": args.get("yarn_beta_slow"),
            "mscale": args.get("yarn_mscale") if args.get("yarn_mscale_all_dim") else None,
            "mscale_all_dim": args.get("yarn_mscale_all_dim") or None,
            "truncate": args.get("yarn_correction_range_round_to_int"),
        }
        return {k: v for k, v in given.items() if v is not None and YARN_DEFAULTS.get(k, object()) != v}
    if args.get("use_rope_scaling"):
        return {"rope_type": "llama3", "factor": float(args.get("rope_scaling_factor") or 8.0), **MEGATRON_LLAMA3_SCALING}
    if args.get("rotary_seq_len_interpolation_factor"):
        return {"rope_type": "linear", "factor": float(args["rotary_seq_len_interpolation_factor"])}
    return None


def spec_from_args(ns, where: str, vocab_size: int | None = None, dtype: DType | None = None) -> tuple[ModelSpec, dict]:
    """(spec, layout) where layout has tp, pp, padded_vocab, transformer_impl, iteration. Facts
    Megatron-LM's arguments cannot hold come from ferry's record (`args.ferry`) when there is one."""
    args = vars(ns) if isinstance(ns, argparse.Namespace) else dict(ns)
    for flag, what in (("num_experts", "mixture-of-experts"), ("qk_layernorm", "qk-layernorm"),
                       ("apply_residual_connection_post_layernorm", "post-layernorm residuals"),
                       ("squared_relu", "squared ReLU"), ("multi_latent_attention", "multi-latent attention")):
        if args.get(flag):
            raise UnsupportedError(f"{where}: args.{flag} is set; {what} models are not supported yet")
    if args.get("virtual_pipeline_model_parallel_size") not in (None, 1):
        raise UnsupportedError(f"{where}: virtual pipeline parallelism is not supported (gather the chunks first)")
    if (args.get("expert_model_parallel_size") or 1) != 1:
        raise UnsupportedError(f"{where}: expert parallelism is not supported")
    hidden = _arg(args, "hidden_size", where)
    heads = _arg(args, "num_attention_heads", where)
    layers = _arg(args, "num_layers", where)
    groups = args.get("num_query_groups") if args.get("group_query_attention") else heads
    position = args.get("position_embedding_type") or ("rope" if args.get("use_rotary_position_embeddings") else "learned_absolute")
    if position not in ("rope", "yarn", "learned_absolute"):
        raise UnsupportedError(f"{where}: args.position_embedding_type {position!r} is not supported")
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
    gated = bool(args.get("swiglu"))
    spec = ModelSpec(
        family="",
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=groups or heads,
        head_dim=args.get("kv_channels") or hidden // heads,
        ffn_hidden_size=args.get("ffn_hidden_size") or 4 * hidden,
        vocab_size=int(true_vocab),
        max_position_embeddings=args.get("max_position_embeddings") or args.get("seq_length") or 2048,
        dtype=dtype_name(dtype),
        attention=Attention(qkv_bias=bias or bool(args.get("add_qkv_bias")), out_bias=bias,
                            window=window_from_args(args, layers, where), scale=args.get("softmax_scale")),
        positions=Positions(kind="learned" if position == "learned_absolute" else "rope",
                            rope_theta=float(args.get("rotary_base") or 10000),
                            rope_scaling=rope_scaling_from_args(args, position),
                            rotary_fraction=float(args.get("rotary_percent") or 1.0),
                            interleaved=bool(args.get("rotary_interleaved"))),
        norms=Norms(kind="rmsnorm" if normalization == "RMSNorm" else "layernorm",
                    eps=float(args.get("norm_epsilon") or args.get("layernorm_epsilon") or 1e-5),
                    bias=normalization == "LayerNorm",
                    offset=1.0 if args.get("apply_layernorm_1p") or args.get("layernorm_zero_centered_gamma") else 0.0),
        mlp=MLP(gated=gated, activation="silu" if gated else "gelu_tanh" if args.get("openai_gelu") else "gelu", bias=bias),
        embeddings=Embeddings(tied=not args.get("untie_embeddings_and_output_weights", False)),
    )
    spec = _with_record(spec, args.get("ferry"), where)
    if not spec.family:
        spec = spec.replace(family=families.infer(spec, where).name)
    layout = {
        "tp": args.get("tensor_model_parallel_size") or 1,
        "pp": args.get("pipeline_model_parallel_size") or 1,
        "padded_vocab": padded,
        "transformer_impl": args.get("transformer_impl"),
        "iteration": args.get("iteration"),
    }
    return spec, layout


YARN_DEFAULTS = {"beta_fast": 32, "beta_slow": 1, "truncate": True}


def _same_meaning(a, b) -> bool:
    """Two rope scalings that differ only in parameters written out at their default values."""
    def filled(s):
        if not isinstance(s, dict) or s.get("rope_type") != "yarn":
            return s
        s = {**YARN_DEFAULTS, **s}
        if not s.get("mscale_all_dim"):
            s.pop("mscale", None), s.pop("mscale_all_dim", None)
        return s
    return filled(a) == filled(b)


def _with_record(spec: ModelSpec, ferry_record, where: str) -> ModelSpec:
    """Facts Megatron-LM's arguments cannot hold, the family and the metadata, from ferry's record.
    A fact the arguments do hold is taken from them (they win when edited after ferry wrote them)."""
    if ferry_record is None:
        return spec
    family, facts, metadata = record.parse(ferry_record, f"{where}: args.ferry")
    recorded = ModelSpec.from_facts(family, {**facts, "dtype": spec.dtype})
    changes = {}
    for fact in FACTS:
        value, native = fact.get(recorded), fact.get(spec)
        if value != native and (_same_meaning(value, native) or not _native(fact.name, value, spec)):
            changes[fact.name] = value
    known = {f.name for f in families.all_families()}
    spec = spec.replace(**changes, family=family if family in known else "")
    return dataclasses.replace(spec, extra={**metadata, **spec.extra})


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
    args.update(
        num_layers=spec.num_layers,
        hidden_size=spec.hidden_size,
        ffn_hidden_size=spec.ffn_hidden_size,
        num_attention_heads=spec.num_heads,
        kv_channels=spec.head_dim,
        group_query_attention=spec.num_kv_heads != spec.num_heads,
        num_query_groups=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        **_position_args(spec),
        **_window_args(spec),
        softmax_scale=spec.attention.scale,
        normalization="RMSNorm" if spec.norm == "rmsnorm" else "LayerNorm",
        norm_epsilon=spec.norm_eps,
        apply_layernorm_1p=spec.norms.offset == 1.0,
        layernorm_zero_centered_gamma=spec.norms.offset == 1.0,
        swiglu=spec.gated_mlp,
        gated_linear_unit=spec.gated_mlp,
        openai_gelu=spec.activation == "gelu_tanh" and not spec.gated_mlp,
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
        ferry=record.make(spec),
    )
    args.setdefault("seq_length", min(spec.max_position_embeddings, 4096))
    args.setdefault("tokenizer_type", "NullTokenizer" if base is None else args.get("tokenizer_type"))
    return argparse.Namespace(**args)


def _position_args(spec: ModelSpec) -> dict:
    """Megatron-LM's position arguments (megatron-core 0.16.1 names); a scaling they cannot hold
    is left to ferry's record and these say none."""
    scaling = spec.rope_scaling or {}
    kind = scaling.get("rope_type") if scaling and _native("positions.rope_scaling", scaling, spec) else None
    rope = spec.position_embedding == "rope"
    out = {
        "position_embedding_type": ("yarn" if kind == "yarn" else "rope") if rope else "learned_absolute",
        "use_rotary_position_embeddings": rope,
        "add_position_embedding": not rope,
        "rotary_base": spec.rope_theta,
        "rotary_percent": spec.positions.rotary_fraction,
        "rotary_interleaved": spec.rope_interleaved,
        "rotary_seq_len_interpolation_factor": scaling["factor"] if kind == "linear" else None,
        "use_rope_scaling": kind == "llama3",
        "rope_scaling_factor": scaling["factor"] if kind == "llama3" else 8.0,
    }
    if kind == "yarn":
        out.update(yarn_rotary_scaling_factor=scaling["factor"],
                   yarn_original_max_position_embeddings=scaling["original_max_position_embeddings"],
                   yarn_beta_fast=scaling.get("beta_fast", 32), yarn_beta_slow=scaling.get("beta_slow", 1),
                   yarn_mscale=scaling.get("mscale", 1.0), yarn_mscale_all_dim=scaling.get("mscale_all_dim", 0.0),
                   yarn_correction_range_round_to_int=scaling.get("truncate", True))
    return out


def _window_args(spec: ModelSpec) -> dict:
    """window_size is (left, right) as flash-attention counts it: W tokens including the query
    are (W - 1, 0); window_attn_skip_freq lists which layers (1) use it."""
    window = spec.attention.window
    if window is None or not _native("attention.window", window, spec):
        return {"window_size": None, "window_attn_skip_freq": None}
    size = uniform_window(window)
    every = all(w is not None for w in window)
    return {"window_size": (size - 1, 0), "window_attn_skip_freq": None if every else [int(w is not None) for w in window]}


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
    notes: tuple[str, ...] = ()

    @classmethod
    def of(cls, model, options) -> MegatronTarget:
        from .base import output_dtype

        check_megatron_split(model.spec, options.tp, options.pp)
        notes = check_facts(model.spec)
        dtype = output_dtype(model, options)
        spec = model.spec.replace(dtype=dtype.name)
        padded = padded_vocab_size(spec.vocab_size, options.make_vocab_size_divisible_by, options.tp)
        iteration = options.iteration if options.iteration is not None else model.info.get("iteration", "release")
        return cls(spec, options.tp, options.pp, dtype, padded, iteration, tuple(notes))
