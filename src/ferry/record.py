"""ferry's own record inside a checkpoint whose format cannot say everything: the model family,
every fact of the spec, and the metadata (HF architecture, token ids, the source's config.json).
Megatron keeps it in `args.ferry` (Megatron-LM ignores unknown args), TensorRT-LLM in
`ferry_record.json` beside config.json (trtllm-build reads only config.json and the ranks)."""

from __future__ import annotations

import json

from .errors import CheckpointError
from .spec import ModelSpec

VERSION = 1
TRTLLM_FILE = "ferry_record.json"
METADATA_KEYS = ("hf_architecture", "bos_token_id", "eos_token_id", "pad_token_id", "hf_config", "source_dtype")


def make(spec: ModelSpec) -> dict:
    metadata = {k: spec.extra[k] for k in METADATA_KEYS if k in spec.extra}
    metadata.setdefault("source_dtype", spec.dtype)
    record = {"version": VERSION, "family": spec.family, "facts": spec.facts_dict(), "metadata": metadata}
    json.dumps(record)  # plain data only: it is pickled into Megatron args and read by the allow-list unpickler
    return record


def parse(record, where: str) -> tuple[str, dict, dict]:
    """(family, facts, metadata) of a record, refusing one this ferry cannot read."""
    if not isinstance(record, dict) or not isinstance(record.get("facts"), dict) or not isinstance(record.get("family"), str):
        raise CheckpointError(f"{where}: ferry record is malformed (expected family, facts and metadata)")
    if record.get("version") != VERSION:
        raise CheckpointError(f"{where}: ferry record version {record.get('version')!r} is not {VERSION} (written by another ferry?)")
    metadata = record.get("metadata") or {}
    return record["family"], record["facts"], {k: metadata[k] for k in METADATA_KEYS if k in metadata}
