"""ModelSpec: the architecture facts every format reads into and writes from.

Sizes sit at the top level; the facts that change what a model computes are grouped by what they
change (attention, positions, norms, residual, MLP, embeddings), each group small and validated
on its own. `facts.py` lists them one by one and says which formats can hold which values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import SpecError

NORMS = ("rmsnorm", "layernorm")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")
POSITIONS = ("rope", "learned")
ROPE_TYPES = ("linear", "dynamic", "yarn", "longrope", "llama3")
# parameters each rope type needs (beyond rope_type); others it may have are listed in OPTIONAL
ROPE_REQUIRED = {
    "linear": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor", "original_max_position_embeddings"),
    "longrope": ("short_factor", "long_factor", "original_max_position_embeddings"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}
ROPE_OPTIONAL = {
    "yarn": ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"),
    "longrope": ("factor", "attention_factor"),
}


def _need(ok: bool, name: str, why: str) -> None:
    if not ok:
        raise SpecError(f"model config field {name}: {why}")


@dataclass(frozen=True)
class Attention:
    qkv_bias: bool = False
    out_bias: bool = False
    # per layer: how many tokens (itself included) a query sees, as transformers' `sliding_window`;
    # None for the whole tuple or one entry = full causal attention
    window: tuple[int | None, ...] | None = None
    softcap: float | None = None  # scores -> softcap * tanh(scores / softcap)
    scale: float | None = None  # score scale; None = 1 / sqrt(head_dim)

    def validate(self, num_layers: int) -> None:
        if self.window is not None:
            _need(isinstance(self.window, tuple) and len(self.window) == num_layers, "attention.window",
                  f"needs one entry per layer ({num_layers}), got {self.window!r}")
            for w in self.window:
                _need(w is None or (isinstance(w, int) and not isinstance(w, bool) and w > 0), "attention.window",
                      f"a window is a positive token count or null, got {w!r}")
        _need(self.softcap is None or self.softcap > 0, "attention.softcap", f"must be positive, got {self.softcap}")
        _need(self.scale is None or self.scale > 0, "attention.scale", f"must be positive, got {self.scale}")

    def window_of(self, layer: int) -> int | None:
        return None if self.window is None else self.window[layer]


@dataclass(frozen=True)
class Positions:
    kind: str = "rope"
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # transformers' spelling: {"rope_type": ..., parameters}
    rotary_fraction: float = 1.0  # share of head_dim that is rotated (transformers partial_rotary_factor)
    interleaved: bool = False  # rotate pairs (2i, 2i+1) instead of (i, i + d/2)

    def validate(self, head_dim: int) -> None:
        _need(self.kind in POSITIONS, "positions.kind", f"{self.kind!r} is not one of {POSITIONS}")
        if self.kind != "rope":
            return
        _need(self.rope_theta > 0, "rope_theta", f"must be positive, got {self.rope_theta}")
        _need(0 < self.rotary_fraction <= 1, "rotary_fraction", f"must be in (0, 1], got {self.rotary_fraction}")
        _need(self.rotary_dim(head_dim) % 2 == 0 and self.rotary_dim(head_dim) > 0, "rotary_fraction",
              f"rotates {self.rotary_dim(head_dim)} of head_dim {head_dim} channels; RoPE needs an even count")
        s = self.rope_scaling
        if s is None:
            return
        kind = s.get("rope_type")
        _need(kind in ROPE_TYPES, "rope_scaling.rope_type", f"{kind!r} is not one of {ROPE_TYPES}")
        missing = [k for k in ROPE_REQUIRED[kind] if s.get(k) is None]
        _need(not missing, "rope_scaling", f"rope_type {kind} needs {', '.join(missing)}")
        unknown = sorted(set(s) - {"rope_type", *ROPE_REQUIRED[kind], *ROPE_OPTIONAL.get(kind, ())})
        _need(not unknown, "rope_scaling", f"rope_type {kind} has parameters ferry does not know: {', '.join(unknown)}")

    def rotary_dim(self, head_dim: int) -> int:
        return int(head_dim * self.rotary_fraction)


@dataclass(frozen=True)
class Norms:
    kind: str = "rmsnorm"
    eps: float = 1e-5
    bias: bool = False
    offset: float = 0.0  # the norm multiplies by (offset + weight): 1.0 for Gemma, Megatron's layernorm_1p

    def validate(self) -> None:
        _need(self.kind in NORMS, "norm", f"{self.kind!r} is not one of {NORMS}")
        _need(self.eps > 0, "norm_eps", f"must be positive, got {self.eps}")


@dataclass(frozen=True)
class Residual:
    parallel: bool = False  # x + attn(norm(x)) + mlp(norm(x)) instead of one after the other

    def validate(self) -> None:
        pass


@dataclass(frozen=True)
class MLP:
    gated: bool = True  # down(act(gate(x)) * up(x)); else down(act(up(x)))
    activation: str = "silu"
    bias: bool = False

    def validate(self) -> None:
        _need(self.activation in ACTIVATIONS, "activation", f"{self.activation!r} is not one of {ACTIVATIONS}")


@dataclass(frozen=True)
class Embeddings:
    tied: bool = False
    scale: float = 1.0  # the token embedding is multiplied by this (Gemma: sqrt(hidden))
    logit_softcap: float | None = None  # logits -> cap * tanh(logits / cap)

    def validate(self) -> None:
        _need(self.scale > 0, "embeddings.scale", f"must be positive, got {self.scale}")
        _need(self.logit_softcap is None or self.logit_softcap > 0, "embeddings.logit_softcap",
              f"must be positive, got {self.logit_softcap}")


GROUP_CLASSES = {"attention": Attention, "positions": Positions, "norms": Norms, "residual": Residual,
                 "mlp": MLP, "embeddings": Embeddings}
GROUPS = tuple(GROUP_CLASSES)

# the flat names used before the facts were grouped, kept readable (spec.norm == spec.norms.kind)
FLAT = {
    "norm": ("norms", "kind"), "norm_eps": ("norms", "eps"), "norm_bias": ("norms", "bias"),
    "activation": ("mlp", "activation"), "gated_mlp": ("mlp", "gated"), "mlp_bias": ("mlp", "bias"),
    "position_embedding": ("positions", "kind"), "rope_theta": ("positions", "rope_theta"),
    "rope_scaling": ("positions", "rope_scaling"), "rope_interleaved": ("positions", "interleaved"),
    "qkv_bias": ("attention", "qkv_bias"), "attn_out_bias": ("attention", "out_bias"),
    "tie_word_embeddings": ("embeddings", "tied"),
}


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a decoder-only transformer, independent of any file format.

    Tensor shapes follow from it: q is [num_heads*head_dim, hidden], k and v are
    [num_kv_heads*head_dim, hidden], the MLP is [ffn_hidden_size, hidden] (gate and up when
    `mlp.gated`), embeddings are [vocab_size, hidden] with the true (unpadded) vocabulary.
    `extra` holds metadata that changes nothing computed (architecture name, token ids, the
    source's config); it takes no part in comparisons.
    """

    family: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    max_position_embeddings: int = 2048
    dtype: str = "float32"
    attention: Attention = field(default_factory=Attention)
    positions: Positions = field(default_factory=Positions)
    norms: Norms = field(default_factory=Norms)
    residual: Residual = field(default_factory=Residual)
    mlp: MLP = field(default_factory=MLP)
    embeddings: Embeddings = field(default_factory=Embeddings)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __getattr__(self, name: str):  # only called for names that are not fields
        if name in FLAT:
            group, key = FLAT[name]
            return getattr(getattr(self, group), key)
        raise AttributeError(f"ModelSpec has no attribute {name!r}")

    # derived sizes
    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads

    def replace(self, **changes) -> ModelSpec:
        """A copy with top-level fields, whole groups or group fields by their dotted name
        (`spec.replace(**{"attention.window": (4, None)})`) changed, validated."""
        top = {k: v for k, v in changes.items() if "." not in k}
        for dotted, value in changes.items():
            if "." in dotted:
                group, key = dotted.split(".", 1)
                top[group] = dataclasses.replace(top.get(group, getattr(self, group)), **{key: value})
        return dataclasses.replace(self, **top).validated()

    def validated(self) -> ModelSpec:
        for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "ffn_hidden_size", "vocab_size"):
            value = getattr(self, name)
            _need(isinstance(value, int) and not isinstance(value, bool) and value > 0, name, f"must be a positive integer, got {value!r}")
        _need(self.num_heads % self.num_kv_heads == 0, "num_kv_heads", f"{self.num_kv_heads} does not divide num_heads {self.num_heads}")
        _need(self.max_position_embeddings > 0, "max_position_embeddings", f"must be positive, got {self.max_position_embeddings}")
        _need(self.dtype in ("float32", "float16", "bfloat16"), "dtype", f"{self.dtype!r} is not float32, float16 or bfloat16")
        self.attention.validate(self.num_layers)
        self.positions.validate(self.head_dim)
        self.norms.validate()
        self.residual.validate()
        self.mlp.validate()
        self.embeddings.validate()
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def facts_dict(self) -> dict:
        """Everything that changes what the model computes (sizes and groups), JSON-ready."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("extra", "family")}
        window = d["attention"]["window"]
        d["attention"]["window"] = None if window is None else list(window)
        return d

    @classmethod
    def from_facts(cls, family: str, facts: dict, extra: dict | None = None) -> ModelSpec:
        """The inverse of `facts_dict` (ferry's own record inside Megatron checkpoints)."""
        top = {k: v for k, v in facts.items() if k not in GROUPS}
        groups = {}
        for name, group_cls in GROUP_CLASSES.items():
            values = dict(facts.get(name) or {})
            unknown = set(values) - {f.name for f in dataclasses.fields(group_cls)}
            if unknown:
                raise SpecError(f"ferry record: {name} has facts this ferry does not know: {', '.join(sorted(unknown))} "
                                "(written by a newer ferry?)")
            if name == "attention" and values.get("window") is not None:
                values["window"] = tuple(values["window"])
            groups[name] = group_cls(**values)
        return cls(family=family, **top, **groups, extra=dict(extra or {})).validated()


def uniform_window(window: tuple | None) -> int | None:
    """The one window every windowed layer shares, or None when no layer has one; raises
    ValueError when the layers' windows differ."""
    sizes = {w for w in (window or ()) if w is not None}
    if len(sizes) > 1:
        raise ValueError(f"layers have different windows {sorted(sizes)}")
    return next(iter(sizes), None)
