"""Property-based tests of the corpus readers (issue 11, item 7), with hypothesis.

Random mutations of real MELD rows (../shared/data/meld) and of IEMOCAP summary, vote and transcript
lines (the text files of tests/helpers/iemocap_tree.py) must end in one of two ways:
- a `PipelineError` on one line; a `CorpusFormatError` names the mutated file, and its line (never
  one before the mutation, never one past the end of the file) as `<path>:<line>: ...`;
- a result that accounts for every raw record: seen = kept + excluded, every exclusion with a reason
  and a `file:line` source, every kept utterance with a label of the policy, finite times, strict-JSON
  attributes and a unique id, every record the mutation did not touch still there (kept or excluded),
  and `prepare` writes it (the manifest's integer columns take it).
Anything else escaping (ValueError, csv.Error, pyarrow's ArrowInvalid, UnicodeDecodeError...) is what
the CLI reports as exit 1, "unexpected error": the test fails with it and hypothesis prints the mutation.

One template tree per module, text only (no clip is probed); each example writes its mutated file into
the template and restores it afterwards. Examples are derandomized, so CI runs the same ones every time.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, note, settings
from hypothesis import strategies as st

from pipeline.core.errors import CorpusFormatError, PipelineError
from pipeline.corpora import get_corpus
from pipeline.corpora.iemocap import LABEL_DIR, SUMMARY_LABELS, TRANSCRIPT_DIR
from pipeline.corpora.iemocap import LABEL_POLICIES as IEMOCAP_LABEL_POLICIES
from pipeline.corpora.meld import CSV_FILES, EMOTIONS, SENTIMENTS
from pipeline.corpora.meld import LABEL_POLICIES as MELD_LABEL_POLICIES
from pipeline.formats.manifest import SPLITS, CorpusReadResult
from pipeline.stages.prepare import prepare_corpus
from tests.helpers.iemocap_tree import DIALOGUES, write_iemocap_tree

MELD_DATA = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "meld"
MELD_RELEASES = ("original-release", "github-head")  # C1 characters in UTF-8 with LF; clean UTF-8 with CRLF
MELD_SPLIT_OF = {name: split for split, name in CSV_FILES.items()}
# CorpusFormatErrors allowed without a line: they are about the whole file
FILE_LEVEL_ERRORS = ("no turn summary lines",)

PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- mutations ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Syntax:
    """How one corpus's lines split into fields: MELD's CSV, IEMOCAP's tab- (or space-) separated text."""

    split: Callable[[str], list[str]]
    join: Callable[[list[str], bool, str], str]  # (fields, quote them properly, the line they came from)


def _csv_split(text: str) -> list[str]:
    return next(csv.reader([text]), [])


def _csv_join(fields: list[str], quoted: bool, _: str) -> str:
    if not quoted:  # a comma or quote inside a field is now a stray one
        return ",".join(fields)
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


def _sep(text: str) -> str:
    return "\t" if "\t" in text else " "


CSV_SYNTAX = Syntax(_csv_split, _csv_join)
TEXT_SYNTAX = Syntax(lambda text: text.split(_sep(text)), lambda fields, _, text: _sep(text).join(fields))
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d*)?")


def _split_end(line: bytes) -> tuple[bytes, bytes]:
    body = line.rstrip(b"\r\n")
    return body, line[len(body):]


def _edit_fields(op: str, arg, text: str, syntax: Syntax) -> str:
    fields = syntax.split(text) or [""]
    if op == "replace_field":
        index, value, quoted = arg
        fields[index % len(fields)] = value
        return syntax.join(fields, quoted, text)
    if op == "delete_field":
        del fields[arg % len(fields)]
    elif op == "duplicate_field":
        fields.insert(arg % len(fields), fields[arg % len(fields)])
    elif op == "swap_fields":
        i, j = (n % len(fields) for n in arg)
        fields[i], fields[j] = fields[j], fields[i]
    return syntax.join(fields, True, text)


