"""Reader of the raw MELD release (`MELD.Raw`): three `*_sent_emo.csv` files plus one clip folder per split.

What the real files hold, and what this module does about it (facts from the published CSVs):
- the first release stores cp1252 punctuation as C1 control characters inside UTF-8 (`\\x92` for ’),
  in both the Utterance and the Speaker columns; later copies are re-encoded to clean UTF-8 with
  CRLF line ends. Both are read; C1 characters are mapped through cp1252 and no-break spaces become
  spaces, after which the two encodings give identical rows.
- `Sr No.` repeats, so an utterance is keyed by (split, Dialogue_ID, Utterance_ID); its clip is
  `dia{D}_utt{U}.mp4` in the split's folder, which some copies nest one level deeper.
- times come as `HH:MM:SS,mmm`, `H:MM:SS,mmm` and `HH:MM:SS,mm` (hours are 0 in every published
  row; one or two hour digits are read, minutes and seconds must be 00-59).
- ids, season and episode are non-negative integers; a value that is not, a time out of range and a
  split CSV with no rows are `file:line` errors naming the column: read on, they would misplace an
  utterance, list its real clip as unlabeled, or silently shrink the corpus.
- clip folders hold macOS `._*` files and clips without a label row: reported, not read.
- a missing or undecodable clip is flagged on its utterance, whose text still counts.
"""

from __future__ import annotations

import csv
import io
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pipeline.corpora import register_corpus
from pipeline.core.errors import CorpusFormatError
from pipeline.core.fingerprint import Fingerprint, content_fingerprint, media_fingerprint, relative_to_root
from pipeline.formats.manifest import CorpusReadResult, Utterance, check_unique_ids
from pipeline.core.media import MediaProbe, probe_media
from pipeline.core.progress import progress

EMOTIONS = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]  # MELD baseline order
SENTIMENTS = ["neutral", "positive", "negative"]
COLUMNS = [
    "Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
    "Utterance_ID", "Season", "Episode", "StartTime", "EndTime",
]
# The release's layout: RELEASE_DIR holds one label CSV and one clip folder per split (copies nest
# differently, so the reader looks for the CSVs up to two folders below its root, not for RELEASE_DIR).
RELEASE_DIR = "MELD.Raw"
CSV_FILES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
CLIP_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
LONG_SPAN_S = 60.0  # real outliers (305 s, 235 s) are mis-cut clips; flag them for the extractors

_TIME = re.compile(r"^([0-9]{1,2}):([0-9]{2}):([0-9]{2})[,.]([0-9]{1,3})$")
_CLIP = re.compile(r"^dia([0-9]+)_utt([0-9]+)\.mp4$")


@dataclass
class _Row:
    split: str
    line: int
    dialogue: int
    utterance: int
    text: str
    speaker: str
    emotion: str
    sentiment: str
    season: int
    episode: int
    sr_no: str
    start_s: float
    end_s: float
    repaired_encoding: bool = False  # stray non-UTF-8 bytes in the row were read as cp1252


def repair_text(text: str) -> str:
    """Undo the release's cp1252-in-UTF-8 damage: C1 controls -> cp1252 punctuation, NBSP -> space."""
    out = []
    for char in text:
        code = ord(char)
        if 0x80 <= code <= 0x9F:
            try:
                char = bytes([code]).decode("cp1252")
            except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d are unassigned in cp1252
                char = ""
        elif code == 0xA0:
            char = " "
        out.append(char)
    return "".join(out).strip()


def parse_time(value: str) -> float:
    """Seconds from `H:MM:SS,mmm` (also `HH:` and a 2-digit fraction, read as a decimal fraction)."""
    match = _TIME.match(value.strip())
    if not match:
        raise ValueError(f"unrecognised time {value!r} (expected HH:MM:SS,mmm)")
    hours, minutes, seconds, fraction = match.groups()
    for unit, number in (("minutes", minutes), ("seconds", seconds)):
        if int(number) >= 60:
            raise ValueError(f"{unit} {number} out of range in time {value.strip()!r} (expected H:MM:SS,mmm, {unit} 00-59)")
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(fraction) / 10 ** len(fraction)


