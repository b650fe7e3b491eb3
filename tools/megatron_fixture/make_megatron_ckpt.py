#!/usr/bin/env python3
"""Build tiny *real* megatron-core GPTModel checkpoints + reference logits on CPU.

Runs megatron-core itself (local, non-Transformer-Engine layer spec) on a CPU-only torch with
torch.distributed on the gloo backend, so that the files written below are exactly what
megatron-core produces (key names, TP sharding, QKV/GQA interleaving, SwiGLU fc1 layout,
vocab padding), not something re-implemented by hand.

Usage (see README.md for the full recipe):

  # TP=1: random init (fixed seed) + deterministic perturbation of norms/biases
  python make_megatron_ckpt.py --config llama --tp 1 --out ../out/llama/tp1

  # TP=2: same weights, re-sharded by megatron-core's own dist_checkpointing loader
  torchrun --nproc_per_node 2 make_megatron_ckpt.py --config llama --tp 2 \
      --out ../out/llama/tp2 --init-from ../out/llama/tp1/torch_dist/iter_0000001 \
      --compare-logits ../out/llama/tp1/ref_logits.pt

Other options: --pp N (pipeline parallel, needs --init-from, no forward), --dtype bf16 (Megatron-LM
--bf16 style Float16Module; needs --init-from).

Outputs under --out:
  legacy/latest_checkpointed_iteration.txt                 ("1")
  legacy/iter_0000001/mp_rank_TT[_PPP]/model_optim_rng.pt   ({'args','checkpoint_version','iteration',
                                                              'model','rng_state',...}) one per rank
  torch_dist/latest_checkpointed_iteration.txt
  torch_dist/iter_0000001/{.metadata,__*_*.distcp,common.pt,metadata.json}
  config.json              model hyper-parameters (megatron names + derived values)
  ref_logits.pt            {'input_ids','position_ids','attention_mask','logits',...} (PP=1 only)
  keys_mp_rank_*.json      legacy state-dict key -> [shape, dtype], one file per rank
  dist_keys.json           torch_dist storage metadata: key -> global shape, dtype, chunks
"""

import argparse
import json
import math
import os
import random
import re
import socket
import sys
import warnings
from argparse import Namespace

warnings.filterwarnings("ignore", message=".*Apex is not installed.*")
warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

ITERATION = 1
MAKE_VOCAB_SIZE_DIVISIBLE_BY = 128  # Megatron-LM default

# ---------------------------------------------------------------------------------------------
# Model configurations
# ---------------------------------------------------------------------------------------------
CONFIGS = {
    # Llama-like: RMSNorm, SwiGLU, RoPE (non-default base), GQA 8q/2kv, no bias, untied output.
    "llama": dict(
        num_layers=3,
        hidden_size=128,
        num_attention_heads=8,
        num_query_groups=2,
        kv_channels=16,
        ffn_hidden_size=352,
        vocab_size=1000,
        max_position_embeddings=64,
        normalization="RMSNorm",
        layernorm_epsilon=1e-5,
        activation="swiglu",  # gated_linear_unit=True + silu
        position_embedding_type="rope",
        rotary_base=500000,
        rotary_percent=1.0,
        rotary_interleaved=False,
        add_bias_linear=False,
        add_qkv_bias=False,
        share_embeddings_and_output_weights=False,
    ),
    # llama with 4 layers, so that pipeline parallelism (pp=2) splits it evenly.
    "llama4": dict(
        num_layers=4,
        hidden_size=128,
        num_attention_heads=8,
        num_query_groups=2,
        kv_channels=16,
        ffn_hidden_size=352,
        vocab_size=1000,
        max_position_embeddings=64,
        normalization="RMSNorm",
        layernorm_epsilon=1e-5,
        activation="swiglu",
        position_embedding_type="rope",
        rotary_base=500000,
        rotary_percent=1.0,
        rotary_interleaved=False,
        add_bias_linear=False,
        add_qkv_bias=False,
        share_embeddings_and_output_weights=False,
    ),
    # GPT-like: LayerNorm, GELU (exact erf), learned absolute positions, biases, tied embeddings.
    "gpt": dict(
        num_layers=2,
        hidden_size=128,
        num_attention_heads=4,
        num_query_groups=4,  # plain MHA
        kv_channels=32,
        ffn_hidden_size=512,
        vocab_size=1000,
        max_position_embeddings=64,
        normalization="LayerNorm",
        layernorm_epsilon=1e-5,
        activation="gelu",
        position_embedding_type="learned_absolute",
        rotary_base=10000,  # unused for learned_absolute, recorded for completeness
        rotary_percent=1.0,
        rotary_interleaved=False,
        add_bias_linear=True,
        add_qkv_bias=True,  # implied by add_bias_linear in megatron-core
        share_embeddings_and_output_weights=True,
    ),
}

