"""The IEMOCAP_full_release layout: per dialogue an EmoEvaluation file, a transcription, one wav
per turn and one DivX avi of the whole dialogue.

The video follows the real release: the frame is split side by side; the LEFT half shows the actor
whose gender is the dialogue's session letter (Ses01F_*: F, Ses01M_*: M), the RIGHT half the other
actor (mirrored). During a turn the speaker's half shows the face with that turn's emotion; the
listener's half, and both halves between turns, show the untinted face.

Planted for the reader: F turns listed before M turns in EmoEvaluation, `xxx` turns that the
self-assessment rule relabels `hap` and ones it must not, excluded labels (xxx, oth, sur, fea),
junk in the EmoEvaluation subfolders and an .anvil file, transcription lines without a turn id
or with an `MXX0`/`FXX0` id, odd dialogue names, and one silent wav.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.demo.media import write_divx_avi, write_wav
from pipeline.demo.signals import (
    PROTOTYPES,
    SAMPLE_RATE,
    make_sentence,
    paste,
    render_face,
    rng_for,
    synthesize_voice,
)

if TYPE_CHECKING:
    from pipeline.demo.corpus import DemoConfig

# The release's names and the dev split, stated here on purpose and NOT imported from the reader
# (pipeline.corpora.iemocap: RELEASE_DIR, LABEL_DIR..., DEV_DIALOGUES, speaker_frame_side): the demo
# is the independent writer the reader is tested against, so a wrong name or dev list in either one
# fails the tests instead of agreeing with itself. The same holds for every path this module writes.
ROOT = "IEMOCAP_full_release"
# The 12 dialogues the readers treat as dev, ordered so that the first picks include odd names.
DEV_DIALOGUES = (
    "Ses01M_impro01", "Ses03M_impro08a", "Ses02M_script01_2", "Ses01M_script03_1",
    "Ses02F_impro02", "Ses02F_impro07", "Ses03F_impro01", "Ses03M_impro02",
    "Ses03M_script02_2", "Ses03M_script03_2", "Ses04F_impro07", "Ses04F_script02_1",
)
# The first four are one per Session 1-4, so every session exists whatever the config.
TRAIN_POOL = (
    "Ses01F_impro02", "Ses03M_impro05a", "Ses02F_script01_3", "Ses04M_impro03",
    "Ses01F_script02_2", "Ses04F_script01_1", "Ses02M_impro06", "Ses03F_script01_2",
    "Ses04M_impro05b", "Ses02F_impro04", "Ses01M_script01_1", "Ses03F_impro06",
)
TEST_POOL = (
    "Ses05M_script01_1b", "Ses05F_impro03", "Ses05M_impro04",
    "Ses05F_script02_1", "Ses05M_impro08", "Ses05F_script03_2",
)
VIDEO_HALF_RULE = "session letter's actor left"  # the reader's speaker_frame_side, stated independently


def video_half(dialogue: str, speaker: str) -> str:
    """The half showing `speaker` ("F"/"M") in `dialogue`: the dialogue letter's actor is on the left."""
    return "left" if speaker == dialogue[5] else "right"

