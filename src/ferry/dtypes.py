"""Element types, without importing torch: planning, header parsing and byte copies never need
it. A `DType` turns into a torch dtype (`.torch`) only where a tensor is actually computed."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import FerryError


@dataclass(frozen=True, eq=False)
class DType:
    name: str  # torch's name: "bfloat16"
    itemsize: int
    is_floating_point: bool
    code: str  # safetensors header code: "BF16"

    @property
    def torch(self):
        import torch

        return getattr(torch, self.name)

    def __eq__(self, other):  # equal to itself and to the torch dtype of the same name
        if isinstance(other, DType):
            return other.name == self.name
        return str(other) == f"torch.{self.name}"

    def __hash__(self):
        return hash(self.name)

    def __repr__(self):
        return self.name


ALL = [
    DType("float64", 8, True, "F64"),
    DType("float32", 4, True, "F32"),
    DType("float16", 2, True, "F16"),
    DType("bfloat16", 2, True, "BF16"),
    DType("float8_e4m3fn", 1, True, "F8_E4M3"),
    DType("float8_e5m2", 1, True, "F8_E5M2"),
    DType("int64", 8, False, "I64"),
    DType("int32", 4, False, "I32"),
    DType("int16", 2, False, "I16"),
    DType("int8", 1, False, "I8"),
    DType("uint8", 1, False, "U8"),
    DType("bool", 1, False, "BOOL"),
]
BY_NAME = {d.name: d for d in ALL}
BY_CODE = {d.code: d for d in ALL}
FLOAT32, FLOAT16, BFLOAT16, UINT8 = BY_NAME["float32"], BY_NAME["float16"], BY_NAME["bfloat16"], BY_NAME["uint8"]

# user-facing names (CLI --dtype, config.json "dtype"/"torch_dtype")
_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "double": "float64"}
FLOAT_NAMES = ("float32", "float16", "bfloat16")


def dtype_from_name(name, where: str = "dtype") -> DType:
    """A DType from a name ("bfloat16", "bf16", "torch.float16"), a DType or a torch dtype."""
    if isinstance(name, DType):
        return name
    key = str(name).lower().replace("torch.", "")
    key = _ALIASES.get(key, key)
    if key not in BY_NAME or not BY_NAME[key].is_floating_point or key.startswith("float8"):
        raise FerryError(f"{where}: unknown dtype {name!r} (expected one of {', '.join(FLOAT_NAMES)})")
    return BY_NAME[key]


def of(dtype) -> DType:
    """The DType of a torch dtype (or a DType)."""
    return dtype if isinstance(dtype, DType) else BY_NAME[str(dtype).replace("torch.", "")]


def dtype_name(dtype) -> str:
    return of(dtype).name
