"""The demo corpus generator: real raw layouts, planted quirks, learnable signal, reproducible bytes."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile

from pipeline.demo.corpus import DemoConfig, generate_demo_corpus
from pipeline.core.atomic import write_marker
from pipeline.core.outputs import MARKER_FILE
from pipeline.demo.signals import PROTOTYPES

pytestmark = pytest.mark.slow

MELD_CLIP_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
SENTIMENTS = {"neutral": {"neutral"}, "joy": {"positive"}, "surprise": {"positive", "negative"}}
MELD_HEADER = b"Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
TIME_PATTERNS = {
    "HH:MM:SS,mmm": re.compile(r"^\d{2}:\d{2}:\d{2},\d{3}$"),
    "H:MM:SS,mmm": re.compile(r"^\d:\d{2}:\d{2},\d{3}$"),
    "HH:MM:SS,mm": re.compile(r"^\d{2}:\d{2}:\d{2},\d{2}$"),
}
SUMMARY_LINE = re.compile(r"^\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(\S+)\t(\w{3})\t\[\d\.\d{4}, \d\.\d{4}, \d\.\d{4}\]$")
VOTE_LINE = re.compile(r"^C-(E[1-4]|[FM]1):\t((?:[A-Z][a-z]+; )*[A-Z][a-z]+;)\t\([a-z ]*\)$")
DIMENSION_LINE = re.compile(r"^A-(E[1-4]|[FM]1):\tval [1-5]; act [1-5]; dom  [1-5];\t\([a-z ]*\)$")


@pytest.fixture(scope="session")
def demo(demo_corpus: tuple[Path, dict]) -> tuple[Path, dict]:
    """The session's default demo corpus (generated once, in conftest), shared with the reader tests."""
    return demo_corpus


def file_hashes(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def utterances(truth: dict, corpus: str) -> list[dict]:
    return [u for u in truth["utterances"] if u["corpus"] == corpus]


def keys(entries: list[dict]) -> set[tuple[str, str]]:
    return {(e["split"], e["key"]) for e in entries}


def repair_release_mojibake(text: str) -> str:
    return re.sub("[\x80-\x9f]", lambda m: m.group().encode("latin-1").decode("cp1252"), text)


def read_meld_rows(root: Path, split: str) -> list[dict[str, str]]:
    text = (root / "MELD.Raw" / f"{split}_sent_emo.csv").read_bytes().decode("utf-8")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def row_key(row: dict[str, str]) -> str:
    return f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}"


def decode_audio(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)


def decode_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


# --- the whole corpus -------------------------------------------------------------------------


def test_truth_file_is_the_returned_record_and_counts_fit(demo):
    root, truth = demo
    assert json.loads((root / "demo_corpus.json").read_text(encoding="utf-8")) == truth
    assert truth["seed"] == 0 and truth["config"]["seed"] == 0
    meld, iemocap = utterances(truth, "meld"), utterances(truth, "iemocap")
    assert 100 <= len(meld) <= 150 and 120 <= len(iemocap) <= 180
    assert truth["counts"]["meld"]["total"] == len(meld)
    assert truth["counts"]["iemocap"]["by_split"] == dict(Counter(u["split"] for u in iemocap))
    assert len({(u["corpus"], u["split"], u["key"]) for u in truth["utterances"]}) == len(truth["utterances"])


def test_total_size_is_at_most_8_mb(demo):
    root, _ = demo
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) <= 8_000_000


def test_same_seed_gives_identical_files_and_other_seed_differs(demo, tmp_path):
    root, truth = demo
    again = tmp_path / "again"
    again.mkdir()
    (again / "stale.txt").write_text("replaced on success")
    write_marker(again, "demo-corpus")  # an earlier demo corpus: the only kind of folder it replaces
    assert generate_demo_corpus(again, DemoConfig()) == truth
    assert file_hashes(again) == file_hashes(root)

    generate_demo_corpus(tmp_path / "other", DemoConfig(seed=1))
    other, reference = file_hashes(tmp_path / "other"), file_hashes(root)
    media = [name for name in reference if name.endswith((".mp4", ".wav", ".csv"))]
    changed = [name for name in media if other.get(name) != reference[name]]
    assert len(changed) > 0.9 * len(media)