def _edit_line(op: str, arg, body: bytes, syntax: Syntax) -> bytes:
    """The new bytes of one line (without its line end)."""
    if op == "invalid_bytes":
        at, stray = arg
        at %= len(body) + 1
        return body[:at] + stray + body[at:]
    text = body.decode("utf-8", "surrogateescape")
    if op in ("replace_field", "delete_field", "duplicate_field", "swap_fields"):
        text = _edit_fields(op, arg, text, syntax)
    elif op == "number":  # a time, a VAD value, an id's digits
        index, value = arg
        numbers = list(_NUMBER.finditer(text))
        if numbers:
            match = numbers[index % len(numbers)]
            text = text[: match.start()] + value + text[match.end():]
        else:
            text += value
    elif op == "truncate_line":
        text = text[: arg % (len(text) + 1)]
    elif op == "insert":
        at, stray = arg
        at %= len(text) + 1
        text = text[:at] + stray + text[at:]
    elif op == "cp1252_line":
        at, char = arg
        at %= len(text) + 1
        return (text[:at] + char + text[at:]).encode("cp1252", "replace")
    else:
        raise AssertionError(f"unknown line op {op}")
    return text.encode("utf-8", "surrogateescape")


def _edit_file(op: str, arg, data: bytes, syntax: Syntax) -> bytes:
    if op == "column":  # the same field edit on every line: a column deleted, duplicated or moved
        field_op, index = arg
        lines = [_split_end(line) for line in data.splitlines(keepends=True)]
        return b"".join(_edit_line(field_op, index, body, syntax) + end for body, end in lines)
    if op == "empty_file":
        return b""
    if op == "truncate_file":
        return data[: arg % (len(data) + 1)]
    if op == "reencode":
        codec, at, stray = arg
        out = data.decode("utf-8", "surrogateescape").encode(codec, "replace")
        at %= len(out) + 1
        return out[:at] + stray + out[at:]
    if op == "line_ends":
        return b"".join(_split_end(line)[0] + arg for line in data.splitlines(keepends=True))
    raise AssertionError(f"unknown file op {op}")


@dataclass(frozen=True)
class Mutation:
    """One edit of one raw file: `op` on line `line` (1-based, taken modulo the file's lines; None: the
    whole file) with `arg`."""

    file: str  # relative to the folder holding the corpus files
    line: int | None
    op: str
    arg: object = None

    def apply(self, data: bytes, syntax: Syntax) -> tuple[bytes, int | None]:
        """(the mutated file, the line edited: edits never touch a line before it)."""
        if self.line is None:
            return _edit_file(self.op, self.arg, data, syntax), None
        lines = data.splitlines(keepends=True)
        n = (self.line - 1) % len(lines)
        if self.op == "swap_lines":  # line n with line n + 1, each keeping its place's line end
            n = min(n, len(lines) - 2)
            (first, first_end), (second, second_end) = _split_end(lines[n]), _split_end(lines[n + 1])
            lines[n:n + 2] = [second + first_end, first + second_end]
        elif self.op == "delete_line":
            del lines[n]
        elif self.op == "duplicate_line":
            body, end = _split_end(lines[n])
            lines.insert(n, body + (end or b"\n"))
        else:
            body, end = _split_end(lines[n])
            lines[n] = _edit_line(self.op, self.arg, body, syntax) + end
        return b"".join(lines), n + 1


STRAY = ['"', '""', ",", "\x00", "\r", "\n", "\r\n", "\ufeff", "\u2028", "\x85", "\x0c", "\t", " ", "[", "]", ":", "%", ";"]
NASTY = [
    "", " ", *STRAY,
    "25:99:99,000", "-1:00:00,000", "00:00:01", "1:2", "99:59:59,999", "100:00:00,000", "0:00:00.5", "00:00:00,0000",
    "nan", "inf", "-inf", "1e309", "-0", "+1", "1_000", "0x10", "1.0", "2.5", "١٢", "１",
    "9" * 10, "9" * 19, "9" * 20, "9" * 400, "9" * 5000,
    "x" * 131_073,  # over the csv module's field size limit
]
MELD_VALUES = [*NASTY, *EMOTIONS, *SENTIMENTS, "Neutral", " JOY ", "happiness", "Sr No.", "Emotion"]
IEMOCAP_VALUES = [
    *NASTY, *sorted(SUMMARY_LABELS), "Neutral;", "Happiness;", "Happiness; Excited;", "Neu",
    "C-E1:", "C-F1:", "C-M1:", "A-E3:", "()", "(", "[", "[2.5, 2.5]", "[2.5,2.5,2.5]", "[1.0 - 2.0]",
    "Ses01F_impro01_F000", "Ses01F_impro01_M999", "Ses01F_impro01_FXX0", "Ses05F_impro01_F000", "Ses01F_impro01_F000:",
]