_NON_NEGATIVE_INT = re.compile(r"^[0-9]+$")
MAX_ID = 2**31 - 1  # the manifest stores Utterance_ID as its int32 turn_index (published ids are below 1100)


def parse_id(value: str) -> int:
    """A non-negative integer such as `Dialogue_ID`, at most MAX_ID; `-1`, `1.0`, `+1` and `1_000` are errors,
    not ids, and so is `99999999999` (it made writing the manifest fail)."""
    text = value.strip()
    if not _NON_NEGATIVE_INT.match(text):
        raise ValueError(f"{value!r} is not a non-negative integer")
    if len(text.lstrip("0")) > len(str(MAX_ID)) or int(text) > MAX_ID:
        raise ValueError(f"{text!r} is out of range (ids are at most {MAX_ID})")
    return int(text)


def _column(record: dict[str, str], column: str, parse):
    """parse(record[column]); a ValueError names the column."""
    try:
        return parse(record[column])
    except ValueError as exc:
        raise ValueError(f"column {column}: {exc}") from None


def _decode(path: Path) -> tuple[str, set[int]]:
    """The file's text, and the (1-based) lines where stray non-UTF-8 bytes were read as cp1252.

    A file with no valid multi-byte UTF-8 at all is a cp1252 copy: read whole as cp1252, no lines
    reported. A UTF-8 file with a few invalid bytes keeps its UTF-8 (decoding it all as cp1252
    would turn every ’ of the file into Â’) and only those bytes are read as cp1252.
    """
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig"), set()
    except UnicodeDecodeError:
        pass
    text = raw.decode("utf-8-sig", errors="surrogateescape")  # invalid bytes -> U+DC80..U+DCFF
    if all(ord(c) < 0x80 or 0xDC80 <= ord(c) <= 0xDCFF for c in text):
        return raw.decode("cp1252", errors="strict"), set()
    out: list[str] = []
    lines: set[int] = set()
    line = 1
    for char in text:
        if char == "\n":
            line += 1
        elif 0xDC80 <= ord(char) <= 0xDCFF:
            byte = ord(char) - 0xDC00
            try:
                char = bytes([byte]).decode("cp1252")
            except UnicodeDecodeError:
                raise CorpusFormatError(path, f"byte 0x{byte:02x} is neither UTF-8 nor cp1252 text", line=line) from None
            lines.add(line)
        out.append(char)
    return "".join(out), lines


def _line_of(data: bytes, offset: int) -> int:
    """The (1-based) line of byte `offset`, counted as the csv module counts them (\\n, \\r\\n or \\r)."""
    return len(re.split(rb"\r\n|\r|\n", data[:offset]))


def _read_csv(path: Path, split: str) -> list[_Row]:
    try:
        text, repaired_lines = _decode(path)
    except UnicodeDecodeError as exc:
        raise CorpusFormatError(
            path, f"byte 0x{exc.object[exc.start]:02x} is neither UTF-8 nor cp1252 text", line=_line_of(exc.object, exc.start)
        ) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return _parse_rows(path, split, reader, repaired_lines)
    except csv.Error as exc:  # "field larger than field limit": an unclosed quote ran on, or a runaway field
        # DictReader.line_num is the last record's; its csv reader's is the line that failed
        raise CorpusFormatError(path, f"unreadable CSV ({exc})", line=max(reader.reader.line_num, 1)) from None


