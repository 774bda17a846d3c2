"""Atomic outputs: a stage's result appears whole or not at all.

Everything is written next to its final place under a temporary name and renamed at the end,
so a crash, a kill or a bad input never leaves a half-written file that a later stage could
read as valid. A folder is replaced only when it is a `mer` stage's own output (its marker file names
the stage, see `pipeline.core.outputs`), so an `--out` pointing at anything else is refused, never
deleted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.outputs import MARKER_FILE, check_output, marker_bytes

# errors that mean "out of room", not a bug: the device is full, a quota or a file-size limit is reached
_NO_SPACE = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})


class OutputWriteError(PipelineError, OSError):
    """An output could not be written for lack of space; nothing partial was left in its place.

    A PipelineError, so the CLI prints it as one line (exit 2) instead of as a bug; still an OSError
    (with the original errno) for callers that catch those.
    """

    def __init__(self, path: Path, cause: OSError) -> None:
        reason = cause.strerror or str(cause)
        super().__init__(
            f"{path}: write failed: {reason} (no space left on the device, or a quota or file-size limit); "
            "nothing partial was kept: free some space and run the stage again"
        )
        self.errno = cause.errno

    def __str__(self) -> str:
        return str(self.args[0])


def _no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and not isinstance(exc, OutputWriteError) and exc.errno in _NO_SPACE


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode(is_dir: bool) -> int:
    """mkstemp/mkdtemp create private (0600/0700) entries; outputs get the usual umask-based mode."""
    return (0o777 if is_dir else 0o666) & ~_umask()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # a full device can refuse the new directory entry itself
        if _no_space(exc):
            raise OutputWriteError(path, exc) from exc
        raise
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode(is_dir=False))
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if _no_space(exc):
            raise OutputWriteError(path, exc) from exc
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_output_dir(path: Path, stage: str, *, legacy: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a fresh temporary folder that replaces `path` only if the block succeeds.

    `stage` is the `mer` subcommand writing it: its marker (`pipeline.core.outputs`) is written into
    the temporary folder at the end of the block, so it appears with the folder. `path` is checked
    before (`check_output`, without the inputs, which the stage checked itself) and again just before
    the rename: only an absent or empty folder or an earlier output of the same stage is replaced
    (`legacy`: see `check_output`). On any exception the temporary folder is removed and an existing
    `path` is left untouched.
    """
    path = Path(path)
    check_output(path, stage, legacy=legacy)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, _default_mode(is_dir=True))
    try:
        yield tmp
        (tmp / MARKER_FILE).write_bytes(marker_bytes(stage))
        check_output(path, stage, legacy=legacy)  # nothing else appeared there meanwhile
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if _no_space(exc):
            raise OutputWriteError(path, exc) from exc
        raise
    replace_dir(tmp, path)


def write_marker(folder: Path, stage: str) -> None:
    """Mark `folder` (which exists) as `mer STAGE`'s output, for stages that write in place; an
    identical marker is left as it is (its modification time too)."""
    path = Path(folder) / MARKER_FILE
    data = marker_bytes(stage)
    with contextlib.suppress(OSError):
        if path.read_bytes() == data:
            return
    atomic_write_bytes(path, data)


def _replaced(final: Path) -> Path:
    return final.parent / f".{final.name}.old"


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the finished folder `tmp` at `final` (a sibling): the previous `final`, if any, is moved
    aside to `.<name>.old`, `tmp` renamed into place, then the old one removed. Between the two
    renames `final` is absent; `restore_replaced_dir` undoes a kill at that moment."""
    old = _replaced(final)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def restore_replaced_dir(final: Path) -> None:
    """After a kill between `replace_dir`'s two renames, `final` is gone and `.<name>.old` is the whole
    previous folder (its successor may be incomplete): put the old one back."""
    old = _replaced(final)
    if not final.exists() and old.is_dir():
        os.replace(old, final)