def _values(named: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(named),
        st.text(max_size=12),
        st.integers(-(2**70), 2**70).map(str),
        st.floats().map(repr),
        st.from_regex(r"-?\d{1,3}:\d{1,3}:\d{1,3}([,.]\d{0,4})?", fullmatch=True),
    )


NUMBERS = st.one_of(
    st.sampled_from(["9" * 400, "1e5", "nan", "inf", "", "-", ".", "-1", "+0", "0" * 40]),
    st.floats().map(repr),
    st.integers(-(2**40), 2**40).map(str),
    st.from_regex(r"[-+]?\d{1,6}(\.\d{0,6})?", fullmatch=True),
)
POSITION = st.integers(0, 400)
INDEX = st.integers(0, 15)


def mutations(files: list[str], values: st.SearchStrategy[str]) -> st.SearchStrategy[Mutation]:
    file = st.sampled_from(files)
    line = st.integers(1, 64)
    line_args = {
        "replace_field": st.tuples(INDEX, values, st.booleans()),
        "delete_field": INDEX,
        "duplicate_field": INDEX,
        "swap_fields": st.tuples(INDEX, INDEX),
        "number": st.tuples(INDEX, NUMBERS),
        "truncate_line": POSITION,
        "insert": st.tuples(POSITION, st.one_of(st.sampled_from(STRAY), st.text(min_size=1, max_size=3))),
        "cp1252_line": st.tuples(POSITION, st.sampled_from(["’", "é", "…", "—", "“", "€", ""])),
        "invalid_bytes": st.tuples(POSITION, st.lists(st.integers(0x80, 0xFF), min_size=1, max_size=3).map(bytes)),
        "delete_line": st.none(),
        "duplicate_line": st.none(),
        "swap_lines": st.none(),
    }
    file_args = {
        "empty_file": st.none(),
        "truncate_file": st.integers(0, 4000),
        "reencode": st.tuples(
            st.sampled_from(["cp1252", "latin-1", "utf-16", "utf-8-sig"]),
            st.integers(0, 4000),
            st.sampled_from([b"", b"\x81", b"\x8d", b"\x92", b"\xff", b"\x00"]),
        ),
        "line_ends": st.sampled_from([b"\n", b"\r\n", b"\r", b""]),
        "column": st.one_of(
            st.tuples(st.sampled_from(["delete_field", "duplicate_field"]), INDEX),
            st.tuples(st.just("swap_fields"), st.tuples(INDEX, INDEX)),
        ),
    }
    return st.one_of(
        *(st.builds(Mutation, file, line, st.just(op), arg) for op, arg in line_args.items()),
        *(st.builds(Mutation, file, st.none(), st.just(op), arg) for op, arg in file_args.items()),
    )


# --- templates --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Edit:
    """A mutation as written: the file, its new bytes and the first line it changed (None: whole file)."""

    path: Path
    data: bytes
    line: int | None


# whole-file edits that keep every row of a CSV: its rows must all still be read, or be an error
ROW_KEEPING_FILE_OPS = ("column", "line_ends")


