"""Both readers on the generated demo corpus, checked against the generator's record of what it planted."""

from __future__ import annotations

import pytest

from pipeline.corpora.iemocap import read_iemocap
from pipeline.corpora.meld import read_meld


@pytest.fixture(scope="module")
def meld(demo_corpus):
    root, truth = demo_corpus
    result = read_meld(root / "MELD.Raw", "emotion")
    return truth, {u.utterance_id: u for u in result.utterances}, result


@pytest.fixture(scope="module")
def iemocap(demo_corpus):
    root, truth = demo_corpus
    result = read_iemocap(root / "IEMOCAP_full_release", "benchmark")
    return truth, {u.utterance_id: u for u in result.utterances}, result


def test_meld_rows_match_the_generated_truth(meld):
    truth, rows, _ = meld
    expected = [u for u in truth["utterances"] if u["corpus"] == "meld"]
    assert len(rows) == len(expected)
    for item in expected:
        utt = rows[f"{item['split']}_{item['key']}"]
        assert (utt.label, utt.speaker, utt.text) == (item["label"], item["speaker"], item["text"])
        assert (utt.start_s, utt.end_s) == (pytest.approx(item["start_s"]), pytest.approx(item["end_s"]))
        assert utt.turn_index == item["utterance"]
        assert not any(0x80 <= ord(c) <= 0x9F for c in utt.text + utt.speaker)


def test_meld_planted_media_problems_are_flagged_not_dropped(meld):
    truth, rows, result = meld
    quirks = truth["quirks"]["meld"]
    (corrupt,) = quirks["corrupt_clip"]
    (missing,) = quirks["missing_clip"]
    assert rows[f"{corrupt['split']}_{corrupt['key']}"].flags == ["unreadable_clip"]
    assert rows[f"{missing['split']}_{missing['key']}"].flags == ["missing_clip"]
    flagged = {u.utterance_id for u in rows.values() if u.flags}
    assert flagged == {f"{corrupt['split']}_{corrupt['key']}", f"{missing['split']}_{missing['key']}"}
    healthy = [u for u in rows.values() if not u.flags]
    assert all(u.has_audio and u.has_video and u.audio_end_s > 0 for u in healthy)
    ignored = {path for paths in result.ignored.values() for path in paths}
    assert {q["path"].removeprefix("MELD.Raw/") for q in quirks["unlabelled_clips"]} <= ignored
    assert "output_repeated_splits_test/._dia0_utt0.mp4" in result.ignored["macos_metadata_files"]


def test_iemocap_rows_match_the_generated_truth(iemocap):
    truth, rows, result = iemocap
    quirks = truth["quirks"]["iemocap"]
    relabelled = {q["key"] for q in quirks["xxx_relabel_hap"]}
    not_relabelled = {q["key"] for q in quirks["xxx_not_relabelled"]}
    six = {"hap", "sad", "neu", "ang", "exc", "fru"}
    expected = {
        u["key"]: u for u in truth["utterances"]
        if u["corpus"] == "iemocap" and (u["label"] in six or u["key"] in relabelled)
    }
    assert set(rows) == set(expected)
    assert not_relabelled <= {e.utterance_id for e in result.excluded}
    for key, item in expected.items():
        utt = rows[key]
        assert utt.label == ("hap" if key in relabelled else item["label"])
        assert (utt.split, utt.speaker, utt.text) == (item["split"], item["actor"], item["text"])
        assert utt.video_region == item["video_half"]  # the generator's own record of where it drew the speaker
        assert utt.audio_path == item["wav"].removeprefix("IEMOCAP_full_release/")
        assert utt.has_audio and utt.has_video and utt.has_text


def test_iemocap_dialogue_order_follows_time_not_emoevaluation_order(iemocap):
    _, rows, _ = iemocap
    by_dialogue: dict[str, list] = {}
    for utt in rows.values():
        by_dialogue.setdefault(utt.dialogue_id, []).append(utt)
    for utts in by_dialogue.values():
        ordered = sorted(utts, key=lambda u: u.turn_index)
        assert [u.start_s for u in ordered] == sorted(u.start_s for u in ordered)
        assert len({u.speaker for u in ordered}) == 2  # both actors speak, interleaved


def test_the_independent_statements_of_the_raw_layout_agree_with_the_readers():
    """The demo writer and the reader tests' IEMOCAP tree state the release's names themselves instead of
    importing them from the readers (so that a wrong name in either one fails); compared here one by one,
    a disagreement names itself instead of showing up as files the reader cannot find."""
    from pipeline.corpora import iemocap, meld
    from pipeline.demo import iemocap_layout, meld_layout
    from tests.helpers import iemocap_tree

    assert meld_layout.ROOT == meld.RELEASE_DIR
    assert meld_layout.CSV_NAMES == meld.CSV_FILES
    assert meld_layout.CLIP_FOLDERS == meld.CLIP_FOLDERS
    assert list(meld_layout.HEADER) == meld.COLUMNS
    assert list(meld_layout.EMOTIONS) == meld.EMOTIONS
    assert iemocap_layout.ROOT == iemocap_tree.RELEASE_DIR == iemocap.RELEASE_DIR
    assert len(iemocap_layout.DEV_DIALOGUES) == 12 and frozenset(iemocap_layout.DEV_DIALOGUES) == iemocap.DEV_DIALOGUES
    for dialogue in ("Ses01F_impro01", "Ses03M_impro05a"):
        for gender in "FM":
            assert iemocap_layout.video_half(dialogue, gender) == iemocap.speaker_frame_side(f"{dialogue}_{gender}001")
