"""The MELD reader on the real published CSVs (../shared/data/meld) and on small trees in the same layout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.helpers import shared_path
from tests.helpers.faults import read_meld_csv, write_meld_csv
from pipeline.cli import main
from pipeline.corpora.meld import CSV_FILES, parse_time, read_meld, repair_text
from pipeline.core.errors import CorpusFormatError, PipelineError
from pipeline.formats.manifest import read_manifest
from pipeline.stages.prepare import prepare_corpus
from pipeline.core.atomic import write_marker
from pipeline.core.outputs import MARKER_FILE

# The table of ../shared/data/README.md: split -> (utterances, dialogues, label counts).
EXPECTED = {
    "train": (9989, 1038, dict(neutral=4710, joy=1743, surprise=1205, anger=1109, sadness=683, disgust=271, fear=268)),
    "dev": (1109, 114, dict(neutral=470, joy=163, surprise=150, anger=153, sadness=111, disgust=22, fear=40)),
    "test": (2610, 280, dict(neutral=1256, joy=402, surprise=281, anger=345, sadness=208, disgust=68, fear=50)),
}
EXPECTED_SENTIMENT = {
    "train": dict(neutral=4710, negative=2945, positive=2334),
    "dev": dict(neutral=470, negative=406, positive=233),
    "test": dict(neutral=1256, negative=833, positive=521),
}
HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"


@pytest.fixture(scope="module", params=["original-release", "github-head"])
def shared_release(request, tmp_path_factory) -> tuple[str, dict, list[dict]]:
    root = shared_path("meld", request.param)
    out = tmp_path_factory.mktemp(request.param) / "prepared"
    summary = prepare_corpus("meld", root, out)
    return request.param, summary, read_manifest(out)


def test_shared_csv_counts_match_the_reference_table(shared_release):
    _, summary, _ = shared_release
    for split, (utterances, dialogues, labels) in EXPECTED.items():
        info = summary["splits"][split]
        assert info["utterances"] == utterances
        assert info["dialogues"] == dialogues
        assert info["labels"] == {name: labels[name] for name in info["labels"]}
        assert sum(info["labels"].values()) == utterances


def test_shared_csv_sentiment_policy_counts(tmp_path):
    summary = prepare_corpus("meld", shared_path("meld", "github-head"), tmp_path / "out", "sentiment")
    for split, labels in EXPECTED_SENTIMENT.items():
        assert summary["splits"][split]["labels"] == {k: labels[k] for k in ("neutral", "positive", "negative")}


def test_repaired_text_has_no_c1_control_characters(shared_release):
    _, _, rows = shared_release
    for row in rows:
        for value in (row["text"], row["speaker"]):
            assert not any(0x80 <= ord(c) <= 0x9F for c in value), value
            assert "\xa0" not in value


def test_both_published_encodings_give_identical_rows(tmp_path):
    rows = {}
    for name in ("original-release", "github-head"):
        prepare_corpus("meld", shared_path("meld", name), tmp_path / name)
        rows[name] = read_manifest(tmp_path / name)
    keys = ("utterance_id", "text", "speaker", "label", "start_s", "end_s", "turn_index")
    assert [tuple(r[k] for k in keys) for r in rows["original-release"]] == [
        tuple(r[k] for k in keys) for r in rows["github-head"]
    ]
    quotes = [r for r in rows["original-release"] if "’" in r["text"]]
    assert len(quotes) > 3000  # the \x92 apostrophes were repaired, not dropped


def test_utterances_are_keyed_by_dialogue_and_utterance_id_not_sr_no(shared_release):
    _, _, rows = shared_release
    ids = [r["utterance_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 13708
    sr_train = [r["attributes"]["sr_no"] for r in rows if r["split"] == "train"]
    assert len(sr_train) - len(set(sr_train)) == 57  # the README's repeated Sr No. values


def test_turn_index_is_the_position_in_the_raw_dialogue_with_gaps_for_unlabelled_turns(shared_release):
    _, _, rows = shared_release
    dev49 = [r for r in rows if r["dialogue_id"] == "dev_dia49"]
    indices = [r["turn_index"] for r in dev49]
    assert indices == sorted(indices) and 4 not in indices and 5 not in indices
    assert [r["utterance_id"] for r in dev49][4] == "dev_dia49_utt6"


def test_csv_rows_without_clip_folders_are_flagged_not_dropped(shared_release):
    _, summary, rows = shared_release
    assert all(r["has_text"] and not r["has_audio"] and "missing_clip" in r["flags"] for r in rows)
    assert summary["flag_counts"]["missing_clip"] == 13708
    assert sorted(summary["ignored"]["clip_folders_not_found"]) == sorted(
        ["dev_splits_complete", "output_repeated_splits_test", "train_splits"]
    )
    long = {r["utterance_id"] for r in rows if "long_span" in r["flags"]}
    assert long == {"test_dia38_utt4", "test_dia220_utt0"}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("00:16:16,059", 976.059), ("0:16:16,059", 976.059), ("00:06:47,28", 407.28), ("1:00:00,5", 3600.5)],
)
def test_parse_time_accepts_the_three_published_formats(value, seconds):
    assert parse_time(value) == pytest.approx(seconds)


def test_parse_time_rejects_garbage():
    with pytest.raises(ValueError, match="unrecognised time"):
        parse_time("16:16")


def test_repair_text_maps_cp1252_controls():
    assert repair_text("I don\x92t know\x85 \x93yes\x94 \x96 no\x97\xa0ok ") == "I don’t know… “yes” – no— ok"


# --- small trees in the MELD.Raw layout -------------------------------------------------------------


def _row(sr: int, text: str, speaker: str, emotion: str, dia: int, utt: int, start="00:00:01,000", end="00:00:02,500") -> str:
    sentiment = {"neutral": "neutral", "joy": "positive"}.get(emotion, "negative")
    return f'{sr},"{text}",{speaker},{emotion},{sentiment},{dia},{utt},1,1,"{start}","{end}"'


def write_csvs(folder: Path, rows: dict[str, list[str]], newline: str = "\n", encoding: str = "utf-8") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        lines = [HEADER, *rows.get(split, [_row(1, "Hi.", "Joey", "neutral", 0, 0)])]
        (folder / f"{split}_sent_emo.csv").write_bytes((newline.join(lines) + newline).encode(encoding))


def test_nested_root_cp1252_file_and_crlf_are_read(tmp_path):
    raw = tmp_path / "download" / "MELD.Raw"
    write_csvs(raw, {"train": [_row(1, "It’s fine…", "Ross", "joy", 3, 1, "0:01:02,5", "0:01:04,25")]},
               newline="\r\n", encoding="cp1252")
    result = read_meld(tmp_path, "emotion")
    utt = next(u for u in result.utterances if u.split == "train")
    assert (utt.utterance_id, utt.text, utt.label, utt.label_index) == ("train_dia3_utt1", "It’s fine…", "joy", 4)
    assert (utt.start_s, utt.end_s) == (pytest.approx(62.5), pytest.approx(64.25))


@pytest.mark.parametrize(
    ("bad_row", "message"),
    [
        (_row(1, "Hi.", "Joey", "happiness", 0, 0), "unknown emotion 'happiness'"),
        (_row(1, "Hi.", "Joey", "joy", 0, 0, start="1:2"), "unrecognised time '1:2'"),
        ('1,"Hi.",Joey,joy,positive,zero,0,1,1,"00:00:01,000","00:00:02,000"', "column Dialogue_ID: 'zero' is not"),
        ('1,"Hi.",Joey,joy', "wrong number of fields"),
    ],
)
def test_malformed_rows_raise_an_error_naming_file_and_line(tmp_path, bad_row, message):
    write_csvs(tmp_path, {"dev": [_row(1, "Fine.", "Joey", "neutral", 0, 0), bad_row]})
    with pytest.raises(CorpusFormatError, match=message) as info:
        read_meld(tmp_path, "emotion")
    assert info.value.path.name == "dev_sent_emo.csv" and info.value.line == 3


def test_missing_column_is_an_error_on_the_header_line(tmp_path):
    write_csvs(tmp_path, {})
    path = tmp_path / "test_sent_emo.csv"
    path.write_text(path.read_text().replace(",Sentiment", ",Feeling"))
    with pytest.raises(CorpusFormatError, match=r"missing column\(s\) \['Sentiment'\]") as info:
        read_meld(tmp_path, "emotion")
    assert str(info.value).startswith(f"{path}:1:")


def test_wrong_root_and_incomplete_tree_are_clear_errors(tmp_path):
    with pytest.raises(CorpusFormatError, match="not a MELD.Raw tree"):
        read_meld(tmp_path, "emotion")
    write_csvs(tmp_path, {})
    (tmp_path / "dev_sent_emo.csv").unlink()
    with pytest.raises(CorpusFormatError, match="MELD dev CSV is missing"):
        read_meld(tmp_path, "emotion")


def test_failed_prepare_leaves_output_untouched(tmp_path):
    write_csvs(tmp_path / "raw", {"train": [_row(1, "Hi.", "Joey", "bored", 0, 0)]})
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("kept")
    write_marker(out, "prepare")  # an earlier prepare output: the only kind of folder prepare replaces
    with pytest.raises(CorpusFormatError):
        prepare_corpus("meld", tmp_path / "raw", out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert sorted(p.name for p in out.iterdir()) == [MARKER_FILE, "previous.txt"]


def test_unknown_label_policy_is_rejected(tmp_path):
    write_csvs(tmp_path / "raw", {})
    with pytest.raises(PipelineError, match="unknown label policy 'valence'"):
        prepare_corpus("meld", tmp_path / "raw", tmp_path / "out", "valence")


def test_summary_is_json_with_required_fields(tmp_path):
    write_csvs(tmp_path / "raw", {})
    prepare_corpus("meld", tmp_path / "raw", tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["splits"]["dev"] == {
        "dialogues": 1, "utterances": 1,
        "labels": dict(neutral=1, surprise=0, fear=0, sadness=0, joy=0, disgust=0, anger=0),
        "modalities": {"text": 1, "audio": 0, "video": 0},
    }
    assert summary["counts"]["utterances_out"] == 3 and len(summary["raw_tree_sha256"]) == 64


# --- strict reading: impossible values are file:line errors naming the column (issue 11, item 6) ------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("25:99:99,000", "minutes 99 out of range"),  # was read as 96,039 s
        ("00:60:00,000", "minutes 60 out of range"),
        ("0:00:60,000", "seconds 60 out of range"),
        ("00:16:99,5", "seconds 99 out of range"),
    ],
)
def test_parse_time_rejects_minutes_or_seconds_of_60_or_more(value, message):
    with pytest.raises(ValueError, match=message):
        parse_time(value)


@pytest.mark.parametrize(
    ("value", "seconds"), [("0:59:59,999", 3599.999), ("00:59:59.9", 3599.9), ("12:00:00,000", 43200.0)]
)
def test_parse_time_keeps_every_in_range_value_and_one_or_two_hour_digits(value, seconds):
    assert parse_time(value) == pytest.approx(seconds)


def test_parse_time_rejects_three_hour_digits():
    with pytest.raises(ValueError, match="unrecognised time"):
        parse_time("100:00:00,000")


def _bad(column: str, value: str) -> str:
    """A dev row with one column replaced by `value`."""
    fields = dict(zip(HEADER.split(","), next(csv.reader([_row(1, "Hi.", "Joey", "joy", 0, 1)]))))
    fields[column] = value
    return ",".join(f'"{v}"' for v in fields.values())


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("StartTime", "25:99:99,000", "column StartTime: minutes 99 out of range in time '25:99:99,000'"),
        ("EndTime", "00:00:60,000", "column EndTime: seconds 60 out of range"),
        ("Dialogue_ID", "-1", "column Dialogue_ID: '-1' is not a non-negative integer"),
        ("Utterance_ID", "-1", "column Utterance_ID: '-1' is not a non-negative integer"),
        ("Utterance_ID", "1.0", "column Utterance_ID: '1.0' is not a non-negative integer"),
        ("Utterance_ID", "1_000", "column Utterance_ID: '1_000' is not"),  # int() would read 1000
        ("Dialogue_ID", "+3", "column Dialogue_ID: '\\+3' is not"),
        ("Season", "-2", "column Season: '-2' is not"),
    ],
)
def test_impossible_values_are_errors_naming_file_line_and_column(tmp_path, column, value, message):
    write_csvs(tmp_path, {"dev": [_row(1, "Fine.", "Joey", "neutral", 0, 0), _bad(column, value)]})
    with pytest.raises(CorpusFormatError, match=message) as info:
        read_meld(tmp_path, "emotion")
    assert (info.value.path, info.value.line) == (tmp_path / "dev_sent_emo.csv", 3)
    assert str(info.value).startswith(f"{tmp_path / 'dev_sent_emo.csv'}:3: column {column}: ")


def test_negative_utterance_id_does_not_hide_its_clip(tmp_path):
    """It was an utterance `dev_dia0_utt-1`, and the real clip dia0_utt1.mp4 was listed as unlabeled."""
    write_csvs(tmp_path, {"dev": [_row(1, "Hi.", "Joey", "joy", 0, -1)]})
    (tmp_path / "dev_splits_complete").mkdir()
    (tmp_path / "dev_splits_complete" / "dia0_utt1.mp4").write_bytes(b"")
    with pytest.raises(CorpusFormatError, match="column Utterance_ID"):
        read_meld(tmp_path, "emotion")


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_a_split_csv_with_only_a_header_is_an_error(tmp_path, split):
    write_csvs(tmp_path, {split: []})
    path = tmp_path / CSV_FILES[split]
    assert path.read_text().strip() == HEADER
    with pytest.raises(CorpusFormatError, match=f"no utterance rows under the header: the {split} split would be empty") as info:
        read_meld(tmp_path, "emotion")
    assert (info.value.path, info.value.line) == (path, 1)


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_a_corpus_missing_a_whole_split_csv_is_refused(tmp_path, split):
    write_csvs(tmp_path / "MELD.Raw", {})
    (tmp_path / "MELD.Raw" / CSV_FILES[split]).unlink()
    with pytest.raises(CorpusFormatError, match=f"MELD {split} CSV is missing") as info:
        read_meld(tmp_path, "emotion")  # a missing train CSV was "not a MELD.Raw tree"
    assert info.value.path == tmp_path / "MELD.Raw" / CSV_FILES[split]


def test_duplicate_id_exclusion_carries_its_file_and_line(tmp_path):
    write_csvs(tmp_path / "raw", {"dev": [_row(1, "Hi.", "Joey", "joy", 0, 0), _row(2, "Again.", "Ross", "joy", 0, 0)]})
    summary = prepare_corpus("meld", tmp_path / "raw", tmp_path / "out")
    assert summary["excluded"] == [
        {"split": "dev", "utterance_id": "dev_dia0_utt0", "reason": "duplicate utterance id", "source": "dev_sent_emo.csv:3"}
    ]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["excluded"] == summary["excluded"]


# --- the same through the real CLI, on copies of the demo corpus's CSVs --------------------------------


def _edit_first_row(column: str, value: str):
    def edit(raw: Path) -> tuple[Path, int]:
        path = raw / CSV_FILES["dev"]
        header, rows = read_meld_csv(path)
        rows[0][column] = value
        write_meld_csv(path, header, rows)
        return path, 2
    return edit


def _header_only(raw: Path) -> tuple[Path, int]:
    path = raw / CSV_FILES["test"]
    header, _ = read_meld_csv(path)
    write_meld_csv(path, header, [])
    return path, 1


@pytest.mark.parametrize(
    ("edit", "column"),
    [
        (_edit_first_row("StartTime", "25:99:99,000"), "StartTime"),
        (_edit_first_row("EndTime", "0:00:75,120"), "EndTime"),
        (_edit_first_row("Dialogue_ID", "-4"), "Dialogue_ID"),
        (_edit_first_row("Utterance_ID", "2.5"), "Utterance_ID"),
        (_header_only, None),
    ],
    ids=["start-25:99:99", "end-seconds-75", "negative-dialogue", "fractional-utterance", "header-only"],
)
def test_cli_strict_csv_errors_are_one_line_exit_2_naming_file_line_and_column(demo_corpus, tmp_path, capsys, edit, column):
    root, _ = demo_corpus
    raw = tmp_path / "MELD.Raw"
    raw.mkdir()
    for name in CSV_FILES.values():  # the CSVs only: the error comes before any clip is probed
        (raw / name).write_bytes((root / "MELD.Raw" / name).read_bytes())
    path, line = edit(raw)
    code = main(["prepare", "--corpus", "meld", "--root", str(raw), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"mer prepare: error: {path}:{line}: "), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    if column is not None:
        assert f"column {column}: " in err


def test_cli_missing_split_csv_is_one_line_exit_2(demo_corpus, tmp_path, capsys):
    root, _ = demo_corpus
    raw = tmp_path / "MELD.Raw"
    raw.mkdir()
    for split in ("dev", "test"):
        (raw / CSV_FILES[split]).write_bytes((root / "MELD.Raw" / CSV_FILES[split]).read_bytes())
    code = main(["prepare", "--corpus", "meld", "--root", str(raw), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"mer prepare: error: {raw / CSV_FILES['train']}: MELD train CSV is missing"), err


# --- found by the property tests (test_reader_properties.py, issue 11, item 7) ------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("Utterance_ID", "99999999999"),  # was read, then writing the int32 turn_index failed: exit 1
        ("Utterance_ID", "2147483648"),
        ("Dialogue_ID", "9" * 25),  # was an utterance dev_dia999..._utt1
        ("Season", "9" * 5000),  # was "Exceeds the limit (4300 digits) for integer string conversion"
    ],
)
def test_ids_beyond_the_manifests_int32_are_errors_naming_the_column(tmp_path, column, value):
    write_csvs(tmp_path / "raw", {"dev": [_row(1, "Fine.", "Joey", "neutral", 0, 0), _bad(column, value)]})
    path = tmp_path / "raw" / "dev_sent_emo.csv"
    with pytest.raises(CorpusFormatError, match=f"column {column}: '9*[0-9]*' is out of range") as info:
        prepare_corpus("meld", tmp_path / "raw", tmp_path / "out")
    assert str(info.value).startswith(f"{path}:3: column {column}: ")
    assert not (tmp_path / "out").exists()


def test_the_largest_int32_id_is_read_and_written(tmp_path):
    write_csvs(tmp_path / "raw", {"dev": [_bad("Utterance_ID", "2147483647")]})
    prepare_corpus("meld", tmp_path / "raw", tmp_path / "out")
    row = next(r for r in read_manifest(tmp_path / "out") if r["split"] == "dev")
    assert (row["utterance_id"], row["turn_index"]) == ("dev_dia0_utt2147483647", 2147483647)


def test_a_field_over_the_csv_size_limit_is_an_error_naming_its_line(tmp_path):
    """csv.Error escaped the reader (exit 1); a runaway quoted field ends the same way."""
    write_csvs(tmp_path, {"train": [_row(1, "Fine.", "Joey", "neutral", 0, 0), _row(2, "x" * 131_073, "Joey", "joy", 0, 1)]})
    path = tmp_path / "train_sent_emo.csv"
    with pytest.raises(CorpusFormatError, match=r"unreadable CSV \(field larger than field limit") as info:
        read_meld(tmp_path, "emotion")
    assert (info.value.path, info.value.line) == (path, 3)


def test_a_byte_undefined_in_cp1252_of_a_cp1252_file_names_its_line(tmp_path):
    """A file with no UTF-8 in it is read as cp1252; its bytes 0x81, 0x8d, 0x8f, 0x90, 0x9d were an error
    naming only the file."""
    write_csvs(tmp_path, {"dev": [_row(1, "Café.", "Joey", "neutral", 0, 0), _row(2, "Hi\x81.", "Joey", "joy", 0, 1)]},
               newline="\r\n", encoding="latin-1")
    path = tmp_path / "dev_sent_emo.csv"
    with pytest.raises(CorpusFormatError, match="byte 0x81 is neither UTF-8 nor cp1252 text") as info:
        read_meld(tmp_path, "emotion")
    assert (info.value.path, info.value.line) == (path, 3)
    assert str(info.value).startswith(f"{path}:3: ")


@pytest.mark.parametrize(("column", "value"), [("Utterance_ID", "\uff11"), ("Dialogue_ID", "\u0661"), ("StartTime", "0:00:0\u0661,000")])
def test_non_ascii_digits_are_not_read_as_numbers(tmp_path, column, value):
    """`\\d` matched any Unicode digit, so a fullwidth `１` or an Arabic-Indic `١` was quietly read as 1."""
    write_csvs(tmp_path / "raw", {"dev": [_row(1, "Fine.", "Joey", "neutral", 0, 0), _bad(column, value)]})
    with pytest.raises(CorpusFormatError, match=f"column {column}: ") as info:
        prepare_corpus("meld", tmp_path / "raw", tmp_path / "out")
    assert str(info.value).startswith(f"{tmp_path / 'raw' / 'dev_sent_emo.csv'}:3: ")
