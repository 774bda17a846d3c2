"""CORPUS faults: missing folders, repeated ids, labels outside the policy, a missing CSV column.

Behaviour asserted (the contract):
- a missing IEMOCAP session folder is a one-line error naming the root and the missing session,
  exit code 2, no output: preparing the rest would silently change the train/dev/test split and
  the corpus size, which a user comparing with published numbers must know before anything runs;
- a repeated MELD (Dialogue_ID, Utterance_ID) row keeps the first row; the repeat is in
  summary.json's `excluded` with reason "duplicate utterance id" (and counted as seen);
- a MELD Emotion outside the label set, or an IEMOCAP summary label outside IEMOCAP's categories,
  is a one-line error naming file:line (the file is not the release's format); an IEMOCAP
  category that exists but is not in the label policy (`fea` under `benchmark`) is excluded with
  the reason and its file:line;
- a CSV without its `Emotion` column is a one-line error naming the file and the column, exit 2.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.corpora.iemocap import LABEL_DIR, session_dir
from pipeline.corpora.meld import CSV_FILES
from tests.helpers.faults import (
    assert_accounted,
    assert_one_line_error,
    iemocap_file,
    prepare,
    read_meld_csv,
    run_cli,
    write_meld_csv,
)

pytestmark = pytest.mark.faults


def mer_prepare(corpus: str, raw: Path, tmp_path: Path, capsys) -> tuple[int, str]:
    out = tmp_path / "prepared"
    code, _, err = run_cli(["prepare", "--corpus", corpus, "--root", str(raw), "--out", str(out)], capsys)
    if code:
        assert not out.exists(), "a failed prepare left an output folder"
        assert not list(tmp_path.glob(".prepared*")), "a failed prepare left its temporary folder"
    return code, err


def set_iemocap_label(raw: Path, dialogue: str, utterance_id: str, label: str) -> tuple[Path, int]:
    """Replace the summary label of one turn; returns the file and the (1-based) line changed."""
    path = iemocap_file(raw, dialogue, LABEL_DIR)
    lines = path.read_text(encoding="utf-8").split("\n")
    (n,) = [i for i, line in enumerate(lines) if line.startswith("[") and f"\t{utterance_id}\t" in line]
    fields = lines[n].split("\t")
    fields[2] = label
    lines[n] = "\t".join(fields)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path, n + 1


def test_missing_iemocap_session_folder(iemocap_raw, tmp_path, capsys) -> None:
    shutil.rmtree(session_dir(iemocap_raw, 3))
    code, err = mer_prepare("iemocap", iemocap_raw, tmp_path, capsys)
    assert_one_line_error(code, err, "prepare", str(iemocap_raw), "missing: Session3", "not an IEMOCAP release")


def test_duplicate_meld_utterance_id(meld_raw_full, tmp_path) -> None:
    path = meld_raw_full / CSV_FILES["dev"]
    header, rows = read_meld_csv(path)
    (original,) = [r for r in rows if (r["Dialogue_ID"], r["Utterance_ID"]) == ("2", "3")]
    repeat = {**original, "Sr No.": str(len(rows) + 1), "Utterance": "A second row with the same ids."}
    write_meld_csv(path, header, [*rows, repeat])
    prepare("meld", meld_raw_full, tmp_path / "prepared")
    acc = assert_accounted("meld", meld_raw_full, tmp_path / "prepared")
    assert [e for e in acc.excluded if e["utterance_id"] == "dev_dia2_utt3"] == [
        # the repeat is excluded, with its own line (the header is line 1)
        {"split": "dev", "utterance_id": "dev_dia2_utt3", "reason": "duplicate utterance id",
         "source": f"{CSV_FILES['dev']}:{len(rows) + 2}"}
    ]
    assert len(acc.excluded) == 1 and acc.summary["exclusion_counts"] == {"duplicate utterance id": 1}
    assert acc.rows["dev_dia2_utt3"]["text"] == original["Utterance"].replace("\x92", "’")  # the first row is kept


def test_meld_emotion_outside_the_label_set(meld_raw_full, tmp_path, capsys) -> None:
    path = meld_raw_full / CSV_FILES["train"]
    header, rows = read_meld_csv(path)
    rows[4]["Emotion"] = "boredom"
    write_meld_csv(path, header, rows)
    code, err = mer_prepare("meld", meld_raw_full, tmp_path, capsys)
    assert_one_line_error(code, err, "prepare", f"{path}:6:", "unknown emotion 'boredom'")


def test_iemocap_unknown_category(iemocap_raw, tmp_path, capsys) -> None:
    path, line = set_iemocap_label(iemocap_raw, "Ses04M_impro03", "Ses04M_impro03_F001", "bor")
    code, err = mer_prepare("iemocap", iemocap_raw, tmp_path, capsys)
    assert_one_line_error(code, err, "prepare", f"{path}:{line}:", "unknown emotion label 'bor'", "Ses04M_impro03_F001")


def test_iemocap_category_outside_the_label_policy(iemocap_raw, tmp_path) -> None:
    path, line = set_iemocap_label(iemocap_raw, "Ses04M_impro03", "Ses04M_impro03_F001", "fea")
    prepare("iemocap", iemocap_raw, tmp_path / "prepared")
    acc = assert_accounted("iemocap", iemocap_raw, tmp_path / "prepared")
    relative = path.relative_to(iemocap_raw).as_posix()
    assert {
        "split": "train", "utterance_id": "Ses04M_impro03_F001",
        "reason": "label 'fea' not in policy 'benchmark'", "source": f"{relative}:{line}",
    } in acc.excluded  # fmt: skip
    assert "Ses04M_impro03_F001" not in acc.rows


def test_meld_csv_missing_column(meld_raw_full, tmp_path, capsys) -> None:
    path = meld_raw_full / CSV_FILES["dev"]
    header, rows = read_meld_csv(path)
    header.remove("Emotion")
    write_meld_csv(path, header, [{k: v for k, v in r.items() if k != "Emotion"} for r in rows])
    code, err = mer_prepare("meld", meld_raw_full, tmp_path, capsys)
    assert_one_line_error(code, err, "prepare", f"{path}:1:", "missing column(s) ['Emotion']")
