"""The raw IEMOCAP reader against fixture trees written in the release's exact formats."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.iemocap_tree import DIALOGUES, HEADER, RELEASE_DIR, write_iemocap_tree
from pipeline.corpora import get_corpus, iemocap
from pipeline.corpora.iemocap import read_iemocap
from pipeline.core.errors import CorpusFormatError, PipelineError
from pipeline.formats.manifest import CorpusReadResult, Utterance, read_manifest
from pipeline.stages.prepare import prepare_corpus


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The parent of IEMOCAP_full_release (tests never modify it)."""
    base = tmp_path_factory.mktemp("iemocap")
    write_iemocap_tree(base)
    return base


@pytest.fixture(scope="module")
def benchmark(tree: Path) -> CorpusReadResult:
    return read_iemocap(tree, "benchmark")


def by_id(result: CorpusReadResult) -> dict[str, Utterance]:
    return {u.utterance_id: u for u in result.utterances}


def counts(result: CorpusReadResult) -> dict[str, dict[str, int]]:
    table: dict[str, Counter] = {}
    for utt in result.utterances:
        table.setdefault(utt.split, Counter())[utt.label] += 1
    return {split: dict(c) for split, c in table.items()}


def test_registered_with_policies() -> None:
    spec = get_corpus("iemocap")
    assert spec.read is read_iemocap
    assert spec.default_policy == "benchmark"
    assert spec.label_policies == {
        "benchmark": ["hap", "sad", "neu", "ang", "exc", "fru"],
        "emoeval": ["hap", "sad", "neu", "ang", "exc", "fru"],
        "four-class": ["ang", "hap", "sad", "neu"],
    }


EXPECTED = {
    "benchmark": {
        "train": {"hap": 3, "sad": 1, "neu": 3, "ang": 1, "exc": 1, "fru": 1},
        "dev": {"hap": 1, "sad": 2, "neu": 1, "ang": 1, "exc": 1, "fru": 1},
        "test": {"hap": 2, "neu": 1, "ang": 1, "exc": 1},
    },
    "emoeval": {
        "train": {"hap": 1, "sad": 1, "neu": 3, "ang": 1, "exc": 1, "fru": 1},
        "dev": {"hap": 1, "sad": 2, "neu": 1, "ang": 1, "exc": 1, "fru": 1},
        "test": {"hap": 1, "neu": 1, "ang": 1, "exc": 1},
    },
    "four-class": {
        "train": {"ang": 1, "hap": 2, "sad": 1, "neu": 3},
        "dev": {"ang": 1, "hap": 2, "sad": 2, "neu": 1},
        "test": {"ang": 1, "hap": 2, "neu": 1},
    },
}


@pytest.mark.parametrize("policy", sorted(EXPECTED))
def test_counts_per_split_and_label(tree: Path, policy: str) -> None:
    result = read_iemocap(tree, policy)
    assert counts(result) == EXPECTED[policy]
    assert result.utterances_seen == 31
    assert len(result.utterances) + len(result.excluded) == 31
    names = get_corpus("iemocap").label_policies[policy]
    assert result.label_names == names
    assert all(u.label_index == names.index(u.label) for u in result.utterances)


def test_exclusions_name_label_policy_and_line(tree: Path) -> None:
    result = read_iemocap(tree, "four-class")
    excluded = {e.utterance_id: e for e in result.excluded}
    fru = excluded["Ses01F_impro01_F002"]
    assert fru.reason == "label 'fru' not in policy 'four-class'"
    assert fru.split == "train"
    # F turns are listed first: F002 is the third block, its summary line is line 17
    assert fru.source == "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt:17"


def test_four_class_merges_exc_into_hap(tree: Path) -> None:
    utt = by_id(read_iemocap(tree, "four-class"))["Ses03M_impro05a_M003"]
    assert (utt.label, utt.label_index) == ("hap", 1)
    assert utt.attributes["summary_label"] == "exc"