@dataclass
class Template:
    """A small raw tree, the files mutations edit, and the utterance id of each record line in them."""

    read_root: Path  # what the reader is given
    files_root: Path  # what Mutation.file and exclusion sources are relative to
    files: dict[str, bytes]  # relative path -> original bytes
    record_ids: dict[str, dict[int, str]]  # relative path -> {line: utterance id}
    syntax: Syntax
    # a CSV's header: editing it changes how every row of the file reads (a column renamed onto
    # another reads that one), so its rows must still all be there, under whatever ids they now have
    header_line: int | None = None
    file_split: dict[str, str] = field(default_factory=dict)  # relative path -> the split of its records

    def __repr__(self) -> str:
        return f"Template({self.files_root})"

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # how hypothesis prints a falsifying example's fixtures
        printer.text(repr(self))

    @contextmanager
    def mutated(self, mutation: Mutation) -> Iterator[Edit]:
        path = self.files_root / mutation.file
        data, line = mutation.apply(self.files[mutation.file], self.syntax)
        if line is not None:
            note(f"line {line} was {self.files[mutation.file].splitlines()[line - 1]!r}")
        path.write_bytes(data)
        try:
            yield Edit(path, data, line)
        finally:
            path.write_bytes(self.files[mutation.file])

    def untouched(self, mutation: Mutation, edit: Edit) -> tuple[set[str], dict[str, int]]:
        """Ids of the records the mutation left alone, which must come out kept or excluded; and, after a
        header edit, how many records the file's split must still have."""
        ids, counts = set(), {}
        for name, by_line in self.record_ids.items():
            if name != mutation.file:
                ids |= set(by_line.values())
            elif self.header_line is not None and (
                edit.line == self.header_line or (edit.line is None and mutation.op in ROW_KEEPING_FILE_OPS and mutation.arg)
            ):
                counts[self.file_split[name]] = len(by_line)
            elif edit.line is not None:
                ids |= {uid for line, uid in by_line.items() if line != edit.line}
        return ids, counts


def line_count(data: bytes) -> int:
    """Lines as Python's text mode and the csv module count them (\\n, \\r\\n or a lone \\r end one)."""
    return max(1, len(data.splitlines()))


# A published row of each kind: a one-digit hour, a two-digit fraction, a doubled quote, non-ASCII text.
MELD_ROW_PATTERNS = (rb'"0:\d\d:', rb',\d\d"\r?\n?$', rb'""', rb"[\x80-\xff]")
MELD_FIRST_ROWS = 3


def meld_sample(path: Path) -> bytes:
    """The header and a handful of real rows of one published CSV, bytes as published (each of its
    records is one line)."""
    lines = path.read_bytes().splitlines(keepends=True)
    picked = set(range(1, MELD_FIRST_ROWS + 1))
    for pattern in MELD_ROW_PATTERNS:
        picked.add(next((n for n in range(1, len(lines)) if re.search(pattern, lines[n])), 1))
    return b"".join([lines[0], *(lines[n] for n in sorted(picked))])


def meld_record_ids(split: str, data: bytes) -> dict[int, str]:
    rows = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    header = next(rows)
    dialogue, utterance = header.index("Dialogue_ID"), header.index("Utterance_ID")
    return {n: f"{split}_dia{int(row[dialogue])}_utt{int(row[utterance])}" for n, row in enumerate(rows, start=2)}


@pytest.fixture(scope="module")
def meld_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Template]:
    """One MELD.Raw tree per published encoding: three CSVs of real rows, an empty dev clip folder and no
    other clip folder (every utterance is flagged missing_clip)."""
    if not all((MELD_DATA / release / name).is_file() for release in MELD_RELEASES for name in CSV_FILES.values()):
        pytest.skip(
            f"../shared/data/meld not found: {MELD_DATA.resolve()} should hold original-release/ and "
            "github-head/ with the three *_sent_emo.csv (the published MELD label files)"
        )
    templates = {}
    for release in MELD_RELEASES:
        base = tmp_path_factory.mktemp(f"meld-{release}")
        raw = base / "MELD.Raw"
        (raw / "dev_splits_complete").mkdir(parents=True)
        files, ids = {}, {}
        for split, name in CSV_FILES.items():
            files[name] = meld_sample(MELD_DATA / release / name)
            ids[name] = meld_record_ids(split, files[name])
            (raw / name).write_bytes(files[name])
        templates[release] = Template(base, raw, files, ids, CSV_SYNTAX, header_line=1, file_split=MELD_SPLIT_OF)
    return templates


