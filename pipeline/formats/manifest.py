"""The utterance manifest: one row per utterance, the contract between `prepare` and every later stage.

Readers return a `CorpusReadResult`; `write_manifest` stores its utterances as Parquet (loadable
with pyarrow, pandas or `datasets.Dataset.from_parquet`) and `build_summary` audits it.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import PipelineError, one_line
from pipeline.core.fingerprint import Fingerprint, tree_digest

MANIFEST_FILE = "manifest.parquet"
SUMMARY_FILE = "summary.json"
SPLITS = ("train", "dev", "test")


@dataclass
class Utterance:
    """One utterance of one dialogue, with everything needed to find its text, audio and video."""

    corpus: str
    split: str
    dialogue_id: str
    # 0-based position among ALL turns of the raw dialogue, labelled or not, so it is the same under
    # every label policy; sort by it for dialogue order, and expect gaps where turns were left out
    turn_index: int
    utterance_id: str  # unique within the corpus
    speaker: str
    text: str
    label: str
    label_index: int
    start_s: float | None  # the utterance's span on the source timeline
    end_s: float | None
    audio_path: str | None  # relative to the raw root; None when no audio file exists
    audio_start_s: float | None  # span inside audio_path; end None = to the end of the file
    audio_end_s: float | None
    video_path: str | None
    video_start_s: float | None
    video_end_s: float | None
    # part of the frame that shows the speaker: "full", "left" or "right" (IEMOCAP: the session letter's
    # actor is on the left, pipeline.corpora.iemocap.speaker_frame_side)
    video_region: str
    has_text: bool
    has_audio: bool
    has_video: bool
    flags: list[str] = field(default_factory=list)  # reasons an otherwise valid utterance is suspect
    sources: list[Fingerprint] = field(default_factory=list)  # every raw file this row was read from
    attributes: dict[str, Any] = field(default_factory=dict)  # corpus-specific extras (JSON)

    def flag(self, reason: str) -> None:
        if reason not in self.flags:
            self.flags.append(reason)


@dataclass
class Exclusion:
    """An utterance the reader saw but left out of the manifest, and why."""

    split: str | None
    utterance_id: str
    reason: str
    source: str | None = None  # "file:line" where it was found


@dataclass
class CorpusReadResult:
    corpus: str
    label_policy: str
    label_names: list[str]  # index -> name
    utterances: list[Utterance]
    excluded: list[Exclusion] = field(default_factory=list)
    # files or lines the reader saw and deliberately did not use (e.g. macOS "._" files,
    # clips with no label row, transcript lines without an utterance id), by kind
    ignored: dict[str, list[str]] = field(default_factory=dict)
    raw_files: list[Fingerprint] = field(default_factory=list)
    split_rule: str = ""
    # other splits of the same utterances the reader defines, by name: {"dev": [dialogue ids], "test":
    # [...]}, every other dialogue train (e.g. IEMOCAP's leave-one-session-out folds "loso-1".."loso-5");
    # the trainer's `train.split` picks one, so one manifest and one set of stores serve every fold
    split_schemes: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    # how many utterance records the reader found before any policy was applied
    utterances_seen: int = 0

    def ignore(self, kind: str, what: str) -> None:
        self.ignored.setdefault(kind, []).append(what)


_SOURCE_TYPE = pa.struct(
    [
        ("role", pa.string()),
        ("path", pa.string()),
        ("size", pa.int64()),
        ("sha256", pa.string()),
        ("mtime_ns", pa.int64()),
    ]
)

MANIFEST_SCHEMA = pa.schema(
    [
        ("corpus", pa.string()),
        ("split", pa.string()),
        ("dialogue_id", pa.string()),
        ("turn_index", pa.int32()),
        ("utterance_id", pa.string()),
        ("speaker", pa.string()),
        ("text", pa.string()),
        ("label", pa.string()),
        ("label_index", pa.int32()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("audio_path", pa.string()),
        ("audio_start_s", pa.float64()),
        ("audio_end_s", pa.float64()),
        ("video_path", pa.string()),
        ("video_start_s", pa.float64()),
        ("video_end_s", pa.float64()),
        ("video_region", pa.string()),
        ("has_text", pa.bool_()),
        ("has_audio", pa.bool_()),
        ("has_video", pa.bool_()),
        ("flags", pa.list_(pa.string())),
        ("sources", pa.list_(_SOURCE_TYPE)),
        ("attributes", pa.string()),
    ]
)


def _row(utt: Utterance) -> dict[str, Any]:
    row = {f.name: getattr(utt, f.name) for f in fields(utt)}
    row["sources"] = [asdict(fp) for fp in utt.sources]
    row["attributes"] = json.dumps(utt.attributes, sort_keys=True, ensure_ascii=False)
    return row


def sort_key(utt: Utterance) -> tuple:
    return (SPLITS.index(utt.split) if utt.split in SPLITS else len(SPLITS), utt.dialogue_id, utt.turn_index)


def write_manifest(utterances: list[Utterance], path: Path, metadata: dict[str, str]) -> None:
    """Write the manifest as Parquet, rows in (split, dialogue, turn) order; metadata goes in the schema."""
    rows = [_row(u) for u in sorted(utterances, key=sort_key)]
    schema = MANIFEST_SCHEMA.with_metadata({k: str(v) for k, v in metadata.items()})
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path)


def write_summary_and_report(folder: Path, result: CorpusReadResult, summary: dict[str, Any],
                             stage: str = "prepare") -> None:
    """The audit files of a prepared folder (beside manifest.parquet): summary.json and report.json.

    The stage report accounts for every utterance record the reader saw: kept, or excluded with a reason.
    """
    from pipeline.formats.stage_report import REPORT_FILE, stage_counts

    report = stage_counts(
        stage, result.corpus, result.utterances_seen, len(result.utterances),
        dropped=[(e.utterance_id, e.reason) for e in result.excluded],
        flagged=[(u.utterance_id, "; ".join(u.flags)) for u in result.utterances if u.flags],
    )
    report["details"] = f"{SUMMARY_FILE} lists every excluded and flagged utterance with its source"
    for name, value in ((SUMMARY_FILE, summary), (REPORT_FILE, report)):
        (folder / name).write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _manifest_file(path: Path) -> Path:
    path = Path(path)
    return path / MANIFEST_FILE if path.is_dir() else path


def _unreadable(path: Path, exc: Exception) -> PipelineError:
    return PipelineError(
        f"{path}: not a readable manifest ({one_line(exc, 160)}); it is truncated, corrupt or not written by "
        "`mer prepare`: rerun `mer prepare` (or `dvc checkout` it)"
    )


def _check_columns(path: Path, names: list[str]) -> None:
    missing = [name for name in MANIFEST_SCHEMA.names if name not in names]
    if missing:
        raise _unreadable(path, ValueError(f"no column(s) {', '.join(missing)}"))


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Rows of a manifest as dicts (attributes decoded). Accepts the file or its folder.

    A truncated or garbage file, or one without the manifest's columns, is a one-line input error."""
    path = _manifest_file(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(path, exc) from None
    _check_columns(path, table.column_names)
    rows = table.to_pylist()
    for row in rows:
        try:
            row["attributes"] = json.loads(row["attributes"]) if row["attributes"] else {}
        except (TypeError, ValueError) as exc:
            raise _unreadable(path, ValueError(f"utterance {row['utterance_id']}: attributes are not JSON ({exc})")) from None
    return rows


def manifest_metadata(path: Path) -> dict[str, str]:
    """The metadata `mer prepare` stored in the manifest's schema (corpus, label map, raw root, ...)."""
    path = _manifest_file(path)
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(path, exc) from None
    _check_columns(path, schema.names)
    meta = schema.metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items()}