RULE_HAP = ["Ses01F_impro01_F001", "Ses02M_impro03_M000", "Ses05M_script01_1b_M013"]
RULE_REJECTED = {
    "Ses01F_impro01_F003": "evaluators' Happiness, no self line",
    "Ses01F_impro01_M002": "plurality but self is Neutral",
    "Ses01F_impro01_M003": "M turn: the C-F line is not the self line",
    "Ses01M_impro01_M001": "tie Happiness 2 / Neutral 2",
    "Ses02F_impro02_F000": "self lists Happiness and Excited",
}


def test_xxx_self_happiness_rule_includes_as_hap(benchmark: CorpusReadResult) -> None:
    utts = by_id(benchmark)
    for uid in RULE_HAP:
        assert utts[uid].label == "hap"
        assert utts[uid].label_index == 0
        assert utts[uid].attributes["summary_label"] == "xxx"
        assert utts[uid].attributes["label_source"] == "xxx_self_happiness_rule"
    assert utts["Ses03M_impro05a_F003"].attributes["label_source"] == "summary"


@pytest.mark.parametrize("uid", sorted(RULE_REJECTED))
def test_xxx_self_happiness_rule_rejects(benchmark: CorpusReadResult, uid: str) -> None:
    excluded = {e.utterance_id: e.reason for e in benchmark.excluded}
    assert excluded[uid] == "label 'xxx' not in policy 'benchmark'", RULE_REJECTED[uid]


@pytest.mark.parametrize("policy", ["emoeval", "four-class"])
def test_xxx_rule_only_in_benchmark(tree: Path, policy: str) -> None:
    result = read_iemocap(tree, policy)
    assert not set(RULE_HAP) & set(by_id(result))
    assert all(u.attributes["label_source"] == "summary" for u in result.utterances)


def test_dialogue_order_is_transcript_order(benchmark: CorpusReadResult) -> None:
    dialogue = sorted(
        (u for u in benchmark.utterances if u.dialogue_id == "Ses01F_impro01"), key=lambda u: u.turn_index
    )
    # indices count every labelled turn (excluded ones too); F004 has no transcript line and goes
    # in by start time (20 s), before M004 (22 s)
    assert [(u.utterance_id[-4:], u.turn_index) for u in dialogue] == [
        ("F000", 0),
        ("M000", 1),
        ("F001", 2),
        ("F002", 4),
        ("F004", 8),
        ("M004", 9),
    ]
    script = by_id(benchmark)["Ses01F_script01_1_M000"]
    assert script.turn_index == 0


def test_turn_without_transcript_is_kept_and_flagged(benchmark: CorpusReadResult) -> None:
    utt = by_id(benchmark)["Ses01F_impro01_F004"]
    assert not utt.has_text and utt.text == ""
    assert "missing_transcript" in utt.flags
    assert by_id(benchmark)["Ses01F_impro01_F000"].text == "Excuse me."


def test_speaker_and_video_region_from_id(benchmark: CorpusReadResult) -> None:
    utts = by_id(benchmark)
    male, female = utts["Ses01F_impro01_M000"], utts["Ses01F_impro01_F000"]
    assert (male.speaker, male.video_region) == ("Ses01_M", "right")
    assert (female.speaker, female.video_region) == ("Ses01_F", "left")
    # a Ses0xM dialogue puts its M actor on the left (the release's rule; was: F left everywhere)
    assert utts["Ses03M_impro05a_F003"].video_region == "right"
    assert (utts["Ses03M_impro05a_F003"].speaker, utts["Ses03M_impro05a_F003"].dialogue_id) == (
        "Ses03_F",
        "Ses03M_impro05a",
    )
    assert utts["Ses05M_script01_1b_M012"].dialogue_id == "Ses05M_script01_1b"
    m_left = [u for u in utts.values() if u.dialogue_id[5] == "M" and u.utterance_id[-4] == "M"]
    assert m_left and all(u.video_region == "left" for u in m_left)


