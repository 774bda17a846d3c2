"""Stage reports: one shape, in every stage's output folder, for what went in, what came out and why.

Every stage (prepare, extract, train, evaluate) writes ``report.json`` with at least::

    {"stage": "extract", "corpus": "meld",
     "counts": {"in": 123, "out": 121, "dropped": 2, "flagged": 5},
     "dropped_by_reason": {"unreadable_clip": 1, "missing_clip": 1},
     "flagged_by_reason": {"no_face": 5}}

- ``in``: utterances the stage was given; ``out``: utterances it passed on; ``dropped``: the rest.
  ``in == out + dropped`` always holds: `stage_counts` refuses to build a report where it does not,
  so an utterance cannot disappear without a reason.
- ``flagged``: utterances passed on with a caveat. One utterance can carry several reasons, so the
  ``*_by_reason`` values may sum to more than the count.

Stage-specific keys (the lists of ids with their reasons, the store's metadata...) sit beside these.
`mer lineage` and `mer report` read only the common keys, through `read_stage_report`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError

REPORT_FILE = "report.json"
COMMON_KEYS = ("stage", "corpus", "counts", "dropped_by_reason", "flagged_by_reason")


def split_reasons(reason: str) -> list[str]:
    """Reasons are stored joined by "; " when one utterance has several."""
    return [part.strip() for part in reason.split(";") if part.strip()]


def count_reasons(reasons: Iterable[str]) -> dict[str, int]:
    """{reason: utterances}, each joined reason counted once per part, sorted by reason."""
    counter = Counter(part for reason in reasons for part in split_reasons(reason))
    return dict(sorted(counter.items()))


def stage_counts(
    stage: str,
    corpus: str,
    n_in: int,
    n_out: int,
    dropped: Sequence[tuple[str, str]],
    flagged: Sequence[tuple[str, str]],
) -> dict[str, Any]:
    """The common keys of a stage report, from (utterance id, reason) pairs of the dropped and flagged ones.

    Raises when ``n_in != n_out + len(dropped)``: an utterance went missing without a reason, which
    is a bug in the stage, never something to write down and carry on.
    """
    if n_in != n_out + len(dropped):
        raise RuntimeError(
            f"{stage} {corpus}: {n_in} utterances in, {n_out} out and {len(dropped)} dropped with a reason: "
            f"{n_in - n_out - len(dropped)} unaccounted for"
        )
    return {
        "stage": stage,
        "corpus": corpus,
        "counts": {"in": n_in, "out": n_out, "dropped": len(dropped), "flagged": len(flagged)},
        "dropped_by_reason": count_reasons(reason for _, reason in dropped),
        "flagged_by_reason": count_reasons(reason for _, reason in flagged),
    }


def read_stage_report(folder: Path | str) -> dict[str, Any]:
    """A stage's report.json, checked for the common keys and for ``in == out + dropped``."""
    path = Path(folder) / REPORT_FILE
    if not path.is_file():
        raise PipelineError(f"{path}: stage report not found (the stage has not finished in {Path(folder)})")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{path}: not a readable JSON report ({exc})") from exc
    missing = [key for key in COMMON_KEYS if key not in report]
    if missing:
        raise PipelineError(f"{path}: stage report lacks {', '.join(missing)} (written by an older version?)")
    counts = report["counts"]
    if counts["in"] != counts["out"] + counts["dropped"]:
        raise PipelineError(
            f"{path}: counts do not add up: in {counts['in']} != out {counts['out']} + dropped {counts['dropped']}"
        )
    return report


def describe_counts(report: dict[str, Any]) -> str:
    """One line: 'extract meld: 123 in, 121 out, 2 dropped (missing_clip 1, ...), 5 flagged (...)'."""
    counts = report["counts"]

    def reasons(kind: str) -> str:
        items = report[f"{kind}_by_reason"]
        return f" ({', '.join(f'{r} {n}' for r, n in items.items())})" if items else ""

    return (
        f"{report['stage']} {report['corpus']}: {counts['in']} in, {counts['out']} out, "
        f"{counts['dropped']} dropped{reasons('dropped')}, {counts['flagged']} flagged{reasons('flagged')}"
    )
