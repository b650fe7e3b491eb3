"""torch.save zip archives, read without running the pickle and without loading tensors.

A torch.save file is a zip of stored (uncompressed) records: `<dir>/data.pkl` (the object tree, a
pickle whose tensors point at storages by persistent id) and `<dir>/data/<key>` (raw storage bytes).
`load` unpickles `data.pkl` with an allow-list: tensors and storages become lazy `Stored` leaves at
their byte offset in the file, `argparse.Namespace`, `OrderedDict` and plain data load as
themselves, a few known-harmless foreign classes (Megatron enums, numpy RNG state, ...) become inert
placeholders that are never imported or called, and anything else is refused with
`UnsafePickleError` before it can run. The same reader serves Megatron's legacy
`model_optim_rng.pt`, torch_dist `common.pt` and `.distcp` items, and HF `pytorch_model.bin`.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import collections
import io
import pickle
import struct
import zipfile

from .. import dtypes
from ..dtypes import BY_NAME, DType
from ..errors import CheckpointError, UnsafePickleError
from ..lazy import Lazy, Stored, TensorSource
from .files import FileReader

_STORAGE_DTYPES = {
    "DoubleStorage": BY_NAME["float64"],
    "FloatStorage": BY_NAME["float32"],
    "HalfStorage": BY_NAME["float16"],
    "BFloat16Storage": BY_NAME["bfloat16"],
    "LongStorage": BY_NAME["int64"],
    "IntStorage": BY_NAME["int32"],
    "ShortStorage": BY_NAME["int16"],
    "CharStorage": BY_NAME["int8"],
    "ByteStorage": BY_NAME["uint8"],
    "BoolStorage": BY_NAME["bool"],
    "UntypedStorage": BY_NAME["uint8"],
}
# torch dtypes named in pickles (e.g. Megatron's args.params_dtype) load as ferry DTypes
_TORCH_DTYPES = {
    **BY_NAME,
    "double": BY_NAME["float64"], "float": BY_NAME["float32"], "half": BY_NAME["float16"],
    "long": BY_NAME["int64"], "int": BY_NAME["int32"], "short": BY_NAME["int16"],
}
# Foreign modules whose classes appear in real checkpoints (Megatron args enums, TE extra state,
# numpy RNG state in rng_state). They become inert placeholders: never imported, never called.
_INERT_MODULES = ("megatron", "transformer_engine", "nemo", "apex", "numpy", "modelopt", "_io", "io", "enum")


class StorageType:
    def __init__(self, name: str, dtype: DType):
        self.name, self.dtype = name, dtype


class StorageRef:
    """A persistent-id storage: which record, which dtype, how many elements."""

    def __init__(self, key: str, dtype: DType, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class TensorRef:
    """A tensor as the pickle describes it; turned into a `Stored` leaf once offsets are known."""

    def __init__(self, storage: StorageRef, offset: int, size, stride, dtype: DType | None = None):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
        self.dtype = dtype or storage.dtype


class Inert:
    """Stand-in for a foreign object in a checkpoint: records its arguments, does nothing."""

    _ferry_global = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<inert {self._ferry_global}>"


_inert_classes: dict[str, type] = {}


def _inert(qualname: str) -> type:
    if qualname not in _inert_classes:
        _inert_classes[qualname] = type(qualname.rsplit(".", 1)[-1], (Inert,), {"_ferry_global": qualname})
    return _inert_classes[qualname]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    return TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    if not isinstance(dtype, DType):
        raise UnsafePickleError("tensor with a non-dtype dtype argument")
    return TensorRef(storage, storage_offset, size, stride, dtype)  # offset counts `dtype` elements


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    return func(*args)


def _get_layout(name):
    if name != "torch.strided":
        raise UnsafePickleError(f"tensor layout {name!r} (only dense strided tensors are read)")
    return "strided"


def _device(kind, index=None):
    return str(kind) if index is None else f"{kind}:{index}"


def _codecs_encode(text, encoding="utf-8"):
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_SAFE_GLOBALS = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.serialization._get_layout": _get_layout,
    "torch.Size": tuple,
    "torch.device": _device,
    "collections.OrderedDict": collections.OrderedDict,
    "argparse.Namespace": argparse.Namespace,
    "_codecs.encode": _codecs_encode,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.slice": slice,
    "builtins.bytearray": bytearray,
    "builtins.complex": complex,
    "builtins.range": range,
}
_SAFE_GLOBALS.update({f"torch.{name}": StorageType(name, dt) for name, dt in _STORAGE_DTYPES.items()})
_SAFE_GLOBALS.update({f"torch.storage.{name}": StorageType(name, dt) for name, dt in _STORAGE_DTYPES.items()})
_SAFE_GLOBALS.update({f"torch.{name}": dt for name, dt in _TORCH_DTYPES.items()})


def _dcp_globals() -> dict:
    """torch.distributed.checkpoint metadata classes: plain dataclasses and enums."""
    from torch.distributed.checkpoint import filesystem, metadata, planner

    names = {
        metadata: "Metadata TensorStorageMetadata BytesStorageMetadata ChunkStorageMetadata TensorProperties "
        "MetadataIndex StorageMeta _MEM_FORMAT_ENCODING",
        filesystem: "_StorageInfo",
        planner: "SavePlan WriteItem WriteItemType TensorWriteData LoadPlan ReadItem LoadItemType",
    }
    out = {}
    for module, attrs in names.items():
        for attr in attrs.split():
            if hasattr(module, attr):
                out[f"{module.__name__}.{attr}"] = getattr(module, attr)
    return out


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, label: str, allow_dcp: bool):
        super().__init__(io.BytesIO(data))
        self.label = label
        self.allowed = dict(_SAFE_GLOBALS)
        if allow_dcp:
            self.allowed.update(_dcp_globals())

    def find_class(self, module, name):
        # protocol-2 pickles spell Python 2 names (__builtin__.set); map them as pickle's fix_imports does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualname = f"{module}.{name}"
        if qualname in self.allowed:
            return self.allowed[qualname]
        if module.split(".")[0] in _INERT_MODULES:
            return _inert(qualname)
        raise UnsafePickleError(
            f"{self.label}: refusing to load global {qualname!r} (only tensors, argparse.Namespace, numpy RNG "
            "state and plain data are allowed); nothing from this file was run"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafePickleError(f"{self.label}: unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, StorageType):
            raise UnsafePickleError(f"{self.label}: persistent id with storage type {storage_type!r}")
        return StorageRef(str(key), storage_type.dtype, int(numel))


def restricted_loads(data: bytes, label: str, allow_dcp: bool = False):
    """Unpickle plain data under the allow-list (no tensors may point at storages)."""
    try:
        return _Unpickler(data, label, allow_dcp).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # malformed pickles raise anything from IndexError to UnpicklingError
        raise CheckpointError(f"{label}: cannot read pickle ({type(e).__name__}: {e})") from None


class _Window(io.RawIOBase):
    """A read-only file view of bytes [start, start + length) of a FileReader (for zipfile)."""

    def __init__(self, reader: FileReader, start: int, length: int):
        self.reader, self.start, self.length, self.pos = reader, start, length, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, offset, whence=0):
        self.pos = {0: offset, 1: self.pos + offset, 2: self.length + offset}[whence]
        return self.pos

    def readinto(self, b):
        n = max(0, min(len(b), self.length - self.pos))
        if n:
            b[:n] = self.reader.read_bytes(self.start + self.pos, n)
        self.pos += n
        return n


def load(reader: FileReader, start: int = 0, length: int | None = None, label: str | None = None, allow_dcp: bool = False):
    """The object tree of the torch.save archive at bytes [start, start+length) of `reader`,
    with every tensor replaced by a lazy `Stored` leaf."""
    length = reader.size - start if length is None else length
    label = label or str(reader.path)
    try:
        zf = zipfile.ZipFile(_Window(reader, start, length))
    except zipfile.BadZipFile:
        raise CheckpointError(f"{label}: not a torch.save zip archive (truncated, or saved with the legacy non-zip format)") from None
    infos = {zi.filename: zi for zi in zf.infolist()}
    pkl = [n for n in infos if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
        raise CheckpointError(f"{label}: not a torch.save archive (no single data.pkl record)")
    prefix = pkl[0][: -len("data.pkl")]
    byteorder = infos.get(prefix + "byteorder")
    if byteorder is not None and zf.read(byteorder).strip() not in (b"little", b""):
        raise CheckpointError(f"{label}: big-endian checkpoints are not supported")
    obj = restricted_loads(zf.read(pkl[0]), label, allow_dcp)

    def record_offset(key: str, nbytes: int) -> int:
        zi = infos.get(f"{prefix}data/{key}")
        if zi is None:
            raise CheckpointError(f"{label}: storage record data/{key} is missing")
        if zi.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{label}: storage record data/{key} is compressed; only stored records can be read lazily")
        if zi.file_size < nbytes:
            raise CheckpointError(f"{label}: storage record data/{key} has {zi.file_size} bytes, tensors need {nbytes}")
        local = reader.read_bytes(start + zi.header_offset, 30)
        sig, name_len, extra_len = struct.unpack("<I22xHH", local)
        if sig != 0x04034B50:
            raise CheckpointError(f"{label}: corrupt zip entry data/{key}")
        data_start = start + zi.header_offset + 30 + name_len + extra_len
        if data_start + zi.file_size > start + length:
            raise CheckpointError(f"{label}: truncated: storage data/{key} runs past the end of the file")
        return data_start

    offsets: dict[str, int] = {}

    def convert(x):
        if isinstance(x, TensorRef):
            esize = x.dtype.itemsize
            need = (x.offset + 1 + sum((n - 1) * s for n, s in zip(x.size, x.stride))) * esize if all(x.size) else 0
            storage_bytes = x.storage.numel * x.storage.dtype.itemsize
            if need > storage_bytes:
                raise CheckpointError(f"{label}: a tensor of shape {list(x.size)} runs past its storage data/{x.storage.key}")
            if x.storage.key not in offsets:
                offsets[x.storage.key] = record_offset(x.storage.key, storage_bytes)
            src = TensorSource(reader, offsets[x.storage.key] + x.offset * esize, x.dtype, x.size, x.stride, file_label=reader.label)
            return Stored(src)
        if isinstance(x, StorageRef):
            raise CheckpointError(f"{label}: bare storages are not supported")
        if isinstance(x, dict):
            return type(x)((k, convert(v)) for k, v in x.items()) if isinstance(x, collections.OrderedDict) else {k: convert(v) for k, v in x.items()}
        if isinstance(x, list):
            return [convert(v) for v in x]
        if isinstance(x, tuple):
            return tuple(convert(v) for v in x)
        return x

    return convert(obj)


def name_tensors(tree, prefix: str = "") -> None:
    """Give every Stored leaf in a state dict its key as a name (for messages)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            if isinstance(v, Stored):
                v.source.name = f"{prefix}{k}"
            elif isinstance(v, dict):
                name_tensors(v, f"{prefix}{k}.")