_CATEGORY = {
    "neu": "Neutral", "hap": "Happiness", "sad": "Sadness", "ang": "Anger", "exc": "Excited",
    "fru": "Frustration", "sur": "Surprise", "fea": "Fear", "oth": "Other",
}
_CATEGORIES = (*_CATEGORY.values(), "Disgust")
_SIGNAL = {
    "neu": "neutral", "hap": "joy", "sad": "sadness", "ang": "anger",
    "exc": "excited", "fru": "frustrated", "sur": "surprise", "fea": "fear",
}
_MAIN_LABELS = ("neu", "hap", "sad", "ang", "exc", "fru")
_MAIN_WEIGHTS = np.array([0.22, 0.12, 0.16, 0.16, 0.17, 0.17])
# Typical valence, activation, dominance (1-5) per label, around which the raters scatter.
_VAD = {
    "neu": (3, 2, 3), "hap": (4, 3, 3), "sad": (2, 2, 2), "ang": (1, 4, 4), "exc": (4, 4, 3),
    "fru": (2, 3, 3), "sur": (3, 4, 3), "fea": (2, 4, 2), "oth": (3, 3, 3), "xxx": (3, 3, 3),
}
_COMMENTS = ("curious", "sarcastic", "tired", "slightly annoyed", "amused", "calm")
_EVALUATORS = ("E1", "E2", "E3", "E4")
# Planted turn kinds -> (summary label, how many in the corpus); one more turn gets a silent wav.
_PLANTED = {
    "xxx_hap": ("xxx", 3), "xxx_tie": ("xxx", 1), "xxx_two_self": ("xxx", 1),
    "oth": ("oth", 1), "sur": ("sur", 1), "fea": ("fea", 1),
}
# Categorical votes of the planted xxx turns: (evaluator lines, the speaker's own line).
_XXX_VOTES = {
    # Happiness 2, Neutral 1, Excited 1: a strict plurality, and the speaker says Happiness alone.
    "xxx_hap": ([["Happiness"], ["Neutral"], ["Excited"]], ["Happiness"]),
    # Neutral 2, Happiness 2: a tie, so no plurality.
    "xxx_tie": ([["Neutral"], ["Frustration", "Neutral"], ["Happiness"]], ["Happiness"]),
    # Happiness has the plurality, but the speaker's own line is not Happiness alone.
    "xxx_two_self": ([["Happiness"], ["Neutral"], ["Sadness"]], ["Happiness", "Excited"]),
}
_ASCII_PUNCTUATION = str.maketrans(
    {"’": "'", "‘": "'", "“": '"', "”": '"', "…": "...", "—": "--", "–": "-"}
)
_EVALUATION_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
_ANVIL_JUNK = '<?xml version="1.0" encoding="ISO-8859-1" standalone="yes"?>\n<annotation>\n</annotation>\n'
_TAIL_S = 0.5
_TICKS_PER_S = 10_000  # EmoEvaluation times have 4 decimals


@dataclass
class _Turn:
    dialogue: str
    split: str
    speaker: str
    name: str
    label: str
    kind: str  # "normal", "silent" or a key of _PLANTED
    start: int  # ticks of 1e-4 s
    end: int
    text: str = ""
    signal: str = ""
    # (rater: E1..E4, F1 or M1; emotions; comment); the speaker's own line comes last
    votes: list[tuple[str, list[str], str]] = field(default_factory=list)

    @property
    def session(self) -> int:
        return int(self.dialogue[3:5])

    @property
    def wav(self) -> str:
        return f"{ROOT}/Session{self.session}/sentences/wav/{self.dialogue}/{self.name}.wav"

    @property
    def video(self) -> str:
        return f"{ROOT}/Session{self.session}/dialog/avi/DivX/{self.dialogue}.avi"


