"""Where a stage may write: outputs that can never destroy anything else.

Every folder a `mer` stage writes carries a marker file, ``.mer-output.json``, naming the stage::

    {"format_version": 1, "stage": "prepare", "note": "written by `mer prepare`; ..."}

(sorted keys, no timestamp, so a rerun writes the same bytes). `pipeline.core.atomic.atomic_output_dir`
writes it inside the temporary folder before the rename, so it appears with the folder; stages that
write in place (a feature store, a training folder, the tiny models) write it first
(`pipeline.core.atomic.write_marker`).

`check_output` is the one check every stage runs on its output path before it writes anything
(and `atomic_output_dir` runs it again, without the inputs, before it replaces a folder). It
refuses, with one `OutputPathError` line naming the path and saying what to do (the CLI prints it
and exits 2), an output that

- is, contains or lies inside an input of the same command (paths compared resolved, so a symlink
  or a `..` does not hide an input; inputs that do not exist are skipped: nothing to destroy);
- exists and is not a folder (a regular file, a device, a dangling symlink);
- is a non-empty folder with no marker (no `mer` stage wrote it), or whose marker names another
  kind of stage (evaluate's `--out` pointing at a training folder). A stage may accept an unmarked
  folder it wrote before markers existed (`legacy`: the resumed feature stores and training folders);
- cannot be written: under /proc or /sys, on a read-only file system, below a file. Probed by
  creating and removing an empty folder in the nearest existing ancestor.

An empty existing folder is accepted. `check_output_file` does the same for an output that is one
file (`mer lineage --json FILE`), which replaces only a file it wrote itself. This module writes
nothing but that probe.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from pipeline.core.errors import PipelineError

MARKER_FILE = ".mer-output.json"
MARKER_FORMAT = 1

# (label, path) pairs: the inputs of one command, e.g. ("--root", Path("X/MELD.Raw")); None paths are skipped
Inputs = Iterable[tuple[str, "Path | str | None"]]
REPLACE_ADVICE = "or delete it yourself if you mean to replace it"


class OutputPathError(PipelineError):
    """An output path a stage refuses to write: one line naming the path, the reason and what to do."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {message}")


def marker_bytes(stage: str) -> bytes:
    """The marker file's content for `stage` (the `mer` subcommand that writes the folder)."""
    record = {
        "format_version": MARKER_FORMAT,
        "stage": stage,
        "note": f"written by `mer {stage}`; mer stages replace a folder only when this file names a stage "
        "of their own kind",
    }
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")