# -- writing ---------------------------------------------------------------------------------

_STORAGE_CLASS = {dt: name for name, dt in _STORAGE_DTYPES.items() if name != "UntypedStorage"}
ALIGNMENT = 64


class TensorSlot:
    """A placeholder in an object tree for a tensor that is streamed into the archive later."""

    def __init__(self, key: str, shape, dtype: DType):
        dtype = dtypes.of(dtype)
        if dtype not in _STORAGE_CLASS:
            raise CheckpointError(f"cannot write {dtype} tensors into a torch.save archive")
        self.key, self.shape, self.dtype = key, tuple(shape), dtype

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * self.dtype.itemsize


class _StorageMarker:
    def __init__(self, slot: TensorSlot):
        self.slot = slot


class _SlotPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _StorageMarker):
            s = obj.slot
            numel = s.nbytes // s.dtype.itemsize
            import torch

            return ("storage", getattr(torch, _STORAGE_CLASS[s.dtype]), s.key, "cpu", numel)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, TensorSlot):
            stride, acc = [], 1
            for d in reversed(obj.shape):
                stride.append(acc)
                acc *= max(d, 1)
            args = (_StorageMarker(obj), 0, obj.shape, tuple(reversed(stride)), False, collections.OrderedDict())
            import torch._utils

            return (torch._utils._rebuild_tensor_v2, args)
        return NotImplemented


