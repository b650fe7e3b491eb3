"""Llama 2/3 (and Mistral, the same graph plus a sliding window): RMSNorm, rotate-half RoPE,
grouped-query attention, SwiGLU MLP."""

from __future__ import annotations

from ..errors import UnsupportedError
from ..facts import ANY, rope_types, single_window
from ..rules import Rule
from ..spec import MLP, ROPE_TYPES, Attention, Embeddings, ModelSpec, Norms, Positions, uniform_window
from . import register
from .base import ConfigFields, Family, hf_common, hf_metadata, refuse_unknown_keys, rope_from_hf, rope_to_hf

P, C = "model.layers.{layer}.", "layers.{layer}."

LLAMA_HF = (
    Rule("model.embed_tokens.weight", "embed.weight"),
    Rule(P + "input_layernorm.weight", C + "attn_norm.weight"),
    Rule(P + "self_attn.q_proj.weight", C + "attn.q.weight"),
    Rule(P + "self_attn.k_proj.weight", C + "attn.k.weight"),
    Rule(P + "self_attn.v_proj.weight", C + "attn.v.weight"),
    Rule(P + "self_attn.q_proj.bias", C + "attn.q.bias"),
    Rule(P + "self_attn.k_proj.bias", C + "attn.k.bias"),
    Rule(P + "self_attn.v_proj.bias", C + "attn.v.bias"),
    Rule(P + "self_attn.o_proj.weight", C + "attn.o.weight"),
    Rule(P + "self_attn.o_proj.bias", C + "attn.o.bias"),
    Rule(P + "post_attention_layernorm.weight", C + "mlp_norm.weight"),
    Rule(P + "mlp.gate_proj.weight", C + "mlp.gate.weight"),
    Rule(P + "mlp.up_proj.weight", C + "mlp.up.weight"),
    Rule(P + "mlp.down_proj.weight", C + "mlp.down.weight"),
    Rule(P + "mlp.gate_proj.bias", C + "mlp.gate.bias"),
    Rule(P + "mlp.up_proj.bias", C + "mlp.up.bias"),
    Rule(P + "mlp.down_proj.bias", C + "mlp.down.bias"),
    Rule("model.norm.weight", "final_norm.weight"),
    Rule("lm_head.weight", "lm_head.weight"),
)


TRANSFORMERS_MISTRAL_WINDOW = 4096  # MistralConfig.sliding_window default
HF_ACTIVATION_NAMES = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}