def write_iemocap(out_dir: Path, config: DemoConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Write `out_dir/IEMOCAP_full_release` and return (truth records of all turns, planted quirks)."""
    rng = rng_for(config.seed, "iemocap", "plan")
    dialogues = (
        [(name, "train") for name in TRAIN_POOL[: config.iemocap_dialogues_train]]
        + [(name, "dev") for name in DEV_DIALOGUES[: config.iemocap_dialogues_dev]]
        + [(name, "test") for name in TEST_POOL[: config.iemocap_dialogues_test]]
    )
    turns_by_dialogue = {name: _plan_dialogue(name, split, config, rng) for name, split in dialogues}
    all_turns = [turn for turns in turns_by_dialogue.values() for turn in turns]
    _plant_kinds(all_turns, rng)
    for turn in all_turns:
        _fill_turn(turn, config.seed)

    quirks: dict[str, Any] = {"junk_files": [], "transcription_junk_lines": [], "video_halves": VIDEO_HALF_RULE}
    for position, (name, turns) in enumerate(turns_by_dialogue.items()):
        session_dir = out_dir / ROOT / f"Session{turns[0].session}"
        _write_evaluation(session_dir / "dialog" / "EmoEvaluation", name, turns, config.seed)
        quirks["junk_files"] += _write_evaluation_junk(session_dir / "dialog" / "EmoEvaluation", name, turns, out_dir)
        junk_lines = _junk_transcription_lines(name, turns) if position % 4 == 0 else []
        quirks["transcription_junk_lines"] += [{"dialogue": name, "line": line} for _, line in junk_lines]
        _write_transcription(session_dir / "dialog" / "transcriptions" / f"{name}.txt", turns, junk_lines)
        for turn in turns:
            _write_turn_wav(out_dir / turn.wav, turn, config.seed)
        _write_dialogue_video(out_dir / turns[0].video, turns, config)

    def ident(turn: _Turn) -> dict[str, Any]:
        return {"split": turn.split, "key": turn.name}

    reasons = {"xxx_tie": "no plurality", "xxx_two_self": "self-assessment lists two emotions"}
    quirks["xxx_relabel_hap"] = [ident(t) for t in all_turns if t.kind == "xxx_hap"]
    quirks["xxx_not_relabelled"] = [{**ident(t), "reason": reasons[t.kind]} for t in all_turns if t.kind in reasons]
    quirks["silent_audio"] = [{**ident(t), "path": t.wav} for t in all_turns if t.kind == "silent"]
    quirks["odd_dialogue_names"] = [name for name in turns_by_dialogue if name[-1].isalpha()]
    return [_truth(turn) for turn in all_turns], quirks


def _plan_dialogue(name: str, split: str, config: DemoConfig, rng: np.random.Generator) -> list[_Turn]:
    """Turns alternating between the actors, with short pauses between them."""
    low, high = config.iemocap_turns_per_dialogue
    speakers = ("F", "M") if rng.random() < 0.5 else ("M", "F")
    counters = {"F": 0, "M": 0}
    clock = int(rng.uniform(2.0, 6.0) * _TICKS_PER_S)
    turns = []
    for index in range(int(rng.integers(low, high + 1))):
        speaker = speakers[index % 2]
        start = clock + int(rng.uniform(0.2, 1.0) * _TICKS_PER_S)
        duration_ms = int(round(rng.uniform(*config.utterance_duration_s) * 1000))
        label = str(rng.choice(_MAIN_LABELS, p=_MAIN_WEIGHTS))
        turn_name = f"{name}_{speaker}{counters[speaker]:03d}"
        turns.append(_Turn(name, split, speaker, turn_name, label, "normal", start, start + duration_ms * 10))
        counters[speaker] += 1
        clock = turns[-1].end
    return turns


def _plant_kinds(turns: list[_Turn], rng: np.random.Generator) -> None:
    kinds = [kind for kind, (_, count) in _PLANTED.items() for _ in range(count)] + ["silent"]
    chosen = rng.choice(len(turns), size=len(kinds), replace=False)
    for index, kind in zip(chosen, kinds, strict=True):
        turn = turns[int(index)]
        turn.kind = kind
        if kind in _PLANTED:
            turn.label = _PLANTED[kind][0]


def _fill_turn(turn: _Turn, seed: int) -> None:
    """Choose the turn's signal, sentence and categorical votes from its label and kind."""
    rng = rng_for(seed, "iemocap", turn.name, "annotation")
    if turn.kind == "xxx_hap":
        turn.signal = "joy"
    elif turn.label in _SIGNAL:
        turn.signal = _SIGNAL[turn.label]
    else:  # oth and the xxx turns the rule leaves alone carry any main signal
        turn.signal = _SIGNAL[str(rng.choice(_MAIN_LABELS))]
    turn.text = make_sentence(PROTOTYPES[turn.signal], rng).translate(_ASCII_PUNCTUATION)
    turn.votes = _votes(turn, rng)


def _votes(turn: _Turn, rng: np.random.Generator) -> list[tuple[str, list[str], str]]:
    """Evaluator lines (C-E*) with a majority for the label, then the speaker's own line (C-F1/C-M1)."""
    if turn.kind in _XXX_VOTES:
        raters = sorted(rng.choice(_EVALUATORS, size=3, replace=False))
        evaluator_votes, own_votes = _XXX_VOTES[turn.kind]
    else:
        category = _CATEGORY[turn.label]
        dissent = [str(rng.choice([c for c in _CATEGORIES if c != category]))]
        raters = sorted(rng.choice(_EVALUATORS, size=int(rng.integers(3, 5)), replace=False))
        odd_vote = dissent if rng.random() < 0.6 else [category, *dissent]
        in_order = [[category]] * (len(raters) - 1) + [odd_vote]
        evaluator_votes = [in_order[int(i)] for i in rng.permutation(len(in_order))]
        roll = rng.random()
        own_votes = [category] if roll < 0.6 else dissent if roll < 0.85 else [category, *dissent]
    lines = [(str(rater), votes, _comment(rng)) for rater, votes in zip(raters, evaluator_votes, strict=True)]
    return [*lines, (f"{turn.speaker}1", own_votes, _comment(rng))]


def _comment(rng: np.random.Generator) -> str:
    return str(rng.choice(_COMMENTS)) if rng.random() < 0.15 else ""


def _format_seconds(ticks: int) -> str:
    return f"{ticks // _TICKS_PER_S}.{ticks % _TICKS_PER_S:04d}"


def _evaluation_block(turn: _Turn, rng: np.random.Generator) -> str:
    """Summary line, categorical lines, dimensional lines; the summary [V, A, D] averages the evaluators."""
    raters = [*sorted(rng.choice(_EVALUATORS, size=int(rng.integers(2, 4)), replace=False)), f"{turn.speaker}1"]
    ratings = {rater: [int(np.clip(b + rng.integers(-1, 2), 1, 5)) for b in _VAD[turn.label]] for rater in raters}
    vad = ", ".join(f"{value:.4f}" for value in np.mean([ratings[r] for r in raters[:-1]], axis=0))
    span = f"[{_format_seconds(turn.start)} - {_format_seconds(turn.end)}]"
    lines = [f"{span}\t{turn.name}\t{turn.label}\t[{vad}]"]
    lines += [f"C-{rater}:\t{' '.join(f'{v};' for v in votes)}\t({note})" for rater, votes, note in turn.votes]
    lines += [f"A-{rater}:\tval {v}; act {a}; dom  {d};\t({_comment(rng)})" for rater, (v, a, d) in ratings.items()]
    return "\n".join(lines) + "\n\n"


def _write_evaluation(folder: Path, dialogue: str, turns: list[_Turn], seed: int) -> None:
    """Like the real file, all F turns first, then all M turns."""
    rng = rng_for(seed, "iemocap", dialogue, "dimensions")
    ordered = [t for t in turns if t.speaker == "F"] + [t for t in turns if t.speaker == "M"]
    folder.mkdir(parents=True, exist_ok=True)
    text = _EVALUATION_HEADER + "".join(_evaluation_block(turn, rng) for turn in ordered)
    (folder / f"{dialogue}.txt").write_text(text, encoding="utf-8", newline="\n")


def _write_evaluation_junk(folder: Path, dialogue: str, turns: list[_Turn], out_dir: Path) -> list[str]:
    """Per-rater files in the subfolders and an .anvil file: real, but not label files for the reader."""
    category_lines = "".join(f"{t.name} :{_CATEGORY.get(t.label, 'Other')}; ()\n" for t in turns)
    attribute_lines = "".join(f"{t.name} :act 3; val 3; dom  3; ()\n" for t in turns)
    junk = {
        folder / "Categorical" / f"{dialogue}_e2_cat.txt": category_lines,
        folder / "Attribute" / f"{dialogue}_e2_atr.txt": attribute_lines,
        folder / "Self-evaluation" / f"{dialogue}_self.txt": category_lines,
        folder / f"{dialogue}.anvil": _ANVIL_JUNK,
    }
    for path, content in junk.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8", newline="\n")
    return [path.relative_to(out_dir).as_posix() for path in junk]


def _transcript_span(start: int, end: int) -> str:
    return f"[{start / _TICKS_PER_S:08.4f}-{end / _TICKS_PER_S:08.4f}]"


def _junk_transcription_lines(dialogue: str, turns: list[_Turn]) -> list[tuple[int, str]]:
    """(insert after this turn index, line) pairs: a line without a turn id, and an XX0 line."""
    backchannel = _transcript_span(turns[2].end, turns[3].start)
    return [(1, "M: Yeah."), (2, f"{dialogue}_{turns[2].speaker}XX0 {backchannel}: Mm-hmm.")]


def _write_transcription(path: Path, turns: list[_Turn], junk_lines: list[tuple[int, str]]) -> None:
    lines = []
    for index, turn in enumerate(turns):
        lines.append(f"{turn.name} {_transcript_span(turn.start, turn.end)}: {turn.text}")
        lines += [line for after, line in junk_lines if after == index]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


def _write_turn_wav(path: Path, turn: _Turn, seed: int) -> None:
    rng = rng_for(seed, "iemocap", turn.name, "voice")
    voice = synthesize_voice(PROTOTYPES[turn.signal], (turn.end - turn.start) / _TICKS_PER_S, rng)
    if turn.kind == "silent":
        voice = np.zeros_like(voice)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, voice, SAMPLE_RATE)


