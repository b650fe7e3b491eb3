"""Runs a plan: output built in a temporary directory beside OUT and renamed into place only when
complete; several files written at once, their tensors materialised a few at a time by small
thread pools under one memory budget, written in plan order, then freed."""

from __future__ import annotations

import collections
import contextvars
import errno
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path

from . import buffers
from .errors import FerryError, OutputExistsError
from .io.files import Runs
from .plan import Plan, PlannedTensor

# the disk, not ferry: reported as one line (exit 2) rather than a traceback
_ENVIRONMENT_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM, errno.EFBIG}
DEFAULT_MAX_MEMORY = 512 * 1024**2  # read-ahead; one larger tensor still goes through alone


def check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: already exists (pass --overwrite to replace it)")


class Budget:
    """Bytes of computed tensors held at once (being computed, waiting, or being written), shared
    by the files written together. A tensor fits while the total stays within `limit`, or alone."""

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0
        self._cond = threading.Condition()

    def try_take(self, n: int) -> bool:
        with self._cond:
            if self.held and self.held + n > self.limit:
                return False
            self.held += n
            return True

    def take(self, n: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self.held or self.held + n <= self.limit)
            self.held += n

    def give(self, n: int) -> None:
        with self._cond:
            self.held -= n
            self._cond.notify_all()


class Materializer:
    """Yields the tensors of a list in order, computing up to `threads` of them at once (the one
    being written included) within a `Budget`. With `runs_ok`, a tensor whose bytes are runs of
    source files is yielded as `Runs`, unread, at no cost to the budget."""

    def __init__(self, threads: int = 4, budget: Budget | int = DEFAULT_MAX_MEMORY):
        self.threads = max(1, threads)
        self.budget = budget if isinstance(budget, Budget) else Budget(budget)

    def __call__(self, tensors: Sequence[PlannedTensor], runs_ok: bool = False) -> Iterator:
        def job(planned: PlannedTensor) -> tuple[int, Runs | Callable]:
            """(bytes it holds, Runs) or (bytes it holds, how to compute it)."""
            runs = planned.value.byte_runs() if runs_ok else None
            return (0, Runs(runs, planned.nbytes)) if runs is not None else (planned.nbytes, planned.value.materialize)

        pending: collections.deque[tuple[int, Future | Runs]] = collections.deque()
        todo = map(job, tensors)  # (Runs, or how to compute the tensor) in plan order
        with ThreadPoolExecutor(self.threads, thread_name_prefix="ferry-read") as pool:
            try:
                nxt = next(todo, None)
                while nxt is not None or pending:
                    while nxt is not None and len(pending) < self.threads:
                        cost, item = nxt
                        if not isinstance(item, Runs):
                            if not pending:
                                self.budget.take(cost)  # nothing of ours is held: wait for other files
                            elif not self.budget.try_take(cost):
                                break
                            item = pool.submit(contextvars.copy_context().run, item)
                        pending.append((cost, item))
                        nxt = next(todo, None)
                    cost, item = pending[0]
                    value = item if isinstance(item, Runs) else item.result()
                    yield value
                    del value, item
                    pending.popleft()
                    self.budget.give(cost)  # written and freed
            finally:
                for cost, item in pending:
                    if isinstance(item, Future):
                        item.cancel()
                    self.budget.give(cost)


class _Cancelled(Exception):
    """Another file being written failed: stop this one at the next tensor."""


def execute(plan: Plan, out: Path, *, overwrite: bool = False, progress: bool = True,
            threads: int = 4, max_memory: int = DEFAULT_MAX_MEMORY) -> None:
    """Write `plan` to OUT. Files with tensors are written `min(threads, files)` at a time (each
    with its share of the read-ahead threads, all within one memory budget); the small files
    (configs, indexes, DCP metadata, which may describe the others) after them."""
    out = Path(out)
    check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.ferry-tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    bar = _progress(plan.total_bytes, progress)
    budget = Budget(max_memory)
    data = [f for f in plan.files if f.tensors]
    lanes = max(1, min(threads, len(data)))
    writer = _FileWriter(tmp, out, Materializer(max(1, threads // lanes), budget), bar)
    # buffers kept for reuse: the tensors in hand (the read-ahead budget) and their temporaries
    keep = 2 * max(max_memory, plan.largest_tensor_bytes)
    try:
        with buffers.pooled(keep):
            if lanes == 1:
                for f in data:
                    writer.write(f)
            else:
                _write_concurrently(writer, data, lanes)
        for f in plan.files:
            if not f.tensors:
                writer.write(f)
        _replace(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()


def _write_concurrently(writer: _FileWriter, files, lanes: int) -> None:
    with ThreadPoolExecutor(lanes, thread_name_prefix="ferry-write") as pool:
        futures = [pool.submit(contextvars.copy_context().run, writer.write, f) for f in files]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:  # in plan order, so the same failure is reported every time
                if future in done and future.exception() is not None:
                    raise future.exception()
        except BaseException:  # a failed file, or Ctrl-C: the others stop at their next tensor
            writer.stop.set()
            for future in futures:
                future.cancel()
            raise


class _FileWriter:
    """Writes planned files into the temporary directory, tensors from a shared Materializer."""

    def __init__(self, tmp: Path, out: Path, stream: Materializer, bar):
        self.tmp, self.out, self.stream, self.bar = tmp, out, stream, bar
        self.stop = threading.Event()
        self._bar_lock = threading.Lock()

    def write(self, f) -> None:
        target = self.tmp / f.path
        target.parent.mkdir(parents=True, exist_ok=True)

        def counted(tensors, runs_ok=False):
            for planned, t in zip(tensors, self.stream(tensors, runs_ok)):
                if self.stop.is_set():
                    raise _Cancelled()
                yield t
                del t  # before the next tensor is materialised
                with self._bar_lock:
                    self.bar.update(planned.nbytes)

        try:
            f.write(target, counted)
        except OSError as e:
            if e.errno not in _ENVIRONMENT_ERRORS:
                raise
            raise FerryError(f"{self.out / f.path}: cannot write ({e.strerror}); nothing was written") from None


def _replace(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        check_output(out, overwrite)
        trash = out.parent / f".{out.name}.ferry-old-{uuid.uuid4().hex[:8]}"
        os.rename(out, trash)
        os.rename(tmp, out)
        if trash.is_dir():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink()
    else:
        os.rename(tmp, out)


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="ferry", leave=False)