def test_split_rule(benchmark: CorpusReadResult) -> None:
    splits = {u.dialogue_id: u.split for u in benchmark.utterances}
    assert splits == {
        "Ses01F_impro01": "train",
        "Ses01M_impro01": "dev",
        "Ses01F_script01_1": "train",
        "Ses02F_impro02": "dev",
        "Ses02M_impro03": "train",
        "Ses03M_impro05a": "train",
        "Ses04F_script02_1": "dev",
        "Ses05M_script01_1b": "test",
        "Ses05F_impro01": "test",
    }
    assert len(iemocap.DEV_DIALOGUES) == 12
    assert all(d[4] in "1234" for d in iemocap.DEV_DIALOGUES)
    assert "Session 5 test" in benchmark.split_rule and "\n" not in benchmark.split_rule


def test_leave_one_session_out_folds_test_every_dialogue_exactly_once(benchmark: CorpusReadResult) -> None:
    folds = benchmark.split_schemes
    dialogues = sorted({u.dialogue_id for u in benchmark.utterances})
    assert list(folds) == [f"loso-{k}" for k in range(1, 6)]
    tested = [d for fold in folds.values() for d in fold["test"]]
    assert sorted(tested) == dialogues  # each dialogue is the test set of exactly one fold
    for k, fold in enumerate(folds.values(), start=1):
        assert fold["test"] == [d for d in dialogues if d[3:5] == f"{k:02d}"]
        assert not set(fold["dev"]) & set(fold["test"])
        for session in {d[3:5] for d in dialogues} - {f"{k:02d}"}:  # ceil(10 %) of each other session: here 1
            assert len([d for d in fold["dev"] if d[3:5] == session]) == 1


def test_loso_dev_is_a_fixed_pick_of_ceil_a_tenth_of_each_session() -> None:
    sessions = {s: [f"Ses0{s}F_impro{i:02d}" for i in range(1, 31)] for s in range(1, 6)}  # 30 per session
    names = [n for group in sessions.values() for n in group]
    folds = iemocap.loso_folds(names)
    assert folds == iemocap.loso_folds(list(reversed(names)))  # order of reading does not matter
    for k in range(1, 6):
        dev = folds[f"loso-{k}"]["dev"]
        assert len(dev) == 12 and all(d[4] != str(k) for d in dev)  # 3 of each of the four other sessions
    for s in sessions:  # a session gives the same dev dialogues to every fold that does not test it
        picks = {tuple(d for d in folds[f"loso-{k}"]["dev"] if d[4] == str(s)) for k in range(1, 6) if k != s}
        assert len(picks) == 1 and len(next(iter(picks))) == 3


def test_the_manifest_offers_the_folds_and_training_can_apply_them(tree: Path, tmp_path: Path) -> None:
    from pipeline.formats.manifest import apply_split, manifest_metadata, split_schemes

    prepare_corpus("iemocap", tree, tmp_path / "out")
    meta = manifest_metadata(tmp_path / "out")
    assert split_schemes(meta) == read_iemocap(tree, "benchmark").split_schemes
    rows = read_manifest(tmp_path / "out")
    apply_split(rows, meta, "loso-2", tmp_path / "out")
    assert {r["dialogue_id"] for r in rows if r["split"] == "test"} == {"Ses02F_impro02", "Ses02M_impro03"}
    with pytest.raises(PipelineError, match="has no split 'loso-6'; it offers release, loso-1, loso-2"):
        apply_split(rows, meta, "loso-6", tmp_path / "out")


def test_audio_paths_and_missing_wav_flagged_not_dropped(benchmark: CorpusReadResult) -> None:
    utts = by_id(benchmark)
    ok = utts["Ses01F_impro01_F000"]
    assert ok.audio_path == "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"
    assert (ok.has_audio, ok.audio_start_s, ok.audio_end_s) == (True, 0.0, None)
    assert (ok.start_s, ok.end_s) == (1.0, 2.0)
    missing = utts["Ses01F_impro01_M004"]
    assert (missing.has_audio, missing.audio_path) == (False, None)
    assert "missing_audio" in missing.flags
    assert sum(not u.has_audio for u in benchmark.utterances) == 1


