"""Reader of the raw IEMOCAP release (`IEMOCAP_full_release/Session1..5`).

Labels and time spans come from `dialog/EmoEvaluation/<dialogue>.txt` (the summary line of each
turn plus its categorical votes), text and dialogue order from `dialog/transcriptions/<dialogue>.txt`,
audio from `sentences/wav/<dialogue>/<utterance>.wav` and video from `dialog/avi/DivX/<dialogue>.avi`.

`turn_index` is the position among all *labelled* turns of the dialogue (summary turns, whatever
their label), so an utterance keeps the same index under every label policy; the indices of one
policy's manifest can therefore have gaps where turns were excluded.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.corpora import register_corpus
from pipeline.core.errors import CorpusFormatError, PipelineError
from pipeline.core.fingerprint import Fingerprint, content_fingerprint, media_fingerprint, relative_to_root
from pipeline.formats.manifest import CorpusReadResult, Exclusion, Utterance, check_unique_ids
from pipeline.core.media import probe_media
from pipeline.core.progress import progress

CORPUS = "iemocap"
RELEASE_DIR = "IEMOCAP_full_release"
SESSIONS = (1, 2, 3, 4, 5)
TEST_SESSIONS = frozenset({5})
# The release's layout inside each session folder (`session_dir`), one entry per dialogue:
LABEL_DIR = "dialog/EmoEvaluation"  # <dialogue>.txt: turn summary lines and their votes
TRANSCRIPT_DIR = "dialog/transcriptions"  # <dialogue>.txt
VIDEO_DIR = "dialog/avi/DivX"  # <dialogue>.avi: the whole dialogue, both actors
WAV_DIR = "sentences/wav"  # <dialogue>/<utterance>.wav: one per turn

SIX_CLASSES = ["hap", "sad", "neu", "ang", "exc", "fru"]
LABEL_POLICIES: dict[str, list[str]] = {
    # the 6-class set of the MER literature, with the 53 `xxx` turns it labels `hap` (7433 turns)
    "benchmark": SIX_CLASSES,
    # the EmoEvaluation summary labels only (7380 turns)
    "emoeval": SIX_CLASSES,
    # the 4-class set, `exc` merged into `hap` (5531 turns)
    "four-class": ["ang", "hap", "sad", "neu"],
}
# summary label -> policy label; summary labels missing here are excluded under that policy
POLICY_LABEL_MAP: dict[str, dict[str, str]] = {
    "benchmark": {name: name for name in SIX_CLASSES},
    "emoeval": {name: name for name in SIX_CLASSES},
    "four-class": {"ang": "ang", "hap": "hap", "exc": "hap", "sad": "sad", "neu": "neu"},
}
XXX_RULE_POLICIES = frozenset({"benchmark"})
XXX_RULE_SOURCE = "xxx_self_happiness_rule"
SUMMARY_SOURCE = "summary"
SUMMARY_LABELS = frozenset({"neu", "fru", "ang", "sad", "hap", "exc", "sur", "fea", "dis", "oth", "xxx"})

# Dialogues of Sessions 1-4 held out as the dev split.
DEV_DIALOGUES = frozenset(
    {
        "Ses01M_impro01",
        "Ses01M_script03_1",
        "Ses02F_impro02",
        "Ses02F_impro07",
        "Ses02M_script01_2",
        "Ses03F_impro01",
        "Ses03M_impro02",
        "Ses03M_impro08a",
        "Ses03M_script02_2",
        "Ses03M_script03_2",
        "Ses04F_impro07",
        "Ses04F_script02_1",
    }
)
SPLIT_RULE = (
    "Sessions 1-4 train, Session 5 test; dev = 12 fixed dialogues of Sessions 1-4 "
    f"({', '.join(sorted(DEV_DIALOGUES))})"
)
# Leave-one-session-out folds, offered beside the release split as the manifest's split schemes
# "loso-1".."loso-5" (the trainer's `train.split`): fold k tests on Session k; dev takes, from each
# other session, its ceil(DEV_SHARE x dialogues) dialogues of smallest sha256(dialogue id), a fixed
# pick that spreads dev over sessions and actors (on the real corpus 3 per session: 12, like the
# release split's dev); the rest train.
DEV_SHARE = 0.1
LOSO_RULE = (
    "leave-one-session-out: fold k tests on Session k; dev = from each other session its "
    f"ceil({DEV_SHARE} x dialogues) dialogues of smallest sha256(dialogue id); the rest train"
)

# Which half of the two-actor dialogue video shows the speaker. The release's avi files put the actor
# whose gender is the dialogue's session letter on the left (Ses01F_*: F left; Ses01M_*: M left) and
# the other actor on the right: the rule of the public preprocessing of the real videos (MERBench's
# toolkit/preprocess/iemocap.py in zeroQiaoba/MERTools, and EmoBox-based chunking scripts agree).
FRAME_SIDE_RULE = "the actor of the dialogue's session letter (Ses01F_*: F) on the left, the other on the right"


def speaker_frame_side(utterance_id: str) -> str:
    """"left" or "right": the half of the dialogue video that shows the speaker of `utterance_id`
    (a valid turn id, `Ses01M_impro01_F003`: the dialogue's letter M, the speaker F: right)."""
    match = _UTTERANCE_ID.match(utterance_id)
    if match is None:
        raise ValueError(f"{utterance_id!r} is not an IEMOCAP turn id")
    return "left" if match["gender"] == utterance_id[5] else "right"

_NUM = r"[-+]?[0-9]+(?:\.[0-9]*)?"
_SUMMARY_LINE = re.compile(
    rf"^\[\s*(?P<start>{_NUM})\s*-\s*(?P<end>{_NUM})\s*\]\s+(?P<id>\S+)\s+(?P<label>\S+)\s+"
    rf"\[\s*(?P<v>{_NUM})\s*,\s*(?P<a>{_NUM})\s*,\s*(?P<d>{_NUM})\s*\]\s*$"
)
_VOTE_LINE = re.compile(r"^(?P<kind>[CA])-(?P<who>[A-Za-z]+[0-9]*)\s*:(?P<body>.*)$")
_UTTERANCE_ID = re.compile(r"^(?P<dialogue>Ses[0-9]{2}[FM]_\S+)_(?P<gender>[FM])[0-9]+$")
_NO_SPEAKER_ID = re.compile(r"^Ses[0-9]{2}[FM]_\S+_[FM]XX[0-9]*$")
_ID_BEARING = re.compile(r"^Ses[0-9]{2}[FM]_")
_TRANSCRIPT_LINE = re.compile(
    rf"^(?P<id>Ses[^\s\[]+)\s*\[\s*{_NUM}\s*-\s*{_NUM}\s*\]\s*:(?P<text>.*)$"
)


@dataclass(frozen=True)
class Vote:
    """One categorical assessment: evaluator `E*`, or the actors' self-assessments `F*`/`M*`."""

    evaluator: str
    emotions: tuple[str, ...]


@dataclass
class Turn:
    """One summary turn of an EmoEvaluation file."""

    utterance_id: str
    gender: str  # "F" or "M": the speaker
    start_s: float
    end_s: float
    label: str
    vad: tuple[float, float, float]
    line: int
    votes: list[Vote] = field(default_factory=list)


@dataclass(frozen=True)
class TranscriptLine:
    utterance_id: str
    text: str


@dataclass(frozen=True)
class MediaStatus:
    """What the reader found for one media file; `path` is None when the file does not exist."""

    path: str | None
    readable: bool
    flag: str | None
    fingerprint: Fingerprint | None
    error: str | None = None  # the decoder's words, kept in the row's attributes


@dataclass
class Dialogue:
    """One dialogue's files and what was read from them."""

    session: int
    dialogue_id: str
    split: str
    label_file: str  # relative path, for "file:line" references
    sources: list[Fingerprint]  # EmoEvaluation and transcript fingerprints
    transcript: dict[str, TranscriptLine]
    video: MediaStatus


@dataclass
class _Context:
    """State of one read: the release root, the result being filled and the raw files seen."""

    release_root: Path
    result: CorpusReadResult
    seen_paths: set[str] = field(default_factory=set)
    # "file:line" of each kept utterance's summary line, by id(utterance), for check_unique_ids
    turn_sources: dict[int, str] = field(default_factory=dict)

    def record(self, fingerprint: Fingerprint) -> Fingerprint:
        """Add a raw file to result.raw_files once, however many rows were read from it."""
        if fingerprint.path not in self.seen_paths:
            self.seen_paths.add(fingerprint.path)
            self.result.raw_files.append(fingerprint)
        return fingerprint

    def relative(self, path: Path) -> str:
        return relative_to_root(self.release_root, path)


@register_corpus(
    CORPUS,
    label_policies=LABEL_POLICIES,
    default_policy="benchmark",
    description="IEMOCAP (raw release): 5 sessions of dyadic dialogues, text + audio + video, "
    "Sessions 1-4 train (12 dialogues dev), Session 5 test",
)
def read_iemocap(root: Path, label_policy: str) -> CorpusReadResult:
    """Read the raw release at `root` (the IEMOCAP_full_release folder or its parent); never writes."""
    if label_policy not in LABEL_POLICIES:
        raise PipelineError(
            f"unknown IEMOCAP label policy {label_policy!r}; available: {', '.join(LABEL_POLICIES)}"
        )
    release_root = find_release_root(Path(root))
    result = CorpusReadResult(
        corpus=CORPUS,
        label_policy=label_policy,
        label_names=list(LABEL_POLICIES[label_policy]),
        utterances=[],
        split_rule=SPLIT_RULE,
    )
    ctx = _Context(release_root, result)
    for session in SESSIONS:
        files = dialogue_label_files(ctx, session)
        for label_path in progress(files, f"iemocap Session{session}", total=len(files), unit="dialogue"):
            read_dialogue(ctx, session, label_path, label_policy)
    check_unique_ids(result, source_of=lambda utt: ctx.turn_sources.get(id(utt)))
    result.split_schemes = loso_folds(sorted({utt.dialogue_id for utt in result.utterances}))
    return result


def loso_folds(dialogues: list[str]) -> dict[str, dict[str, list[str]]]:
    """The five leave-one-session-out splits of `dialogues` (LOSO_RULE): {"loso-k": {"dev", "test"}}."""
    by_session: dict[int, list[str]] = {}
    for dialogue in dialogues:
        by_session.setdefault(int(dialogue[3:5]), []).append(dialogue)
    folds = {}
    for fold in SESSIONS:
        dev = []
        for session, names in sorted(by_session.items()):
            if session != fold:
                ranked = sorted(names, key=lambda name: hashlib.sha256(name.encode()).hexdigest())
                dev += sorted(ranked[: math.ceil(DEV_SHARE * len(names))])
        folds[f"loso-{fold}"] = {"dev": dev, "test": sorted(by_session.get(fold, []))}
    return folds


def find_release_root(root: Path) -> Path:
    """The folder holding Session1..5: `root` itself or `root/IEMOCAP_full_release`."""
    candidates = (root, root / RELEASE_DIR)
    for candidate in candidates:
        if not missing_sessions(candidate):
            return candidate
    if not root.is_dir():
        raise CorpusFormatError(root, "IEMOCAP root does not exist or is not a folder")
    closest = min(candidates, key=lambda c: len(missing_sessions(c)))
    raise CorpusFormatError(
        closest,
        f"not an IEMOCAP release: expected folders Session1..Session5 in the root or in {RELEASE_DIR}/ "
        f"under it (missing: {', '.join(missing_sessions(closest))})",
    )


def session_dir(release_root: Path, session: int) -> Path:
    """`Session<n>` of the release."""
    return release_root / f"Session{session}"


def missing_sessions(folder: Path) -> list[str]:
    return [session_dir(folder, n).name for n in SESSIONS if not session_dir(folder, n).is_dir()]


def dialogue_label_files(ctx: _Context, session: int) -> list[Path]:
    """The session's top-level EmoEvaluation .txt files (its subfolders and .anvil files are not labels)."""
    folder = session_dir(ctx.release_root, session) / LABEL_DIR
    if not folder.is_dir():
        raise CorpusFormatError(
            folder, "not an IEMOCAP release: expected the EmoEvaluation folder of the session"
        )
    files = []
    for path in sorted(folder.glob("*.txt")):
        if path.name.startswith("."):
            ctx.result.ignore("hidden_files", ctx.relative(path))
        elif path.is_file():
            files.append(path)
    if not files:
        raise CorpusFormatError(folder, "not an IEMOCAP release: no <dialogue>.txt EmoEvaluation files")
    return files


def read_dialogue(ctx: _Context, session: int, label_path: Path, policy: str) -> None:
    """Read one dialogue's labels, transcript and media, and add its utterances to the result."""
    dialogue_id = label_path.stem
    turns = parse_emo_evaluation(label_path, dialogue_id)
    ctx.result.utterances_seen += len(turns)
    dialogue = open_dialogue(ctx, session, dialogue_id, label_path)
    labelled_ids = {turn.utterance_id for turn in turns}
    for line in dialogue.transcript.values():
        if line.utterance_id not in labelled_ids:
            ctx.result.ignore("transcribed_turns_without_label", line.utterance_id)
    for turn_index, turn in enumerate(order_turns(turns, dialogue.transcript)):
        decision = policy_label(turn, policy)
        if decision is None:
            reason = f"label {turn.label!r} not in policy {policy!r}"
            source = f"{dialogue.label_file}:{turn.line}"
            ctx.result.excluded.append(Exclusion(dialogue.split, turn.utterance_id, reason, source))
            continue
        label, label_source = decision
        utt = build_utterance(ctx, dialogue, turn, turn_index, label, label_source)
        ctx.turn_sources[id(utt)] = f"{dialogue.label_file}:{turn.line}"
        ctx.result.utterances.append(utt)


def open_dialogue(ctx: _Context, session: int, dialogue_id: str, label_path: Path) -> Dialogue:
    """Fingerprint the dialogue's label and transcript files, read the transcript, probe the video once."""
    session_folder = session_dir(ctx.release_root, session)
    sources = [ctx.record(content_fingerprint(ctx.release_root, label_path, "labels"))]
    transcript_path = session_folder / TRANSCRIPT_DIR / f"{dialogue_id}.txt"
    transcript: dict[str, TranscriptLine] = {}
    if transcript_path.is_file():
        sources.append(ctx.record(content_fingerprint(ctx.release_root, transcript_path, "transcript")))
        transcript = parse_transcript(ctx, transcript_path)
    video = check_media(ctx, session_folder / VIDEO_DIR / f"{dialogue_id}.avi", "video")
    return Dialogue(
        session=session,
        dialogue_id=dialogue_id,
        split=split_of(session, dialogue_id),
        label_file=ctx.relative(label_path),
        sources=sources,
        transcript=transcript,
        video=video,
    )


def split_of(session: int, dialogue_id: str) -> str:
    if session in TEST_SESSIONS:
        return "test"
    return "dev" if dialogue_id in DEV_DIALOGUES else "train"


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def read_lines(path: Path) -> list[str]:
    """The file's lines, broken at \\n, \\r\\n or \\r only: str.splitlines also breaks at U+2028, U+0085,
    form feeds..., which cut a transcript's text short and shifted every later `file:line`. A file that
    is not UTF-8 text is a format error, not a crash."""
    raw = path.read_bytes()
    try:
        return _LINE_BREAK.split(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        data = exc.object  # what the codec was decoding (after a BOM, if any)
        line = len(_LINE_BREAK.split(data[: exc.start].decode("utf-8")))  # valid up to the bad byte
        byte = data[exc.start]
        raise CorpusFormatError(path, f"not UTF-8 text (byte 0x{byte:02x}: {exc.reason})", line) from None


def parse_emo_evaluation(path: Path, dialogue_id: str) -> list[Turn]:
    """Summary turns of an EmoEvaluation file, each with the categorical votes listed under it."""
    turns: list[Turn] = []
    for number, raw in enumerate(read_lines(path), start=1):
        line = raw.strip()
        if not line or line.startswith("%"):
            continue
        if line.startswith("["):
            turns.append(parse_summary_line(path, number, line, dialogue_id))
            continue
        vote = _VOTE_LINE.match(line)
        if vote is None:
            raise CorpusFormatError(
                path,
                f"unexpected line {line!r}; expected a turn summary "
                "'[start - end]<TAB>id<TAB>label<TAB>[v, a, d]' or a C-/A- assessment line",
                number,
            )
        if not turns:
            raise CorpusFormatError(path, "assessment line before the first turn summary", number)
        if vote["kind"] == "C":
            turns[-1].votes.append(Vote(vote["who"], parse_emotions(vote["body"])))
    if not turns:
        raise CorpusFormatError(path, "no turn summary lines: not an IEMOCAP EmoEvaluation file")
    return turns


def parse_summary_line(path: Path, number: int, line: str, dialogue_id: str) -> Turn:
    """`[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]`."""
    match = _SUMMARY_LINE.match(line)
    if match is None:
        raise CorpusFormatError(
            path,
            f"malformed turn summary line {line!r}; expected '[start - end]<TAB>id<TAB>label<TAB>[v, a, d]'",
            number,
        )
    utterance_id, label = match["id"], match["label"]
    id_match = _UTTERANCE_ID.match(utterance_id)
    if id_match is None or id_match["dialogue"] != dialogue_id:
        raise CorpusFormatError(
            path, f"turn id {utterance_id!r} is not '{dialogue_id}_<F|M><number>'", number
        )
    if label not in SUMMARY_LABELS:
        raise CorpusFormatError(
            path,
            f"unknown emotion label {label!r} for {utterance_id}; expected one of {sorted(SUMMARY_LABELS)}",
            number,
        )
    start, end, *vad = (float(match[name]) for name in ("start", "end", "v", "a", "d"))
    if not all(math.isfinite(value) for value in (start, end, *vad)):  # 400 digits read as inf
        raise CorpusFormatError(
            path, f"number out of range in turn summary line {line!r}: times and VAD values must be finite", number
        )
    return Turn(
        utterance_id=utterance_id,
        gender=id_match["gender"],
        start_s=start,
        end_s=end,
        label=label,
        vad=(vad[0], vad[1], vad[2]),
        line=number,
    )


def parse_emotions(body: str) -> tuple[str, ...]:
    """`Neutral; Anger;<TAB>(comment)` -> ("Neutral", "Anger"); the parenthesized comment is dropped."""
    listed = body.split("(", 1)[0]
    return tuple(name.strip() for name in listed.split(";") if name.strip())


def parse_transcript(ctx: _Context, path: Path) -> dict[str, TranscriptLine]:
    """Transcript lines by utterance id, in file order; lines without a speaker id are recorded as ignored."""
    lines: dict[str, TranscriptLine] = {}
    relative = ctx.relative(path)
    for number, raw in enumerate(read_lines(path), start=1):
        line = raw.strip()
        if not line:
            continue
        if not _ID_BEARING.match(line):
            ctx.result.ignore("transcript_lines_without_id", f"{relative}:{number}")
            continue
        match = _TRANSCRIPT_LINE.match(line)
        if match is None:
            raise CorpusFormatError(
                path, f"malformed transcript line {line!r}; expected 'id [start-end]: text'", number
            )
        utterance_id = match["id"]
        if _NO_SPEAKER_ID.match(utterance_id):
            ctx.result.ignore("transcript_lines_without_id", f"{relative}:{number}")
        elif not _UTTERANCE_ID.match(utterance_id):
            raise CorpusFormatError(path, f"malformed utterance id {utterance_id!r}", number)
        elif utterance_id in lines:
            ctx.result.ignore("duplicate_transcript_lines", f"{relative}:{number}")
        else:
            lines[utterance_id] = TranscriptLine(utterance_id, match["text"].strip())
    return lines


def order_turns(turns: list[Turn], transcript: dict[str, TranscriptLine]) -> list[Turn]:
    """Transcript order; untranscribed turns go in by start time, before the first later-starting turn."""
    by_id: dict[str, list[Turn]] = {}
    for turn in turns:  # a repeated id keeps all its turns, for check_unique_ids to report
        by_id.setdefault(turn.utterance_id, []).append(turn)
    spoken = [turn for i in transcript for turn in by_id.get(i, [])]
    unspoken = sorted((t for t in turns if t.utterance_id not in transcript), key=lambda t: t.start_s)
    ordered: list[Turn] = []
    for turn in spoken:
        while unspoken and unspoken[0].start_s < turn.start_s:
            ordered.append(unspoken.pop(0))
        ordered.append(turn)
    return ordered + unspoken


def policy_label(turn: Turn, policy: str) -> tuple[str, str] | None:
    """(label, where it came from) under the policy, or None when the turn is excluded."""
    label = POLICY_LABEL_MAP[policy].get(turn.label)
    if label is not None:
        return label, SUMMARY_SOURCE
    if policy in XXX_RULE_POLICIES and turn.label == "xxx" and self_happiness_rule(turn):
        return "hap", XXX_RULE_SOURCE
    return None


def self_happiness_rule(turn: Turn) -> bool:
    """The `xxx` turns the literature counts as `hap` (53 on the real corpus).

    The speaker's own self-assessment (C-F* for an F speaker, C-M* for M) is Happiness alone, and
    Happiness has a strict plurality over every categorical vote of the turn (each listed emotion
    of each C- line counts one).
    """
    own = [vote for vote in turn.votes if vote.evaluator.startswith(turn.gender)]
    if not own or any(vote.emotions != ("Happiness",) for vote in own):
        return False
    counts = Counter(emotion for vote in turn.votes for emotion in vote.emotions)
    happiness = counts.pop("Happiness")
    return all(happiness > n for n in counts.values())


def check_media(ctx: _Context, path: Path, kind: str) -> MediaStatus:
    """Whether a wav ("audio") or avi ("video") exists and its container has a readable `kind` stream."""
    if not path.is_file():
        return MediaStatus(None, False, f"missing_{kind}", None)
    fingerprint = ctx.record(media_fingerprint(ctx.release_root, path, kind))
    probe = probe_media(path)
    if not probe.readable:
        return MediaStatus(fingerprint.path, False, f"unreadable_{kind}", fingerprint, probe.error)
    if not getattr(probe, f"has_{kind}"):
        return MediaStatus(fingerprint.path, False, f"unreadable_{kind}", fingerprint, f"no decodable {kind} stream")
    return MediaStatus(fingerprint.path, True, None, fingerprint)


def build_utterance(
    ctx: _Context, dialogue: Dialogue, turn: Turn, turn_index: int, label: str, label_source: str
) -> Utterance:
    """The manifest row of one kept turn; problems become flags, never drops."""
    wav = session_dir(ctx.release_root, dialogue.session) / WAV_DIR / dialogue.dialogue_id
    audio = check_media(ctx, wav / f"{turn.utterance_id}.wav", "audio")
    video = dialogue.video
    line = dialogue.transcript.get(turn.utterance_id)
    text = line.text if line else ""
    utt = Utterance(
        corpus=CORPUS,
        split=dialogue.split,
        dialogue_id=dialogue.dialogue_id,
        turn_index=turn_index,
        utterance_id=turn.utterance_id,
        speaker=f"{turn.utterance_id[:5]}_{turn.gender}",
        text=text,
        label=label,
        label_index=LABEL_POLICIES[ctx.result.label_policy].index(label),
        start_s=turn.start_s,
        end_s=turn.end_s,
        audio_path=audio.path,
        audio_start_s=0.0 if audio.path else None,
        audio_end_s=None,
        video_path=video.path,
        video_start_s=turn.start_s if video.path else None,
        video_end_s=turn.end_s if video.path else None,
        video_region=speaker_frame_side(turn.utterance_id),
        has_text=bool(text),
        has_audio=audio.readable,
        has_video=video.readable,
        sources=dialogue.sources + [m.fingerprint for m in (audio, video) if m.fingerprint],
        attributes={
            "summary_label": turn.label,
            "label_source": label_source,
            "vad": list(turn.vad),
            "votes": [{"evaluator": v.evaluator, "emotions": list(v.emotions)} for v in turn.votes],
        },
    )
    # impossible spans are kept (the label and text are still good) but flagged for the extractors
    if turn.start_s < 0:
        utt.flag("negative_start")
    if turn.end_s < turn.start_s:
        utt.flag("end_before_start")
    if line is None:
        utt.flag("missing_transcript")
    elif not text:
        utt.flag("empty_transcript")
    for kind, media in (("audio", audio), ("video", video)):
        if media.flag:
            utt.flag(media.flag)
        if media.error:
            utt.attributes[f"{kind}_error"] = media.error
    return utt
