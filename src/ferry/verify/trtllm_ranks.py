"""Reference forward over a TensorRT-LLM checkpoint, rank by rank, as the engine would run it:
each tensor-parallel rank computes with only its own rank{r}.safetensors; column-parallel
outputs are concatenated, row-parallel partial sums are added (then the full bias once); pipeline
stages run one after the other. Nothing is merged back into full matrices, so a layout mistake
in one rank's file shows up in the logits."""

from __future__ import annotations

from pathlib import Path

import torch

from ..formats.hf import read_json
from ..formats.trtllm import spec_from_config
from ..io import safetensors as st
from ..io.files import FileSet
from . import kernels as K


def trtllm_logits(path: Path, input_ids: torch.Tensor) -> torch.Tensor:
    cfg = read_json(Path(path) / "config.json")
    spec, layout = spec_from_config(cfg, str(Path(path) / "config.json"))
    tp, pp = layout["tp"], layout["pp"]
    files = FileSet()
    try:
        ranks = [st.read_index(files.open(Path(path) / f"rank{r}.safetensors"))[0] for r in range(tp * pp)]

        def get(rank: int, name: str) -> torch.Tensor | None:
            t = ranks[rank].get(name)
            return None if t is None else t.materialize().float()

        return _forward(spec, tp, pp, layout["parallel_embedding"], get, input_ids)
    finally:
        files.close()


def _embed(table_of_rank, tp: int, parallel: bool, ids: torch.Tensor) -> torch.Tensor:
    if not parallel:
        return table_of_rank(0)[ids]
    out = 0
    for r in range(tp):  # each rank looks up its own row range, zeros elsewhere, then all-reduce
        table = table_of_rank(r)
        lo = r * table.shape[0]
        local = ids - lo
        hit = (local >= 0) & (local < table.shape[0])
        out = out + table[local.clamp(0, table.shape[0] - 1)] * hit[..., None]
    return out


def _forward(spec, tp, pp, parallel, get, input_ids):
    positions = torch.arange(input_ids.shape[1])
    x = _embed(lambda r: get(r, "transformer.vocab_embedding.weight"), tp, parallel, input_ids)
    if spec.position_embedding == "learned":
        x = x + _embed(lambda r: get(r, "transformer.position_embedding.weight"), tp, parallel, positions)[None]
    cos, sin = K.rope(spec, positions) if spec.position_embedding == "rope" else (None, None)
    heads_r = spec.num_heads // tp
    kv_r = max(1, spec.num_kv_heads // tp)
    hd = spec.head_dim
    per_stage = spec.num_layers // pp
    for stage in range(pp):
        ranks = [stage * tp + r for r in range(tp)]
        for layer in range(per_stage):
            p = f"transformer.layers.{layer}."
            first = ranks[0]
            h = K.norm(spec, x, get(first, p + "input_layernorm.weight"), get(first, p + "input_layernorm.bias"))
            attn = 0
            for r in ranks:
                qkv = K.linear(h, get(r, p + "attention.qkv.weight"), get(r, p + "attention.qkv.bias"))
                q, k, v = qkv.split([heads_r * hd, kv_r * hd, kv_r * hd], dim=-1)
                q, k, v = K.heads(q, heads_r, hd), K.heads(k, kv_r, hd), K.heads(v, kv_r, hd)
                if cos is not None:
                    q, k = K.apply_rope(q, cos, sin, spec.rope_interleaved), K.apply_rope(k, cos, sin, spec.rope_interleaved)
                ctx = K.attention(q, k, v, window=spec.attention.window_of(stage * per_stage + layer),
                                  scale=spec.attention.scale, softcap=spec.attention.softcap)
                attn = attn + K.linear(ctx, get(r, p + "attention.dense.weight"))
            bias = get(first, p + "attention.dense.bias")
            x = x + (attn if bias is None else attn + bias)
            h = K.norm(spec, x, get(first, p + "post_layernorm.weight"), get(first, p + "post_layernorm.bias"))
            mlp = 0
            for r in ranks:
                fc = K.activation(spec, K.linear(h, get(r, p + "mlp.fc.weight"), get(r, p + "mlp.fc.bias")))
                if spec.gated_mlp:
                    fc = fc * K.linear(h, get(r, p + "mlp.gate.weight"), get(r, p + "mlp.gate.bias"))
                mlp = mlp + K.linear(fc, get(r, p + "mlp.proj.weight"))
            bias = get(first, p + "mlp.proj.bias")
            x = x + (mlp if bias is None else mlp + bias)
    last = [(pp - 1) * tp + r for r in range(tp)]
    x = K.norm(spec, x, get(last[0], "transformer.ln_f.weight"), get(last[0], "transformer.ln_f.bias"))
    logits = torch.cat([K.linear(x, get(r, "lm_head.weight")) for r in last], dim=-1)
    return logits[..., : spec.vocab_size]