class Llama(Family):
    name = "llama"
    hf_architectures = ("LlamaForCausalLM",)
    hf_model_type = "llama"
    hf_base_prefix = "model."
    hf_rules = LLAMA_HF
    hf_ignored = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)
    trtllm_architectures = ("LlamaForCausalLM",)
    hf_holds = {"positions.rope_scaling": rope_types(*ROPE_TYPES), "mlp.activation": ANY}

    def check(self, s: ModelSpec) -> None:
        problems = []
        if s.norm != "rmsnorm" or s.norm_bias:
            problems.append(f"norm {s.norm}{' with bias' if s.norm_bias else ''} (Llama uses RMSNorm)")
        if s.position_embedding != "rope":
            problems.append("positions are not RoPE")
        if not s.gated_mlp:
            problems.append("MLP is not gated")
        if s.qkv_bias != s.attn_out_bias:
            problems.append("bias on q/k/v but not on o (or the reverse); Llama's attention_bias covers all four")
        if problems:
            raise UnsupportedError(f"{self.name}: " + "; ".join(problems))

    def window_from_hf(self, cfg: dict, f: ConfigFields, layers: int):
        return None  # transformers' Llama reads no window (a `sliding_window` key there changes nothing)

    def spec_from_hf(self, cfg: dict, where: str) -> ModelSpec:
        f = ConfigFields(cfg, where)
        refuse_unknown_keys(cfg, where, {"partial_rotary_factor": (1, 1.0)})
        hidden, heads = f.get("hidden_size"), f.get("num_attention_heads")
        layers, positions = f.get("num_hidden_layers"), f.get("max_position_embeddings", 2048)
        theta, scaling = rope_from_hf(f, positions)
        attn_bias = f.get("attention_bias", False, bool)
        return ModelSpec(
            family=self.name,
            num_layers=layers,
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=f.get("num_key_value_heads", heads),
            head_dim=f.get("head_dim", hidden // heads if heads else 0),
            ffn_hidden_size=f.get("intermediate_size"),
            vocab_size=f.get("vocab_size"),
            max_position_embeddings=positions,
            dtype=str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32").replace("torch.", ""),
            attention=Attention(qkv_bias=attn_bias, out_bias=attn_bias, window=self.window_from_hf(cfg, f, layers)),
            positions=Positions(kind="rope", rope_theta=theta, rope_scaling=scaling),
            norms=Norms(kind="rmsnorm", eps=f.get("rms_norm_eps", 1e-6, (float,))),
            mlp=MLP(gated=True, activation=f.activation("hidden_act", "silu"), bias=f.get("mlp_bias", False, bool)),
            embeddings=Embeddings(tied=f.get("tie_word_embeddings", False, bool)),
            extra=hf_metadata(cfg, self),
        ).validated()

    def hf_config(self, s: ModelSpec) -> dict:
        return {
            **hf_common(s, self),
            "hidden_size": s.hidden_size,
            "intermediate_size": s.ffn_hidden_size,
            "num_hidden_layers": s.num_layers,
            "num_attention_heads": s.num_heads,
            "num_key_value_heads": s.num_kv_heads,
            "head_dim": s.head_dim,
            "hidden_act": HF_ACTIVATION_NAMES[s.activation],
            "max_position_embeddings": s.max_position_embeddings,
            "rms_norm_eps": s.norm_eps,
            "attention_bias": s.qkv_bias,
            "mlp_bias": s.mlp_bias,
            "vocab_size": s.vocab_size,
            **rope_to_hf(s),
        }

    def trtllm_extras(self, s: ModelSpec) -> dict:
        return {
            "position_embedding_type": "rope_gpt_neox",
            "rotary_base": s.rope_theta,
            "rotary_scaling": dict(s.rope_scaling) if s.rope_scaling else None,
            "attn_bias": s.qkv_bias,
            "mlp_bias": s.mlp_bias,
            "moe": {"num_experts": 0, "top_k": 0, "normalization_mode": 1, "sparse_mixer_epsilon": 0.01, "tp_mode": 0},
        }


class Mistral(Llama):
    """Llama's graph with one sliding window on every layer (or none: `sliding_window: null`,
    written explicitly, since transformers' MistralConfig defaults to 4096)."""

    name = "mistral"
    hf_architectures = ("MistralForCausalLM",)
    hf_model_type = "mistral"
    trtllm_architectures = ("MistralForCausalLM",)
    hf_holds = {**Llama.hf_holds, "attention.window": single_window()}

    def window_from_hf(self, cfg: dict, f: ConfigFields, layers: int):
        # transformers' Mistral applies `sliding_window` to every layer (it ignores `layer_types`)
        window = cfg.get("sliding_window", TRANSFORMERS_MISTRAL_WINDOW)  # absent: transformers' default
        window = None if window is None else f.get("sliding_window", TRANSFORMERS_MISTRAL_WINDOW)
        return None if window is None else (window,) * layers

    def check(self, s: ModelSpec) -> None:
        super().check(s)
        if s.qkv_bias or s.mlp_bias:
            raise UnsupportedError(f"{self.name}: biased linears (transformers' Mistral has none)")

    def hf_config(self, s: ModelSpec) -> dict:
        cfg = {k: v for k, v in super().hf_config(s).items() if k not in ("attention_bias", "mlp_bias")}
        return {**cfg, "sliding_window": uniform_window(s.attention.window)}


register(Llama())
register(Mistral())