IEMOCAP_FILES = [
    f"Session{d.session}/{folder}/{d.name}.txt" for d in DIALOGUES for folder in (LABEL_DIR, TRANSCRIPT_DIR)
]


@pytest.fixture(scope="module")
def iemocap_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """The fixture release of tests/helpers/iemocap_tree.py without its wavs and videos."""
    base = tmp_path_factory.mktemp("iemocap")
    text_only = tuple(
        replace(d, video="none", turns=tuple(replace(t, wav=False) for t in d.turns)) for d in DIALOGUES
    )
    release = write_iemocap_tree(base, text_only)
    files = {name: (release / name).read_bytes() for name in IEMOCAP_FILES}
    ids = {
        name: {n: line.split("\t")[1] for n, line in enumerate(data.decode().splitlines(), start=1) if line.startswith("[")}
        for name, data in files.items()
        if f"/{LABEL_DIR}/" in name
    }
    return Template(base, release, files, ids, TEXT_SYNTAX)


# --- the property -----------------------------------------------------------------------------------


def check_format_error(exc: CorpusFormatError, edit: Edit) -> None:
    message = str(exc)
    assert len(message.splitlines()) == 1 and "\n" not in message and "\r" not in message, message
    assert exc.path == edit.path, f"the error names {exc.path}, not the mutated {edit.path}: {message}"
    if exc.line is None:
        assert message.startswith(f"{edit.path}: "), message
        assert any(kind in message for kind in FILE_LEVEL_ERRORS), f"no line number: {message}"
        return
    assert message.startswith(f"{edit.path}:{exc.line}: "), message
    assert 1 <= exc.line <= line_count(edit.data), f"line {exc.line} of a {line_count(edit.data)}-line file: {message}"
    if edit.line is not None:
        assert exc.line >= edit.line, f"line {exc.line} is before the edited line {edit.line}: {message}"


def check_accounted(result: CorpusReadResult, template: Template, untouched: set[str], counts: dict[str, int]) -> None:
    kept = [u.utterance_id for u in result.utterances]
    excluded = [e.utterance_id for e in result.excluded]
    assert result.utterances_seen == len(kept) + len(excluded), (result.utterances_seen, len(kept), len(excluded))
    assert len(set(kept)) == len(kept), "an utterance id is kept twice"
    lost = untouched - set(kept) - set(excluded)
    assert not lost, f"raw records neither kept nor excluded: {sorted(lost)}"
    for split, n in counts.items():
        out = sum(u.split == split for u in result.utterances) + sum(e.split == split for e in result.excluded)
        assert out == n, f"{split}: {n} rows under the edited header, {out} kept or excluded"
    for exclusion in result.excluded:
        assert exclusion.reason.strip(), exclusion
        name, _, line = (exclusion.source or "").rpartition(":")
        assert name and re.fullmatch(r"[0-9]+", line) and (template.files_root / name).is_file(), exclusion
        assert 1 <= int(line) <= line_count((template.files_root / name).read_bytes()), exclusion
    for utt in result.utterances:
        assert utt.label in result.label_names and utt.label_index == result.label_names.index(utt.label), utt
        assert utt.split in SPLITS, utt.split
        times = (utt.start_s, utt.end_s, utt.audio_start_s, utt.audio_end_s, utt.video_start_s, utt.video_end_s)
        assert all(t is None or math.isfinite(t) for t in times), (utt.utterance_id, times)
        json.dumps(utt.attributes, allow_nan=False)  # strict JSON: no Infinity in the manifest's attributes


