"""Runs a plan: output built in a temporary directory beside OUT and renamed into place only when
complete; tensors materialised a few at a time by a small thread pool, under a memory budget,
written in plan order, then freed."""

from __future__ import annotations

import collections
import errno
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .errors import FerryError, OutputExistsError
from .io.files import Runs
from .plan import Plan, PlannedTensor

# the disk, not ferry: reported as one line (exit 2) rather than a traceback
_ENVIRONMENT_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM, errno.EFBIG}
DEFAULT_MAX_MEMORY = 512 * 1024**2  # read-ahead; one larger tensor still goes through alone


def check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: already exists (pass --overwrite to replace it)")


class Materializer:
    """Yields the tensors of a list in order, computing up to `threads` ahead while their bytes
    stay under `max_memory` (one tensor larger than the budget still goes through, alone). With
    `runs_ok`, a tensor whose bytes are runs of source files is yielded as `Runs`, unread."""

    def __init__(self, threads: int = 4, max_memory: int = DEFAULT_MAX_MEMORY):
        self.threads = max(1, threads)
        self.max_memory = max_memory

    def __call__(self, tensors: Sequence[PlannedTensor], runs_ok: bool = False) -> Iterator:
        def job(planned: PlannedTensor):
            runs = planned.value.byte_runs() if runs_ok else None
            return Runs(runs, planned.nbytes) if runs is not None else planned.value.materialize

        if self.threads == 1:
            for planned in tensors:
                item = job(planned)
                yield item if isinstance(item, Runs) else item()
            return
        pending: collections.deque[tuple[int, Future | Runs]] = collections.deque()
        in_flight = 0
        todo = iter(tensors)
        with ThreadPoolExecutor(self.threads, thread_name_prefix="ferry-read") as pool:
            try:
                nxt = next(todo, None)
                while nxt is not None or pending:
                    while nxt is not None and len(pending) < self.threads and (
                        not pending or in_flight + nxt.nbytes <= self.max_memory
                    ):
                        item = job(nxt)
                        cost = 0 if isinstance(item, Runs) else nxt.nbytes
                        pending.append((cost, item if isinstance(item, Runs) else pool.submit(item)))
                        in_flight += cost
                        nxt = next(todo, None)
                    cost, item = pending.popleft()
                    value = item if isinstance(item, Runs) else item.result()
                    in_flight -= cost
                    yield value
                    del value, item
            finally:
                for _, item in pending:
                    if isinstance(item, Future):
                        item.cancel()


def execute(plan: Plan, out: Path, *, overwrite: bool = False, progress: bool = True,
            threads: int = 4, max_memory: int = DEFAULT_MAX_MEMORY) -> None:
    out = Path(out)
    check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.ferry-tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    bar = _progress(plan.total_bytes, progress)
    stream = Materializer(threads, max_memory)
    try:
        for f in plan.files:
            target = tmp / f.path
            target.parent.mkdir(parents=True, exist_ok=True)

            def counted(tensors, runs_ok=False, _stream=stream):
                for planned, t in zip(tensors, _stream(tensors, runs_ok)):
                    yield t
                    bar.update(planned.nbytes)

            try:
                f.write(target, counted)
            except OSError as e:
                if e.errno not in _ENVIRONMENT_ERRORS:
                    raise
                raise FerryError(f"{out / f.path}: cannot write ({e.strerror}); nothing was written") from None
        _replace(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()


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
