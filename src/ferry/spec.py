"""ModelSpec: the architecture facts every format reads into and writes from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import SpecError

NORMS = ("rmsnorm", "layernorm")
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")
POSITIONS = ("rope", "learned")


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a decoder-only transformer, independent of any file format.

    Tensor shapes follow from it: q is [num_heads*head_dim, hidden], k and v are
    [num_kv_heads*head_dim, hidden], the MLP is [ffn_hidden_size, hidden] (gate and up when
    `gated_mlp`), embeddings are [vocab_size, hidden] with the true (unpadded) vocabulary.
    """

    family: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    norm_bias: bool = False
    activation: str = "silu"
    gated_mlp: bool = True
    position_embedding: str = "rope"
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    rope_interleaved: bool = False
    qkv_bias: bool = False
    attn_out_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

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
        return dataclasses.replace(self, **changes).validated()

    def validated(self) -> ModelSpec:
        def need(ok: bool, field_name: str, why: str):
            if not ok:
                raise SpecError(f"model config field {field_name}: {why}")

        for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim", "ffn_hidden_size", "vocab_size"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0, name, f"must be a positive integer, got {value!r}")
        need(self.num_heads % self.num_kv_heads == 0, "num_kv_heads",
             f"{self.num_kv_heads} does not divide num_heads {self.num_heads}")
        need(self.norm in NORMS, "norm", f"{self.norm!r} is not one of {NORMS}")
        need(self.activation in ACTIVATIONS, "activation", f"{self.activation!r} is not one of {ACTIVATIONS}")
        need(self.position_embedding in POSITIONS, "position_embedding", f"{self.position_embedding!r} is not one of {POSITIONS}")
        need(self.norm_eps > 0, "norm_eps", f"must be positive, got {self.norm_eps}")
        need(self.max_position_embeddings > 0, "max_position_embeddings", f"must be positive, got {self.max_position_embeddings}")
        if self.position_embedding == "rope":
            need(self.rope_theta > 0, "rope_theta", f"must be positive, got {self.rope_theta}")
            need(self.head_dim % 2 == 0, "head_dim", f"RoPE needs an even head_dim, got {self.head_dim}")
        need(self.dtype in ("float32", "float16", "bfloat16"), "dtype", f"{self.dtype!r} is not float32, float16 or bfloat16")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