def check_read(corpus: str, policy: str, template: Template, mutation: Mutation) -> None:
    """Read the mutated tree: a one-line error naming the file and line, or a result that accounts for every
    record and that `prepare` writes."""
    with template.mutated(mutation) as edit:
        try:
            result = get_corpus(corpus).read(template.read_root, policy)
        except CorpusFormatError as exc:
            event(f"{mutation.op}: file:line error")
            check_format_error(exc, edit)
            return
        except PipelineError as exc:
            event(f"{mutation.op}: other one-line error")
            assert len(str(exc).splitlines()) == 1, str(exc)
            return
        event(f"{mutation.op}: read, {'some' if result.excluded else 'no'} exclusions")
        check_accounted(result, template, *template.untouched(mutation, edit))
        with tempfile.TemporaryDirectory() as out:
            try:
                summary = prepare_corpus(corpus, template.read_root, Path(out) / "prepared", policy)
            except PipelineError as exc:  # e.g. nothing left to keep under the policy
                assert not result.utterances and len(str(exc).splitlines()) == 1, str(exc)
                return
        assert summary["counts"]["utterances_out"] == len(result.utterances)


def test_meld_templates_read_clean(meld_templates: dict[str, Template]) -> None:
    """The unmutated trees: every sampled row kept, none excluded (so a lost record is the mutation's)."""
    for template in meld_templates.values():
        result = get_corpus("meld").read(template.read_root, "emotion")
        expected = {uid for ids in template.record_ids.values() for uid in ids.values()}
        assert {u.utterance_id for u in result.utterances} == expected and not result.excluded
        assert all(len(ids) >= MELD_FIRST_ROWS + 1 for ids in template.record_ids.values())
        assert all(u.flags == ["missing_clip"] for u in result.utterances if "repaired_encoding" not in u.flags)


@PROPERTY_SETTINGS
@given(
    release=st.sampled_from(MELD_RELEASES),
    mutation=mutations(sorted(CSV_FILES.values()), _values(MELD_VALUES)),
    policy=st.sampled_from(sorted(MELD_LABEL_POLICIES)),
)
@example(release="github-head", mutation=Mutation("dev_sent_emo.csv", 2, "replace_field", (6, "9" * 11, True)), policy="emotion")
@example(release="original-release", mutation=Mutation("train_sent_emo.csv", 3, "replace_field", (1, "x" * 131_073, True)), policy="emotion")
@example(release="original-release", mutation=Mutation("test_sent_emo.csv", 1, "truncate_line", 0), policy="emotion")
@example(release="github-head", mutation=Mutation("dev_sent_emo.csv", None, "reencode", ("latin-1", 200, b"\x81")), policy="sentiment")
@example(release="original-release", mutation=Mutation("dev_sent_emo.csv", 4, "insert", (30, "\r")), policy="emotion")
def test_mutated_meld_csvs_end_in_a_file_line_error_or_an_accounted_manifest(
    meld_templates: dict[str, Template], release: str, mutation: Mutation, policy: str
) -> None:
    check_read("meld", policy, meld_templates[release], mutation)


def test_iemocap_template_reads_clean(iemocap_template: Template) -> None:
    result = get_corpus("iemocap").read(iemocap_template.read_root, "benchmark")
    ids = {uid for by_line in iemocap_template.record_ids.values() for uid in by_line.values()}
    assert len(ids) == result.utterances_seen == 31
    assert {u.utterance_id for u in result.utterances} | {e.utterance_id for e in result.excluded} == ids
    assert all("missing_audio" in u.flags and "missing_video" in u.flags for u in result.utterances)


@PROPERTY_SETTINGS
@given(mutation=mutations(IEMOCAP_FILES, _values(IEMOCAP_VALUES)), policy=st.sampled_from(sorted(IEMOCAP_LABEL_POLICIES)))
@example(mutation=Mutation(f"Session1/{TRANSCRIPT_DIR}/Ses01F_impro01.txt", 1, "insert", (30, "\u2028")), policy="benchmark")
@example(mutation=Mutation(f"Session1/{LABEL_DIR}/Ses01F_impro01.txt", 4, "insert", (20, "\x85")), policy="benchmark")
@example(mutation=Mutation(f"Session1/{LABEL_DIR}/Ses01F_impro01.txt", 3, "number", (0, "9" * 400)), policy="emoeval")
@example(mutation=Mutation(f"Session2/{LABEL_DIR}/Ses02M_impro03.txt", None, "line_ends", b"\r"), policy="four-class")
def test_mutated_iemocap_lines_end_in_a_file_line_error_or_an_accounted_manifest(
    iemocap_template: Template, mutation: Mutation, policy: str
) -> None:
    check_read("iemocap", policy, iemocap_template, mutation)


