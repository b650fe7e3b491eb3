"""Runs real megatron-core (CPU, gloo) on checkpoints ferry wrote. Reuses the fixture generator's
model construction (tools/megatron_fixture), so the model is built exactly as the fixtures were.

  torchrun --nproc_per_node TP*PP megatron_harness.py load-legacy --config llama4 --tp 2 --pp 2 \
      --ckpt OUT --resave DIR     # strict load_state_dict of each rank's file, then Megatron's own torch_dist save
  python megatron_harness.py forward --config llama4 --ckpt DIST_ITER_DIR --ids ref.pt --out logits.pt
                                   # load a torch_dist iteration dir into a TP=1 model, run the forward
  python megatron_harness.py export --config llama --ckpt DIST_ITER_DIR --tp 2 --out TRT_DIR
                                   # ferry.export.write_trtllm on the live model's state_dict() and config
"""

import argparse
import os
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
TOOL = Path(__file__).resolve().parents[1] / "tools" / "megatron_fixture"
sys.path.insert(0, str(TOOL))

import make_megatron_ckpt as fx  # noqa: E402
import torch  # noqa: E402


def setup(config: str, tp: int, pp: int):
    fx.init_distributed(tp, pp)
    import cpu_shims
    from megatron.core import tensor_parallel

    cpu_shims.apply()
    tensor_parallel.model_parallel_cuda_manual_seed(1234, inference_rng_tracker=True)
    model, _ = fx.build_model(fx.CONFIGS[config], tp, "fp32", pp)
    return model.eval()


def iteration_dir(root: Path) -> Path:
    text = (root / "latest_checkpointed_iteration.txt").read_text().strip()
    return root / ("release" if text == "release" else f"iter_{int(text):07d}")


def load_legacy(a):
    import cpu_shims
    from megatron.core import dist_checkpointing, parallel_state

    model = setup(a.config, a.tp, a.pp)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    rank_dir = f"mp_rank_{tp_rank:02d}" if a.pp == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"
    state = torch.load(iteration_dir(Path(a.ckpt)) / rank_dir / "model_optim_rng.pt", weights_only=False)
    assert state["args"].tensor_model_parallel_size == a.tp and state["args"].pipeline_model_parallel_size == a.pp
    model.load_state_dict(state["model"], strict=True)  # every key and shape exactly as Megatron's own
    Path(a.resave).mkdir(parents=True, exist_ok=True)
    torch.distributed.barrier()
    with cpu_shims.cpu_dist_checkpointing():
        dist_checkpointing.save({"model": model.sharded_state_dict()}, a.resave)
    torch.distributed.barrier()
    print(f"[rank{torch.distributed.get_rank()}] loaded {rank_dir} strictly, re-saved", flush=True)


def forward(a):
    import cpu_shims
    from megatron.core import dist_checkpointing

    model = setup(a.config, 1, 1)
    with cpu_shims.cpu_dist_checkpointing():
        loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, a.ckpt)
    missing, unexpected = model.load_state_dict(loaded["model"], strict=False)
    assert not [k for k in missing if not k.endswith("_extra_state")], missing
    ids = torch.load(a.ids, weights_only=False)["input_ids"]
    positions = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    mask = torch.triu(torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool), diagonal=1)[None, None]
    with torch.no_grad():
        logits = model(input_ids=ids, position_ids=positions, attention_mask=mask)
    torch.save({"logits": logits.float()}, a.out)


def export(a):
    """A live megatron-core GPTModel (TP=1, fixture weights) exported with ferry.export."""
    import cpu_shims
    from megatron.core import dist_checkpointing

    from ferry.export import ExportConfig, write_trtllm

    model = setup(a.config, 1, 1)
    with cpu_shims.cpu_dist_checkpointing():
        loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, a.ckpt)
    model.load_state_dict(loaded["model"], strict=False)
    c = fx.CONFIGS[a.config]
    write_trtllm(a.out, model.state_dict(), model.config, ExportConfig(inference_tp_size=a.tp, inference_pp_size=a.pp, dtype="float32"),
                 vocab_size=c["vocab_size"], position_embedding_type=c["position_embedding_type"],
                 max_position_embeddings=c["max_position_embeddings"], rotary_base=c["rotary_base"],
                 share_embeddings_and_output_weights=model.share_embeddings_and_output_weights)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["load-legacy", "forward", "export"])
    p.add_argument("--config", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--resave")
    p.add_argument("--ids")
    p.add_argument("--out")
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    {"load-legacy": load_legacy, "forward": forward, "export": export}[a.mode](a)
    torch.distributed.destroy_process_group()
