"""`mer aggregate`: many runs' metrics.json -> one results table (mean +- std per score), a DVC metric.

The runs are the folds of a protocol (IEMOCAP leave-one-session-out, `protocols/iemocap-loso/`), the
seeds of `mer train --seeds`, or both: any `metrics.json` written by `mer train` or `mer evaluate`.
All must be of one corpus and one model (an average over different models is no result); each run
is listed with its path, seed, split and scores, so the table can be traced back run by run
(`mer lineage RUN` for each). The test-oracle (the best test epoch) is aggregated under its own key
when every run carries it: an optimistic bound, never the result.

    mer aggregate data/loso/iemocap/fold-*/metrics.json --out data/loso/iemocap/summary.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.core.atomic import atomic_write_bytes
from pipeline.core.errors import PipelineError, one_line
from pipeline.core.outputs import check_output_file
from pipeline.formats.run_files import METRICS_FILE
from pipeline.training.metrics import ORACLE_KEY, SUMMARY_KEYS, aggregate_runs

SUMMARY_NAME = "aggregate"  # the `kind` an aggregate file carries, so a rerun may replace it


def read_run(path: Path) -> dict[str, Any]:
    """A run's metrics.json (or the folder holding it), checked to carry dev and test scores."""
    path = Path(path)
    file = path / METRICS_FILE if path.is_dir() else path
    try:
        metrics = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{file}: no such metrics file (train or evaluate that run first)") from None
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{file}: not a readable metrics.json ({one_line(exc, 120)})") from None
    for split in ("dev", "test"):
        scores = metrics.get(split) if isinstance(metrics, dict) else None
        if not isinstance(scores, dict) or not all(isinstance(scores.get(k), (int, float)) for k in SUMMARY_KEYS):
            raise PipelineError(f"{file}: not a metrics.json of `mer train` or `mer evaluate` (no {split} scores)")
    return metrics


def _run_facts(file: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """Who a run is: the same keys from a training metrics.json and an evaluation's (under "checkpoint")."""
    checkpoint = metrics.get("checkpoint", {})
    return {
        "path": file.as_posix(),
        "corpus": metrics.get("corpus") or checkpoint.get("corpus"),
        "model": metrics.get("model") or checkpoint.get("model") or "cmath",
        "seed": metrics.get("seed", checkpoint.get("seed")),
        "split": metrics.get("split", "release"),
        "dev": {k: metrics["dev"][k] for k in SUMMARY_KEYS},
        "test": {k: metrics["test"][k] for k in SUMMARY_KEYS},
        **({ORACLE_KEY: {k: metrics[ORACLE_KEY][k] for k in SUMMARY_KEYS}} if ORACLE_KEY in metrics else {}),
    }


def aggregate(paths: list[Path], out: Path) -> dict[str, Any]:
    """Aggregate the runs at `paths` into `out` (JSON, written atomically); returns what was written."""
    if not paths:
        raise PipelineError("no metrics file given: name each run's metrics.json (or its folder)")
    files = [Path(p) / METRICS_FILE if Path(p).is_dir() else Path(p) for p in paths]
    check_output_file(Path(out), [("RUN", f) for f in files], option="--out", replaceable=_is_aggregate,
                      what="a results table written by `mer aggregate`")
    if len(set(files)) != len(files):
        raise PipelineError(f"a run is given twice: {sorted({f.as_posix() for f in files if files.count(f) > 1})}")
    runs = [_run_facts(f, read_run(f)) for f in files]
    for key in ("corpus", "model"):
        values = sorted({str(r[key]) for r in runs})
        if len(values) > 1:
            raise PipelineError(f"the runs are of different {key}s ({', '.join(values)}): aggregate one {key} at a time")
    table = {"kind": SUMMARY_NAME, "corpus": runs[0]["corpus"], "model": runs[0]["model"], **aggregate_runs(runs),
             "runs": runs}
    atomic_write_bytes(Path(out), (json.dumps(table, indent=2) + "\n").encode("utf-8"))
    return table


def _is_aggregate(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("kind") == SUMMARY_NAME
    except (OSError, ValueError, AttributeError):
        return False


def describe(table: dict[str, Any]) -> str:
    """One line per headline score: mean +- std over the runs."""
    lines = [f"{table['corpus']} {table['model']}: {table['count']} runs"]
    for key, mean in table["mean"].items():
        lines.append(f"  {key}: {mean:.4f} +- {table['std'][key]:.4f}")
    return "\n".join(lines)
