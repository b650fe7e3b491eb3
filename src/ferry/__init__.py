"""ferry: move LLM weights between Megatron-core, Hugging Face and TensorRT-LLM."""

from .api import convert, inspect, read, verify
from .errors import (
    CheckpointError,
    FerryError,
    SpecError,
    UnsafePickleError,
    UnsupportedError,
)
from .spec import ModelSpec

__version__ = "0.1.0"
__all__ = [
    "convert",
    "inspect",
    "verify",
    "read",
    "ModelSpec",
    "FerryError",
    "CheckpointError",
    "SpecError",
    "UnsupportedError",
    "UnsafePickleError",
]
