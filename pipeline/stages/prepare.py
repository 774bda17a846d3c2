"""The `prepare` stage: raw corpus tree -> audited utterance manifest.

Output folder (written atomically: it appears whole or not at all):
- `manifest.parquet`: one row per utterance (schema in `pipeline.formats.manifest`);
- `summary.json`: counts per split and label, every flagged and excluded utterance with its reason,
  files seen and ignored, and the raw tree's fingerprint;
- `report.json`: the stage report every stage writes (`pipeline.formats.stage_report`): utterance records
  seen (in), kept (out), excluded (dropped) and flagged, by reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.core.atomic import atomic_output_dir
from pipeline.corpora import CorpusSpec, get_corpus
from pipeline.core.errors import PipelineError
from pipeline.core.locks import output_lock
from pipeline.core.outputs import check_output
from pipeline.formats.manifest import (
    MANIFEST_FILE, build_summary, record_raw_root, write_manifest, write_summary_and_report,
)


def prepare_corpus(
    corpus: str, root: Path, out_dir: Path, label_policy: str | None = None, wait_s: float = 0.0
) -> dict[str, Any]:
    """Read `root` with the reader of `corpus` and write the manifest and summary to `out_dir`.

    The run holds `out_dir`'s lock (`pipeline.core.locks`) from after the output check to the end,
    waiting up to `wait_s` seconds for another run on it."""
    spec = get_corpus(corpus)
    policy = label_policy or spec.default_policy
    if policy not in spec.label_policies:
        raise PipelineError(
            f"unknown label policy {policy!r} for {corpus}; choose one of {', '.join(spec.label_policies)}"
        )
    root = Path(root)
    if not root.exists():
        raise PipelineError(f"{root}: raw corpus folder does not exist (set --root to where {corpus} was unpacked)")
    check_output(out_dir, "prepare", [("--root", root)])  # before the (long) read
    with output_lock(out_dir, "prepare", wait_s):
        return _prepare(spec, corpus, root, Path(out_dir), policy)


def _prepare(spec: CorpusSpec, corpus: str, root: Path, out_dir: Path, policy: str) -> dict[str, Any]:
    result = spec.read(root, policy)
    if not result.utterances:
        raise PipelineError(f"{root}: the {corpus} reader found no utterance to keep under policy {policy!r}")
    summary = build_summary(result, record_raw_root(root, out_dir))
    summary["pipeline_version"] = __version__
    metadata = {
        "corpus": corpus,
        "label_policy": policy,
        "label_map": json.dumps(summary["label_map"]),
        "raw_root": summary["raw_root"],
        "raw_tree_sha256": summary["raw_tree_sha256"],
        "pipeline_version": __version__,
    }
    if result.split_schemes:
        metadata["split_schemes"] = json.dumps(result.split_schemes, sort_keys=True)
    with atomic_output_dir(Path(out_dir), "prepare") as tmp:
        write_manifest(result.utterances, tmp / MANIFEST_FILE, metadata)
        write_summary_and_report(tmp, result, summary)
    return summary


def describe(summary: dict[str, Any]) -> str:
    """One line per split for the terminal: the stage's report of counts in / out / flagged."""
    counts = summary["counts"]
    lines = [
        f"{summary['corpus']} ({summary['label_policy']}): {counts['utterances_seen']} utterances seen, "
        f"{counts['utterances_out']} kept, {counts['excluded']} excluded, {counts['flagged']} flagged"
    ]
    for split, info in summary["splits"].items():
        labels = ", ".join(f"{k} {v}" for k, v in info["labels"].items())
        lines.append(f"  {split}: {info['dialogues']} dialogues, {info['utterances']} utterances ({labels})")
    for reason, n in summary["flag_counts"].items():
        lines.append(f"  flagged {n} x {reason}")
    for reason, n in summary["exclusion_counts"].items():
        lines.append(f"  excluded {n} x {reason}")
    return "\n".join(lines)