def test_video_readable_unreadable_and_missing(benchmark: CorpusReadResult) -> None:
    utts = by_id(benchmark)
    real = utts["Ses01F_impro01_M000"]
    assert real.video_path == "Session1/dialog/avi/DivX/Ses01F_impro01.avi"
    assert (real.has_video, real.video_start_s, real.video_end_s) == (True, 2.5, 3.5)
    garbage = utts["Ses02F_impro02_F001"]
    assert garbage.video_path == "Session2/dialog/avi/DivX/Ses02F_impro02.avi"
    assert not garbage.has_video
    assert "unreadable_video" in garbage.flags and garbage.attributes["video_error"]
    missing = utts["Ses05F_impro01_F000"]
    assert (missing.has_video, missing.video_path, missing.video_start_s) == (False, None, None)
    assert "missing_video" in missing.flags


def test_each_avi_probed_once(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probed: Counter = Counter()
    real_probe = iemocap.probe_media

    def counting_probe(path: Path):
        probed[Path(path).name] += 1
        return real_probe(path)

    monkeypatch.setattr(iemocap, "probe_media", counting_probe)
    read_iemocap(tree, "benchmark")
    assert probed["Ses01F_impro01.avi"] == 1
    assert probed["Ses02F_impro02.avi"] == 1


def test_ignored_lines_and_turns(benchmark: CorpusReadResult) -> None:
    transcript = "Session1/dialog/transcriptions/Ses01F_impro01.txt"
    assert sorted(benchmark.ignored["transcript_lines_without_id"]) == [f"{transcript}:3", f"{transcript}:9"]
    assert benchmark.ignored["transcribed_turns_without_label"] == ["Ses01F_impro01_F005"]


def test_attributes_keep_summary_vad_and_votes(benchmark: CorpusReadResult) -> None:
    attrs = by_id(benchmark)["Ses01F_impro01_M000"].attributes
    assert attrs["summary_label"] == "ang"
    assert attrs["vad"] == [2.5, 3.0, 2.5]
    assert attrs["votes"] == [
        {"evaluator": "E1", "emotions": ["Anger"]},
        {"evaluator": "E2", "emotions": ["Anger", "Frustration"]},
        {"evaluator": "M1", "emotions": ["Anger"]},
    ]


def test_sources_and_raw_files(benchmark: CorpusReadResult) -> None:
    utt = by_id(benchmark)["Ses01F_impro01_F000"]
    assert [(s.role, s.path) for s in utt.sources] == [
        ("labels", "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"),
        ("transcript", "Session1/dialog/transcriptions/Ses01F_impro01.txt"),
        ("audio", "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"),
        ("video", "Session1/dialog/avi/DivX/Ses01F_impro01.avi"),
    ]
    assert utt.sources[0].sha256 and utt.sources[2].mtime_ns is not None
    paths = [fp.path for fp in benchmark.raw_files]
    assert len(paths) == len(set(paths))
    assert {s.path for u in benchmark.utterances for s in u.sources} <= set(paths)
    assert not any("Categorical" in p or p.endswith(".anvil") for p in paths)
    assert sum(p.startswith("Session") and "/EmoEvaluation/" in p for p in paths) == len(DIALOGUES)


def test_release_folder_or_its_parent(tree: Path, benchmark: CorpusReadResult) -> None:
    direct = read_iemocap(tree / RELEASE_DIR, "benchmark")
    assert [(u.utterance_id, u.audio_path) for u in direct.utterances] == [
        (u.utterance_id, u.audio_path) for u in benchmark.utterances
    ]


def test_reader_never_writes(tree: Path) -> None:
    def snapshot() -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in sorted(tree.rglob("*"))}

    before = snapshot()
    read_iemocap(tree, "emoeval")
    assert snapshot() == before


# --- errors -------------------------------------------------------------------------------------