INIT_METHOD_STD = 0.1  # larger than Megatron's 0.02 so attention patterns are far from uniform
BATCH, SEQ = 2, 16


def log(*a):
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    print(f"[rank{rank}]", *a, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def padded_vocab(orig, tp):
    """Megatron-LM megatron/training/tokenizer/tokenizer.py::_vocab_size_with_padding."""
    multiple = MAKE_VOCAB_SIZE_DIVISIBLE_BY * tp
    return int(math.ceil(orig / multiple) * multiple)


def init_distributed(tp, pp=1):
    if "RANK" not in os.environ:  # plain `python`: single process group of size 1
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        os.environ["RANK"] = "0"
        os.environ["WORLD_SIZE"] = "1"
        os.environ["LOCAL_RANK"] = "0"
    torch.distributed.init_process_group(backend="gloo")
    world = torch.distributed.get_world_size()
    assert world == tp * pp, f"no data parallelism: world_size ({world}) must equal tp*pp ({tp * pp})"
    from megatron.core import parallel_state

    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp
    )


def build_transformer_config(c, tp, dtype="fp32", pp=1):
    from megatron.core.transformer.transformer_config import TransformerConfig

    if c["activation"] == "swiglu":
        act, glu = F.silu, True
    elif c["activation"] == "gelu":
        act, glu = F.gelu, False
    else:
        raise ValueError(c["activation"])
    cfg = TransformerConfig(
        num_layers=c["num_layers"],
        hidden_size=c["hidden_size"],
        num_attention_heads=c["num_attention_heads"],
        num_query_groups=c["num_query_groups"],
        kv_channels=c["kv_channels"],
        ffn_hidden_size=c["ffn_hidden_size"],
        normalization=c["normalization"],
        layernorm_epsilon=c["layernorm_epsilon"],
        activation_func=act,
        gated_linear_unit=glu,
        add_bias_linear=c["add_bias_linear"],
        add_qkv_bias=c["add_qkv_bias"],
        rotary_interleaved=c["rotary_interleaved"],
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=INIT_METHOD_STD,
        params_dtype=torch.bfloat16 if dtype == "bf16" else torch.float32,
        bf16=dtype == "bf16",
        fp16=False,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        pipeline_dtype=(torch.bfloat16 if dtype == "bf16" else torch.float32) if pp > 1 else None,
        sequence_parallel=False,
        use_cpu_initialization=True,
        perform_initialization=True,
        # --- CPU / no-TE / no-Apex settings (all are megatron-core defaults in 0.16, but set
        # explicitly because Megatron-LM's argparse defaults turn several of them on) ---
        attention_backend=_attn_backend_local(),
        apply_rope_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        cross_entropy_loss_fusion=False,
        apply_query_key_layer_scaling=False,
        attention_softmax_in_fp32=True,
    )
    return cfg


def _attn_backend_local():
    from megatron.core.transformer.enums import AttnBackend

    return AttnBackend.local


def build_model(c, tp, dtype="fp32", pp=1):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    import cpu_shims
    from megatron.core import parallel_state

    cfg = build_transformer_config(c, tp, dtype, pp)
    spec = get_gpt_layer_local_spec(normalization=c["normalization"])
    with cpu_shims.cpu_tensor_cuda_noop():  # only matters for pp > 1 with tied embeddings
        model = GPTModel(
        config=cfg,
        transformer_layer_spec=spec,
        vocab_size=padded_vocab(c["vocab_size"], tp),
        max_sequence_length=c["max_position_embeddings"],
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=c["share_embeddings_and_output_weights"],
        position_embedding_type=c["position_embedding_type"],
        rotary_percent=c["rotary_percent"],
        rotary_base=c["rotary_base"],
    )
    return model, cfg


