"""Fault-suite helpers: the demo subset the faults run on, raw-file editing, running the real stages,
and the accounting check (see tests/faults/conftest.py for what the suite does)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.params import load_params
from pipeline.corpora.iemocap import LABEL_DIR, WAV_DIR, session_dir
from pipeline.corpora.meld import CLIP_FOLDERS, CSV_FILES
from pipeline.formats.manifest import SUMMARY_FILE, read_manifest
from pipeline.formats.stage_report import REPORT_FILE
from tests.helpers import PROJECT_ROOT

# The raw file names come from the readers: this suite tests what the stages do with broken input,
# not the layout (tests/pipeline/corpora and the demo corpus, an independent writer, pin that down).
# What the raw files hold is still read here without the readers (`meld_raw_ids`, `iemocap_raw_ids`).
# one dialogue per session: Session1 has transcript junk lines and an xxx turn relabelled hap,
# Session2's is a dev dialogue, Session5's is test
IEMOCAP_SUBSET = ("Ses01F_impro02", "Ses02M_script01_2", "Ses03M_impro05a", "Ses04M_impro03", "Ses05F_impro03")
_SUMMARY_LINE = re.compile(r"^\[[^\]]*\]\s+(Ses\S+)\s")


# --- editing raw files ------------------------------------------------------------------------------


def read_meld_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a MELD CSV as the demo writes it (UTF-8 with the release's C1 characters)."""
    reader = csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8"), newline=""))
    return list(reader.fieldnames or []), list(reader)


