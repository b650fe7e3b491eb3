"""Tiny real models (made locally with transformers) and small utilities shared by the tests."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import torch

from ferry.cli import main as ferry_main

INPUT_IDS_SEED = 1234


def randomize_(model, seed: int = 0) -> None:
    """transformers initialises norms to 1 and biases to 0; make them random so a dropped or
    swapped norm or bias changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name or "ln_" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def input_ids(vocab: int, batch: int = 2, seq: int = 12) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(INPUT_IDS_SEED))


def save_hf(model, path: Path, **kw) -> Path:
    model.save_pretrained(path, **kw)
    return path


def make_llama(path: Path, *, heads=8, kv_heads=2, layers=4, hidden=64, ffn=96, vocab=101, bias=True,
               tied=False, arch="llama", seed=0, **extra) -> Path:
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
    )

    torch.manual_seed(seed)
    common = dict(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=kv_heads, vocab_size=vocab, max_position_embeddings=128,
                  tie_word_embeddings=tied, initializer_range=0.1, **extra)
    if arch == "mistral":
        model = MistralForCausalLM(MistralConfig(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(attention_bias=bias, mlp_bias=bias, rope_theta=50000.0, **common))
    randomize_(model, seed)
    return save_hf(model.eval(), path)


def make_gpt2(path: Path, *, layers=3, hidden=64, heads=4, vocab=97, positions=64, act="gelu_new", seed=0) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, vocab_size=vocab, n_positions=positions,
                     activation_function=act, initializer_range=0.1, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    randomize_(model, seed)
    return save_hf(model.eval(), path)


def hf_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits.float()


def ferry_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    import ferry
    from ferry.verify.run import logits_of

    with ferry.read(path) as model, torch.no_grad():
        return logits_of(model, ids)


def safetensors_dir(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every *.safetensors file in a directory, read by the safetensors library."""
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        for name, t in load_file(f).items():
            assert name not in out, f"{name} twice"
            out[name] = t
    return out


def safetensors_file(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def run(*args: str) -> tuple[int, str, str]:
    """ferry's CLI in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = ferry_main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def read_config(path: Path) -> dict:
    return json.loads((Path(path) / "config.json").read_text())


def leftovers(parent: Path) -> list[str]:
    """Temporary directories a failed conversion might have left behind."""
    return sorted(p.name for p in Path(parent).iterdir() if ".ferry-" in p.name)


class Exploit:
    """A pickle whose reduce calls os.system: what full pickle (and torch.load(weights_only=False))
    would run. ferry must refuse it before anything runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


TINY = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=12, vocab_size=67, max_position_embeddings=16, initializer_range=0.2)


def make_tiny(path: Path, arch: str = "llama", seed: int = 0, **config) -> Path:
    """A 2-layer model (hidden 32, 4 heads of 12 != 32/4, 2 kv heads, vocab 67, 16 trained
    positions) of transformers' class for `arch`, config fields overridden by `config`."""
    import transformers

    torch.manual_seed(seed)
    if arch == "gpt2":
        cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=67, n_positions=32,
                                      initializer_range=0.2, bos_token_id=1, eos_token_id=2, **config)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        conf_cls, model_cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                               "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[arch]
        model = model_cls(conf_cls(**{**TINY, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3, **config}))
    randomize_(model, seed)
    return save_hf(model.eval(), path)