@torch.no_grad()
def perturb_(model, seed):
    """Make norm weights, norm biases and linear biases non-trivial (Megatron initialises them to
    1 / 0 / 0, which would let a converter that drops or swaps them pass unnoticed). Only used for
    TP=1, where every parameter is the full (unsharded) tensor."""
    g = torch.Generator().manual_seed(seed + 1)
    changed = []
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if "norm" in name and name.endswith("weight"):
            p.copy_(torch.empty_like(p).uniform_(0.5, 1.5, generator=g))
            changed.append(name)
        elif name.endswith("bias"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            changed.append(name)
    return changed


def make_args_namespace(c, tp, cfg, dtype="fp32", pp=1):
    """A Megatron-LM-style `args` Namespace (names as in megatron/training/arguments.py)."""
    return Namespace(
        num_layers=c["num_layers"],
        hidden_size=c["hidden_size"],
        ffn_hidden_size=c["ffn_hidden_size"],
        num_attention_heads=c["num_attention_heads"],
        kv_channels=c["kv_channels"],
        group_query_attention=c["num_query_groups"] != c["num_attention_heads"],
        num_query_groups=c["num_query_groups"],
        max_position_embeddings=c["max_position_embeddings"],
        position_embedding_type=c["position_embedding_type"],
        use_rotary_position_embeddings=c["position_embedding_type"] == "rope",
        add_position_embedding=c["position_embedding_type"] == "learned_absolute",
        rotary_base=c["rotary_base"],
        rotary_percent=c["rotary_percent"],
        rotary_interleaved=c["rotary_interleaved"],
        rotary_seq_len_interpolation_factor=None,
        use_rope_scaling=False,
        normalization=c["normalization"],
        norm_epsilon=c["layernorm_epsilon"],
        apply_layernorm_1p=False,
        swiglu=c["activation"] == "swiglu",
        openai_gelu=False,
        squared_relu=False,
        untie_embeddings_and_output_weights=not c["share_embeddings_and_output_weights"],
        add_bias_linear=c["add_bias_linear"],
        add_qkv_bias=c["add_qkv_bias"],
        qk_layernorm=False,
        apply_residual_connection_post_layernorm=False,
        attention_softmax_in_fp32=True,
        apply_query_key_layer_scaling=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=INIT_METHOD_STD,
        vocab_size=c["vocab_size"],
        padded_vocab_size=padded_vocab(c["vocab_size"], tp),
        make_vocab_size_divisible_by=MAKE_VOCAB_SIZE_DIVISIBLE_BY,
        tokenizer_type="NullTokenizer",
        seq_length=SEQ,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=None,
        expert_model_parallel_size=1,
        context_parallel_size=1,
        sequence_parallel=False,
        num_experts=None,
        params_dtype=torch.bfloat16 if dtype == "bf16" else torch.float32,
        fp16=False,
        bf16=dtype == "bf16",
        use_mcore_models=True,
        use_legacy_models=False,
        transformer_impl="local",
        spec=None,
        iteration=ITERATION,
        consumed_train_samples=0,
        consumed_valid_samples=0,
        train_iters=ITERATION,
        data_parallel_size=1,
        world_size=tp * pp,
        rank=0,
        seed=1234,
    )


def fixed_batch(vocab_size, seed=4321):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (BATCH, SEQ), generator=g, dtype=torch.long)
    position_ids = torch.arange(SEQ, dtype=torch.long).unsqueeze(0).expand(BATCH, SEQ).clone()
    # Megatron-LM get_ltor_masks_and_position_ids: bool [1,1,s,s], True == masked out.
    attention_mask = torch.triu(torch.ones(SEQ, SEQ, dtype=torch.bool), diagonal=1)[None, None]
    return input_ids, position_ids, attention_mask


