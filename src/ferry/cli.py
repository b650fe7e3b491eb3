"""Command line: `ferry convert | inspect | verify | demo`. Exit codes: 0 ok, 2 bad input or
usage (one line on stderr, no traceback), 1 internal error (or, for verify, a mismatch)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from . import __version__, api, formats
from .errors import FerryError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise FerryError(f"{message} (see '{self.prog} --help')")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ferry", description="Convert LLM checkpoints between Megatron-core, Hugging Face and TensorRT-LLM.")
    p.add_argument("--version", action="version", version=f"ferry {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("convert", help="convert a checkpoint to another format")
    c.add_argument("src", help="source checkpoint directory (format and family detected)")
    c.add_argument("out", help="output directory (created atomically)")
    c.add_argument("--to", required=True, choices=sorted(formats.names()), help="output format")
    c.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the output")
    c.add_argument("--pp", type=int, default=1, help="pipeline-parallel size of the output")
    c.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="output dtype (default: the source's)")
    c.add_argument("--dry-run", action="store_true", help="print the plan (every output tensor) and write nothing")
    c.add_argument("--recipes", action="store_true", help="with --dry-run: show where each tensor comes from")
    c.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    c.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    c.add_argument("--max-shard-size", default="5GB", help="largest Hugging Face shard (default 5GB)")
    c.add_argument("--parallel-embedding", action="store_true", help="TensorRT-LLM: split the vocab embedding over tp")
    c.add_argument("--vocab-size", type=int, help="true vocabulary size when the source does not record it")
    c.add_argument("--megatron-layer-spec", choices=["local", "te"],
                   help="Megatron legacy output: norm key names of the local or Transformer Engine layer spec "
                        "(default: the source's, else local)")
    c.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                   help="Megatron output: vocabulary padded to a multiple of this times tp (default 128)")
    c.add_argument("--threads", type=int, default=4, help="threads: output files written at once, and tensors computed ahead (default 4)")
    c.add_argument("--max-memory", default="512MiB", help="bytes of computed tensors held at once, beyond one larger tensor (default 512MiB)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")

    i = sub.add_parser("inspect", help="describe a checkpoint")
    i.add_argument("path", help="checkpoint directory (any format ferry reads)")
    i.add_argument("--json", action="store_true", help="machine-readable output")

    v = sub.add_parser("verify", help="compare two checkpoints: their facts, then their logits through the reference forward")
    v.add_argument("src", help="reference checkpoint directory")
    v.add_argument("out", help="checkpoint to check against it (e.g. a conversion of SRC)")
    v.add_argument("--seq-len", type=int,
                   help="probe length (default: long enough to pass every attention window and rope boundary, at least 16)")
    v.add_argument("--batch", type=int, help="probe sequences (default 2; 1 when the probe is longer than 64 tokens)")
    v.add_argument("--seed", type=int, default=0, help="seed of the random token ids (default 0)")
    v.add_argument("--atol", type=float, help="absolute tolerance (default by dtype)")
    v.add_argument("--rtol", type=float, help="tolerance relative to the largest logit (default by dtype)")
    v.add_argument("--json", action="store_true", help="print the report as JSON")

    d = sub.add_parser("demo", help="make a tiny random Llama, convert it to TensorRT-LLM tp=2, verify it")
    d.add_argument("workdir", nargs="?", default="ferry-demo", help="directory for the demo's files (default ./ferry-demo)")
    return p


def _convert(a) -> int:
    from .formats.hf import parse_size

    plan = api.convert(
        a.src, a.out, to=a.to, tp=a.tp, pp=a.pp, dtype=a.dtype, dry_run=a.dry_run, overwrite=a.overwrite,
        max_shard_size=a.max_shard_size, parallel_embedding=a.parallel_embedding, vocab_size=a.vocab_size,
        progress=not a.quiet and sys.stderr.isatty(), threads=a.threads, max_memory=parse_size(a.max_memory),
        megatron_layer_spec=a.megatron_layer_spec, make_vocab_size_divisible_by=a.make_vocab_size_divisible_by,
    )
    for note in plan.notes:
        print(f"ferry: note: {note}", file=sys.stderr)
    if a.dry_run:
        print(json.dumps(plan.to_json(a.recipes), indent=1) if a.json else plan.render(a.recipes))
    else:
        print(f"wrote {a.out}: {a.to} {' '.join(f'{k}={v}' for k, v in plan.parallel.items())}, "
              f"{len(plan.tensors)} tensors, {plan.total_bytes} bytes")
    return 0


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _table(rows: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[str(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*keys).rstrip(), *(fmt.format(*c).rstrip() for c in cells)]


def _facts_lines(spec: dict) -> list[str]:
    """The facts that differ from a plain decoder, one group a line."""
    lines = []
    for group in ("attention", "positions", "norms", "residual", "mlp", "embeddings"):
        values = spec.get(group) or {}
        shown = ", ".join(f"{k} {v}" for k, v in values.items() if v not in (None, False, 0.0) or k in ("kind", "activation"))
        if group == "embeddings" and values.get("scale") == 1.0:
            shown = ", ".join(p for p in shown.split(", ") if not p.startswith("scale "))
        lines.append(f"  {group}: {shown or '-'}")
    return lines


def _layer_range(start: int, stop: int) -> str:
    return str(start) if stop - start == 1 else f"{start}-{stop - 1}"


def _inspect(a) -> int:
    info = api.inspect(a.path)
    if a.json:
        print(json.dumps(info, indent=1, default=str))
        return 0
    s = info["spec"]
    print(f"{info['path']}: {info['format']} checkpoint, family {info['family']}, {info['dtype']}, "
          f"{' '.join(f'{k}={v}' for k, v in info['parallel'].items())}")
    print(f"  {s['num_layers']} layers, hidden {s['hidden_size']}, heads {s['num_heads']} (kv {s['num_kv_heads']}, "
          f"head_dim {s['head_dim']}), ffn {s['ffn_hidden_size']}, vocab {s['vocab_size']}, "
          f"positions {s['max_position_embeddings']}")
    print(f"  {info['tensors']} tensors, {info['parameters']:,} parameters, {_size(info['bytes'])}")
    for line in _facts_lines(s):
        print(line)
    if info["metadata"]:
        print(f"  metadata: {', '.join(f'{k} {v}' for k, v in info['metadata'].items())}")
    if info["aux_files"]:
        print(f"  files kept: {', '.join(info['aux_files'])}")
    details = dict(info["details"])
    ranks = details.pop("ranks", None)
    for key, value in details.items():
        if isinstance(value, (list, dict)):
            value = json.dumps(value)
        print(f"  {key}: {value}")
    if ranks:
        rows = [{**r, "layers": _layer_range(*r["layers"]), "bytes": _size(r["bytes"])} for r in ranks]
        for line in _table(rows):
            print(f"  {line}")
    return 0


def _verify(a) -> int:
    report = api.verify(a.src, a.out, batch=a.batch, seq_len=a.seq_len, seed=a.seed, atol=a.atol, rtol=a.rtol)
    print(json.dumps(report.to_dict()) if a.json else "\n".join(report.lines()))
    return 0 if report.passed else 1


def _demo(a) -> int:
    from .demo import run_demo

    return run_demo(a.workdir)


def main(argv: list[str] | None = None) -> int:
    try:
        a = _parser().parse_args(argv)
        code = {"convert": _convert, "inspect": _inspect, "verify": _verify, "demo": _demo}[a.command](a)
        sys.stdout.flush()  # here, so that a reader gone away (`| head -1`) is caught below
        return code
    except FerryError as e:
        print(f"ferry: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` or `true`: the reader has what it wanted
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        print("ferry: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("ferry: internal error (a bug in ferry; please report it with the traceback above)", file=sys.stderr)
        return 1


def entry() -> None:
    """Console script: run, flush, and leave without the interpreter's teardown (unloading torch
    takes longer than most small conversions; every file is already closed and renamed)."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        _silence_stdout()
    os._exit(code)


def _silence_stdout() -> None:
    """Point stdout at /dev/null: whatever is still buffered for a closed pipe is dropped
    instead of failing again at the next flush."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