def _parse_rows(path: Path, split: str, reader: csv.DictReader, repaired_lines: set[int]) -> list[_Row]:
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise CorpusFormatError(path, f"missing column(s) {missing}; expected header {','.join(COLUMNS)}", line=1)
    rows = []
    last_line = reader.line_num  # the header's
    for record in reader:
        line = reader.line_num
        first_line, last_line = last_line + 1, line  # a quoted field can span lines
        if None in record or any(record[c] is None for c in COLUMNS):
            raise CorpusFormatError(path, "wrong number of fields", line=line)
        emotion = record["Emotion"].strip().lower()
        sentiment = record["Sentiment"].strip().lower()
        if emotion not in EMOTIONS:
            raise CorpusFormatError(path, f"unknown emotion {record['Emotion']!r}; expected one of {EMOTIONS}", line=line)
        if sentiment not in SENTIMENTS:
            raise CorpusFormatError(path, f"unknown sentiment {record['Sentiment']!r}; expected one of {SENTIMENTS}", line=line)
        try:
            rows.append(
                _Row(
                    split=split, line=line,
                    dialogue=_column(record, "Dialogue_ID", parse_id),
                    utterance=_column(record, "Utterance_ID", parse_id),
                    text=repair_text(record["Utterance"]), speaker=repair_text(record["Speaker"]),
                    emotion=emotion, sentiment=sentiment,
                    season=_column(record, "Season", parse_id), episode=_column(record, "Episode", parse_id),
                    sr_no=record["Sr No."].strip(),
                    start_s=_column(record, "StartTime", parse_time), end_s=_column(record, "EndTime", parse_time),
                    repaired_encoding=any(first_line <= n <= line for n in repaired_lines),
                )
            )
        except ValueError as exc:
            raise CorpusFormatError(path, str(exc), line=line) from None
    if not rows:
        raise CorpusFormatError(
            path, f"no utterance rows under the header: the {split} split would be empty "
            "(a truncated or emptied CSV; restore it from the release)", line=1,
        )
    return rows


def _find_unique(root: Path, name: str, want_dir: bool) -> Path | None:
    """`name` directly under root or up to two folders deeper (copies of the release nest differently)."""
    for depth in range(3):
        pattern = "/".join(["*"] * depth + [name])
        hits = sorted(p for p in root.glob(pattern) if p.is_dir() == want_dir and not p.name.startswith("._"))
        if hits:
            return hits[0]
    return None