def _write_dialogue_video(path: Path, turns: list[_Turn], config: DemoConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    n_frames = int(np.ceil((turns[-1].end / _TICKS_PER_S + _TAIL_S) * config.fps))
    write_divx_avi(path, _dialogue_frames(turns, config, n_frames), config.iemocap_frame_size, config.fps)


def _dialogue_frames(turns: list[_Turn], config: DemoConfig, n_frames: int) -> Iterator[np.ndarray]:
    """The dialogue letter's actor on the left, the other (mirrored) on the right; only the speaker's
    face carries the turn's emotion."""
    width, height = config.iemocap_frame_size
    half = width // 2
    rng = rng_for(config.seed, "iemocap", turns[0].dialogue, "set")
    face_height = int(height * 0.87)
    backgrounds = {side: rng.integers(60, 160, 3).astype(np.uint8) for side in ("F", "M")}
    on_right = {side: video_half(turns[0].dialogue, side) == "right" for side in ("F", "M")}
    neutral = {side: render_face(PROTOTYPES["neutral"], face_height, rng, mirror=on_right[side]) for side in ("F", "M")}
    looks = {
        turn.name: render_face(
            PROTOTYPES[turn.signal],
            face_height,
            rng_for(config.seed, "iemocap", turn.name, "face"),
            mirror=on_right[turn.speaker],
        )
        for turn in turns
    }
    top = (height - face_height) // 2
    for index in range(n_frames):
        ticks = index * _TICKS_PER_S // config.fps
        speaking = next((t for t in turns if t.start <= ticks < t.end), None)
        canvas = np.empty((height, width, 3), np.uint8)
        for side in ("F", "M"):
            offset = half if on_right[side] else 0
            region = canvas[:, offset : offset + half]
            region[:] = backgrounds[side]
            face = looks[speaking.name] if speaking is not None and speaking.speaker == side else neutral[side]
            sway = int(round(2 * np.sin(2 * np.pi * 0.4 * index / config.fps + offset)))
            paste(region, face, top, (half - face.shape[1]) // 2 + sway)
        yield canvas


def _truth(turn: _Turn) -> dict[str, Any]:
    return {
        "corpus": "iemocap",
        "split": turn.split,
        "key": turn.name,
        "dialogue": turn.dialogue,
        "session": turn.session,
        "label": turn.label,
        "signal": turn.signal,
        "speaker": turn.speaker,
        "actor": f"Ses{turn.session:02d}_{turn.speaker}",
        "text": turn.text,
        "start_s": turn.start / _TICKS_PER_S,
        "end_s": turn.end / _TICKS_PER_S,
        "wav": turn.wav,
        "video": turn.video,
        "video_half": video_half(turn.dialogue, turn.speaker),
    }