RELEASE_SPLIT = "release"  # `train.split`: the split the manifest's rows carry


def split_schemes(metadata: dict[str, str]) -> dict[str, dict[str, list[str]]]:
    """The other splits a manifest offers (`CorpusReadResult.split_schemes`), from its metadata."""
    return json.loads(metadata.get("split_schemes") or "{}")


def apply_split(rows: list[dict[str, Any]], metadata: dict[str, str], scheme: str, where: Path) -> None:
    """Set each row's split by `scheme` (RELEASE_SPLIT leaves them); an unknown scheme is an input error."""
    if scheme == RELEASE_SPLIT:
        return
    schemes = split_schemes(metadata)
    if scheme not in schemes:
        offered = ", ".join([RELEASE_SPLIT, *schemes])
        raise PipelineError(f"{where}: this manifest has no split {scheme!r}; it offers {offered}")
    split_of = {dialogue: split for split in ("dev", "test") for dialogue in schemes[scheme][split]}
    for row in rows:
        row["split"] = split_of.get(row["dialogue_id"], "train")


def check_unique_ids(result: CorpusReadResult, source_of: Callable[[Utterance], str | None] | None = None) -> None:
    """Keep the first utterance of each id; later duplicates are excluded with a reason.

    `source_of(utt)` is the reader's "file:line" of an utterance: each exclusion carries the repeat's.
    """
    seen: set[str] = set()
    kept: list[Utterance] = []
    for utt in result.utterances:
        if utt.utterance_id in seen:
            source = source_of(utt) if source_of is not None else None
            result.excluded.append(Exclusion(utt.split, utt.utterance_id, "duplicate utterance id", source))
            continue
        seen.add(utt.utterance_id)
        kept.append(utt)
    result.utterances = kept


