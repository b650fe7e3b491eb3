import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(4, torch.get_num_threads()))

import helpers  # noqa: E402


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Tiny random HF checkpoints, made once per session."""
    root = tmp_path_factory.mktemp("hf")
    return {
        "gqa": helpers.make_llama(root / "gqa", heads=8, kv_heads=2),
        "mha": helpers.make_llama(root / "mha", heads=8, kv_heads=8, seed=1),
        "tied": helpers.make_llama(root / "tied", heads=4, kv_heads=1, tied=True, bias=False, seed=2),
        "gpt2": helpers.make_gpt2(root / "gpt2"),
    }


@pytest.fixture
def gqa(models):
    return models["gqa"]
