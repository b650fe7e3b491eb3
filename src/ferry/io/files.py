"""Reading tensors out of files without holding them: positional reads for contiguous byte runs,
a memory map for strided regions (pages dropped again after each copy, so the process's resident
set never grows with the file), and raw tensor memory as a buffer for writing."""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import warnings
from pathlib import Path

import torch

from ..errors import CheckpointError

# torch.frombuffer warns about read-only buffers; ferry maps files read-only and only copies out.
warnings.filterwarnings("ignore", message="The given buffer is not writable")

_PAGE = mmap.PAGESIZE


def tensor_buffer(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without copying (no numpy needed)."""
    if not t.is_contiguous():
        raise ValueError("tensor_buffer needs a contiguous tensor")
    nbytes = t.numel() * t.element_size()
    if nbytes == 0:
        return memoryview(b"")
    return memoryview((ctypes.c_char * nbytes).from_address(t.data_ptr())).cast("B")


class FileReader:
    """One open file of a checkpoint. Thread-safe; `close()` once the conversion is done."""

    def __init__(self, path: Path, label: str | None = None):
        self.path = Path(path)
        self.label = label or self.path.name
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot open ({e.strerror})") from None
        self.size = os.fstat(self._fd).st_size
        self._mm: mmap.mmap | None = None
        self._lock = threading.Lock()

    # -- raw bytes ---------------------------------------------------------------------------
    def read_bytes(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise CheckpointError(f"{self.path}: truncated: needs bytes {offset}..{offset + length}, file has {self.size}")
        data = os.pread(self._fd, length, offset)
        while len(data) < length:
            more = os.pread(self._fd, length - len(data), offset + len(data))
            if not more:
                raise CheckpointError(f"{self.path}: truncated while reading")
            data += more
        return data

    def readinto(self, buf: memoryview, offset: int) -> None:
        done, total = 0, len(buf)
        while done < total:
            n = os.preadv(self._fd, [buf[done:]], offset + done)
            if n <= 0:
                raise CheckpointError(f"{self.path}: truncated: could not read {total} bytes at offset {offset}")
            done += n

    @property
    def fileno(self) -> int:
        return self._fd

    # -- tensors -----------------------------------------------------------------------------
    def read_region(self, source, region, out: torch.Tensor) -> None:
        from ..lazy import Stored

        byte_range = Stored(source, region).byte_range()
        if byte_range is not None:
            offset, length = byte_range
            if offset + length > self.size:
                raise CheckpointError(
                    f"{self.path}: truncated: tensor {source.name} needs bytes up to {offset + length}, file has {self.size}"
                )
            if out.is_contiguous() and out.dtype == source.dtype:
                self.readinto(tensor_buffer(out), offset)
            else:
                tmp = torch.empty(out.shape, dtype=source.dtype)
                self.readinto(tensor_buffer(tmp), offset)
                out.copy_(tmp)
            return
        self._copy_strided(source, region, out)

    def _map(self) -> mmap.mmap:
        with self._lock:
            if self._mm is None:
                self._mm = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
            return self._mm

    def _copy_strided(self, source, region, out: torch.Tensor) -> None:
        esize = source.dtype.itemsize
        span = 1 + sum((n - 1) * st for n, st in zip(source.shape, source.stride) if n > 0)
        first, last = source.offset, source.offset + span * esize
        if last > self.size:
            raise CheckpointError(f"{self.path}: truncated: tensor {source.name} needs bytes up to {last}, file has {self.size}")
        mm = self._map()
        flat = torch.frombuffer(mm, dtype=torch.uint8, count=last - first, offset=first)
        try:
            whole = flat.view(source.dtype).as_strided(source.shape, source.stride)
            out.copy_(whole[tuple(slice(lo, hi) for lo, hi in region)])
        finally:
            del flat
            base = (first // _PAGE) * _PAGE
            if hasattr(mm, "madvise"):
                mm.madvise(mmap.MADV_DONTNEED, base, last - base)

    def close(self) -> None:
        with self._lock:
            if self._mm is not None:
                try:
                    self._mm.close()
                except BufferError:
                    pass
                self._mm = None
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class FileSet:
    """The open files of one checkpoint, closed together."""

    def __init__(self):
        self._files: dict[Path, FileReader] = {}

    def open(self, path: Path, label: str | None = None) -> FileReader:
        path = Path(path)
        if path not in self._files:
            self._files[path] = FileReader(path, label)
        return self._files[path]

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


class Runs:
    """A tensor's bytes as runs of stored files (reader, offset, length); reader None = zeros."""

    def __init__(self, runs, nbytes: int):
        self.runs, self.nbytes = _merged(runs), nbytes

    def copy_to(self, fd: int) -> None:
        """Append the bytes to `fd` (at its position): in-kernel copies where the OS has them."""
        for reader, offset, length in self.runs:
            if reader is None:
                _write_zeros(fd, length)
            else:
                _copy_range(reader, offset, length, fd)


def _merged(runs):
    out = []
    for reader, offset, length in runs:
        if not length:
            continue
        if out and out[-1][0] is reader and (reader is None or out[-1][1] + out[-1][2] == offset):
            out[-1] = (reader, out[-1][1], out[-1][2] + length)
        else:
            out.append((reader, offset, length))
    return out


_CHUNK = 16 * 1024 * 1024  # measured: in-kernel copies are fastest in pieces of this order


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_zeros(fd: int, length: int) -> None:
    zeros = bytes(min(length, _CHUNK))
    while length:
        n = min(length, len(zeros))
        _write_all(fd, zeros[:n])
        length -= n


def _copy_range(reader: FileReader, offset: int, length: int, fd: int) -> None:
    if offset + length > reader.size:
        raise CheckpointError(f"{reader.path}: truncated: needs bytes up to {offset + length}, file has {reader.size}")
    if hasattr(os, "copy_file_range"):
        try:
            while length:
                n = os.copy_file_range(reader.fileno, fd, min(length, _CHUNK), offset)
                if n <= 0:
                    break
                offset, length = offset + n, length - n
        except OSError:  # EXDEV on old kernels, unsupported filesystems: fall back to read + write
            pass
    while length:
        n = min(length, _CHUNK)
        _write_all(fd, reader.read_bytes(offset, n))
        offset, length = offset + n, length - n
