"""The MELD.Raw layout: three label CSVs in the release's mojibake encoding and one mp4 per utterance.

Planted quirks, each one found in the real release: repeated `Sr No.` values, Dialogue_ID and
Utterance_ID gaps (a clip without a label row), three time formats, cp1252 punctuation stored
as C1 control characters, a labelled row without a clip, a corrupt clip, a clip without a face,
a silent clip, a macOS `._` junk file and an extra `final_videos_test...` clip in the test folder.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.demo.media import write_mp4_clip
from pipeline.demo.signals import (
    PROTOTYPES,
    SAMPLE_RATE,
    EmotionPrototype,
    make_sentence,
    paste,
    render_face,
    rng_for,
    synthesize_voice,
)

if TYPE_CHECKING:
    from pipeline.demo.corpus import DemoConfig

# The release's names, stated here on purpose and NOT imported from the reader (pipeline.corpora.meld:
# RELEASE_DIR, CSV_FILES, CLIP_FOLDERS, COLUMNS, EMOTIONS): the demo is the independent writer the
# reader is tested against, so a wrong name in either one fails the tests instead of agreeing with
# itself. The same holds for every path and format this module writes.
ROOT = "MELD.Raw"
SPLITS = ("train", "dev", "test")
CSV_NAMES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
CLIP_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
HEADER = (
    "Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
    "Utterance_ID", "Season", "Episode", "StartTime", "EndTime",
)
EMOTIONS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
TIME_FORMATS = ("HH:MM:SS,mmm", "H:MM:SS,mmm", "HH:MM:SS,mm")
_EMOTION_WEIGHTS = np.array([0.22, 0.13, 0.13, 0.13, 0.13, 0.13, 0.13])
_CAST = ("Chandler", "Joey", "Monica", "Phoebe", "Rachel", "Ross")
_GUEST = "Joey’s Agent"
# The release stores these characters as the C1 controls that share their cp1252 byte values.
_TO_RELEASE_MOJIBAKE = str.maketrans(
    {"’": "\x92", "…": "\x85", "—": "\x97", "‘": "\x91", "“": "\x93", "”": "\x94", "–": "\x96"}
)
_ALL_PUNCTUATION_TAIL = " “Yeah” – ‘right’…"
_APPLEDOUBLE_JUNK = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02\x00\x00\x00\x09"
_EXTRA_TEST_CLIP = "final_videos_testdia0_utt0.mp4"
_CLIP_STATE_QUIRKS = {
    "missing_clip": "missing", "corrupt_clip": "corrupt", "no_face_clip": "no_face", "silent_audio": "silent",
}
_DIALOGUE_ID_GAPS = {"train": 2, "dev": 1, "test": 0}
_GAP_UTTERANCE_ID = 2
_REPEATED_SR_NO_ROWS = 3
_ROWS_PER_ODD_TIME_FORMAT = 3


@dataclass
class _Row:
    split: str
    dialogue: int
    utterance: int
    label: str
    speaker: str
    text: str
    start_ms: int
    end_ms: int
    season: int
    episode: int
    sentiment: str = ""
    sr_no: int = 0
    time_format: str = TIME_FORMATS[0]
    labelled: bool = True
    clip_state: str = "ok"  # ok | missing | corrupt | no_face | silent

    @property
    def key(self) -> str:
        return f"dia{self.dialogue}_utt{self.utterance}"

    @property
    def clip(self) -> str:
        return f"{ROOT}/{CLIP_FOLDERS[self.split]}/{self.key}.mp4"


def write_meld(out_dir: Path, config: DemoConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Write `out_dir/MELD.Raw` and return (truth records of labelled rows, planted quirks)."""
    rng = rng_for(config.seed, "meld", "plan")
    dialogue_counts = {
        "train": config.meld_dialogues_train, "dev": config.meld_dialogues_dev, "test": config.meld_dialogues_test,
    }
    rows: list[_Row] = []
    missing_dialogue_ids: dict[str, list[int]] = {}
    for split in SPLITS:
        gaps = _DIALOGUE_ID_GAPS[split] if dialogue_counts[split] > 1 else 0
        ids, missing_dialogue_ids[split] = _dialogue_ids(dialogue_counts[split], gaps, rng)
        for dialogue in ids:
            rows.extend(_plan_dialogue(split, dialogue, config, rng))
    quirks = _plant_quirks(rows, rng)
    quirks["dialogue_id_gaps"] = missing_dialogue_ids

    root = out_dir / ROOT
    for split in SPLITS:
        (root / CLIP_FOLDERS[split]).mkdir(parents=True)
        _write_csv(root / CSV_NAMES[split], [r for r in rows if r.split == split and r.labelled])
    for row in rows:
        if row.clip_state != "missing":
            _write_clip(out_dir / row.clip, row, config)
        if row.clip_state == "corrupt":
            _truncate(out_dir / row.clip)

    test_folder = root / CLIP_FOLDERS["test"]
    (test_folder / "._dia0_utt0.mp4").write_bytes(_APPLEDOUBLE_JUNK)
    shutil.copyfile(test_folder / "dia0_utt0.mp4", test_folder / _EXTRA_TEST_CLIP)
    quirks["junk_files"] = [f"{ROOT}/{CLIP_FOLDERS['test']}/._dia0_utt0.mp4"]
    extra_path = f"{ROOT}/{CLIP_FOLDERS['test']}/{_EXTRA_TEST_CLIP}"
    quirks["unlabelled_clips"].append({"split": "test", "path": extra_path, "reason": "copy of dia0_utt0"})
    return [_truth(row) for row in rows if row.labelled], quirks