def write_meld_csv(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_bytes(out.getvalue().encode("utf-8"))


def keep_meld_rows(raw: Path, keep) -> None:
    """Drop the CSV rows for which keep(split, row) is false (their clips stay, as unlabelled clips)."""
    for split, name in CSV_FILES.items():
        header, rows = read_meld_csv(raw / name)
        write_meld_csv(raw / name, header, [r for r in rows if keep(split, r)])


def keep_one_meld_dialogue(raw: Path) -> None:
    """Trim a MELD.Raw copy to dev dialogue 0 (six utterances), plus the first row of train and of test:
    the reader refuses a split CSV without rows, so no split may be emptied."""
    first: dict[str, tuple[str, str]] = {}

    def keep(split: str, row: dict[str, str]) -> bool:
        if split == "dev":
            return row["Dialogue_ID"] == "0"
        return first.setdefault(split, (row["Dialogue_ID"], row["Utterance_ID"])) == (row["Dialogue_ID"], row["Utterance_ID"])

    keep_meld_rows(raw, keep)


def meld_clip(raw: Path, split: str, dialogue: int, utterance: int) -> Path:
    return raw / CLIP_FOLDERS[split] / f"dia{dialogue}_utt{utterance}.mp4"


def iemocap_wav(raw: Path, utterance_id: str) -> Path:
    dialogue = utterance_id.rsplit("_", 1)[0]
    return session_dir(raw, int(utterance_id[3:5])) / WAV_DIR / dialogue / f"{utterance_id}.wav"


def iemocap_file(raw: Path, dialogue: str, folder: str) -> Path:
    """folder: pipeline.corpora.iemocap's LABEL_DIR or TRANSCRIPT_DIR."""
    return session_dir(raw, int(dialogue[3:5])) / folder / f"{dialogue}.txt"


# --- what the raw input holds, read without the readers ------------------------------------------------


def meld_raw_ids(raw: Path) -> list[str]:
    """One id per CSV row, as the manifest spells it; a repeated (Dialogue_ID, Utterance_ID) repeats."""
    ids = []
    for split, name in CSV_FILES.items():
        text = (raw / name).read_bytes().decode("utf-8", errors="replace")
        for row in csv.DictReader(io.StringIO(text, newline="")):
            ids.append(f"{split}_dia{int(row['Dialogue_ID'])}_utt{int(row['Utterance_ID'])}")
    return ids


def iemocap_raw_ids(raw: Path) -> list[str]:
    """One id per summary line of the top-level EmoEvaluation files."""
    ids = []
    for path in sorted(raw.glob(f"Session*/{LABEL_DIR}/*.txt")):
        for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
            if match := _SUMMARY_LINE.match(line.strip()):
                ids.append(match[1])
    return ids


def raw_ids(corpus: str, raw: Path) -> list[str]:
    return meld_raw_ids(raw) if corpus == "meld" else iemocap_raw_ids(raw)


# --- running the real stages -------------------------------------------------------------------------


def section(modality: str, tiny_models: dict[str, Path], **overrides: Any) -> dict[str, Any]:
    """params.yaml's `extract.<modality>`, with the tiny model's path and decoding in this process."""
    values = dict(load_params(PROJECT_ROOT / "params.yaml")["extract"][modality])
    values["weights" if modality == "face" else "model"] = str(tiny_models[modality])
    values["num_workers"] = 0
    values.update(overrides)
    return values


def build(modality: str, tiny_models: dict[str, Path], **overrides: Any):
    """The configured extractor (model loaded once per module), then back to one torch thread."""
    import torch

    from pipeline.stages.extract import build_extractor

    extractor = build_extractor(modality, section(modality, tiny_models, **overrides), PROJECT_ROOT, f"faults.{modality}")
    torch.set_num_threads(1)  # build_extractor set the machine's thread count
    return extractor


def prepare(corpus: str, raw: Path, out: Path) -> dict[str, Any]:
    from pipeline.stages.prepare import prepare_corpus

    return prepare_corpus(corpus, raw, out)


def extract(modality: str, prepared: Path, out: Path, tiny_models, extractor=None, **overrides) -> dict[str, Any]:
    from pipeline.stages.extract import extract_features

    return extract_features(modality, prepared, out, section(modality, tiny_models, **overrides), extractor=extractor)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`mer ARGV` in this process: (exit code, stdout, stderr)."""
    from pipeline.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, command: str, *needles: str) -> str:
    """Exit code 2 and exactly one stderr line `mer COMMAND: error: ...` holding every needle."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"mer {command}: error: "), lines[0]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --- the accounting check ----------------------------------------------------------------------------


@dataclass
class Accounted:
    """What the stages said about every utterance, for the tests' own assertions."""

    summary: dict[str, Any]
    rows: dict[str, dict[str, Any]]  # manifest rows by utterance id
    excluded: list[dict[str, Any]]
    report: dict[str, Any] = field(default_factory=dict)
    stored: set[str] = field(default_factory=set)
    missing: dict[str, str] = field(default_factory=dict)  # id -> reason
    flagged: dict[str, str] = field(default_factory=dict)


def assert_accounted(corpus: str, raw: Path, prepared: Path, store: Path | None = None) -> Accounted:
    """No utterance silently disappears between the raw files, the manifest and the feature store."""
    seen = raw_ids(corpus, raw)
    summary = json.loads((prepared / SUMMARY_FILE).read_text(encoding="utf-8"))
    manifest = read_manifest(prepared)
    manifest_ids = [r["utterance_id"] for r in manifest]
    excluded = summary["excluded"]
    assert len(set(manifest_ids)) == len(manifest_ids), "an utterance id appears twice in the manifest"
    for entry in excluded:
        assert entry["reason"].strip(), entry
    assert Counter(seen) == Counter(manifest_ids) + Counter(e["utterance_id"] for e in excluded), (
        "raw utterance records and manifest + excluded differ"
    )
    counts = summary["counts"]
    assert counts["utterances_seen"] == len(seen) == counts["utterances_out"] + counts["excluded"]
    assert counts["utterances_out"] == len(manifest_ids) and counts["excluded"] == len(excluded)
    flagged = {f["utterance_id"]: f["flags"] for f in summary["flagged"]}
    assert flagged == {r["utterance_id"]: r["flags"] for r in manifest if r["flags"]}
    result = Accounted(summary, {r["utterance_id"]: r for r in manifest}, excluded)
    if store is None:
        return result
    from pipeline.formats.feature_store import INDEX_FILE

    index = json.loads((store / INDEX_FILE).read_text(encoding="utf-8"))
    report = json.loads((store / REPORT_FILE).read_text(encoding="utf-8"))
    stored = set(index["utterances"])
    missing = {m["utterance_id"]: m["reason"] for m in report["missing"]}
    assert len(missing) == len(report["missing"]), "an utterance is listed twice as missing"
    assert all(reason.strip() for reason in missing.values()), report["missing"]
    assert not stored & set(missing), "an utterance is both stored and missing"
    assert stored | set(missing) == set(manifest_ids), "manifest utterances neither stored nor reported missing"
    assert report["counts"]["in"] == len(manifest_ids) == report["counts"]["out"] + report["counts"]["missing"]
    assert report["counts"]["out"] == len(stored) and report["counts"]["missing"] == len(missing)
    result.report, result.stored, result.missing = report, stored, missing
    result.flagged = {f["utterance_id"]: f["reason"] for f in report["flagged"]}
    assert set(result.flagged) <= stored
    return result


def stored_feature(store: Path, utterance_id: str):
    from pipeline.formats.feature_store import FeatureStoreReader

    return FeatureStoreReader(store).get(utterance_id)