def read_marker(folder: Path | str) -> str | None:
    """The stage named by `folder`'s marker, or None (no marker, or one that is not ours)."""
    try:
        record = json.loads((Path(folder) / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    stage = record.get("stage") if isinstance(record, dict) else None
    return stage if isinstance(stage, str) and stage else None


def check_output(
    out: Path | str,
    stage: str,
    inputs: Inputs = (),
    *,
    option: str = "--out",
    subject: str | None = None,
    legacy: Callable[[Path], bool] | None = None,
    container: bool = False,
) -> Path:
    """Refuse an output folder `out` of `mer STAGE` that would destroy something (see the module
    docstring); return it as a Path.

    `option` is the command-line name of the output (`--out`, `OUT`) used in the advice, `subject`
    what the message calls it (default: `option`). `legacy(folder)` says whether an unmarked,
    non-empty folder is this stage's own output from before markers. `container=True` is for a
    folder the stage only writes new folders into (import-features' --out, which gets prepared/
    and features/): it may hold anything, inputs too, but must not be or lie inside an input, must
    be a folder or absent, and writable; the folders written in it get the full check.
    """
    out = Path(out)
    subject = subject or option
    _check_inputs(out, inputs, option, subject, may_contain=container)
    _check_existing(out, stage, option, subject, legacy, container)
    _check_writable(out, option, subject)
    return out


def check_output_file(
    path: Path | str,
    inputs: Inputs = (),
    *,
    option: str,
    replaceable: Callable[[Path], bool],
    what: str,
) -> Path:
    """Refuse an output file `path` that is or lies inside an input, is an existing folder (or
    anything but a regular file), is an existing file that `replaceable` does not recognise as
    `what` (the stage's own earlier output), or cannot be written."""
    path = Path(path)
    _check_inputs(path, inputs, option, option)
    if os.path.lexists(path):
        try:
            mode = path.stat().st_mode
        except OSError:
            mode = 0
        if stat.S_ISDIR(mode):
            raise OutputPathError(path, f"{option} is an existing folder, not a file; choose another {option}")
        if not stat.S_ISREG(mode):
            raise OutputPathError(path, f"{option} is an existing {_kind(path, mode)}, not a file; "
                                        f"choose another {option}")
        if not replaceable(path):
            raise OutputPathError(path, f"{option} is an existing file that is not {what}; choose another "
                                        f"{option}, {REPLACE_ADVICE}")
    _check_writable(path, option, option, probe_self=False)
    return path


# --------------------------------------------------------------------------------------------------


def _resolved(path: Path) -> Path:
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return Path(os.path.abspath(path))


def _check_inputs(out: Path, inputs: Inputs, option: str, subject: str, may_contain: bool = False) -> None:
    target = _resolved(out)
    for label, given in inputs:
        if given is None or str(given) == "":
            continue
        given = Path(given)
        if not os.path.lexists(given):
            continue  # nothing there to destroy; the stage says itself that the input is missing
        source = _resolved(given)
        if target == source:
            problem = f"is the input {label} ({given}): writing there would destroy it"
        elif target.is_relative_to(source):
            problem = f"lies inside the input {label} ({given}): writing there would change it"
        elif source.is_relative_to(target) and not may_contain:
            problem = f"contains the input {label} ({given}): replacing it would delete that input"
        else:
            continue
        raise OutputPathError(out, f"{subject} {problem}; choose another {option}, outside every input of the command")


def _kind(path: Path, mode: int) -> str:
    if os.path.islink(path) and not os.path.exists(path):
        return "symbolic link to a missing target"
    if stat.S_ISREG(mode):
        return "file"
    return "special file (device, pipe or socket)"


def _check_existing(
    out: Path, stage: str, option: str, subject: str, legacy: Callable[[Path], bool] | None, container: bool
) -> None:
    if not os.path.lexists(out):
        return
    try:
        mode = out.stat().st_mode
    except OSError:
        mode = 0  # a dangling symlink, or a parent that cannot be searched
    if not stat.S_ISDIR(mode):
        raise OutputPathError(
            out, f"{subject} is an existing {_kind(out, mode)}, not a folder; choose another {option}, {REPLACE_ADVICE}"
        )
    if container:
        return
    try:
        entries = sorted(entry.name for entry in os.scandir(out))
    except OSError as exc:
        raise OutputPathError(out, f"{subject} is a folder that cannot be read ({exc.strerror or exc}); "
                                   f"choose another {option}") from None
    if not entries:
        return
    found = read_marker(out)
    if found == stage:
        return
    if found is not None:
        raise OutputPathError(
            out, f"{subject} holds the output of `mer {found}`, not the output of `mer {stage}`; "
                 f"choose another {option}, {REPLACE_ADVICE}"
        )
    if legacy is not None and legacy(out):
        return
    inner = [f"{name}/ (`mer {inner_stage}`)" for name in entries if (inner_stage := read_marker(out / name))]
    holds = f"; it holds outputs of mer stages: {', '.join(inner[:3])}" if inner else ""
    raise OutputPathError(
        out, f"{subject} is a non-empty folder that is not the output of `mer {stage}` (no mer stage wrote it: "
             f"it has no {MARKER_FILE}{holds}); choose another {option}, {REPLACE_ADVICE}"
    )


def _check_writable(out: Path, option: str, subject: str, probe_self: bool = True) -> None:
    """The nearest existing folder above `out` (and `out` itself, if it is a folder) accepts a new entry."""
    absolute = Path(os.path.abspath(out))
    ancestor = absolute.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(out, f"{subject} cannot be created: {ancestor} is not a folder; "
                                   f"choose another {option}")
    targets = [ancestor] + ([absolute] if probe_self and absolute.is_dir() else [])
    for target in targets:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".mer-probe-", dir=target))
        except OSError as exc:
            verb = "written" if target == absolute else "created"
            raise OutputPathError(
                out, f"{subject} cannot be {verb}: nothing can be created in {target} ({exc.strerror or exc}); "
                     f"choose another {option} in a writable place"
            ) from None


__all__ = [
    "MARKER_FILE",
    "OutputPathError",
    "check_output",
    "check_output_file",
    "marker_bytes",
    "read_marker",
]