def _dialogue_ids(count: int, gaps: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """`count` ids from 0 upwards with `gaps` ids left out (never 0, never the last)."""
    missing = sorted(int(i) for i in rng.choice(np.arange(1, count + gaps - 1), size=gaps, replace=False))
    return [i for i in range(count + gaps) if i not in missing], missing


def _plan_dialogue(split: str, dialogue: int, config: DemoConfig, rng: np.random.Generator) -> list[_Row]:
    """A scene of one episode: two or three of the cast, utterances one after another."""
    low, high = config.meld_utterances_per_dialogue
    speakers = list(rng.choice(_CAST, size=int(rng.integers(2, 4)), replace=False))
    season, episode = int(rng.integers(1, 11)), int(rng.integers(1, 25))
    clock_ms = int(rng.integers(60_000, 1_300_000))
    rows = []
    for utterance in range(int(rng.integers(low, high + 1))):
        label = str(rng.choice(EMOTIONS, p=_EMOTION_WEIGHTS))
        start_ms = clock_ms + int(rng.integers(200, 1000))
        clock_ms = start_ms + int(round(rng.uniform(*config.utterance_duration_s) * 1000))
        text = make_sentence(PROTOTYPES[label], rng_for(config.seed, "meld", split, dialogue, utterance, "text"))
        speaker = str(rng.choice(speakers))
        rows.append(_Row(split, dialogue, utterance, label, speaker, text, start_ms, clock_ms, season, episode))
    for row in rows:
        row.sentiment = _sentiment(row.label, rng)
    return rows


def _sentiment(label: str, rng: np.random.Generator) -> str:
    if label == "neutral":
        return "neutral"
    if label == "joy":
        return "positive"
    if label == "surprise":
        return str(rng.choice(["positive", "negative"]))
    return "negative"


def _plant_quirks(rows: list[_Row], rng: np.random.Generator) -> dict[str, Any]:
    """Mark the rows that carry each quirk; returns the quirk lists for the truth record."""
    first_train, gap_dialogue = sorted({r.dialogue for r in rows if r.split == "train"})[:2]
    gap_row = next(
        r for r in rows if r.split == "train" and r.dialogue == gap_dialogue and r.utterance == _GAP_UTTERANCE_ID
    )
    gap_row.labelled = False
    _plant_clip_states(rows, rng)
    guest_dialogue = [r for r in rows if r.split == "train" and r.dialogue == first_train]
    guest_dialogue[1].speaker = _GUEST
    guest_dialogue[-1].text += _ALL_PUNCTUATION_TAIL
    labelled = [r for r in rows if r.labelled]
    _number_rows(labelled, rng)
    _plant_time_formats(labelled, rng)

    def ident(row: _Row) -> dict[str, Any]:
        return {"split": row.split, "key": row.key}

    def has_mojibake(text: str) -> bool:
        return text != text.translate(_TO_RELEASE_MOJIBAKE)

    train = [r for r in labelled if r.split == "train"]
    return {
        "repeated_sr_no": [{**ident(r), "sr_no": r.sr_no} for p, r in zip(train, train[1:]) if r.sr_no == p.sr_no],
        "utterance_id_gaps": [
            {"split": "train", "dialogue_id": gap_dialogue, "missing_utterance_id": _GAP_UTTERANCE_ID}
        ],
        "unlabelled_clips": [
            {"split": "train", "path": gap_row.clip, "reason": "Utterance_ID gap", "signal": gap_row.label}
        ],
        "time_formats": {fmt: [ident(r) for r in labelled if r.time_format == fmt] for fmt in TIME_FORMATS},
        "mojibake_text": [ident(r) for r in labelled if has_mojibake(r.text)],
        "mojibake_speaker": [{**ident(r), "speaker": r.speaker} for r in labelled if has_mojibake(r.speaker)],
        **{
            name: [{**ident(r), "path": r.clip} for r in labelled if r.clip_state == state]
            for name, state in _CLIP_STATE_QUIRKS.items()
        },
    }


def _plant_clip_states(rows: list[_Row], rng: np.random.Generator) -> None:
    """One missing (dev), corrupt (train), faceless (train) and silent (test) clip, on distinct rows.

    Utterance 0 is spared: the test folder's extra clip copies dia0_utt0.
    """

    def pick(split: str) -> _Row:
        candidates = [r for r in rows if r.split == split and r.labelled and r.clip_state == "ok" and r.utterance]
        return candidates[int(rng.integers(len(candidates)))]

    pick("dev").clip_state = "missing"
    pick("train").clip_state = "corrupt"
    pick("train").clip_state = "no_face"
    pick("test").clip_state = "silent"


def _number_rows(labelled: list[_Row], rng: np.random.Generator) -> None:
    """`Sr No.` counts rows per file from 1, but a few train rows repeat the previous row's number."""
    for split in SPLITS:
        for number, row in enumerate((r for r in labelled if r.split == split), start=1):
            row.sr_no = number
    train = [r for r in labelled if r.split == "train"]
    repeated = rng.choice(np.arange(1, len(train)), size=_REPEATED_SR_NO_ROWS, replace=False)
    for index in sorted(int(i) for i in repeated):
        train[index].sr_no = train[index - 1].sr_no


def _plant_time_formats(labelled: list[_Row], rng: np.random.Generator) -> None:
    """A few rows get the release's two odd time formats; the rest keep HH:MM:SS,mmm."""
    chosen = rng.choice(len(labelled), size=2 * _ROWS_PER_ODD_TIME_FORMAT, replace=False)
    for position, index in enumerate(chosen):
        row = labelled[int(index)]
        row.time_format = TIME_FORMATS[1 + position % 2]
        if row.time_format == "HH:MM:SS,mm":  # centisecond times, so the two-digit field is exact
            row.start_ms = round(row.start_ms, -1)
            row.end_ms = max(row.start_ms + 10, round(row.end_ms, -1))


def _format_time(ms: int, time_format: str) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    if time_format == "H:MM:SS,mmm":
        return f"{hours}:{minutes:02d}:{seconds:02d},{millis:03d}"
    if time_format == "HH:MM:SS,mm":
        return f"{hours:02d}:{minutes:02d}:{seconds:02d},{millis // 10:02d}"
    return f"{hours:02d}:{minutes:02d}:{seconds:02d},{millis:03d}"


def _write_csv(path: Path, rows: list[_Row]) -> None:
    """UTF-8 with LF line ends; the csv module quotes the times, which hold a comma."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        for row in rows:
            writer.writerow(
                (
                    row.sr_no,
                    row.text.translate(_TO_RELEASE_MOJIBAKE),
                    row.speaker.translate(_TO_RELEASE_MOJIBAKE),
                    row.label,
                    row.sentiment,
                    row.dialogue,
                    row.utterance,
                    row.season,
                    row.episode,
                    _format_time(row.start_ms, row.time_format),
                    _format_time(row.end_ms, row.time_format),
                )
            )


def _write_clip(path: Path, row: _Row, config: DemoConfig) -> None:
    rng = rng_for(config.seed, "meld", row.split, row.dialogue, row.utterance, "media")
    prototype = PROTOTYPES[row.label]
    duration_s = (row.end_ms - row.start_ms) / 1000
    voice = synthesize_voice(prototype, duration_s, rng)
    if row.clip_state == "silent":
        voice = np.zeros_like(voice)
    n_frames = max(1, round(duration_s * config.fps))
    frames = _talking_head(row, config, prototype, n_frames, rng)
    write_mp4_clip(path, frames, config.meld_frame_size, config.fps, voice, SAMPLE_RATE)


def _talking_head(
    row: _Row, config: DemoConfig, prototype: EmotionPrototype, n_frames: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """The tinted face, swaying a little, on the scene's background (or the background alone)."""
    width, height = config.meld_frame_size
    scene = rng_for(config.seed, "meld", row.split, row.dialogue, "set")
    background = scene.integers(60, 160, 3).astype(np.uint8)
    face = render_face(prototype, int(height * rng.uniform(0.7, 0.8)), rng)
    top = (height - face.shape[0]) // 2 + int(rng.integers(-8, 9))
    left = int(rng.integers(8, max(9, width - face.shape[1] - 8)))
    sway_hz, phase = rng.uniform(0.3, 0.8), rng.uniform(0, 2 * np.pi)
    for index in range(n_frames):
        canvas = np.empty((height, width, 3), np.uint8)
        canvas[:] = background
        if row.clip_state != "no_face":
            sway = int(round(3 * np.sin(2 * np.pi * sway_hz * index / config.fps + phase)))
            paste(canvas, face, top, left + sway)
        yield canvas


def _truncate(path: Path) -> None:
    """Keep the first 40 % of the file, like a download that broke off: no moov atom, not decodable."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 5])


def _truth(row: _Row) -> dict[str, Any]:
    return {
        "corpus": "meld",
        "split": row.split,
        "key": row.key,
        "dialogue": row.dialogue,
        "utterance": row.utterance,
        "label": row.label,
        "signal": row.label,
        "sentiment": row.sentiment,
        "speaker": row.speaker,
        "text": row.text,
        "sr_no": row.sr_no,
        "season": row.season,
        "episode": row.episode,
        "start_s": row.start_ms / 1000,
        "end_s": row.end_ms / 1000,
        "clip": row.clip,
        "clip_state": row.clip_state,
    }