class _Relative(io.RawIOBase):
    """A writable view of a file from its current position on, so an archive embedded in a larger
    file (a .distcp item) has offsets relative to its own start, as torch.save's do."""

    def __init__(self, f):
        self.f, self.base = f, f.tell()

    def writable(self):
        return True

    def seekable(self):
        return True

    def write(self, b):
        return self.f.write(b)

    def tell(self):
        return self.f.tell() - self.base

    def seek(self, offset, whence=0):
        if whence == 0:
            return self.f.seek(self.base + offset) - self.base
        return self.f.seek(offset, whence) - self.base

    def flush(self):
        self.f.flush()


def write_archive(f, obj, slots, tensors, archive: str = "archive") -> int:
    """Write `obj` (with `TensorSlot`s standing for tensors) as a torch.save archive at the current
    position of `f`: data.pkl first, then each tensor of `tensors` (in `slots` order) streamed into
    its own 64-byte aligned record. Returns the archive's length in bytes."""
    from .files import tensor_buffer

    out = _Relative(f)
    buf = io.BytesIO()
    _SlotPickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        _record(zf, out, f"{archive}/data.pkl", buf.getvalue())
        _record(zf, out, f"{archive}/.format_version", b"1")
        _record(zf, out, f"{archive}/.storage_alignment", str(ALIGNMENT).encode())
        _record(zf, out, f"{archive}/byteorder", b"little")
        count = 0
        for slot, tensor in zip(slots, tensors):
            if tuple(tensor.shape) != slot.shape or tensor.dtype != slot.dtype:
                raise AssertionError(f"record {slot.key}: planned {list(slot.shape)} {slot.dtype}, got {list(tensor.shape)} {tensor.dtype}")
            _record(zf, out, f"{archive}/data/{slot.key}", tensor_buffer(tensor.contiguous()), slot.nbytes)
            count += 1
        if count != len(slots):
            raise AssertionError(f"planned {len(slots)} tensors, produced {count}")
        _record(zf, out, f"{archive}/version", b"3\n")
    return out.tell()