def fresh_tree(tmp_path: Path) -> Path:
    """A tree of its own, for a test that breaks it."""
    return write_iemocap_tree(tmp_path)


def test_wrong_root(tmp_path: Path) -> None:
    with pytest.raises(CorpusFormatError, match="Session1..Session5") as info:
        read_iemocap(tmp_path, "benchmark")
    assert info.value.path == tmp_path


def test_missing_session_is_wrong_root(tmp_path: Path) -> None:
    release = fresh_tree(tmp_path)
    (release / "Session5").rename(release / "Session5_old")
    with pytest.raises(CorpusFormatError, match=r"missing: Session5\)") as info:
        read_iemocap(tmp_path, "benchmark")
    assert info.value.path == release


def test_tree_without_emoevaluation_is_not_iemocap(tmp_path: Path) -> None:
    for n in range(1, 6):
        (tmp_path / f"Session{n}" / "dialog").mkdir(parents=True)
    with pytest.raises(CorpusFormatError, match="EmoEvaluation") as info:
        read_iemocap(tmp_path, "benchmark")
    assert info.value.path == tmp_path / "Session1" / "dialog" / "EmoEvaluation"


def rewrite_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("relative", "line", "text", "message"),
    [
        ("Session2/dialog/EmoEvaluation/Ses02M_impro03.txt", 3,
         "[1.0000 - 2.0000]\tSes02M_impro03_F000\tfea", "malformed turn summary line"),
        ("Session1/dialog/EmoEvaluation/Ses01M_impro01.txt", 3,
         "[1.0000 - 2.0000]\tSes01M_impro01_F000\tjoy\t[2.5000, 3.0000, 2.5000]", "unknown emotion label 'joy'"),
        ("Session1/dialog/EmoEvaluation/Ses01M_impro01.txt", 3,
         "[1.0000 - 2.0000]\tSes01F_impro02_F000\tneu\t[2.5000, 3.0000, 2.5000]", "Ses01F_impro02_F000"),
        ("Session1/dialog/EmoEvaluation/Ses01M_impro01.txt", 4, "this is not IEMOCAP", "unexpected line"),
        ("Session4/dialog/transcriptions/Ses04F_script02_1.txt", 2,
         "Ses04F_script02_1_M000: no time span", "malformed transcript line"),
    ],
)
def test_bad_line_is_an_error_naming_file_and_line(
    tmp_path: Path, relative: str, line: int, text: str, message: str
) -> None:
    path = fresh_tree(tmp_path) / relative
    rewrite_line(path, line, text)
    with pytest.raises(CorpusFormatError, match=message) as info:
        read_iemocap(tmp_path, "benchmark")
    assert (info.value.path, info.value.line) == (path, line)
    assert f"{path}:{line}" in str(info.value)


def test_label_file_without_turns(tmp_path: Path) -> None:
    release = fresh_tree(tmp_path)
    path = release / "Session3" / "dialog" / "EmoEvaluation" / "Ses03M_impro05a.txt"
    path.write_text(HEADER + "\n\n")
    with pytest.raises(CorpusFormatError, match="no turn summary lines") as info:
        read_iemocap(tmp_path, "benchmark")
    assert info.value.path == path


def test_hidden_label_files_are_ignored(tmp_path: Path) -> None:
    release = fresh_tree(tmp_path)
    resource_fork = release / "Session1" / "dialog" / "EmoEvaluation" / "._Ses01F_impro01.txt"
    resource_fork.write_bytes(b"\x00\x05\x16\x07")
    result = read_iemocap(tmp_path, "benchmark")
    assert result.ignored["hidden_files"] == ["Session1/dialog/EmoEvaluation/._Ses01F_impro01.txt"]
    assert len(result.utterances) == 22


def test_unknown_policy(tree: Path) -> None:
    with pytest.raises(PipelineError, match="unknown IEMOCAP label policy"):
        read_iemocap(tree, "seven-class")


