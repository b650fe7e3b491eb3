"""`ferry demo`: a tiny random Llama made locally, converted to TensorRT-LLM tp=2, verified."""

from __future__ import annotations

from pathlib import Path

import torch

from . import api
from .synthetic import llama_spec, write_checkpoint
from .verify.run import logits_of, token_ids


def run_demo(workdir: str | Path) -> int:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    src, out = workdir / "llama-hf", workdir / "llama-trtllm-tp2"
    spec = llama_spec(layers=4, hidden=128, heads=8, kv_heads=2, ffn=352, vocab=1000, rope_theta=500000.0)
    write_checkpoint(spec, src, to="hf", seed=0, std=0.05)
    print(f"1. made a random Llama at {src}: 4 layers, hidden 128, 8 heads / 2 KV heads, vocab 1000")
    plan = api.convert(src, out, to="trtllm", tp=2, overwrite=True)
    print(f"2. ferry convert {src} {out} --to trtllm --tp 2  ->  {len(plan.tensors)} tensors in "
          f"{', '.join(f.path for f in plan.files)}")
    report = api.verify(src, out)
    print(f"3. ferry verify {src} {out}  ->  {report.line()}")
    ok = report.passed
    try:
        import transformers
        from transformers import AutoModelForCausalLM
    except ImportError:
        print("4. (install transformers to compare with its logits too)")
        return 0 if ok else 1
    transformers.utils.logging.disable_progress_bar()
    ids = token_ids(spec.vocab_size)
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()(ids).logits
        with api.read(out) as model:
            got = logits_of(model, ids)
    diff = (got - expected).abs().max().item()
    ok = ok and diff <= 1e-4
    print(f"4. transformers' LlamaForCausalLM on {src} vs the TensorRT-LLM ranks computed one by one: "
          f"max abs logit diff {diff:.2e} ({'OK' if diff <= 1e-4 else 'MISMATCH'})")
    return 0 if ok else 1