def test_a_failure_leaves_an_existing_corpus_and_no_temporary_folder(tmp_path, monkeypatch):
    import pipeline.demo.corpus

    out = tmp_path / "corpus"
    out.mkdir()
    (out / "keep.txt").write_text("old corpus")
    write_marker(out, "demo-corpus")

    def broken(staging: Path, config: DemoConfig):
        (staging / "IEMOCAP_full_release").mkdir()
        raise RuntimeError("disk full")

    monkeypatch.setattr(pipeline.demo.corpus, "write_iemocap", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_demo_corpus(out, DemoConfig())
    assert [p.name for p in tmp_path.iterdir()] == ["corpus"]
    assert sorted(p.name for p in out.iterdir()) == [MARKER_FILE, "keep.txt"]


def test_the_smallest_config_still_plants_every_quirk(tmp_path):
    small = DemoConfig(
        seed=3,
        meld_dialogues_train=2,
        meld_dialogues_dev=1,
        meld_dialogues_test=1,
        meld_utterances_per_dialogue=(4, 4),
        iemocap_dialogues_train=4,
        iemocap_dialogues_dev=1,
        iemocap_dialogues_test=1,
        iemocap_turns_per_dialogue=(4, 4),
    )
    truth = generate_demo_corpus(tmp_path / "small", small)
    assert truth["counts"]["meld"]["total"] == 4 * 4 - 1  # utterance 2 of train dialogue 1 has no row
    assert truth["counts"]["iemocap"]["total"] == 6 * 4
    for corpus in ("meld", "iemocap"):
        for name, entries in truth["quirks"][corpus].items():
            assert entries, f"{corpus} quirk {name} was not planted"
    assert {f"Session{n}" for n in range(1, 6)} == {p.name for p in (tmp_path / "small/IEMOCAP_full_release").iterdir()}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", -1),
        ("meld_dialogues_train", 1),
        ("meld_utterances_per_dialogue", (3, 9)),
        ("meld_utterances_per_dialogue", (9, 6)),
        ("iemocap_dialogues_dev", 13),
        ("iemocap_dialogues_train", 3),
        ("utterance_duration_s", (0.1, 1.0)),
        ("fps", 0),
        ("meld_frame_size", (321, 240)),
        ("meld_frame_size", (320, 120)),
        ("iemocap_frame_size", (200, 180)),
    ],
)
def test_invalid_config_is_rejected_with_the_field_name(field, value):
    with pytest.raises(ValueError, match=f"demo config: {field}"):
        DemoConfig(**{field: value})


def test_config_from_yaml_lists_becomes_tuples():
    config = DemoConfig(**{"meld_frame_size": [320, 240], "utterance_duration_s": [1, 1.5]})
    assert config.meld_frame_size == (320, 240) and config.utterance_duration_s == (1, 1.5)


# --- MELD -------------------------------------------------------------------------------------


def test_meld_csvs_keep_the_release_encoding(demo):
    root, truth = demo
    data = {split: (root / "MELD.Raw" / f"{split}_sent_emo.csv").read_bytes() for split in ("train", "dev", "test")}
    for raw in data.values():
        assert raw.startswith(MELD_HEADER)
        assert b"\r" not in raw
        assert b'"00:' in raw or b'"0:' in raw  # times hold a comma, so the csv module quotes them
    assert b"\xc2\x92" in data["train"]
    assert "\u2019".encode() not in b"".join(data.values())
    all_text = b"".join(data.values()).decode("utf-8")
    assert {"\x92", "\x85", "\x97", "\x91", "\x93", "\x94", "\x96"} <= set(all_text)
    assert truth["quirks"]["meld"]["mojibake_speaker"]