def tensor_info(sd):
    out = {}
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            out[k] = [list(v.shape), str(v.dtype).replace("torch.", "")]
        elif v is None:
            out[k] = [None, "None"]
        else:  # e.g. _extra_state stored as BytesIO / None
            out[k] = [None, type(v).__name__]
    return out


def dcp_storage_info(dist_dir):
    """What is actually stored in a torch_dist checkpoint (torch.distributed.checkpoint metadata):
    key -> global size + the chunks (offsets/sizes) it was written in."""
    from torch.distributed.checkpoint import FileSystemReader

    md = FileSystemReader(dist_dir).read_metadata()
    info = {}
    for k, v in md.state_dict_metadata.items():
        if hasattr(v, "size"):
            info[k] = dict(
                kind="tensor",
                global_shape=list(v.size),
                dtype=str(v.properties.dtype).replace("torch.", ""),
                chunks=[dict(offsets=list(c.offsets), sizes=list(c.sizes)) for c in v.chunks],
            )
        else:
            info[k] = dict(kind="bytes")
    return info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=sorted(CONFIGS), required=True)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument(
        "--pp",
        type=int,
        default=1,
        help="pipeline parallel size (needs --init-from; no forward/logits are produced for pp>1)",
    )
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument(
        "--init-from",
        default=None,
        help="torch_dist iter dir to load weights from (required for --tp > 1, so that the TP=N "
        "model holds exactly the TP=1 weights, re-sharded by megatron-core itself)",
    )
    ap.add_argument("--compare-logits", default=None, help="ref_logits.pt to compare against")
    ap.add_argument("--no-dist-save", action="store_true")
    ap.add_argument(
        "--dtype",
        choices=["fp32", "bf16"],
        default="fp32",
        help="bf16: TransformerConfig(bf16=True, params_dtype=bfloat16), weights loaded (cast) "
        "from --init-from; forward runs in bf16 like Megatron-LM --bf16",
    )
    ap.add_argument("--compare-tol", type=float, default=1e-4)
    a = ap.parse_args()

    c = CONFIGS[a.config]
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // max(1, int(os.environ.get("WORLD_SIZE", "1")))))

    init_distributed(a.tp, a.pp)
    rank = torch.distributed.get_rank()

    import megatron.core
    from megatron.core import dist_checkpointing, parallel_state, tensor_parallel

    import cpu_shims

    shims = cpu_shims.apply()
    log("megatron-core", megatron.core.__version__, "torch", torch.__version__, "shims:", shims)

    # inference_rng_tracker=True: the training tracker calls torch.cuda.get_rng_state().
    tensor_parallel.model_parallel_cuda_manual_seed(a.seed, inference_rng_tracker=True)

    # Same global torch seed on every rank -> with use_cpu_initialization=True megatron-core
    # initialises the *full* master weight on CPU and each rank keeps its slice.
    torch.manual_seed(a.seed)
    # Always build + fill the model in fp32 first; --dtype bf16 re-builds it in bf16 below.
    model, cfg = build_model(c, a.tp, "fp32", a.pp)
    model.eval()

    perturbed = []
    if a.dtype == "bf16" and a.init_from is None:
        raise SystemExit("--dtype bf16 needs --init-from <fp32 torch_dist iter dir>")
    if a.tp == 1 and a.pp == 1 and a.init_from is None:
        perturbed = perturb_(model, a.seed)
        log(f"perturbed {len(perturbed)} norm/bias tensors")
    elif a.init_from is not None:
        ssd = model.sharded_state_dict()
        with cpu_shims.cpu_dist_checkpointing():
            loaded = dist_checkpointing.load(
                {"model": ssd}, a.init_from, strict="assume_ok_unexpected"
            )
        missing, unexpected = model.load_state_dict(loaded["model"], strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        assert not missing, f"missing keys after dist load: {missing}"
        log(f"loaded weights from {a.init_from} (unexpected={list(unexpected)})")
    else:
        raise SystemExit("--tp/--pp > 1 needs --init-from <tp1 torch_dist iter dir>")

    os.makedirs(a.out, exist_ok=True)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    # Megatron-LM get_checkpoint_name(): mp_rank_TT without PP, mp_rank_TT_PPP with PP
    mp_dir = f"mp_rank_{tp_rank:02d}" if a.pp == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"
    args_ns = make_args_namespace(c, a.tp, cfg, a.dtype, a.pp)

    # ------------------------------------------------------------------ reference forward
    input_ids, position_ids, attention_mask = fixed_batch(c["vocab_size"])

    def run_forward(m):
        with torch.no_grad():
            # parallel_output=True: each TP rank returns its vocab shard [b, s, padded_vocab/tp].
            # (runtime_gather_output=True would call megatron's _gather_along_last_dim, which
            # allocates its output on torch.cuda.current_device(); we do the same gather here.)
            local = m(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask)
        local = local.float().contiguous()
        if a.tp == 1:
            return local
        parts = [torch.empty_like(local) for _ in range(a.tp)]
        torch.distributed.all_gather(
            parts, local, group=parallel_state.get_tensor_model_parallel_group()
        )
        return torch.cat(parts, dim=-1)

    logits_fp32_math = None
    if a.dtype == "bf16":
        # Reference for a *tight* comparison of bf16 checkpoints: round every weight to bf16,
        # then run the (still fp32) megatron model once -> fp32 math on exactly the bf16 weights.
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).float())
        if a.pp == 1:
            logits_fp32_math = run_forward(model)

    fwd_model = model
    if a.dtype == "bf16":
        # As Megatron-LM does for --bf16: wrap in Float16Module, which casts *all* parameters to
        # bf16 (module.bfloat16(); note torch.nn.RMSNorm/LayerNorm created by the local spec are
        # fp32 until this cast) and upcasts the last-stage output to fp32. Checkpoints are saved
        # from the unwrapped module (megatron.training.utils.unwrap_model), so keys carry no
        # 'module.' prefix.
        from megatron.core.transformer.module import Float16Module

        model16, cfg = build_model(c, a.tp, "bf16", a.pp)  # TransformerConfig(bf16=True, params_dtype=bf16)
        missing, unexpected = model16.load_state_dict(model.state_dict(), strict=True)
        del model
        fwd_model = Float16Module(cfg, model16)
        fwd_model.eval()
        model = fwd_model.module
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}

    if a.pp > 1:
        log("pp > 1: no forward / ref_logits (needs p2p on CUDA); weights == TP=1 weights")
    else:
        logits = run_forward(fwd_model)
        log("logits", tuple(logits.shape), "mean", float(logits.mean()), "std", float(logits.std()))
        if rank == 0:
            torch.save(
                dict(
                    input_ids=input_ids,
                    position_ids=position_ids,
                    attention_mask=attention_mask,
                    logits=logits,  # [b, s, padded_vocab] (columns >= vocab_size are padding)
                    # bf16 runs only: megatron fp32 forward of the bf16-rounded weights (else None)
                    logits_fp32_math=logits_fp32_math,
                    vocab_size=c["vocab_size"],
                    padded_vocab_size=padded_vocab(c["vocab_size"], a.tp),
                    config=a.config,
                    tensor_model_parallel_size=a.tp,
                    dtype=a.dtype,
                    megatron_core_version=megatron.core.__version__,
                    torch_version=torch.__version__,
                    note="logits from megatron-core GPTModel.forward (eval, no dropout; fp32, or bf16 "
                    "via Float16Module for --dtype bf16, upcast to fp32) "
                    "(vocab shards of all TP ranks concatenated in rank order); attention_mask True == masked",
                ),
                os.path.join(a.out, "ref_logits.pt"),
            )
        if a.compare_logits:
            ref = torch.load(a.compare_logits, weights_only=False)
            assert torch.equal(ref["input_ids"], input_ids)
            diff = (ref["logits"] - logits).abs().max().item()
            log(f"max |logits - ref| = {diff:.3e}  (ref: {a.compare_logits})")
            assert diff < a.compare_tol, diff
            if ref.get("logits_fp32_math") is not None and logits_fp32_math is not None:
                d2 = (ref["logits_fp32_math"] - logits_fp32_math).abs().max().item()
                log(f"max |logits_fp32_math - ref.logits_fp32_math| = {d2:.3e}")
                assert d2 < 1e-4, d2

    # ------------------------------------------------------------------ legacy torch.save
    legacy_root = os.path.join(a.out, "legacy")
    ckpt_dir = os.path.join(legacy_root, f"iter_{ITERATION:07d}", mp_dir)
    os.makedirs(ckpt_dir, exist_ok=True)
    sd = model.state_dict_for_save_checkpoint()
    state = {
        "args": args_ns,
        "checkpoint_version": 3.0,
        "iteration": ITERATION,
        "model": sd,
        "rng_state": [
            {
                "random_rng_state": random.getstate(),
                "np_rng_state": np.random.get_state(),
                "torch_rng_state": torch.get_rng_state(),
                # no 'cuda_rng_state' / 'rng_tracker_states': CPU-only run
            }
        ],
        "num_floating_point_operations_so_far": 0,
    }
    torch.save(state, os.path.join(ckpt_dir, "model_optim_rng.pt"))
    with open(os.path.join(a.out, f"keys_{mp_dir}.json"), "w") as f:
        json.dump(tensor_info(sd), f, indent=1)
    torch.distributed.barrier()
    if rank == 0:
        with open(os.path.join(legacy_root, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write(str(ITERATION))
    log("legacy checkpoint ->", ckpt_dir)

    # ------------------------------------------------------------------ torch_dist
    if not a.no_dist_save:
        dist_root = os.path.join(a.out, "torch_dist")
        dist_dir = os.path.join(dist_root, f"iter_{ITERATION:07d}")
        if rank == 0:
            os.makedirs(dist_dir, exist_ok=True)
            assert not os.listdir(dist_dir), f"{dist_dir} must be empty"
        torch.distributed.barrier()
        ssd = model.sharded_state_dict()
        full = {
            "model": ssd,
            "args": args_ns,
            "checkpoint_version": 3.0,
            "iteration": ITERATION,
            "num_floating_point_operations_so_far": 0,
        }
        with cpu_shims.cpu_dist_checkpointing():
            dist_checkpointing.save(full, dist_dir)
        torch.distributed.barrier()
        if rank == 0:
            with open(os.path.join(dist_root, "latest_checkpointed_iteration.txt"), "w") as f:
                f.write(str(ITERATION))
            with open(os.path.join(a.out, "dist_keys.json"), "w") as f:
                json.dump(dcp_storage_info(dist_dir), f, indent=1)
        log("torch_dist checkpoint ->", dist_dir)

    # ------------------------------------------------------------------ config.json
    if rank == 0:
        conf = dict(c)
        conf.update(
            config_name=a.config,
            padded_vocab_size=padded_vocab(c["vocab_size"], a.tp),
            make_vocab_size_divisible_by=MAKE_VOCAB_SIZE_DIVISIBLE_BY,
            head_dim=c["kv_channels"],
            gated_linear_unit=c["activation"] == "swiglu",
            activation_func="silu" if c["activation"] == "swiglu" else "gelu (exact, erf)",
            init_method_std=INIT_METHOD_STD,
            seed=a.seed,
            tensor_model_parallel_size=a.tp,
            pipeline_model_parallel_size=a.pp,
            dtype=a.dtype,
            params_dtype="bfloat16" if a.dtype == "bf16" else "float32",
            layer_spec="get_gpt_layer_local_spec(normalization=%r)" % c["normalization"],
            perturbed_after_init=perturbed if perturbed else "loaded from --init-from",
            init_from=os.path.abspath(a.init_from) if a.init_from else None,
            megatron_core_version=megatron.core.__version__,
            torch_version=torch.__version__,
            cpu_shims=shims,
            transformer_config={
                k: (
                    v
                    if isinstance(v, (int, float, str, bool, type(None)))
                    else getattr(v, "__name__", None) or re.sub(r" at 0x[0-9a-f]+", "", repr(v))
                )
                for k, v in sorted(vars(cfg).items())
                if not k.startswith("_")
            },
        )
        with open(os.path.join(a.out, "config.json"), "w") as f:
            json.dump(conf, f, indent=1, default=str)
    torch.distributed.barrier()
    log("done")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
