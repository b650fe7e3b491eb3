"""TensorRT-LLM checkpoints (what `trtllm-build` reads): config.json plus rank{r}.safetensors,
r = pp_rank * tp + tp_rank, each rank holding its own slices with local layer numbers.

Per rank: fused qkv is [Q_r; K_r; V_r] (not interleaved per group); when tp > kv heads each kv
head is repeated tp/kv times consecutively; `mlp.fc` is the activated branch (HF gate_proj),
`mlp.gate` the linear one (HF up_proj); row-parallel biases are full copies; lm_head is
zero-padded to a multiple of tp and split; tied embeddings are written as an explicit lm_head.
Target schema: the 0.x-1.2 releases that still ship trtllm-build (see ARCHITECTURE.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .. import families, record
from ..dtypes import dtype_from_name, dtype_name
from ..errors import CheckpointError, SpecError, UnsupportedError
from ..facts import Holds, check_carried, rope_types
from ..families.base import ConfigFields, refuse_unknown_keys, rope_from_hf
from ..io import safetensors as st
from ..ops import Deinterleave, Each, Resize, Unrepeat
from ..parallel import (
    RankedReader,
    StageLayout,
    even_stages,
    split_to_ranks,
    stages_from_files,
)
from ..plan import CopiedFile, JsonFile, Plan, PlannedTensor, SafetensorsFile
from ..rules import COLUMN, ROW, Geometry, Rule, bind, read_canonical, write_stored
from ..spec import MLP, ROPE_TYPES, Attention, Embeddings, ModelSpec, Norms, Positions
from . import register
from .base import Format, Model, ReadOptions, WriteOptions, cast_float, output_dtype
from .hf import find_aux_files, read_json

T, C = "transformer.layers.{layer}.", "layers.{layer}."
QKV = (C + "attn.q.weight", C + "attn.k.weight", C + "attn.v.weight")
QKV_BIAS = (C + "attn.q.bias", C + "attn.k.bias", C + "attn.v.bias")


def qkv_per_rank(g: Geometry):
    """Gathered over ranks, qkv is tp blocks of [Q_r; K_r; V_r]; with tp > kv heads each kv head
    is repeated tp/kv times first (rank r holds kv head r // (tp/kv))."""
    s, tp = g.spec, g.tp
    repeat = max(1, tp // s.num_kv_heads)
    kv_rows = max(1, s.num_kv_heads // tp) * s.head_dim
    unrepeat = Unrepeat(0, s.head_dim, repeat)
    return (Deinterleave(tp, (s.q_size // tp, kv_rows, kv_rows)), Each((None, unrepeat, unrepeat)))


def padded_vocab(g: Geometry):  # stored rows: vocab zero-padded to a multiple of tp
    return (Resize(0, g.padded_vocab, g.spec.vocab_size),)


def padded_positions(g: Geometry):
    rows = g.spec.max_position_embeddings
    return (Resize(0, math.ceil(rows / g.tp) * g.tp, rows),)


def gated(g):
    return g.spec.gated_mlp


def plain(g):
    return not g.spec.gated_mlp


def parallel(g):
    return g.parallel_embedding


def replicated(g):
    return not g.parallel_embedding


TRTLLM_RULES = (
    Rule("transformer.vocab_embedding.weight", "embed.weight", ops=padded_vocab, shard=COLUMN, when=parallel),
    Rule("transformer.vocab_embedding.weight", "embed.weight", when=replicated),
    Rule("transformer.position_embedding.weight", "pos_embed.weight", ops=padded_positions, shard=COLUMN, when=parallel),
    Rule("transformer.position_embedding.weight", "pos_embed.weight", when=replicated),
    Rule(T + "input_layernorm.weight", C + "attn_norm.weight"),
    Rule(T + "input_layernorm.bias", C + "attn_norm.bias"),
    Rule(T + "attention.qkv.weight", QKV, ops=qkv_per_rank, shard=COLUMN),
    Rule(T + "attention.qkv.bias", QKV_BIAS, ops=qkv_per_rank, shard=COLUMN),
    Rule(T + "attention.dense.weight", C + "attn.o.weight", shard=ROW),
    Rule(T + "attention.dense.bias", C + "attn.o.bias"),
    Rule(T + "post_layernorm.weight", C + "mlp_norm.weight"),
    Rule(T + "post_layernorm.bias", C + "mlp_norm.bias"),
    Rule(T + "mlp.fc.weight", C + "mlp.gate.weight", shard=COLUMN, when=gated),
    Rule(T + "mlp.fc.bias", C + "mlp.gate.bias", shard=COLUMN, when=gated),
    Rule(T + "mlp.gate.weight", C + "mlp.up.weight", shard=COLUMN, when=gated),
    Rule(T + "mlp.gate.bias", C + "mlp.up.bias", shard=COLUMN, when=gated),
    Rule(T + "mlp.fc.weight", C + "mlp.up.weight", shard=COLUMN, when=plain),
    Rule(T + "mlp.fc.bias", C + "mlp.up.bias", shard=COLUMN, when=plain),
    Rule(T + "mlp.proj.weight", C + "mlp.down.weight", shard=ROW),
    Rule(T + "mlp.proj.bias", C + "mlp.down.bias"),
    Rule("transformer.ln_f.weight", "final_norm.weight"),
    Rule("transformer.ln_f.bias", "final_norm.bias"),
    Rule("lm_head.weight", "lm_head.weight", ops=padded_vocab, shard=COLUMN),
    Rule("lm_head.weight", "embed.weight", ops=padded_vocab, shard=COLUMN, when=lambda g: g.spec.tie_word_embeddings, copy=True),
)

LAYOUT = StageLayout(r"transformer\.layers\.(\d+)\.(.+)", "transformer.layers.{layer}.{rest}",
                     ("transformer.vocab_embedding.", "transformer.position_embedding."))
ACT_TO_TRT = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
ACT_FROM_TRT = {"silu": "silu", "swiglu": "silu", "gelu": "gelu", "geglu": "gelu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh", "fast-gelu": "gelu_tanh", "openai-gelu": "gelu_tanh", "relu": "relu"}


def with_record(spec, path: Path):
    """The metadata of ferry's record beside config.json (architecture, token ids, source config)."""
    if not path.is_file():
        return spec
    family, _facts, metadata = record.parse(read_json(path), str(path))
    if family != spec.family:
        return spec  # the config was rewritten for another family since: the record describes something else
    return spec.replace(extra={**metadata, **spec.extra})


def check_split(spec, tp: int, pp: int) -> None:
    nh, nkv = spec.num_heads, spec.num_kv_heads
    if tp < 1 or pp < 1:
        raise SpecError(f"--tp and --pp must be at least 1 (got tp={tp}, pp={pp})")
    if nh % tp or (nkv % tp and tp % nkv):
        raise UnsupportedError(
            f"--tp {tp}: cannot split attention: num_attention_heads ({nh}) must be divisible by tp, "
            f"and num_key_value_heads ({nkv}) must be a multiple or a divisor of tp"
        )
    if spec.ffn_hidden_size % tp:
        raise UnsupportedError(f"--tp {tp}: intermediate_size ({spec.ffn_hidden_size}) is not divisible by tp")
    if spec.num_layers % pp:
        raise UnsupportedError(
            f"--pp {pp}: num_hidden_layers ({spec.num_layers}) is not divisible by pp "
            "(TensorRT-LLM releases disagree on how to split uneven layers)"
        )


class TensorRTLLM(Format):
    name = "trtllm"
    description = "TensorRT-LLM checkpoint (config.json with 'architecture' + rank*.safetensors)"

    def detect(self, path):
        cfg = path / "config.json"
        if not cfg.is_file() or not (path / "rank0.safetensors").is_file():
            return False
        try:
            return "architecture" in json.loads(cfg.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False

    def why_not(self, path):
        cfg = path / "config.json"
        if cfg.is_file() and "architecture" in read_json(cfg) and not (path / "rank0.safetensors").is_file():
            return f"{path / 'rank0.safetensors'}: missing (config.json is a TensorRT-LLM checkpoint config)"
        return None

    # -- reading -------------------------------------------------------------------------------
    def read(self, path, options: ReadOptions) -> Model:
        cfg_path = path / "config.json"
        cfg = read_json(cfg_path)
        spec, layout = spec_from_config(cfg, str(cfg_path))
        tp, pp = layout["tp"], layout["pp"]
        model = Model(spec=spec, tensors={}, format=self.name, path=path, parallel={"tp": tp, "pp": pp})
        try:
            ranks = self._rank_tensors(path, tp, pp, model)
            label = lambda stage, tp_rank: path / f"rank{stage * tp + tp_rank}.safetensors"  # noqa: E731
            stages = stages_from_files(LAYOUT, ranks, pp, spec.num_layers, label)
            reader = RankedReader(ranks, tp, stages, LAYOUT, label)
            geo = Geometry(spec, tp, pp, vocab_rows=math.ceil(spec.vocab_size / tp) * tp, parallel_embedding=layout["parallel_embedding"])
            model.tensors = read_canonical(bind(TRTLLM_RULES, geo), spec, reader.fetch)
            reader.check_all_consumed()
            model.spec = with_record(spec, path / record.TRTLLM_FILE)
            model.aux_files = find_aux_files(path)
            model.info = {"stages": [[s.start, s.stop] for s in stages], **layout}
            return model
        except BaseException:
            model.close()
            raise

    def _rank_tensors(self, path: Path, tp: int, pp: int, model: Model) -> dict[tuple[int, int], dict]:
        world = tp * pp
        ranks = {}
        for r in range(world):
            f = path / f"rank{r}.safetensors"
            if not f.is_file():
                raise CheckpointError(f"{f}: missing (config.json mapping has world_size {world})")
            ranks[(r // tp, r % tp)] = st.read_index(model.files.open(f))[0]
        if (path / f"rank{world}.safetensors").exists():
            raise CheckpointError(f"{path / f'rank{world}.safetensors'}: unexpected (config.json mapping has world_size {world})")
        return ranks

    # -- writing -------------------------------------------------------------------------------
    def plan(self, model: Model, options: WriteOptions) -> Plan:
        spec, tp, pp = model.spec, options.tp, options.pp
        family = families.get(spec.family)
        check_split(spec, tp, pp)
        notes = check_facts(spec, trtllm_architecture(spec, family))
        dtype = output_dtype(model, options)
        spec = spec.replace(dtype=dtype_name(dtype))
        geo = Geometry(spec, tp, pp, vocab_rows=math.ceil(spec.vocab_size / tp) * tp, parallel_embedding=options.parallel_embedding)
        stored = write_stored(bind(TRTLLM_RULES, geo), model.tensors)
        pieces = split_to_ranks(stored, tp, even_stages(spec.num_layers, pp), LAYOUT)
        files = [
            SafetensorsFile(f"rank{stage * tp + tp_rank}.safetensors", [PlannedTensor(n, cast_float(t, dtype)) for n, t in tensors])
            for (stage, tp_rank), tensors in pieces.items()
        ]
        files.insert(0, JsonFile("config.json", config_for(spec, family, tp, pp, options.parallel_embedding)))
        files.append(JsonFile(record.TRTLLM_FILE, record.make(spec)))
        files += [CopiedFile(p.name, p) for p in model.aux_files]
        return Plan(self.name, spec, files, {"tp": tp, "pp": pp}, notes)


GELU_NOTE = ("TensorRT-LLM computes 'gelu' with the tanh approximation; this model was trained with exact "
             "(erf) GELU, so engine logits will differ slightly (about 1e-3) from the source model")
# What release 1.2's config classes read (LLaMAConfig: rotary_scaling of every HF rope type; no
# attention window: the engine takes that at run time, so a windowed model is refused)
ACTIVATION = Holds(values="silu, gelu (tanh in the engine), gelu_tanh, relu")
HOLDS = {
    "LlamaForCausalLM": {"positions.rope_scaling": rope_types(*ROPE_TYPES), "mlp.activation": (
        Holds(lambda v, s: v == "gelu", note=GELU_NOTE), ACTIVATION)},
    "GPTForCausalLM": {"mlp.activation": (Holds(lambda v, s: v == "gelu", note=GELU_NOTE), ACTIVATION)},
}
HOLDS["MistralForCausalLM"] = HOLDS["LlamaForCausalLM"]
# config fields of those classes that change the computation and that ferry does not model: refused unless neutral
UNMODELLED = {"embedding_multiplier": (1, 1.0), "attention_multiplier": (1, 1.0), "residual_multiplier": (1, 1.0),
              "output_multiplier_scale": (1, 1.0), "residual_mlp": (False,), "qk_layernorm": (False,),
              "rotary_pct": (1, 1.0), "embedding_scale": (), "q_scaling": (1, 1.0),
              "apply_query_key_layer_scaling": (False,), "sliding_window": (), "inner_layernorm": (False,),
              "parallel_attention": (False,)}


def check_facts(spec, architecture: str) -> list[str]:
    return check_carried(spec, HOLDS.get(architecture, {}), f"TensorRT-LLM {architecture} (release 1.2 config)",
                         "TensorRT-LLM would run another model; serve the Hugging Face checkpoint instead "
                         "(TensorRT-LLM's PyTorch backend and vLLM read it)")


def config_for(spec, family, tp: int, pp: int, parallel_embedding: bool) -> dict:
    """The fields every 0.x-1.2 release accepts (Mapping and QuantConfig reject unknown keys, so
    the mapping is the minimal {world_size, tp_size, pp_size})."""
    return {
        "architecture": trtllm_architecture(spec, family),
        "dtype": spec.dtype,
        "logits_dtype": "float32",
        "vocab_size": spec.vocab_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_size": spec.head_dim,
        "hidden_act": ACT_TO_TRT[spec.activation],
        "intermediate_size": spec.ffn_hidden_size,
        "norm_epsilon": spec.norm_eps,
        "use_parallel_embedding": parallel_embedding,
        "embedding_sharding_dim": 0,
        "share_embedding_table": False,
        "qk_layernorm": False,
        "tie_word_embeddings": spec.tie_word_embeddings,
        **family.trtllm_extras(spec),
        "mapping": {"world_size": tp * pp, "tp_size": tp, "pp_size": pp},
        "quantization": {"quant_algo": None, "kv_cache_quant_algo": None},
    }


def trtllm_architecture(spec, family) -> str:
    arch = spec.extra.get("trtllm_architecture") or spec.extra.get("hf_architecture")
    return arch if arch in family.trtllm_architectures else family.trtllm_architectures[0]


def spec_from_config(cfg: dict, where: str):
    f = ConfigFields(cfg, where)
    arch = f.get("architecture", kind=str)
    family = families.by_trtllm_architecture(arch, where)
    quant = cfg.get("quantization") or {}
    if quant.get("quant_algo") or quant.get("kv_cache_quant_algo"):
        raise UnsupportedError(f"{where}: quantized checkpoints ({quant}) are not read yet")
    refuse_unknown_keys(cfg, where, UNMODELLED)
    mapping = f.get("mapping", {}, dict)
    mf = ConfigFields(mapping, f"{where}: mapping")
    tp, pp = mf.get("tp_size", 1), mf.get("pp_size", 1)
    if mf.get("world_size", tp * pp) != tp * pp or mf.get("cp_size", 1) != 1:
        raise UnsupportedError(f"{where}: mapping {mapping} (only world_size == tp_size * pp_size is read)")
    if f.get("use_parallel_embedding", False, bool) and f.get("embedding_sharding_dim", 0) != 0:
        raise UnsupportedError(f"{where}: embedding_sharding_dim 1 is not read yet")
    hidden, heads = f.get("hidden_size"), f.get("num_attention_heads")
    act_name = f.get("hidden_act", "gelu", str)
    if act_name not in ACT_FROM_TRT:
        raise UnsupportedError(f"{where}: hidden_act {act_name!r} is not supported")
    is_gpt = family.name == "gpt2"
    bias = f.get("bias", True, bool) if is_gpt else None
    position = f.get("position_embedding_type", "learned_absolute", str)
    if position not in ("learned_absolute", "rope_gpt_neox"):
        raise UnsupportedError(f"{where}: position_embedding_type {position!r} is not supported")
    max_positions = f.get("max_position_embeddings", 2048)
    scaling = None
    if cfg.get("rotary_scaling"):
        _, scaling = rope_from_hf(ConfigFields({"rope_scaling": f.get("rotary_scaling", kind=dict)}, where), max_positions)
    spec = ModelSpec(
        family=family.name,
        num_layers=f.get("num_hidden_layers"),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=f.get("num_key_value_heads", heads),
        head_dim=f.get("head_size", hidden // heads if heads else 0),
        ffn_hidden_size=f.get("intermediate_size", 4 * hidden),
        vocab_size=f.get("vocab_size"),
        max_position_embeddings=max_positions,
        dtype=dtype_name(dtype_from_name(f.get("dtype", kind=str), f"{where}: dtype")),
        attention=Attention(qkv_bias=bias if is_gpt else f.get("attn_bias", False, bool),
                            out_bias=bias if is_gpt else f.get("attn_bias", False, bool)),
        positions=Positions(kind="rope" if position == "rope_gpt_neox" else "learned",
                            rope_theta=f.get("rotary_base", 10000.0, (float,)), rope_scaling=scaling),
        norms=Norms(kind="layernorm" if is_gpt else "rmsnorm", eps=f.get("norm_epsilon", 1e-5, (float,)), bias=is_gpt),
        mlp=MLP(gated=(not is_gpt) or act_name in ("swiglu", "geglu"), activation=ACT_FROM_TRT[act_name],
                bias=bias if is_gpt else f.get("mlp_bias", False, bool)),
        embeddings=Embeddings(tied=f.get("tie_word_embeddings", False, bool)),
        extra={"trtllm_architecture": arch},
    ).validated()
    family.check(spec)
    return spec, {"tp": tp, "pp": pp, "parallel_embedding": f.get("use_parallel_embedding", False, bool)}


register(TensorRTLLM())