def test_meld_rows_match_the_truth_after_repairing_mojibake(demo):
    root, truth = demo
    expected = {(u["split"], u["key"]): u for u in utterances(truth, "meld")}
    seen = {}
    for split in ("train", "dev", "test"):
        for row in read_meld_rows(root, split):
            seen[(split, row_key(row))] = row
    assert seen.keys() == expected.keys()
    for key, row in seen.items():
        truth_row = expected[key]
        assert repair_release_mojibake(row["Utterance"]) == truth_row["text"]
        assert repair_release_mojibake(row["Speaker"]) == truth_row["speaker"]
        assert row["Emotion"] == truth_row["label"]
        assert row["Sentiment"] in SENTIMENTS.get(row["Emotion"], {"negative"})
        assert row["Season"].isdigit() and row["Episode"].isdigit()
        assert sum(w in truth_row["text"].lower() for w in PROTOTYPES[truth_row["label"]].words) >= 2


def test_meld_plants_repeated_sr_no_gaps_and_three_time_formats(demo):
    root, truth = demo
    quirks = truth["quirks"]["meld"]
    train = read_meld_rows(root, "train")
    repeats = [row for prev, row in zip(train, train[1:]) if row["Sr No."] == prev["Sr No."]]
    assert repeats and {("train", row_key(r)) for r in repeats} == keys(quirks["repeated_sr_no"])

    for split, missing in quirks["dialogue_id_gaps"].items():
        ids = {int(r["Dialogue_ID"]) for r in read_meld_rows(root, split)}
        assert not ids & set(missing) and set(range(max(ids) + 1)) - ids == set(missing)
    assert quirks["dialogue_id_gaps"]["train"]

    (gap,) = quirks["utterance_id_gaps"]
    gap_ids = {int(r["Utterance_ID"]) for r in train if int(r["Dialogue_ID"]) == gap["dialogue_id"]}
    assert gap["missing_utterance_id"] not in gap_ids and gap["missing_utterance_id"] + 1 in gap_ids
    assert (root / "MELD.Raw/train_splits" / f"dia{gap['dialogue_id']}_utt{gap['missing_utterance_id']}.mp4").is_file()

    found = Counter()
    for split in ("train", "dev", "test"):
        for row in read_meld_rows(root, split):
            (fmt,) = [name for name, pattern in TIME_PATTERNS.items() if pattern.match(row["StartTime"])]
            assert TIME_PATTERNS[fmt].match(row["EndTime"])
            assert (split, row_key(row)) in keys(quirks["time_formats"][fmt])
            found[fmt] += 1
    assert all(found[fmt] >= 1 for fmt in TIME_PATTERNS)


def test_meld_clips_sit_where_the_release_puts_them(demo):
    root, truth = demo
    quirks = truth["quirks"]["meld"]
    missing = keys(quirks["missing_clip"])
    assert len(missing) == 1 and next(iter(missing))[0] == "dev"
    for u in utterances(truth, "meld"):
        assert u["clip"] == f"MELD.Raw/{MELD_CLIP_FOLDERS[u['split']]}/{u['key']}.mp4"
        assert (root / u["clip"]).is_file() == ((u["split"], u["key"]) not in missing)
    test_folder = root / "MELD.Raw/output_repeated_splits_test"
    extra = test_folder / "final_videos_testdia0_utt0.mp4"
    assert extra.read_bytes() == (test_folder / "dia0_utt0.mp4").read_bytes()
    assert (test_folder / "._dia0_utt0.mp4").stat().st_size < 100
    assert quirks["junk_files"] == ["MELD.Raw/output_repeated_splits_test/._dia0_utt0.mp4"]
    for entry in quirks["unlabelled_clips"]:
        assert (root / entry["path"]).is_file()