def find_meld_root(root: Path) -> Path:
    """The folder holding the three CSVs: `root` itself, `root/MELD.Raw`, or one level deeper.

    A tree missing one split's CSV is refused (a smaller corpus would silently change the splits).
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusFormatError(root, "MELD root folder does not exist")
    found = next(
        (csv_path for name in CSV_FILES.values() if (csv_path := _find_unique(root, name, want_dir=False))), None
    )
    if found is None:
        raise CorpusFormatError(
            root, f"not a {RELEASE_DIR} tree: no {CSV_FILES['train']} found here or up to two folders below"
        )
    meld_root = found.parent
    for split, name in CSV_FILES.items():
        if not (meld_root / name).is_file():
            raise CorpusFormatError(
                meld_root / name,
                f"MELD {split} CSV is missing beside {found.name}: every split's CSV is needed "
                "(a missing split would silently change the corpus)",
            )
    return meld_root


def _scan_clip_folder(folder: Path | None, meld_root: Path, split: str, result: CorpusReadResult) -> dict[tuple[int, int], Path]:
    """Index `dia{D}_utt{U}.mp4` clips by (D, U); everything else in the folder is reported as ignored."""
    clips: dict[tuple[int, int], Path] = {}
    if folder is None:
        return clips
    for path in sorted(folder.iterdir()):
        rel = relative_to_root(meld_root, path)
        if path.name.startswith("._"):
            result.ignore("macos_metadata_files", rel)
        elif path.is_symlink() and not path.exists():  # its utterance is flagged missing_clip
            result.ignore("broken_symlinks", rel)
        elif (match := _CLIP.match(path.name)) and path.is_file():
            clips[(int(match[1]), int(match[2]))] = path
        else:
            result.ignore("files_not_named_like_clips", rel)
    return clips


def _probe_and_hash(clip: Path | None, meld_root: Path) -> MediaProbe | None:
    """Probe a clip and hash its content (kept in the fingerprint cache for `_media_fields`)."""
    if clip is None:
        return None
    media_fingerprint(meld_root, clip, "media")
    return probe_media(clip)


def _media_fields(utt: Utterance, clip: Path | None, probe: MediaProbe | None, meld_root: Path) -> None:
    if clip is None or probe is None:
        utt.flag("missing_clip")
        return
    utt.sources.append(media_fingerprint(meld_root, clip, "media"))
    if probe.error:
        utt.attributes["clip_error"] = probe.error
    if not probe.readable:
        utt.flag("unreadable_clip")
        return
    rel = relative_to_root(meld_root, clip)
    if probe.has_audio:
        utt.audio_path, utt.audio_start_s, utt.audio_end_s, utt.has_audio = rel, 0.0, probe.duration_s, True
    else:
        utt.flag("clip_without_audio")
    if probe.has_video:
        utt.video_path, utt.video_start_s, utt.video_end_s, utt.has_video = rel, 0.0, probe.duration_s, True
    else:
        utt.flag("clip_without_video")


def _utterance(row: _Row, labels: list[str], label_field: str, csv_fp: Fingerprint) -> Utterance:
    label = getattr(row, label_field)
    utt = Utterance(
        corpus="meld", split=row.split,
        # Utterance_ID is the turn's position in the episode's dialogue; its gaps are clips with no label
        dialogue_id=f"{row.split}_dia{row.dialogue}", turn_index=row.utterance,
        utterance_id=f"{row.split}_dia{row.dialogue}_utt{row.utterance}",
        speaker=row.speaker, text=row.text, label=label, label_index=labels.index(label),
        start_s=row.start_s, end_s=row.end_s,
        audio_path=None, audio_start_s=None, audio_end_s=None,
        video_path=None, video_start_s=None, video_end_s=None, video_region="full",
        has_text=bool(row.text), has_audio=False, has_video=False,
        sources=[csv_fp],
        attributes={
            "emotion": row.emotion, "sentiment": row.sentiment, "season": row.season,
            "episode": row.episode, "sr_no": row.sr_no, "csv_line": row.line,
        },
    )
    if not row.text:
        utt.flag("empty_text")
    if row.repaired_encoding:
        utt.flag("repaired_encoding")
    if row.end_s < row.start_s:
        utt.flag("end_before_start")
    elif row.end_s - row.start_s > LONG_SPAN_S:
        utt.flag("long_span")
    return utt


LABEL_POLICIES = {"emotion": EMOTIONS, "sentiment": SENTIMENTS}


@register_corpus(
    "meld", label_policies=LABEL_POLICIES, default_policy="emotion",
    description=f"MELD (Friends TV series), {RELEASE_DIR} layout: *_sent_emo.csv + per-split mp4 clip folders",
)
def read_meld(root: Path, label_policy: str) -> CorpusReadResult:
    labels = LABEL_POLICIES[label_policy]
    meld_root = find_meld_root(root)
    result = CorpusReadResult(
        corpus="meld", label_policy=label_policy, label_names=labels, utterances=[],
        split_rule="the release's own train/dev/test CSVs",
    )
    for split, csv_name in CSV_FILES.items():
        csv_path = meld_root / csv_name
        rows = _read_csv(csv_path, split)
        result.utterances_seen += len(rows)
        csv_fp = content_fingerprint(meld_root, csv_path, "labels")
        result.raw_files.append(csv_fp)
        folder = _find_unique(meld_root, CLIP_FOLDERS[split], want_dir=True)
        if folder is None:
            result.ignore("clip_folders_not_found", CLIP_FOLDERS[split])
        clips = _scan_clip_folder(folder, meld_root, split, result)
        labelled = {(r.dialogue, r.utterance) for r in rows}
        for key in sorted(set(clips) - labelled):
            result.ignore("unlabeled_clips", relative_to_root(meld_root, clips[key]))
        wanted = [clips.get((r.dialogue, r.utterance)) for r in rows]
        with ThreadPoolExecutor(max_workers=4) as pool:  # probing and hashing wait on the disk, not the GIL
            probed = pool.map(lambda clip: _probe_and_hash(clip, meld_root), wanted)
            probes = list(progress(probed, f"meld {split}: probing clips", total=len(wanted), unit="clip"))
        for row, clip, probe in zip(rows, wanted, probes):
            utt = _utterance(row, labels, label_policy, csv_fp)
            _media_fields(utt, clip, probe, meld_root)
            result.utterances.append(utt)
            if clip is not None:
                result.raw_files.append(utt.sources[-1])
    check_unique_ids(result, source_of=lambda utt: f"{utt.sources[0].path}:{utt.attributes['csv_line']}")
    return result


