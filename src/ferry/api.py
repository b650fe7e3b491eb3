"""The Python API; mirrors the CLI one for one: `convert`, `inspect`, `verify`."""

from __future__ import annotations

from pathlib import Path

from . import formats
from .dtypes import dtype_from_name
from .errors import FerryError
from .executor import DEFAULT_MAX_MEMORY, check_output, execute
from .formats.base import Model, ReadOptions, WriteOptions
from .formats.hf import parse_size
from .plan import Plan


def read(path: str | Path, *, vocab_size: int | None = None) -> Model:
    """Read a checkpoint (format detected) into the canonical model. Use as a context manager.

    Example:
        >>> with ferry.read("llama-hf") as model:
        ...     model.spec.num_layers
    """
    path = Path(path)
    fmt = formats.detect(path)
    return fmt.read(path, ReadOptions(vocab_size=vocab_size))


def convert(
    src: str | Path,
    out: str | Path,
    *,
    to: str,
    tp: int = 1,
    pp: int = 1,
    dtype=None,
    dry_run: bool = False,
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
    parallel_embedding: bool = False,
    vocab_size: int | None = None,
    progress: bool = False,
    threads: int = 4,
    max_memory: int = DEFAULT_MAX_MEMORY,
    megatron_layer_spec: str | None = None,
    make_vocab_size_divisible_by: int = 128,
) -> Plan:
    """Convert the checkpoint at `src` to format `to` in directory `out`.

    Args:
        src: checkpoint directory (format and model family are detected).
        out: output directory; it appears only when complete.
        to: "hf", "trtllm", "megatron" (legacy mp_rank_* files) or "megatron-dist" (torch_dist).
        tp, pp: tensor / pipeline parallel sizes of the output (sharded formats).
        dtype: output dtype ("float32", "float16", "bfloat16"); default: the source's.
        dry_run: plan only; nothing is read beyond headers and nothing is written.
        overwrite: replace `out` if it exists.
        max_shard_size: largest HF shard ("5GB", "500MB", "2GiB" or bytes).
        parallel_embedding: split the TensorRT-LLM vocab embedding over tp ranks.
        vocab_size: true vocabulary when the source does not record it.
        progress: show a progress bar (bytes).
        threads, max_memory: threads (output files written at once, tensors computed ahead) and
            the bytes of computed tensors they may hold at once (one larger tensor goes alone).
        megatron_layer_spec: Megatron legacy output key names, "local" or "te" (Transformer Engine).
        make_vocab_size_divisible_by: Megatron output vocabulary padding (times tp), as in Megatron-LM.

    Returns:
        The executed (or, with dry_run, the planned) `Plan`.

    Example:
        >>> ferry.convert("llama-hf", "llama-trt", to="trtllm", tp=2)
    """
    src, out = Path(src), Path(out)
    fmt = formats.get(to)
    if not dry_run:
        check_output(out, overwrite)
        if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
            raise FerryError(f"{out}: the output must not be the source directory or inside it")
    options = WriteOptions(
        tp=tp,
        pp=pp,
        dtype=None if dtype is None else dtype_from_name(dtype, "--dtype"),
        max_shard_size=parse_size(max_shard_size),
        parallel_embedding=parallel_embedding,
        megatron_spec=megatron_layer_spec,
        make_vocab_size_divisible_by=make_vocab_size_divisible_by,
    )
    with read(src, vocab_size=vocab_size) as model:
        plan = fmt.plan(model, options)
        plan.notes = [n.replace("{OUT}", str(out)) for n in model.notes + plan.notes]
        if not dry_run:
            execute(plan, out, overwrite=overwrite, progress=progress, threads=threads, max_memory=max_memory)
    return plan


def inspect(path: str | Path) -> dict:
    """Format, family, facts, metadata, parallelism, tensor count and bytes of a checkpoint.

    Example:
        >>> ferry.inspect("llama-trt")["parallel"]
        {'tp': 2, 'pp': 1}
    """
    from .record import METADATA_KEYS

    with read(path) as model:
        tensors = model.tensors
        spec = model.spec
        return {
            "path": str(model.path),
            "format": model.format,
            "family": spec.family,
            "parallel": model.parallel,
            "dtype": spec.dtype,
            "spec": spec.facts_dict(),
            "metadata": {k: spec.extra[k] for k in METADATA_KEYS if k in spec.extra and k != "hf_config"},
            "aux_files": [p.name for p in model.aux_files],
            "tensors": len(tensors),
            "bytes": sum(t.nbytes for t in tensors.values()),
            "parameters": sum(t.numel for t in tensors.values()),
            "details": model.info,
        }


def verify(src: str | Path, out: str | Path, *, batch: int | None = None, seq_len: int | None = None, seed: int = 0,
           atol: float | None = None, rtol: float | None = None):
    """Compare two checkpoints: their facts first (any difference fails, named), then their
    logits through ferry's reference forward (per rank for TensorRT-LLM) on the same random
    token ids, a probe long enough to pass every window and rope boundary of the config.

    Args:
        batch, seq_len: probe size; default: long enough to cross every boundary (batch 1 past 64 tokens).
        seed: token ids' seed.
        atol, rtol: tolerance (default by the less precise dtype of the two).

    Returns:
        A `Report`: fact differences, boundaries crossed, max abs / rel logit difference,
        top-1 agreement, tolerance, passed.

    Example:
        >>> ferry.verify("llama-hf", "llama-trt").passed
        True
    """
    from .verify.run import verify_models  # the only place that computes (imports torch)

    with read(src) as a, read(out) as b:
        return verify_models(a, b, batch=batch, seq_len=seq_len, seed=seed, atol=atol, rtol=rtol)


__all__ = ["convert", "inspect", "verify", "read"]
