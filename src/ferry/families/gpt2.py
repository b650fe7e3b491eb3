"""GPT-2 style: LayerNorm with bias, learned absolute positions, biased linears, plain MLP.
Hugging Face stores GPT-2's linears as Conv1D, i.e. [in, out], and q/k/v fused as [q | k | v]."""

from __future__ import annotations

from ..errors import UnsupportedError
from ..ops import Split, Transpose
from ..rules import Geometry, Rule
from ..facts import ANY
from ..spec import MLP, Attention, Embeddings, ModelSpec, Norms, Positions
from . import register
from .base import ConfigFields, Family, hf_common, hf_metadata

P, C = "transformer.h.{layer}.", "layers.{layer}."
QKV = (C + "attn.q.weight", C + "attn.k.weight", C + "attn.v.weight")
QKV_BIAS = (C + "attn.q.bias", C + "attn.k.bias", C + "attn.v.bias")


def conv1d_qkv(g: Geometry):  # c_attn.weight is [H, q | k | v] (Conv1D keeps [in, out])
    return (Transpose(0, 1), Split(0, (g.spec.q_size, g.spec.kv_size, g.spec.kv_size)))


def qkv_bias(g: Geometry):
    return (Split(0, (g.spec.q_size, g.spec.kv_size, g.spec.kv_size)),)


CONV1D = (Transpose(0, 1),)

GPT2_HF = (
    Rule("transformer.wte.weight", "embed.weight"),
    Rule("transformer.wpe.weight", "pos_embed.weight"),
    Rule(P + "ln_1.weight", C + "attn_norm.weight"),
    Rule(P + "ln_1.bias", C + "attn_norm.bias"),
    Rule(P + "attn.c_attn.weight", QKV, ops=conv1d_qkv),
    Rule(P + "attn.c_attn.bias", QKV_BIAS, ops=qkv_bias),
    Rule(P + "attn.c_proj.weight", C + "attn.o.weight", ops=CONV1D),
    Rule(P + "attn.c_proj.bias", C + "attn.o.bias"),
    Rule(P + "ln_2.weight", C + "mlp_norm.weight"),
    Rule(P + "ln_2.bias", C + "mlp_norm.bias"),
    Rule(P + "mlp.c_fc.weight", C + "mlp.up.weight", ops=CONV1D),
    Rule(P + "mlp.c_fc.bias", C + "mlp.up.bias"),
    Rule(P + "mlp.c_proj.weight", C + "mlp.down.weight", ops=CONV1D),
    Rule(P + "mlp.c_proj.bias", C + "mlp.down.bias"),
    Rule("transformer.ln_f.weight", "final_norm.weight"),
    Rule("transformer.ln_f.bias", "final_norm.bias"),
    Rule("lm_head.weight", "lm_head.weight"),
)

_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


class GPT2(Family):
    name = "gpt2"
    hf_architectures = ("GPT2LMHeadModel",)
    hf_model_type = "gpt2"
    hf_base_prefix = "transformer."
    hf_rules = GPT2_HF
    hf_ignored = (r"transformer\.h\.\d+\.attn\.(bias|masked_bias)",)
    trtllm_architectures = ("GPTForCausalLM",)
    hf_holds = {"mlp.activation": ANY}

    def check(self, s: ModelSpec) -> None:
        problems = []
        if s.norm != "layernorm" or not s.norm_bias:
            problems.append("norm is not LayerNorm with bias")
        if s.position_embedding != "learned":
            problems.append("positions are not learned absolute embeddings")
        if s.gated_mlp:
            problems.append("MLP is gated")
        if not (s.qkv_bias and s.attn_out_bias and s.mlp_bias):
            problems.append("not every linear has a bias")
        if s.num_kv_heads != s.num_heads:
            problems.append(f"grouped-query attention ({s.num_kv_heads} kv heads for {s.num_heads})")
        if s.head_dim * s.num_heads != s.hidden_size:
            problems.append(f"head_dim {s.head_dim} x {s.num_heads} heads != hidden {s.hidden_size}")
        if problems:
            raise UnsupportedError(f"{self.name}: " + "; ".join(problems))

    def spec_from_hf(self, cfg: dict, where: str) -> ModelSpec:
        f = ConfigFields(cfg, where)
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
            if cfg.get(flag):
                raise UnsupportedError(f"{where}: {flag}=true is not supported")
        if cfg.get("scale_attn_weights") is False:
            raise UnsupportedError(f"{where}: scale_attn_weights=false is not supported")
        hidden, heads = f.get("n_embd"), f.get("n_head")
        return ModelSpec(
            family=self.name,
            num_layers=f.get("n_layer"),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=hidden // heads if heads else 0,
            ffn_hidden_size=f.get("n_inner", 4 * hidden),
            vocab_size=f.get("vocab_size"),
            max_position_embeddings=f.get("n_positions", 1024),
            dtype=str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32").replace("torch.", ""),
            attention=Attention(qkv_bias=True, out_bias=True),
            positions=Positions(kind="learned"),
            norms=Norms(kind="layernorm", eps=f.get("layer_norm_epsilon", 1e-5, (float,)), bias=True),
            mlp=MLP(gated=False, activation=f.activation("activation_function", "gelu_new"), bias=True),
            embeddings=Embeddings(tied=f.get("tie_word_embeddings", True, bool)),
            extra=hf_metadata(cfg, self),
        ).validated()

    def hf_config(self, s: ModelSpec) -> dict:
        return {
            **hf_common(s, self),
            "n_embd": s.hidden_size,
            "n_layer": s.num_layers,
            "n_head": s.num_heads,
            "n_inner": s.ffn_hidden_size,
            "n_positions": s.max_position_embeddings,
            "vocab_size": s.vocab_size,
            "activation_function": _ACT_TO_HF[s.activation],
            "layer_norm_epsilon": s.norm_eps,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
        }

    def trtllm_extras(self, s: ModelSpec) -> dict:
        return {
            "position_embedding_type": "learned_absolute",
            "gpt_variant": "gpt2",
            "bias": True,
            "q_scaling": 1.0,
            "embedding_scale": None,
            "apply_query_key_layer_scaling": False,
            "rotary_pct": 1.0,
        }


register(GPT2())