# --- the same through `mer prepare`, in a subprocess: exit 2 and one line, never exit 1 ----------------


MER = [sys.executable, "-m", "pipeline.cli"]


def _meld_cp1252_with_undefined_byte(raw: Path) -> tuple[Path, int]:
    """The dev CSV re-encoded as cp1252 (no UTF-8 left), with 0x81 (undefined in cp1252) on line 3."""
    path = raw / CSV_FILES["dev"]
    lines = path.read_bytes().decode("utf-8").encode("cp1252", "replace").splitlines(keepends=True)
    lines[2] = lines[2][:10] + b"\x81" + lines[2][10:]
    path.write_bytes(b"".join(lines))
    return path, 3


CLI_CASES = {
    # exit 1 before: ArrowInvalid writing the manifest's int32 turn_index
    "utterance-id-over-int32": ("meld", Mutation("dev_sent_emo.csv", 2, "replace_field", (6, "99999999999", True)), 2, "column Utterance_ID"),
    # exit 1 before: csv.Error "field larger than field limit"
    "field-over-csv-limit": ("meld", Mutation("train_sent_emo.csv", 3, "replace_field", (1, "x" * 131_073, True)), 3, "field larger than field limit"),
    "emptied-header": ("meld", Mutation("test_sent_emo.csv", 1, "truncate_line", 0), 1, "missing column(s)"),
    # was an error without its line
    "cp1252-undefined-byte": ("meld", _meld_cp1252_with_undefined_byte, 3, "byte 0x81"),
    "nul-in-time": ("meld", Mutation("dev_sent_emo.csv", 3, "replace_field", (9, "00:00:\x0001,000", True)), 3, "column StartTime"),
    # the last row (line 0 is taken modulo the lines), cut inside a field: its quote is never closed
    "last-row-cut-mid-field": ("meld", Mutation("dev_sent_emo.csv", 0, "truncate_line", 40), None, ""),
    # exit 0 before, with an infinite start time in the manifest
    "iemocap-start-time-overflows": ("iemocap", Mutation(f"Session1/{LABEL_DIR}/Ses01F_impro01.txt", 3, "number", (0, "9" * 400)), 3, "must be finite"),
    "iemocap-transcript-not-utf8": ("iemocap", Mutation(f"Session4/{TRANSCRIPT_DIR}/Ses04F_script02_1.txt", 2, "invalid_bytes", (30, b"\xff")), 2, "not UTF-8 text (byte 0xff"),
    "iemocap-summary-without-vad": ("iemocap", Mutation(f"Session2/{LABEL_DIR}/Ses02M_impro03.txt", 9, "delete_field", 3), 9, "malformed turn summary line"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_prepare_on_nasty_mutations_is_one_line_exit_2(case: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    corpus, mutation, line, needle = CLI_CASES[case]
    # only the fixture the case needs: without ../shared/data/meld the IEMOCAP cases still run
    if corpus == "meld":
        template = request.getfixturevalue("meld_templates")["original-release"]
    else:
        template = request.getfixturevalue("iemocap_template")
    root = tmp_path / "raw"
    shutil.copytree(template.read_root, root)
    files_root = root / template.files_root.relative_to(template.read_root)
    if isinstance(mutation, Mutation):
        path = files_root / mutation.file
        data, edited = mutation.apply(path.read_bytes(), template.syntax)
        path.write_bytes(data)
        line = line or edited
    else:
        path, line = mutation(files_root)
    out = tmp_path / "prepared"
    proc = subprocess.run(
        [*MER, "prepare", "--corpus", corpus, "--root", str(root), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.endswith("\n"), proc.stderr
    assert proc.stderr.startswith(f"mer prepare: error: {path}:{line}: "), proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()