def test_repeated_turn_id_is_reported_not_lost(tmp_path: Path) -> None:
    release = fresh_tree(tmp_path)
    path = release / "Session4" / "dialog" / "EmoEvaluation" / "Ses04F_script02_1.txt"
    with path.open("a") as handle:
        handle.write("\n[9.0000 - 9.5000]\tSes04F_script02_1_F000\tneu\t[2.5000, 2.5000, 2.5000]\n")
        handle.write("C-E1:\tNeutral;\t()\n")
    result = read_iemocap(tmp_path, "benchmark")
    assert result.utterances_seen == 32
    assert [u.label for u in result.utterances if u.utterance_id == "Ses04F_script02_1_F000"] == ["sad"]
    assert [e.reason for e in result.excluded if e.utterance_id == "Ses04F_script02_1_F000"] == [
        "duplicate utterance id"
    ]


def test_duplicate_id_exclusion_carries_the_repeats_file_and_line(tmp_path: Path) -> None:
    release = fresh_tree(tmp_path / "raw")
    path = release / "Session4" / "dialog" / "EmoEvaluation" / "Ses04F_script02_1.txt"
    with path.open("a") as handle:
        handle.write("\n[9.0000 - 9.5000]\tSes04F_script02_1_F000\tneu\t[2.5000, 2.5000, 2.5000]\n")
    line = len(path.read_text().splitlines())
    summary = prepare_corpus("iemocap", tmp_path / "raw", tmp_path / "out")
    duplicates = [e for e in summary["excluded"] if e["reason"] == "duplicate utterance id"]
    assert duplicates == [
        {"split": "dev", "utterance_id": "Ses04F_script02_1_F000", "reason": "duplicate utterance id",
         "source": f"Session4/dialog/EmoEvaluation/Ses04F_script02_1.txt:{line}"}
    ]
    # every exclusion in summary.json says where it was found (the policy ones did already)
    assert summary["excluded"] and all(re.fullmatch(r"Session\d/.+\.txt:\d+", e["source"]) for e in summary["excluded"])


# --- impossible time spans are kept and flagged --------------------------------------------------


@pytest.mark.parametrize(
    ("line", "text", "uid", "flags"),
    [
        (3, "[5.0000 - 2.0000]\tSes04F_script02_1_F000\tsad\t[2.5000, 3.0000, 2.5000]",
         "Ses04F_script02_1_F000", ["end_before_start"]),
        (9, "[-0.5000 - 4.0000]\tSes04F_script02_1_M000\tfru\t[2.5000, 3.0000, 2.5000]",
         "Ses04F_script02_1_M000", ["negative_start"]),
        (9, "[-3.0000 - -4.0000]\tSes04F_script02_1_M000\tfru\t[2.5000, 3.0000, 2.5000]",
         "Ses04F_script02_1_M000", ["negative_start", "end_before_start"]),
    ],
)
def test_turn_with_impossible_span_is_kept_and_flagged(
    tmp_path: Path, line: int, text: str, uid: str, flags: list[str]
) -> None:
    release = fresh_tree(tmp_path / "raw")
    path = release / "Session4" / "dialog" / "EmoEvaluation" / "Ses04F_script02_1.txt"
    rewrite_line(path, line, text)
    summary = prepare_corpus("iemocap", tmp_path / "raw", tmp_path / "out")
    assert summary["counts"]["utterances_out"] == 22  # kept, not dropped
    span_flags = {"negative_start", "end_before_start"}
    listed = {f["utterance_id"]: f["flags"] for f in summary["flagged"]}
    assert [f for f in listed[uid] if f in span_flags] == flags  # besides the fixture's own missing_video
    assert {k: v for k, v in summary["flag_counts"].items() if k in span_flags} == {f: 1 for f in flags}
    row = next(r for r in read_manifest(tmp_path / "out") if r["utterance_id"] == uid)
    assert row["flags"] == listed[uid]


def test_fixture_spans_are_not_flagged(benchmark: CorpusReadResult) -> None:
    flags = {f for u in benchmark.utterances for f in u.flags}
    assert not flags & {"end_before_start", "negative_start"}