def _record(zf: zipfile.ZipFile, out: _Relative, name: str, data, size: int | None = None) -> None:
    size = len(data) if size is None else size
    zinfo = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    zinfo.compress_type = zipfile.ZIP_STORED
    zinfo.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT
    # local header = 30 bytes + name + extra (+ 20 bytes of zip64 sizes); pad extra so data is aligned
    start = out.tell() + 30 + len(name.encode()) + (20 if zip64 else 0) + 4
    pad = -start % ALIGNMENT
    zinfo.extra = struct.pack("<HH", 0x4246, pad) + b"\0" * pad
    with zf.open(zinfo, "w", force_zip64=zip64) as w:
        w.write(data)


class ArchivedTensor(Lazy):
    """A tensor saved with torch.save at bytes [start, start+length) of a file (a .distcp item);
    its archive is opened only when the tensor (or a slice) is needed."""

    def __init__(self, reader: FileReader, start: int, length: int, shape, dtype: DType, label: str):
        self.reader, self.start, self.length, self.label = reader, start, length, label
        self.shape, self.dtype = tuple(shape), dtypes.of(dtype)
        self._stored: Stored | None = None

    def _resolve(self) -> Stored:
        if self._stored is None:
            if self.start + self.length > self.reader.size:
                raise CheckpointError(f"{self.reader.path}: truncated: {self.label} needs bytes up to {self.start + self.length}, file has {self.reader.size}")
            t = load(self.reader, self.start, self.length, label=f"{self.reader.path} ({self.label})")
            if not isinstance(t, Stored) or tuple(t.shape) != self.shape or t.dtype != self.dtype:
                raise CheckpointError(f"{self.reader.path}: {self.label} does not hold a {self.dtype} tensor of shape {list(self.shape)}")
            t.source.name = self.label
            self._stored = t
        return self._stored

    def _narrow(self, dim, start, length):
        return self._resolve().narrow(dim, start, length)

    def fill(self, out):
        self._resolve().fill(out)

    def byte_runs(self):
        return self._resolve().byte_runs()

    def describe(self):
        return f"{self.reader.label}@{self.start}:{self.label}"
