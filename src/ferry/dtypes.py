"""Names of dtypes in the formats ferry reads and writes."""

import torch

from .errors import FerryError

# safetensors header codes
SAFETENSORS_CODES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
CODE_OF = {dtype: code for code, dtype in SAFETENSORS_CODES.items()}

# user-facing names (CLI --dtype, config.json "dtype"/"torch_dtype")
_BY_NAME = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}
FLOAT_NAMES = ("float32", "float16", "bfloat16")


def dtype_from_name(name: str, where: str = "dtype") -> torch.dtype:
    key = str(name).lower().replace("torch.", "")
    if key not in _BY_NAME:
        raise FerryError(f"{where}: unknown dtype {name!r} (expected one of {', '.join(FLOAT_NAMES)})")
    return _BY_NAME[key]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")

