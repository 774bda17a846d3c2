"""TEXT faults: empty, mis-encoded and huge utterances in (copies of) the demo corpus.

Behaviour asserted (the contract):
- an empty utterance stays in the manifest with has_text False and a flag (MELD `empty_text`,
  IEMOCAP `empty_transcript`); the text store lists it as missing `empty_text` (no feature of the
  empty string: it would say nothing about the utterance, and the availability mask says why);
- a stray non-UTF-8 byte in a MELD CSV that is otherwise UTF-8 is read as cp1252 in that row only,
  which is flagged `repaired_encoding`; every other row reads exactly as from the clean file (before
  the fix, the whole file was decoded as cp1252 and every ’ of it silently became Â’);
- a stray non-UTF-8 byte in an IEMOCAP transcript (plain ASCII in the release) is a one-line error
  naming file:line, exit code 2, no output folder;
- a 5000-word utterance is cut at its end to the model's length and flagged `text_truncated`; the
  turns after it, whose context it is, are flagged `context_truncated`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.corpora.iemocap import TRANSCRIPT_DIR
from pipeline.corpora.meld import CSV_FILES
from pipeline.formats.manifest import read_manifest

from tests.helpers.faults import (
    assert_accounted,
    assert_one_line_error,
    build,
    extract,
    iemocap_file,
    prepare,
    read_meld_csv,
    run_cli,
    stored_feature,
    write_meld_csv,
)

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def text_extractor(tiny_models, one_torch_thread):
    return build("text", tiny_models)


def set_meld_text(raw: Path, split: str, dialogue: int, utterance: int, text: str) -> None:
    path = raw / CSV_FILES[split]
    header, rows = read_meld_csv(path)
    (row,) = [r for r in rows if (r["Dialogue_ID"], r["Utterance_ID"]) == (str(dialogue), str(utterance))]
    row["Utterance"] = text
    write_meld_csv(path, header, rows)


def run_text(corpus: str, raw: Path, tmp_path: Path, tiny_models, text_extractor):
    prepared, store = tmp_path / "prepared", tmp_path / "store-text"
    prepare(corpus, raw, prepared)
    extract("text", prepared, store, tiny_models, extractor=text_extractor)
    return assert_accounted(corpus, raw, prepared, store)


def test_empty_meld_utterance(meld_raw_full, tmp_path, tiny_models, text_extractor) -> None:
    set_meld_text(meld_raw_full, "dev", 2, 1, "")
    acc = run_text("meld", meld_raw_full, tmp_path, tiny_models, text_extractor)
    row = acc.rows["dev_dia2_utt1"]
    assert (row["text"], row["has_text"], row["flags"]) == ("", False, ["empty_text"])
    assert row["has_audio"] and row["has_video"]  # its clip is still there for the other modalities
    assert acc.missing == {"dev_dia2_utt1": "empty_text"}


def test_empty_iemocap_transcript_line(iemocap_raw, tmp_path, tiny_models, text_extractor) -> None:
    path = iemocap_file(iemocap_raw, "Ses01F_impro02", TRANSCRIPT_DIR)
    lines = path.read_text(encoding="utf-8").splitlines()
    (n,) = [i for i, line in enumerate(lines) if line.startswith("Ses01F_impro02_F001 ")]
    lines[n] = lines[n].split("]:", 1)[0] + "]:"  # keep id and times, no words
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    acc = run_text("iemocap", iemocap_raw, tmp_path, tiny_models, text_extractor)
    row = acc.rows["Ses01F_impro02_F001"]
    assert (row["text"], row["has_text"], row["flags"]) == ("", False, ["empty_transcript"])
    assert acc.missing == {"Ses01F_impro02_F001": "empty_text"}


def test_invalid_utf8_byte_in_meld_csv(meld_raw_full, tmp_path, prepared_demo) -> None:
    path = meld_raw_full / CSV_FILES["dev"]
    lines = path.read_bytes().split(b"\n")
    header = lines[0].decode().split(",")
    n = next(i for i, line in enumerate(lines) if line.split(b",")[5:7] == [b"0", b"4"])  # dev dia0 utt4
    assert b"\xc2" in lines[n] and b"e" in lines[n]  # the row also holds a release C1 character (UTF-8)
    lines[n] = lines[n].replace(b"e", b"\xe9", 1)  # a latin-1 "é" in a UTF-8 file
    path.write_bytes(b"\n".join(lines))
    assert header[1] == "Utterance"
    prepare("meld", meld_raw_full, tmp_path / "prepared")
    acc = assert_accounted("meld", meld_raw_full, tmp_path / "prepared")
    clean = {r["utterance_id"]: r for r in read_manifest(prepared_demo["meld"])}
    repaired = acc.rows["dev_dia0_utt4"]
    assert repaired["flags"] == ["repaired_encoding"]
    assert repaired["text"] == clean["dev_dia0_utt4"]["text"].replace("e", "é", 1)
    assert "’" in repaired["text"] and "Â" not in repaired["text"]
    for uid, row in acc.rows.items():
        if uid != "dev_dia0_utt4":
            assert (row["text"], row["speaker"], row["flags"]) == (
                clean[uid]["text"], clean[uid]["speaker"], clean[uid]["flags"]
            ), uid
    assert acc.summary["flag_counts"]["repaired_encoding"] == 1


def test_invalid_utf8_byte_in_iemocap_transcript(iemocap_raw, tmp_path, capsys) -> None:
    path = iemocap_file(iemocap_raw, "Ses02M_script01_2", TRANSCRIPT_DIR)
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"e", b"\xe9", 1)
    path.write_bytes(b"\n".join(lines))
    out = tmp_path / "prepared"
    code, _, err = run_cli(["prepare", "--corpus", "iemocap", "--root", str(iemocap_raw), "--out", str(out)], capsys)
    assert_one_line_error(code, err, "prepare", f"{path}:3:", "not UTF-8", "0xe9")
    assert not out.exists() and not list(tmp_path.glob(".prepared*"))


def test_extremely_long_utterance(meld_raw_full, tmp_path, tiny_models, text_extractor) -> None:
    # the same first 300 words (> 128 tokens), then 5000 words that differ
    head = "I can't believe you did that to me today, Ross! " + " ".join(f"again{i}" for i in range(300))
    set_meld_text(meld_raw_full, "dev", 0, 0, head + " " + " ".join(f"yeah{i % 97}" for i in range(5000)))
    set_meld_text(meld_raw_full, "dev", 2, 0, head + " " + " ".join(f"no{i % 89}" for i in range(5000)))
    acc = run_text("meld", meld_raw_full, tmp_path, tiny_models, text_extractor)
    assert len(acc.rows["dev_dia0_utt0"]["text"].split()) > 5000 and acc.rows["dev_dia0_utt0"]["flags"] == []
    assert acc.flagged["dev_dia0_utt0"] == acc.flagged["dev_dia2_utt0"] == "text_truncated"
    # the next context_window (2) turns get the long one as context: cut, and said so
    followers = {f"dev_dia{d}_utt{u}" for d in (0, 2) for u in (1, 2)}
    assert {uid: acc.flagged[uid] for uid in followers} == dict.fromkeys(followers, "context_truncated")
    assert not acc.missing and len(acc.flagged) == 6
    # cut at its end: two texts that share their first 300 words give the same feature
    first, second = (stored_feature(tmp_path / "store-text", u) for u in ("dev_dia0_utt0", "dev_dia2_utt0"))
    assert torch.isfinite(first).all() and torch.equal(first, second)