def test_meld_clip_has_h264_video_and_aac_audio_of_the_utterance_duration(demo):
    root, truth = demo
    clean = next(u for u in utterances(truth, "meld") if u["clip_state"] == "ok")
    with av.open(str(root / clean["clip"])) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.name, video.format.name) == ("h264", "yuv420p")
        assert (video.width, video.height) == (320, 240)
        assert (audio.codec_context.name, audio.sample_rate, audio.channels) == ("aac", 16000, 1)
        assert container.metadata.get("creation_time") is None
        n_frames = sum(1 for _ in container.decode(video=0))
    duration = clean["end_s"] - clean["start_s"]
    assert n_frames == max(1, round(duration * 10))
    assert abs(decode_audio(root / clean["clip"]).shape[1] / 16000 - duration) < 0.15


def test_meld_corrupt_clip_does_not_decode(demo):
    root, truth = demo
    (corrupt,) = truth["quirks"]["meld"]["corrupt_clip"]
    assert corrupt["split"] == "train" and (root / corrupt["path"]).stat().st_size > 0
    with pytest.raises(av.error.FFmpegError):
        with av.open(str(root / corrupt["path"])) as container:
            for _ in container.decode():
                pass


def test_meld_silent_clip_decodes_to_zeros_and_others_do_not(demo):
    root, truth = demo
    (silent,) = truth["quirks"]["meld"]["silent_audio"]
    assert not np.any(decode_audio(root / silent["path"]))
    loud = next(u for u in utterances(truth, "meld") if u["clip_state"] == "ok")
    assert np.abs(decode_audio(root / loud["clip"])).max() > 0.05


def test_meld_no_face_clip_is_plain_background(demo):
    root, truth = demo
    (no_face,) = truth["quirks"]["meld"]["no_face_clip"]
    frame = decode_frames(root / no_face["path"])[0].astype(float)
    assert frame.std(axis=(0, 1)).max() < 3


# --- faces ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtcnn():
    try:
        from pipeline.core.torchvision_compat import ensure_torchvision_ops
    except ImportError:
        pytest.skip(
            "pipeline/core/torchvision_compat.py is missing, so facenet-pytorch's MTCNN cannot import on a CPU-only torch"
        )
    ensure_torchvision_ops()
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True)


