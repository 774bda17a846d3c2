"""Writes small IEMOCAP trees in the exact formats of the raw release, for the reader's tests.

The tree has all five sessions and nine dialogues. Expected counts (see tests/test_iemocap_reader.py):
31 summary turns; `benchmark` keeps 22 (3 of them `xxx` turns labelled `hap` by the self-happiness
rule), `emoeval` 19, `four-class` 17.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile as sf

# The release's names and formats are stated here on purpose, NOT imported from pipeline.corpora.iemocap
# (RELEASE_DIR, LABEL_DIR, ...): this tree is what the reader's tests read, so it must be an independent
# statement of the raw format, or a wrong name in the reader would agree with itself.
RELEASE_DIR = "IEMOCAP_full_release"
HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"


@dataclass(frozen=True)
class FixtureTurn:
    suffix: str  # "F000", "M012": the utterance id is <dialogue>_<suffix>
    start: float
    end: float
    label: str
    votes: tuple[str, ...]  # categorical lines after "C-", e.g. "E1:\tHappiness; Neutral;\t()"
    text: str | None = "Hello there."  # None: no transcript line
    wav: bool = True


@dataclass(frozen=True)
class FixtureDialogue:
    session: int
    name: str
    turns: tuple[FixtureTurn, ...]
    order: tuple[str, ...]  # transcript lines: a turn suffix, or a raw line written as is
    video: str = "none"  # "none", "real" or "garbage"


def make_turn(
    suffix: str, start: float, label: str, *votes: str, text: str | None = "Hello there.", wav: bool = True
) -> FixtureTurn:
    """A turn one second long; `votes` are "E1: Happiness; Neutral" style (evaluator: emotions)."""
    return FixtureTurn(suffix, start, start + 1.0, label, tuple(votes), text, wav)


DIALOGUES: tuple[FixtureDialogue, ...] = (
    FixtureDialogue(
        1,
        "Ses01F_impro01",
        (
            make_turn("F000", 1.0, "neu", "E1: Neutral", "E2: Neutral", "F1: Neutral", text="  Excuse me.  "),
            # rule: self Happiness alone, Happiness 2 vs Neutral 1 -> hap
            make_turn("F001", 4.0, "xxx", "E1: Happiness", "E2: Neutral", "F1: Happiness"),
            make_turn("F002", 7.0, "fru", "E1: Frustration; Anger", "E2: Frustration"),
            # evaluators' Happiness only, no self line -> excluded
            make_turn("F003", 12.0, "xxx", "E1: Happiness", "E2: Happiness"),
            # no transcript line: placed by start time (before M004)
            make_turn("F004", 20.0, "neu", "E1: Neutral", "E2: Neutral", text=None),
            make_turn("M000", 2.5, "ang", "E1: Anger", "E2: Anger; Frustration", "M1: Anger"),
            make_turn("M001", 5.5, "oth", "E1: Other", "E2: Other"),
            # Happiness has the plurality but the speaker's self-assessment is Neutral -> excluded
            make_turn("M002", 9.0, "xxx", "E1: Happiness", "E2: Happiness", "M1: Neutral"),
            # for an M turn the C-F line is the partner's, not the self line -> excluded
            make_turn("M003", 14.0, "xxx", "F1: Happiness", "E1: Happiness", "E2: Happiness"),
            make_turn("M004", 22.0, "sad", "E1: Sadness", "E2: Sadness", wav=False),
        ),
        (
            "F000",
            "M000",
            "M: Yeah.",
            "F001",
            "M001",
            "F002",
            "M002",
            "F003",
            "Ses01F_impro01_MXX0 [016.0000-017.0000]: Mm-hmm.",
            "M003",
            "M004",
            "Ses01F_impro01_F005 [024.0000-025.0000]: Bye.",
        ),
        video="real",
    ),
    FixtureDialogue(
        1,
        "Ses01M_impro01",
        (
            make_turn("F000", 1.0, "hap", "E1: Happiness", "E2: Happiness; Excited"),
            make_turn("F001", 5.0, "exc", "E1: Excited", "E2: Excited", "F1: Happiness"),
            make_turn("M000", 3.0, "sad", "E1: Sadness", "E2: Sadness"),
            # tie: Happiness 2, Neutral 2 -> excluded although the self line is Happiness alone
            make_turn("M001", 7.0, "xxx", "E1: Happiness", "E2: Neutral", "M1: Happiness", "E3: Neutral"),
        ),
        ("F000", "M000", "F001", "M001"),
    ),
    FixtureDialogue(
        1,
        "Ses01F_script01_1",
        (
            make_turn("F000", 2.0, "sur", "E1: Surprise", "E2: Surprise"),
            make_turn("M000", 0.5, "neu", "E1: Neutral", "E2: Neutral"),
        ),
        ("M000", "F000"),
    ),
    FixtureDialogue(
        2,
        "Ses02F_impro02",
        (
            # self lists Happiness and Excited -> excluded despite Happiness 3 vs Excited 1
            make_turn("F000", 1.0, "xxx", "F1: Happiness; Excited", "E1: Happiness", "E2: Happiness"),
            make_turn("F001", 3.0, "ang", "E1: Anger", "E2: Anger"),
            make_turn("M000", 2.0, "neu", "E1: Neutral", "E2: Neutral"),
        ),
        ("F000", "M000", "F001"),
        video="garbage",
    ),
    FixtureDialogue(
        2,
        "Ses02M_impro03",
        (
            make_turn("F000", 1.0, "fea", "E1: Fear", "E2: Fear"),
            # rule for an M speaker: C-M1 Happiness alone, Happiness 3 vs Neutral 1 -> hap
            make_turn("M000", 2.5, "xxx", "E1: Happiness", "E2: Happiness; Neutral", "M1: Happiness"),
            make_turn("M001", 4.0, "dis", "E1: Disgust", "E2: Disgust"),
        ),
        ("F000", "M000", "M001"),
    ),
    FixtureDialogue(
        3,
        "Ses03M_impro05a",
        (
            make_turn("F003", 10.0, "hap", "E1: Happiness", "E2: Happiness"),
            make_turn("M003", 12.0, "exc", "E1: Excited", "E2: Excited"),
        ),
        ("F003", "M003"),
    ),
    FixtureDialogue(
        4,
        "Ses04F_script02_1",
        (
            make_turn("F000", 1.0, "sad", "E1: Sadness", "E2: Sadness"),
            make_turn("M000", 3.0, "fru", "E1: Frustration", "E2: Frustration"),
        ),
        ("F000", "M000"),
    ),
    FixtureDialogue(
        5,
        "Ses05M_script01_1b",
        (
            make_turn("F000", 1.0, "neu", "E1: Neutral", "E2: Neutral"),
            make_turn("M012", 3.0, "ang", "E1: Anger", "E2: Anger"),
            make_turn("M013", 5.0, "xxx", "M1: Happiness", "E1: Happiness", "E2: Neutral"),
        ),
        ("F000", "M012", "M013"),
    ),
    FixtureDialogue(
        5,
        "Ses05F_impro01",
        (
            make_turn("F000", 1.0, "exc", "E1: Excited", "E2: Excited"),
            make_turn("M000", 3.0, "hap", "E1: Happiness", "E2: Happiness"),
        ),
        ("F000", "M000"),
    ),
)


def write_iemocap_tree(base: Path, dialogues: tuple[FixtureDialogue, ...] = DIALOGUES) -> Path:
    """Write `base/IEMOCAP_full_release/...` and return the release folder."""
    release = base / RELEASE_DIR
    for session in range(1, 6):
        write_distractors(release / f"Session{session}")
    for dialogue in dialogues:
        write_dialogue(release, dialogue)
    return release


def write_dialogue(release: Path, dialogue: FixtureDialogue) -> None:
    session = release / f"Session{dialogue.session}"
    emo = session / "dialog" / "EmoEvaluation" / f"{dialogue.name}.txt"
    emo.write_text(emo_evaluation_text(dialogue))
    transcript = session / "dialog" / "transcriptions" / f"{dialogue.name}.txt"
    transcript.write_text(transcript_text(dialogue))
    wav_dir = session / "sentences" / "wav" / dialogue.name
    wav_dir.mkdir(parents=True, exist_ok=True)
    for turn in dialogue.turns:
        if turn.wav:
            write_wav(wav_dir / f"{dialogue.name}_{turn.suffix}.wav")
    avi = session / "dialog" / "avi" / "DivX" / f"{dialogue.name}.avi"
    if dialogue.video == "real":
        write_avi(avi)
    elif dialogue.video == "garbage":
        avi.write_bytes(b"RIFF\x00\x00\x00\x00AVI not really a video")


def emo_evaluation_text(dialogue: FixtureDialogue) -> str:
    """Header, then one block per turn, F turns first, as in the release."""
    turns = sorted(dialogue.turns, key=lambda t: (t.suffix[0] != "F", t.suffix))
    blocks = [HEADER + "\n"]
    for turn in turns:
        span = f"[{turn.start:.4f} - {turn.end:.4f}]"
        lines = [f"{span}\t{dialogue.name}_{turn.suffix}\t{turn.label}\t[2.5000, 3.0000, 2.5000]"]
        for number, vote in enumerate(turn.votes):
            evaluator, emotions = vote.split(":", 1)
            names = "".join(f" {e.strip()};" for e in emotions.split(";")).lstrip()
            comment = "(curious; a bit tired)" if number == 0 else "()"
            lines.append(f"C-{evaluator}:\t{names}\t{comment}")
        lines.append("A-E3:\tval 3; act 2; dom  2;\t()")
        lines.append("A-E4:\tval 2; act 3; dom  3;\t(mildly aggravated but staying polite, attitude)")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def transcript_text(dialogue: FixtureDialogue) -> str:
    turns = {turn.suffix: turn for turn in dialogue.turns}
    lines = []
    for entry in dialogue.order:
        turn = turns.get(entry)
        if turn is None:
            lines.append(entry)
        elif turn.text is not None:
            span = f"[{turn.start:08.4f}-{turn.end:08.4f}]"
            lines.append(f"{dialogue.name}_{turn.suffix} {span}: {turn.text}")
    return "\n".join(lines) + "\n"


def write_distractors(session: Path) -> None:
    """The folders and files a reader must not take for labels or transcripts."""
    emo = session / "dialog" / "EmoEvaluation"
    for sub in ("Categorical", "Attribute", "Self-evaluation"):
        (emo / sub).mkdir(parents=True, exist_ok=True)
        (emo / sub / "Ses0X_dialogue_e1_cat.txt").write_text("Ses0X_dialogue_F000 :Neutral state; ()\n")
    (emo / "Ses0X_dialogue.anvil").write_text("<annotation/>\n")
    (session / "dialog" / "transcriptions").mkdir(parents=True, exist_ok=True)
    (session / "dialog" / "avi" / "DivX").mkdir(parents=True, exist_ok=True)
    (session / "sentences" / "wav").mkdir(parents=True, exist_ok=True)


def write_wav(path: Path, seconds: float = 0.1, rate: int = 16000) -> None:
    """A tiny real 16 kHz mono PCM wav."""
    samples = 0.1 * np.sin(np.linspace(0, 2 * np.pi * 440 * seconds, int(seconds * rate)))
    sf.write(path, samples.astype(np.float32), rate, subtype="PCM_16")


def write_avi(path: Path, frames: int = 3) -> None:
    """A tiny real MPEG-4 AVI, two faces wide as the dialogue videos are."""
    with av.open(str(path), mode="w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        for i in range(frames):
            image = np.full((32, 64, 3), 40 * i, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
