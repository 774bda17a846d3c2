"""One lock per output: two `mer` runs never write the same output at once.

A stage takes the lock of its output before it writes anything and holds it for its whole run
(`output_lock`); a second run on the same output waits up to `--wait SECONDS` for it, or refuses at
once with one `OutputBusyError` line naming the lock file and the `--wait` flag (the CLI prints it
and exits 2).

The lock is an exclusive `fcntl.flock` on a lock file. The kernel drops it when the holder's file
descriptor is closed, so it is released on exit, on an error and also when the holder is killed
(`kill -9`): a lock file left behind by a dead process is free, never stale.

Where the lock file lives:

- beside the output, ``<parent>/.<name>.lock`` (`lock_path`), for outputs that are replaced whole
  (`pipeline.core.atomic.atomic_output_dir` renames a temporary ``.<name>.<random>.tmp`` folder over
  them and moves the old one aside to ``.<name>.old``: a lock inside would go with it). The file
  is removed when the lock is released, so a finished run leaves nothing beside its output; only a
  killed run leaves it (free, and removed by the next run). Removal is safe: a waiter that got the
  lock on a file that was removed meanwhile sees that the path no longer names its file, and
  takes the lock again on the current one.
- inside a folder written in place (a feature store's ``.lock``, `pipeline.formats.feature_store`),
  kept there (``remove=False``).

This module writes nothing but the lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from pipeline.core.errors import PipelineError

POLL_S = 0.05
WAIT_FLAG = "--wait"


class OutputBusyError(PipelineError):
    """Another process holds an output's lock: one line naming the output, the lock file and `--wait`."""


def lock_path(output: Path | str) -> Path:
    """The lock file of an output that is replaced whole: ``.<name>.lock`` in its parent folder."""
    output = Path(output)
    return output.parent / f".{output.name}.lock"


def check_wait(wait_s: float, flag: str = WAIT_FLAG) -> float:
    """`wait_s` as a float, or a one-line error naming `flag` when it is negative or not finite."""
    try:
        value = float(wait_s)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise PipelineError(f"{flag} must be a number of seconds >= 0, got {wait_s!r}")
    return value


class OutputLock:
    """An exclusive flock on `path`, the lock of `output` (what the messages call `what`).

    Use `acquire(wait_s)` / `release()` (as a context manager it acquires without waiting, unless
    already acquired, and releases). `remove`: delete the lock file on release (a lock beside an
    output), else keep it (a lock inside a folder written in place). `flag` is the command-line
    option the messages name for waiting.
    """

    def __init__(
        self, path: Path | str, output: Path | str, what: str, *, remove: bool = True, flag: str = WAIT_FLAG
    ) -> None:
        self.path = Path(path)
        self.output = Path(output)
        self.what = what
        self.remove = remove
        self.flag = flag
        self._fd: int | None = None
        self._created: list[Path] = []  # folders `acquire` made for the lock file, deepest first

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait_s: float = 0.0) -> None:
        """Take the lock, waiting up to `wait_s` seconds for another holder; else OutputBusyError."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: lock already held by this object")
        wait_s = check_wait(wait_s, self.flag)
        deadline = time.monotonic() + wait_s
        fd = self._open()
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise OutputBusyError(self.busy_message(wait_s)) from None
                    time.sleep(POLL_S)  # the file stays open while we wait: the holder's successor is us
                    continue
                if self._names(fd):
                    self._fd, fd = fd, -1
                    return
                # the holder removed the file as it released it: lock the one now at the path
                os.close(fd)
                fd = -1
                fd = self._open()
        finally:
            if fd >= 0:
                os.close(fd)
                self._remove_created()

    def _open(self) -> int:
        """Open (create) the lock file, creating the folders above it that are missing; they are
        removed again when the lock is refused or released, if empty, so a refused run leaves nothing."""
        for _ in range(100):  # another run's release may remove a folder this one just made
            missing = []
            folder = self.path.parent
            while not folder.exists() and folder != folder.parent:
                missing.append(folder)
                folder = folder.parent
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._created = self._created or missing
            try:
                return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                continue
        raise PipelineError(f"{self.path}: the lock file's folder keeps disappearing")

    def _remove_created(self) -> None:
        created, self._created = self._created, []
        for folder in created:  # deepest first
            try:
                os.rmdir(folder)
            except OSError:
                break  # not empty (the output, another run's lock) or gone: keep it and the ones above

    def release(self) -> None:
        """Drop the lock (removing the lock file first, if `remove` and it is still ours), and the
        folders `acquire` made for the lock file if they are empty (the run wrote nothing there, e.g.
        it failed before its output); idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if self.remove and self._names(fd):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)  # while still locked: a waiter then finds the file gone and retries
        finally:
            os.close(fd)  # closing the only descriptor drops the flock
            self._remove_created()

    def _names(self, fd: int) -> bool:
        """Whether `self.path` is still the file open as `fd`."""
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)

    def busy_message(self, wait_s: float) -> str:
        if wait_s > 0:
            return (
                f"{self.output}: another process is still writing this {self.what} after waiting {wait_s:g} s "
                f"(it holds the lock {self.path}); let it finish, or pass a longer {self.flag} SECONDS"
            )
        return (
            f"{self.output}: another process is writing this {self.what} (it holds the lock {self.path}); "
            f"wait for it to finish, or pass {self.flag} SECONDS to wait for it"
        )

    def __enter__(self) -> OutputLock:
        if self._fd is None:
            self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


@contextlib.contextmanager
def output_lock(output: Path | str, stage: str, wait_s: float = 0.0, *, enabled: bool = True) -> Iterator[Path]:
    """Hold the lock of `output` (a folder `mer STAGE` replaces whole) for the block; yield the lock file.

    `enabled=False` takes no lock (the other processes of a multi-process run, whose main process
    holds it)."""
    with output_locks([output], stage, wait_s, enabled=enabled) as paths:
        yield paths[0]


@contextlib.contextmanager
def output_locks(
    outputs: Sequence[Path | str], stage: str, wait_s: float = 0.0, *, enabled: bool = True
) -> Iterator[list[Path]]:
    """Hold the locks of several outputs of one run, taken in the given order (each waiting up to
    `wait_s`); if one is refused, those already taken are released and nothing is left behind."""
    locks = [OutputLock(lock_path(output), output, f"`mer {stage}` output") for output in outputs]
    if not enabled:
        yield [lock.path for lock in locks]
        return
    taken: list[OutputLock] = []
    try:
        for lock in locks:
            lock.acquire(wait_s)
            taken.append(lock)
    except BaseException:
        for lock in reversed(taken):
            lock.release()
        raise
    try:
        yield [lock.path for lock in locks]
    finally:
        for lock in reversed(taken):
            lock.release()


__all__ = ["OutputBusyError", "OutputLock", "WAIT_FLAG", "check_wait", "lock_path", "output_lock", "output_locks"]
