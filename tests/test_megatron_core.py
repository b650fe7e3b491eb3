"""What ferry writes for Megatron is read back by real megatron-core (CPU, gloo) and reproduces
the source model's logits. Needs megatron-core (the `megatron` test extra); CI installs it."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ferry

pytest.importorskip("megatron.core", reason="megatron-core is not installed (pip install -e '.[test,megatron]')")

DATA = Path(__file__).parent / "data" / "megatron"
HARNESS = Path(__file__).parent / "megatron_harness.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def harness(*args, procs: int = 1):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, str(HARNESS), *map(str, args)]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", str(free_port()), *cmd[1:]]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module", params=[("llama4", "llama4/tp1"), ("gpt", "gpt/tp1")], ids=["llama", "gpt"])
def hf_model(request, tmp_path_factory):
    """An HF model made from a megatron-core fixture, with transformers' logits as the expectation."""
    config, variant = request.param
    root = tmp_path_factory.mktemp(config)
    ferry.convert(DATA / variant / "legacy", root / "hf", to="hf")
    from helpers import hf_logits

    ref = torch.load(DATA / variant / "ref_logits.pt", weights_only=False)
    torch.save({"input_ids": ref["input_ids"]}, root / "ids.pt")
    return config, root, hf_logits(root / "hf", ref["input_ids"])


def megatron_logits(ids: Path, config: str, dist_dir: Path, out: Path) -> torch.Tensor:
    harness("forward", "--config", config, "--ckpt", dist_dir, "--ids", ids, "--out", out)
    return torch.load(out)["logits"][..., :1000]


def test_hf_to_megatron_legacy_tp2_pp2_loads_strictly_in_megatron_core(hf_model, tmp_path):
    config, root, expected = hf_model
    ferry.convert(root / "hf", tmp_path / "legacy", to="megatron", tp=2, pp=2)
    # each of the 4 ranks: model.load_state_dict(its file, strict=True); then megatron's own torch_dist save
    harness("load-legacy", "--config", config, "--tp", 2, "--pp", 2, "--ckpt", tmp_path / "legacy", "--resave", tmp_path / "resaved", procs=4)
    got = megatron_logits(root / "ids.pt", config, tmp_path / "resaved", tmp_path / "logits.pt")
    assert (got - expected).abs().max().item() <= 1e-4


def test_hf_to_megatron_dist_tp2_pp2_loads_in_megatron_core(hf_model, tmp_path):
    config, root, expected = hf_model
    ferry.convert(root / "hf", tmp_path / "dist", to="megatron-dist", tp=2, pp=2)
    got = megatron_logits(root / "ids.pt", config, tmp_path / "dist" / "release", tmp_path / "logits.pt")
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("config", ["llama", "gpt"])
def test_export_from_a_live_megatron_model(tmp_path, config):
    """model.state_dict() and model.config of a real GPTModel, straight into ferry.export."""
    harness("export", "--config", config, "--ckpt", DATA / config / "tp1/torch_dist/iter_0000001", "--tp", 2, "--out", tmp_path / "trt")
    from helpers import ferry_logits

    ref = torch.load(DATA / config / "tp1/ref_logits.pt", weights_only=False)
    assert (ferry_logits(tmp_path / "trt", ref["input_ids"]) - ref["logits"][..., :1000]).abs().max().item() <= 1e-4
