"""Llama 2/3 (and Mistral, the same graph plus a sliding window): RMSNorm, rotate-half RoPE,
grouped-query attention, SwiGLU MLP."""

from __future__ import annotations

from ..errors import UnsupportedError
from ..rules import Rule
from ..spec import ModelSpec
from . import register
from .base import ConfigFields, Family, hf_common, rope_from_hf, rope_to_hf

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


class Llama(Family):
    name = "llama"
    hf_architectures = ("LlamaForCausalLM",)
    hf_model_type = "llama"
    hf_base_prefix = "model."
    hf_rules = LLAMA_HF
    hf_ignored = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)
    trtllm_architectures = ("LlamaForCausalLM",)

    def check(self, s: ModelSpec) -> None:
        problems = []
        if s.norm != "rmsnorm" or s.norm_bias:
            problems.append(f"norm {s.norm}{' with bias' if s.norm_bias else ''} (Llama uses RMSNorm)")
        if s.position_embedding != "rope" or s.rope_interleaved:
            problems.append("positions are not rotate-half RoPE")
        if not s.gated_mlp:
            problems.append("MLP is not gated")
        if s.qkv_bias != s.attn_out_bias:
            problems.append("bias on q/k/v but not on o (or the reverse); Llama's attention_bias covers all four")
        if problems:
            raise UnsupportedError(f"{self.name}: " + "; ".join(problems))

    def spec_from_hf(self, cfg: dict, where: str) -> ModelSpec:
        f = ConfigFields(cfg, where)
        hidden, heads = f.get("hidden_size"), f.get("num_attention_heads")
        theta, scaling = rope_from_hf(f)
        attn_bias = f.get("attention_bias", False, bool)
        extra = {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id", "sliding_window") if k in cfg}
        extra["hf_architecture"] = (cfg.get("architectures") or [self.hf_architectures[0]])[0]
        return ModelSpec(
            family=self.name,
            num_layers=f.get("num_hidden_layers"),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=f.get("num_key_value_heads", heads),
            head_dim=f.get("head_dim", hidden // heads if heads else 0),
            ffn_hidden_size=f.get("intermediate_size"),
            vocab_size=f.get("vocab_size"),
            norm="rmsnorm",
            norm_eps=f.get("rms_norm_eps", 1e-6, (float,)),
            activation=f.activation("hidden_act", "silu"),
            gated_mlp=True,
            position_embedding="rope",
            max_position_embeddings=f.get("max_position_embeddings", 2048),
            rope_theta=theta,
            rope_scaling=scaling,
            qkv_bias=attn_bias,
            attn_out_bias=attn_bias,
            mlp_bias=f.get("mlp_bias", False, bool),
            tie_word_embeddings=f.get("tie_word_embeddings", False, bool),
            dtype=str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32").replace("torch.", ""),
            extra=extra,
        ).validated()

    def hf_config(self, s: ModelSpec) -> dict:
        activation = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}[s.activation]
        cfg = {
            **hf_common(s, self),
            "hidden_size": s.hidden_size,
            "intermediate_size": s.ffn_hidden_size,
            "num_hidden_layers": s.num_layers,
            "num_attention_heads": s.num_heads,
            "num_key_value_heads": s.num_kv_heads,
            "head_dim": s.head_dim,
            "hidden_act": activation,
            "max_position_embeddings": s.max_position_embeddings,
            "rms_norm_eps": s.norm_eps,
            "attention_bias": s.qkv_bias,
            "mlp_bias": s.mlp_bias,
            "vocab_size": s.vocab_size,
            **rope_to_hf(s),
        }
        if "sliding_window" in s.extra:
            cfg["sliding_window"] = s.extra["sliding_window"]
        return cfg

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
    name = "mistral"
    hf_architectures = ("MistralForCausalLM",)
    hf_model_type = "mistral"
    trtllm_architectures = ("MistralForCausalLM",)

    def matches(self, spec: ModelSpec) -> bool:  # never inferred from a Megatron checkpoint
        return spec.family == self.name and super().matches(spec)


register(Llama())
register(Mistral())