# --- found by the property tests (test_reader_properties.py, issue 11, item 7) ---------------------


@pytest.mark.parametrize("separator", ["\u2028", "\x85", "\x0c", "\x1e"])
def test_transcript_text_with_a_unicode_line_separator_is_kept_whole(tmp_path: Path, separator: str) -> None:
    """str.splitlines broke lines there too: the text was cut to "Excuse" and "me." ignored as a line
    without an id, shifting the later lines' numbers."""
    path = fresh_tree(tmp_path) / "Session1" / "dialog" / "transcriptions" / "Ses01F_impro01.txt"
    lines = path.read_text().split("\n")
    lines[0] = f"Ses01F_impro01_F000 [001.0000-002.0000]: Excuse{separator}me."
    path.write_text("\n".join(lines))
    result = read_iemocap(tmp_path, "benchmark")
    assert by_id(result)["Ses01F_impro01_F000"].text == f"Excuse{separator}me."
    transcript = "Session1/dialog/transcriptions/Ses01F_impro01.txt"
    assert sorted(result.ignored["transcript_lines_without_id"]) == [f"{transcript}:3", f"{transcript}:9"]


@pytest.mark.parametrize(
    ("line_4", "was"),
    [
        ("C-E1:\tHappiness;\t()\x0c", "line 10"),  # a form feed before the newline counted as a line
        ("C-E1:\tHappiness;\t(curious\u2028tired)", "'unexpected line' on line 5"),
    ],
)
def test_error_lines_count_only_line_breaks(tmp_path: Path, line_4: str, was: str) -> None:
    path = fresh_tree(tmp_path) / "Session1" / "dialog" / "EmoEvaluation" / "Ses01M_impro01.txt"
    lines = path.read_text().split("\n")  # not rewrite_line: its splitlines() would break line 4 too
    lines[3], lines[8] = line_4, "[5.0000 - 6.0000]\tSes01M_impro01_F001\tjoy\t[2.5000, 3.0000, 2.5000]"
    path.write_text("\n".join(lines))
    with pytest.raises(CorpusFormatError, match="unknown emotion label 'joy'") as info:
        read_iemocap(tmp_path, "benchmark")
    assert (info.value.path, info.value.line) == (path, 9), was


def test_a_non_utf8_byte_in_a_file_with_cr_line_ends_names_its_line(tmp_path: Path) -> None:
    """Lines ended by a lone CR were read as lines, but the decode error counted only LFs (line 1)."""
    path = fresh_tree(tmp_path) / "Session4" / "dialog" / "transcriptions" / "Ses04F_script02_1.txt"
    lines = path.read_bytes().splitlines()
    lines[1] = lines[1].replace(b"Hello", b"H\xe9llo")
    path.write_bytes(b"\r".join(lines) + b"\r")
    with pytest.raises(CorpusFormatError, match="not UTF-8 text") as info:
        read_iemocap(tmp_path, "benchmark")
    assert (info.value.path, info.value.line) == (path, 2)


@pytest.mark.parametrize(
    "text",
    [
        "[" + "9" * 400 + " - 2.0000]\tSes04F_script02_1_F000\tsad\t[2.5000, 3.0000, 2.5000]",  # start was inf
        "[1.0000 - 2.0000]\tSes04F_script02_1_F000\tsad\t[2.5000, -" + "9" * 400 + ", 2.5000]",  # a VAD value
    ],
)
def test_a_summary_number_beyond_the_float_range_is_an_error(tmp_path: Path, text: str) -> None:
    path = fresh_tree(tmp_path) / "Session4" / "dialog" / "EmoEvaluation" / "Ses04F_script02_1.txt"
    rewrite_line(path, 3, text)
    with pytest.raises(CorpusFormatError, match="times and VAD values must be finite") as info:
        read_iemocap(tmp_path, "benchmark")
    assert (info.value.path, info.value.line) == (path, 3)