def test_mtcnn_finds_a_big_enough_face_in_every_emotion_and_none_in_the_faceless_clip(demo, mtcnn):
    root, truth = demo
    meld = utterances(truth, "meld")
    one_per_label = {u["label"]: u for u in meld if u["clip_state"] in ("ok", "silent")}
    for u in one_per_label.values():
        frames = decode_frames(root / u["clip"])
        boxes, _ = mtcnn.detect(frames[len(frames) // 2])
        assert boxes is not None and len(boxes) == 1, u["key"]
        assert boxes[0][3] - boxes[0][1] >= 80
    (no_face,) = truth["quirks"]["meld"]["no_face_clip"]
    assert mtcnn.detect(decode_frames(root / no_face["path"])[0])[0] is None


def test_mtcnn_finds_the_speaker_and_the_listener_in_the_dialogue_video(demo, mtcnn):
    root, truth = demo
    turn = next(u for u in utterances(truth, "iemocap") if u["signal"] == "anger")
    frame = decode_frames(root / turn["video"])[int((turn["start_s"] + turn["end_s"]) / 2 * 10)]
    half = frame.shape[1] // 2
    for side in (frame[:, :half], frame[:, half:]):
        boxes, _ = mtcnn.detect(np.ascontiguousarray(side))
        assert boxes is not None and len(boxes) == 1


def test_the_speakers_half_carries_the_tint_and_the_listeners_half_is_neutral(demo):
    root, truth = demo
    turn = next(u for u in utterances(truth, "iemocap") if u["signal"] == "anger")  # red tint: R up, G and B down
    frames = decode_frames(root / turn["video"])
    during = frames[int((turn["start_s"] + turn["end_s"]) / 2 * 10)].astype(float)
    before = frames[0].astype(float)  # before the first turn: both faces neutral
    half = during.shape[1] // 2
    left, right = slice(0, half), slice(half, None)
    speaker, listener = (left, right) if turn["video_half"] == "left" else (right, left)
    change = during[:, speaker].mean(axis=(0, 1)) - before[:, speaker].mean(axis=(0, 1))
    assert change[0] > 5 and change[1] < -10 and change[2] < -10
    assert np.abs(during[:, listener].mean(axis=(0, 1)) - before[:, listener].mean(axis=(0, 1))).max() < 3


# --- IEMOCAP ----------------------------------------------------------------------------------


def test_iemocap_layout_covers_every_session_and_split(demo):
    root, truth = demo
    release = root / "IEMOCAP_full_release"
    for session in range(1, 6):
        assert list((release / f"Session{session}/dialog/EmoEvaluation").glob("Ses*.txt"))
    turns = utterances(truth, "iemocap")
    assert {u["split"] for u in turns} == {"train", "dev", "test"}
    assert all((u["split"] == "test") == (u["session"] == 5) for u in turns)
    assert {"Ses03M_impro05a", "Ses05M_script01_1b"} <= set(truth["quirks"]["iemocap"]["odd_dialogue_names"])
    for u in turns:
        d, s = u["dialogue"], u["session"]
        assert u["wav"] == f"IEMOCAP_full_release/Session{s}/sentences/wav/{d}/{u['key']}.wav"
        assert u["video"] == f"IEMOCAP_full_release/Session{s}/dialog/avi/DivX/{d}.avi"
        assert (root / u["wav"]).is_file() and (root / u["video"]).is_file()
        assert (release / f"Session{s}/dialog/transcriptions/{d}.txt").is_file()
        # the real release's rule: the actor of the dialogue's session letter on the left
        assert u["video_half"] == ("left" if u["speaker"] == d[5] else "right")
    assert {(u["dialogue"][5], u["speaker"], u["video_half"]) for u in turns} == {
        ("F", "F", "left"), ("F", "M", "right"), ("M", "M", "left"), ("M", "F", "right")}
    for junk in truth["quirks"]["iemocap"]["junk_files"]:
        assert (root / junk).is_file()


def parse_emo_evaluation(path: Path) -> list[dict]:
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[:2] == ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
    turns = []
    for line in lines[2:]:
        if not line:
            continue
        if match := SUMMARY_LINE.match(line):
            turns.append({"name": match[3], "label": match[4], "start": float(match[1]), "votes": {}})
        elif match := VOTE_LINE.match(line):
            turns[-1]["votes"][match[1]] = match[2].rstrip(";").split("; ")
        else:
            assert DIMENSION_LINE.match(line), line
    return turns


def test_emo_evaluation_lists_f_turns_before_m_turns_in_the_real_format(demo):
    root, truth = demo
    by_dialogue: dict[str, list[dict]] = {}
    for u in utterances(truth, "iemocap"):
        by_dialogue.setdefault(u["dialogue"], []).append(u)
    for dialogue, turns in by_dialogue.items():
        path = root / f"IEMOCAP_full_release/Session{turns[0]['session']}/dialog/EmoEvaluation/{dialogue}.txt"
        parsed = parse_emo_evaluation(path)
        speakers = [t["name"][-4] for t in parsed]
        assert speakers == sorted(speakers) and set(speakers) == {"F", "M"}
        assert {t["name"]: t["label"] for t in parsed} == {u["key"]: u["label"] for u in turns}
        for t in parsed:
            own = f"{t['name'][-4]}1"
            assert own in t["votes"] and all(rater in (own, "E1", "E2", "E3", "E4") for rater in t["votes"])


def test_xxx_turns_follow_the_self_assessment_rule_as_recorded(demo):
    root, truth = demo
    relabel, keep = set(), set()
    for path in (root / "IEMOCAP_full_release").glob("Session*/dialog/EmoEvaluation/*.txt"):
        for turn in parse_emo_evaluation(path):
            if turn["label"] != "xxx":
                continue
            own = turn["votes"][f"{turn['name'][-4]}1"]
            counts = Counter(emotion for votes in turn["votes"].values() for emotion in votes)
            best_other = max((n for emotion, n in counts.items() if emotion != "Happiness"), default=0)
            (relabel if own == ["Happiness"] and counts["Happiness"] > best_other else keep).add(turn["name"])
    quirks = truth["quirks"]["iemocap"]
    assert relabel == {e["key"] for e in quirks["xxx_relabel_hap"]} and len(relabel) >= 2
    assert keep == {e["key"] for e in quirks["xxx_not_relabelled"]} and len(keep) >= 2
    assert all(u["signal"] == "joy" for u in utterances(truth, "iemocap") if u["key"] in relabel)
    labels = {u["label"] for u in utterances(truth, "iemocap")}
    assert {"hap", "sad", "neu", "ang", "exc", "fru", "xxx", "oth", "sur", "fea"} <= labels


def test_transcriptions_are_in_time_order_with_lines_the_reader_must_skip(demo):
    root, truth = demo
    by_key = {u["key"]: u for u in utterances(truth, "iemocap")}
    junk = {(j["dialogue"], j["line"]) for j in truth["quirks"]["iemocap"]["transcription_junk_lines"]}
    assert any(line.startswith("M: ") for _, line in junk) and any(re.search(r"_[FM]XX0 \[", line) for _, line in junk)
    for path in (root / "IEMOCAP_full_release").glob("Session*/dialog/transcriptions/*.txt"):
        starts = []
        for line in path.read_text(encoding="utf-8").splitlines():
            match = re.match(r"^(Ses\w+_[FM]\d{3}) \[(\d{3}\.\d{4})-(\d{3}\.\d{4})\]: (.+)$", line)
            if match is None:
                assert (path.stem, line) in junk
                continue
            u = by_key[match[1]]
            assert (float(match[2]), float(match[3]), match[4]) == (u["start_s"], u["end_s"], u["text"])
            starts.append(u["start_s"])
        assert starts == sorted(starts) and len(starts) == sum(u["dialogue"] == path.stem for u in by_key.values())


def test_wavs_are_16khz_mono_pcm16_of_the_turn_duration(demo):
    root, truth = demo
    for u in utterances(truth, "iemocap"):
        info = soundfile.info(str(root / u["wav"]))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        assert info.frames == round((u["end_s"] - u["start_s"]) * 16000)
    (silent,) = truth["quirks"]["iemocap"]["silent_audio"]
    assert not np.any(soundfile.read(str(root / silent["path"]), dtype="int16")[0])


def test_dialogue_avi_is_divx_and_covers_the_dialogue(demo):
    root, truth = demo
    ends: dict[str, float] = {}
    for u in utterances(truth, "iemocap"):
        ends[u["video"]] = max(ends.get(u["video"], 0.0), u["end_s"])
    for video, end in ends.items():
        with av.open(str(root / video)) as container:
            stream = container.streams.video[0]
            assert container.format.name == "avi"
            assert (stream.codec_context.name, stream.codec_context.codec_tag) == ("mpeg4", "DIVX")
            assert not container.streams.audio
            assert sum(1 for _ in container.decode(video=0)) >= end * 10


def test_audio_pitch_reveals_the_planted_emotion(demo):
    """The spectral peak of a wav is nearest its own prototype's f0: the audio carries the class."""
    root, truth = demo
    prototypes = np.array([p.f0_hz for p in PROTOTYPES.values()])
    names = list(PROTOTYPES)
    silent = {e["key"] for e in truth["quirks"]["iemocap"]["silent_audio"]}
    hits = []
    for u in utterances(truth, "iemocap"):
        if u["key"] in silent:
            continue
        audio, rate = soundfile.read(str(root / u["wav"]))
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
        freqs = np.fft.rfftfreq(len(audio), 1 / rate)
        band = (freqs > 70) & (freqs < 500)
        peak = freqs[band][np.argmax(spectrum[band])]
        hits.append(names[int(np.argmin(np.abs(np.log(prototypes / peak))))] == u["signal"])
    assert np.mean(hits) > 0.95