def record_raw_root(root: Path, manifest_dir: Path) -> str:
    """How a manifest written to `manifest_dir` records its raw root.

    Relative to the manifest's folder when the root was given relative, or lies under the working
    directory (the project): a project copied with `cp -a` or `rsync`, or cloned and pulled, then
    reads its own raw files. Otherwise (a corpus kept outside the project, e.g. /data/MELD.Raw,
    which every copy shares) the absolute path as given. Lexical: symlinks are kept, not resolved.
    """
    absolute = Path(os.path.abspath(root))
    if Path(root).is_absolute() and not absolute.is_relative_to(os.path.abspath(".")):
        return absolute.as_posix()
    return Path(os.path.relpath(absolute, os.path.abspath(manifest_dir))).as_posix()


def raw_root_of(manifest_dir: Path, metadata: dict[str, Any]) -> Path | None:
    """The raw root a manifest (or its summary) in `manifest_dir` records, as a path usable from here;
    None when none is recorded. Manifests written before roots were relative hold an absolute path."""
    recorded = metadata.get("raw_root")
    if not recorded:
        return None
    path = Path(recorded)
    return path if path.is_absolute() else Path(os.path.normpath(Path(manifest_dir) / path))


def build_summary(result: CorpusReadResult, raw_root: str) -> dict[str, Any]:
    """Counts per split and label, every flagged and excluded utterance, and the raw tree's identity.

    `raw_root` is the root as the manifest records it (`record_raw_root`)."""
    splits: dict[str, dict[str, Any]] = {}
    by_split: dict[str, list[Utterance]] = defaultdict(list)
    for utt in result.utterances:
        by_split[utt.split].append(utt)
    for split in sorted(by_split, key=lambda s: SPLITS.index(s) if s in SPLITS else len(SPLITS)):
        utts = by_split[split]
        labels = Counter(u.label for u in utts)
        splits[split] = {
            "dialogues": len({u.dialogue_id for u in utts}),
            "utterances": len(utts),
            "labels": {name: labels.get(name, 0) for name in result.label_names},
            "modalities": {
                m: sum(getattr(u, f"has_{m}") for u in utts) for m in ("text", "audio", "video")
            },
        }
    flagged = [
        {"split": u.split, "utterance_id": u.utterance_id, "flags": list(u.flags)}
        for u in sorted(result.utterances, key=sort_key)
        if u.flags
    ]
    flag_counts = Counter(f for u in result.utterances for f in u.flags)
    exclusion_counts = Counter(e.reason for e in result.excluded)
    return {
        "corpus": result.corpus,
        "label_policy": result.label_policy,
        "label_map": {name: i for i, name in enumerate(result.label_names)},
        "split_rule": result.split_rule,
        "split_schemes": result.split_schemes,
        "raw_root": raw_root,
        "raw_tree_sha256": tree_digest(result.raw_files),
        "raw_files": len({fp.path for fp in result.raw_files}),
        "counts": {
            "utterances_seen": result.utterances_seen,
            "utterances_out": len(result.utterances),
            "excluded": len(result.excluded),
            "flagged": len(flagged),
        },
        "splits": splits,
        "flag_counts": dict(sorted(flag_counts.items())),
        "exclusion_counts": dict(sorted(exclusion_counts.items())),
        "flagged": flagged,
        "excluded": [asdict(e) for e in result.excluded],
        "ignored": {kind: sorted(items) for kind, items in sorted(result.ignored.items())},
    }
