"""Moving bytes between files without holding them.

Reading: positional reads for contiguous byte runs, a memory map for strided regions (pages
dropped again after each copy, so the process's resident set never grows with the file).
Writing: a tensor's own memory as the buffer, or `Runs` copied file to file — large runs by the
kernel (`copy_file_range`), small ones (a column slice: one run per row) batched into one `writev`
straight from the memory map of the span they cover (one copy, page cache to page cache, instead
of a read into a buffer and a write out of it). torch is imported only where a tensor is computed.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .. import buffers
from ..errors import CheckpointError

if TYPE_CHECKING:
    import torch

# torch.frombuffer warns about read-only buffers; ferry maps files read-only and only copies out.
warnings.filterwarnings("ignore", message="The given buffer is not writable")


def tensor_buffer(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without copying (no numpy needed)."""
    if not t.is_contiguous():
        raise ValueError("tensor_buffer needs a contiguous tensor")
    nbytes = t.numel() * t.element_size()
    if nbytes == 0:
        return memoryview(b"")
    return memoryview((ctypes.c_char * nbytes).from_address(t.data_ptr())).cast("B")


_FAULT_AROUND_LIMIT = 2 * 1024 * 1024  # a page table's reach on x86-64 and arm64 (4 KiB pages)


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
    def _require(self, offset: int, length: int) -> None:
        if offset < 0 or offset + length > self.size:
            raise CheckpointError(f"{self.path}: truncated: needs bytes {offset}..{offset + length}, file has {self.size}")

    def read_bytes(self, offset: int, length: int) -> bytes:
        self._require(offset, length)
        data = os.pread(self._fd, length, offset)
        while len(data) < length:
            more = os.pread(self._fd, length - len(data), offset + len(data))
            if not more:
                raise CheckpointError(f"{self.path}: truncated while reading")
            data += more
        return data

    def readinto(self, buf: memoryview, offset: int) -> None:
        done, total = 0, len(buf)
        if offset + total > self.size:
            raise CheckpointError(f"{self.path}: truncated: needs bytes up to {offset + total}, file has {self.size}")
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
            if out.is_contiguous() and source.dtype == out.dtype:
                self.readinto(tensor_buffer(out), offset)
            else:
                tmp = buffers.empty(out.shape, source.dtype)
                self.readinto(tensor_buffer(tmp), offset)
                out.copy_(tmp)
            return
        self._copy_strided(source, region, out)

    def _map(self) -> mmap.mmap:
        with self._lock:
            if self._mm is None:
                self._mm = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
            return self._mm

    def mapped(self, offset: int, length: int) -> memoryview:
        """`length` bytes at `offset` as a view of the file's memory map: nothing is copied
        until the view is written out. Call `release` on the same range afterwards."""
        self._require(offset, length)
        return memoryview(self._map())[offset:offset + length]

    def release(self, offset: int, length: int) -> None:
        """Unmap the pages of a range read through `mapped` (they stay in the page cache), so the
        resident set never grows with the file. The kernel maps pages around each faulting one,
        within the same 2 MiB page table, so the range is widened to those boundaries (another
        thread reading there merely faults its pages in again)."""
        if self._mm is None or not hasattr(self._mm, "madvise") or not length:
            return
        base = offset // _FAULT_AROUND_LIMIT * _FAULT_AROUND_LIMIT
        end = min(-(-(offset + length) // _FAULT_AROUND_LIMIT) * _FAULT_AROUND_LIMIT, self.size)
        end = -(-end // mmap.PAGESIZE) * mmap.PAGESIZE
        self._mm.madvise(mmap.MADV_DONTNEED, base, end - base)

    def _copy_strided(self, source, region, out: torch.Tensor) -> None:
        import torch

        esize = source.dtype.itemsize
        span = 1 + sum((n - 1) * st for n, st in zip(source.shape, source.stride) if n > 0)
        first, last = source.offset, source.offset + span * esize
        if last > self.size:
            raise CheckpointError(f"{self.path}: truncated: tensor {source.name} needs bytes up to {last}, file has {self.size}")
        mm = self._map()
        flat = torch.frombuffer(mm, dtype=torch.uint8, count=last - first, offset=first)
        try:
            whole = flat.view(source.dtype.torch).as_strided(source.shape, source.stride)
            out.copy_(whole[tuple(slice(lo, hi) for lo, hi in region)])
        finally:
            del flat
            self.release(first, last - first)

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


# -- copying runs ------------------------------------------------------------------------------

_BIG = 256 * 1024  # runs at least this long go through copy_file_range one by one (measured: faster from here up)
_SPAN = 4 * 1024 * 1024  # at most this many bytes of a file mapped at once for small runs and strips
_CHUNK = 16 * 1024 * 1024  # measured: in-kernel copies are fastest in pieces of this order
_IOV_MAX = min(1024, os.sysconf("SC_IOV_MAX")) if hasattr(os, "sysconf") else 1024


class Runs:
    """A tensor's bytes as `lazy.Strip`s of stored files, copied without computing anything."""

    def __init__(self, strips, nbytes: int):
        self.strips, self.nbytes = _merged(strips), nbytes

    def copy_to(self, fd: int) -> None:
        """Append the bytes to `fd` (at its position)."""
        batch = _Batch()
        for strip in self.strips:
            if strip.count > 1 or len(strip.parts) > 1:
                batch.flush(fd)
                _copy_strip(strip, fd)
                continue
            reader, offset, length, _ = strip.parts[0]
            if reader is None or length >= _BIG:
                batch.flush(fd)
                if reader is None:
                    _write_zeros(fd, length)
                else:
                    _copy_range(reader, offset, length, fd)
            elif not batch.add(reader, offset, length):
                batch.flush(fd)
                batch.add(reader, offset, length)
        batch.flush(fd)


def _merged(strips):
    """Adjacent single runs of the same file (or of zeros) joined into one."""
    from ..lazy import Strip

    out = []
    for strip in strips:
        if not strip.nbytes:
            continue
        if out and strip.count == 1 == out[-1].count and len(strip.parts) == 1 == len(out[-1].parts):
            reader, offset, length, _ = strip.parts[0]
            last_reader, last_offset, last_length, _ = out[-1].parts[0]
            if reader is last_reader and (reader is None or last_offset + last_length == offset):
                out[-1] = Strip.run(reader, last_offset, last_length + length)
                continue
        out.append(strip)
    return out


class _Batch:
    """Small runs written together: one read per file of the span its runs cover, then the
    pieces in order with one writev."""

    def __init__(self):
        self.runs: list = []
        self.spans: dict[int, list] = {}  # id(reader) -> [reader, lo, hi]

    def add(self, reader, offset: int, length: int) -> bool:
        span = self.spans.get(id(reader))
        if span is not None:
            lo, hi = min(span[1], offset), max(span[2], offset + length)
            if hi - lo > _SPAN:
                return False
        if len(self.runs) == _IOV_MAX:
            return False
        if span is None:
            self.spans[id(reader)] = [reader, offset, offset + length]
        else:
            span[1], span[2] = lo, hi
        self.runs.append((reader, offset, length))
        return True

    def flush(self, fd: int) -> None:
        if not self.runs:
            return
        spans = list(self.spans.values())
        views = {id(reader): (lo, reader.mapped(lo, hi - lo)) for reader, lo, hi in spans}
        pieces = []
        for reader, offset, length in self.runs:
            lo, view = views[id(reader)]
            pieces.append(view[offset - lo: offset - lo + length])
        _writev_all(fd, pieces)
        del pieces, views
        for reader, lo, hi in spans:
            reader.release(lo, hi - lo)
        self.runs, self.spans = [], {}


def _copy_strip(strip, fd: int) -> None:
    """A strip, a block of rows at a time: the rows' pieces of every part written with one
    writev straight from the files' memory maps."""
    parts = strip.parts
    per_block = _IOV_MAX // len(parts)
    for _, _, length, stride in parts:
        if stride:
            per_block = min(per_block, max(1, (_SPAN - length) // stride + 1))
    zeros = {length: memoryview(bytes(length)) for reader, _, length, _ in parts if reader is None}
    row = 0
    while row < strip.count:
        k = min(per_block, strip.count - row)
        spans = [(reader, offset + row * stride, (k - 1) * stride + length) for reader, offset, length, stride in parts]
        views = [zeros[length] if reader is None else reader.mapped(start, span)
                 for (reader, start, span), (_, _, length, _) in zip(spans, parts)]
        steps = [0 if reader is None else stride for reader, _, _, stride in parts]
        lengths = [length for _, _, length, _ in parts]
        _writev_all(fd, [view[j * step: j * step + n] for j in range(k) for view, step, n in zip(views, steps, lengths)])
        del views
        for reader, start, span in spans:
            if reader is not None:
                reader.release(start, span)
        row += k


def _writev_all(fd: int, pieces) -> None:
    for first in range(0, len(pieces), _IOV_MAX):
        chunk = pieces[first:first + _IOV_MAX]
        written = os.writev(fd, chunk)
        if written == sum(map(len, chunk)):
            continue
        for piece in chunk:  # a short write: finish piece by piece
            if written >= len(piece):
                written -= len(piece)
            else:
                _write_all(fd, piece[written:])
                written = 0


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
