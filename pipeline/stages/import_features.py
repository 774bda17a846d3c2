"""`mer import-features`: the feature pickles MER papers train on -> our manifest + feature stores.

Most published ERC results were trained on pickled, pre-extracted features rather than on the raw
corpora. This module converts those pickles, unchanged in value, into a prepared folder
(`manifest.parquet` + `summary.json`, the schema of `mer prepare`) and one feature store per
modality (`pipeline.formats.feature_store`), so our models can train on exactly the inputs of a published
number.

SECURITY: unpickling runs code chosen by whoever wrote the file. Import only pickles you trust
(e.g. the authors' own release, checked against a known sha256).

Supported layouts
-----------------
A pickle holds one tuple (or list); every item except the two split lists is a dict keyed by
dialogue id whose value is a per-utterance list (or array whose first axis is the utterance).
The layout is chosen by ``--format``, ``--corpus`` and the number of items, in these exact orders
(``_`` = an item no loader names; it is ignored):

``--format dialoguernn``
  - IEMOCAP, 9 items (``IEMOCAP_features.pkl``)::

        videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, videoSentence,
        trainVid, testVid

    declare-lab/conv-emotion ``DialogueRNN/dataloader.py`` and ``DialogueGCN/dataloader.py``
    (``IEMOCAPDataset``), hujingwen6666/MMGCN ``dataloader.py`` (``IEMOCAPDataset``).
  - MELD, 9 items, no visual features (``MELD_features_raw.pkl``)::

        videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoSentence, trainVid,
        testVid, videoSentiments

    declare-lab/conv-emotion ``DialogueGCN/dataloader.py`` (``MELDDataset``: item 3 is
    ``videoLabelsEmotion``, item 9 ``videoLabelsSentiment``). ``DialogueRNN/dataloader.py`` reads
    the same 9 items.
  - MELD, 10 items (``MELD_features_raw1.pkl``)::

        videoIDs, videoSpeakers, videoLabels, videoText, videoAudio, videoVisual, videoSentence,
        trainVid, testVid, _

    hujingwen6666/MMGCN ``dataloader.py`` (``MELDDataset``).

``--format sdt`` (four RoBERTa layers per utterance)
  - IEMOCAP, 12 items (``iemocap_multimodal_features.pkl``)::

        videoIDs, videoSpeakers, videoLabels, roberta1, roberta2, roberta3, roberta4,
        videoAudio, videoVisual, videoSentence, trainVid, testVid

    butterfliesss/SDT ``dataloader.py`` (``IEMOCAPDataset``, which calls roberta1 ``videoText``);
    the same order in lijfrank-open/GraphSmile ``dataloader.py`` (``IEMOCAPDataset_BERT``,
    ``videoText0..3``).
  - MELD, 13 items (``meld_multimodal_features.pkl``): the 12 above, then ``_``.
    butterfliesss/SDT ``dataloader.py`` (``MELDDataset``).
  - MELD, 14 items::

        videoIDs, videoSpeakers, videoLabels, videoSentiments, roberta1, roberta2, roberta3,
        roberta4, videoAudio, videoVisual, videoSentence, trainVid, testVid, _

    lijfrank-open/GraphSmile ``dataloader.py`` (``MELDDataset_BERT``).

roberta1..roberta4 are COSMIC's RoBERTa [CLS] features of the last four hidden layers, LAST LAYER
FIRST (declare-lab/conv-emotion ``COSMIC/feature-extraction/roberta_feature_extract_*.py``:
``roberta1 = feat[-1]`` ... ``roberta4 = feat[-4]``). ``--text-layers`` chooses the text feature:
``mean`` (default; ``(r1 + r2 + r3 + r4) / 4`` in float32, in that order: COSMIC's default
``--mode1 2``), ``concat`` (``[r1, r2, r3, r4]``, 4x the width: COSMIC's ``--mode1 0``) or
``last`` (``r1`` alone: what SDT's model reads, and GraphSmile's default ``--textf_mode textf0``;
use it to reproduce those two papers).

Not supported: COSMIC's text-only pickles (speakers, labels, roberta1..4, sentences, trainIds,
testIds, validIds), and GraphSmile's 4-class IEMOCAP pickle (``IEMOCAPDataset_BERT4``), which has
the 9-item IEMOCAP shape but other labels: imported as ``dialoguernn`` it would be read in the
6-class order (its summary would show classes 4 and 5 empty).

How the pickle becomes a manifest
---------------------------------
- Loading: always ``pickle.load(f, encoding="latin1")``, which Python-2 pickles need (their str
  and numpy buffers) and which leaves Python-3 pickles unchanged.
- Labels: the papers' integer orders, which are ours. IEMOCAP: hap 0, sad 1, neu 2, ang 3, exc 4,
  fru 5 (conv-emotion ``DialogueRNN/dataloader.py``); MELD: neutral 0, surprise 1, fear 2,
  sadness 3, joy 4, disgust 5, anger 6 (``DialogueGCN/dataloader.py``, GraphSmile
  ``MELDDataset_BERT``). A label that is not an integer in range is EXCLUDED with its reason.
  ``label_policy`` is ``imported-<format>``.
- Ids: ``dialogue_id = str(key)``; ``turn_index = i`` (the utterance's position in the pickle's
  lists, so exclusions leave gaps); ``utterance_id = f"{dialogue_id}_{i}"``; the pickle's own
  ``videoIDs`` entry is kept in ``attributes["pickle_id"]`` (``videoSentiments``, where the
  layout names it, in ``attributes["sentiment_index"]``).
- Speakers: IEMOCAP pickles hold ``'M'``/``'F'``, kept as given. MELD pickles hold one-hot vectors
  (9 speakers); the speaker is the index of the 1 as a string ("0".."8"), also in
  ``attributes["speaker_index"]``; a vector that is not one-hot is flagged
  ``speaker_not_one_hot`` and gets its argmax ("unknown" if all zero). A speaker of the other
  corpus's kind is an error (it means ``--corpus`` is wrong).
- Text: ``videoSentence`` verbatim (bytes decoded as UTF-8, else latin-1). Media paths and times
  are None (there is no raw tree); ``has_text`` / ``has_audio`` / ``has_video`` say whether the
  utterance has a finite text / audio / visual vector.
- Splits: ``testVid`` -> test. The supported files have no dev list, so dev is carved out of
  ``trainVid`` deterministically: the ids sorted (integers numerically, then strings), shuffled
  with ``random.Random(seed)``, and the first ``int(dev_fraction * n)`` taken as dev (``int`` as
  the papers' ``get_train_valid_sampler``, which however slices the loader's unshuffled order:
  a set's order for IEMOCAP, which changes with Python's string hashing, so no paper's dev can be
  reproduced exactly). The rule is written to ``summary.json``'s ``split_rule``. Dialogues in
  neither list are listed under ``ignored``.
- Anomalies: a feature vector with NaN/inf (or, with ``--dtype float16``, beyond float16's range)
  is stored as MISSING with the reason, and the utterance is flagged ``nonfinite_<modality>``
  (``float16_overflow_<modality>``). Errors (one line, naming the dialogue and the lists): a file
  that is not a pickle, a tuple length of no supported layout (with a hint when it fits the other
  format), a split's dialogue missing from a dict, per-utterance lists of different lengths in one
  dialogue, a vector whose shape differs from the rest of its modality, a dialogue in both splits.

Output (``--out DIR``)
----------------------
``DIR/prepared/<corpus>/`` (``manifest.parquet`` + ``summary.json`` with the metadata keys of
``mer prepare``: ``raw_root`` = the pickle's path, ``raw_tree_sha256`` = the pickle's sha256) and
``DIR/features/<corpus>/{text,audio,face}/`` (face = the visual features; absent when the layout
has none), each a feature store in manifest order with ``extractor = "import:<format>"``,
``extractor_version = "1"``, ``model_id`` = the pickle's file name, ``model_sha256`` = its
sha256, ``manifest_sha256`` = the written manifest's, ``params`` = {format, layout, fields,
text_layers}. Values are stored as float32 by default, which is exactly what every paper's loader
feeds its model (``torch.FloatTensor``); ``--dtype float16`` halves the size.

Everything is written to temporary folders beside its targets first (``pipeline.core.atomic``'s
``atomic_output_dir``: ``DIR/features/.<corpus>.*.tmp`` and ``DIR/prepared/.<corpus>.*.tmp``); only
when all of it is written are ``features/<corpus>`` and then ``prepared/<corpus>`` renamed into place
(replacing an earlier import as a whole), so a failed import leaves the previous one untouched.
Each carries the marker of ``pipeline.core.outputs`` (stage ``import-features``; every store in
``features/<corpus>`` too). Folders there that ``mer prepare`` or ``mer extract`` or no ``mer`` stage
made, or that hold the pickle, are never replaced: the import refuses instead, checked before
anything is written and again just before the renames.
"""

from __future__ import annotations

import json
import pickle
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import __version__
from pipeline.core.atomic import atomic_output_dir
from pipeline.core.locks import output_locks
from pipeline.core.outputs import check_output
from pipeline.core.errors import PipelineError, one_line
from pipeline.core.fingerprint import Fingerprint, sha256_file
from pipeline.core.params import MODALITIES
from pipeline.formats.manifest import (
    MANIFEST_FILE,
    SPLITS,
    CorpusReadResult,
    Exclusion,
    Utterance,
    build_summary,
    manifest_metadata,
    read_manifest,
    record_raw_root,
    write_manifest,
    write_summary_and_report,
)

STAGE = "import-features"  # the `mer` subcommand, named by the outputs' markers
FORMATS = ("dialoguernn", "sdt")
CORPORA = ("iemocap", "meld")
TEXT_LAYER_MODES = ("mean", "concat", "last")
DTYPES = ("float32", "float16")
EXTRACTOR_VERSION = "1"
SHARD_SIZE = 256
_HAS_FIELD = {"text": "has_text", "audio": "has_audio", "face": "has_video"}
_ROBERTA = ("roberta1", "roberta2", "roberta3", "roberta4")
# the papers' label orders (see the module docstring); equal to our corpora's
LABEL_NAMES = {
    "iemocap": ["hap", "sad", "neu", "ang", "exc", "fru"],
    "meld": ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"],
}
_SPLIT_FIELDS = ("trainVid", "testVid")
_IGNORED = "_"


@dataclass(frozen=True)
class Layout:
    """One published tuple order: item names in order ("_" = ignored) and where it comes from."""

    format: str
    corpus: str
    fields: tuple[str, ...]
    source: str

    @property
    def name(self) -> str:
        return f"{self.format}-{self.corpus}-{len(self.fields)}"

    def modality_fields(self) -> dict[str, tuple[str, ...]]:
        """modality -> the tuple items it is built from (only modalities the layout has)."""
        wanted = {"text": ("videoText", *_ROBERTA), "audio": ("videoAudio",), "face": ("videoVisual",)}
        found = {m: tuple(f for f in self.fields if f in names) for m, names in wanted.items()}
        return {m: fields for m, fields in found.items() if fields}

    @property
    def per_utterance_fields(self) -> tuple[str, ...]:
        return tuple(f for f in self.fields if f not in _SPLIT_FIELDS and f != _IGNORED)


_DRNN_IEMOCAP = (
    "videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoVisual",
    "videoSentence", "trainVid", "testVid",
)
_SDT_IEMOCAP = (
    "videoIDs", "videoSpeakers", "videoLabels", *_ROBERTA, "videoAudio", "videoVisual",
    "videoSentence", "trainVid", "testVid",
)
LAYOUTS: tuple[Layout, ...] = (
    Layout(
        "dialoguernn", "iemocap", _DRNN_IEMOCAP,
        "declare-lab/conv-emotion DialogueRNN/dataloader.py, DialogueGCN/dataloader.py; "
        "hujingwen6666/MMGCN dataloader.py (IEMOCAPDataset, IEMOCAP_features.pkl)",
    ),
    Layout(
        "dialoguernn", "meld",
        ("videoIDs", "videoSpeakers", "videoLabels", "videoText", "videoAudio", "videoSentence",
         "trainVid", "testVid", "videoSentiments"),
        "declare-lab/conv-emotion DialogueGCN/dataloader.py (MELDDataset, MELD_features_raw.pkl)",
    ),
    Layout(
        "dialoguernn", "meld", (*_DRNN_IEMOCAP, _IGNORED),
        "hujingwen6666/MMGCN dataloader.py (MELDDataset, MELD_features_raw1.pkl)",
    ),
    Layout(
        "sdt", "iemocap", _SDT_IEMOCAP,
        "butterfliesss/SDT dataloader.py (IEMOCAPDataset, iemocap_multimodal_features.pkl); "
        "lijfrank-open/GraphSmile dataloader.py (IEMOCAPDataset_BERT)",
    ),
    Layout(
        "sdt", "meld", (*_SDT_IEMOCAP, _IGNORED),
        "butterfliesss/SDT dataloader.py (MELDDataset, meld_multimodal_features.pkl)",
    ),
    Layout(
        "sdt", "meld",
        ("videoIDs", "videoSpeakers", "videoLabels", "videoSentiments", *_ROBERTA, "videoAudio",
         "videoVisual", "videoSentence", "trainVid", "testVid", _IGNORED),
        "lijfrank-open/GraphSmile dataloader.py (MELDDataset_BERT)",
    ),
)


# ----------------------------------------------------------------------------- loading


def load_pickle(path: Path) -> Any:
    """Unpickle with encoding="latin1" (Python-2 pickles need it). Runs the file's code: trust it."""
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except Exception as exc:  # unpickling can raise almost anything for a file that is not one
        raise PipelineError(f"{path}: not a readable pickle ({type(exc).__name__}: {one_line(exc)})") from None


def select_layout(obj: Any, fmt: str, corpus: str, path: Path) -> Layout:
    """The layout of (format, corpus) with the pickle's number of items, or a PipelineError with a hint."""
    if not isinstance(obj, (tuple, list)):
        raise PipelineError(
            f"{path}: the pickle holds a {type(obj).__name__}, not the tuple of a {fmt} feature file"
        )
    n = len(obj)
    for layout in LAYOUTS:
        if (layout.format, layout.corpus, len(layout.fields)) == (fmt, corpus, n):
            return layout
    expected = sorted({len(l.fields) for l in LAYOUTS if (l.format, l.corpus) == (fmt, corpus)})
    message = (
        f"{path}: a tuple of {n} items is no {fmt} layout for {corpus} "
        f"(expected {' or '.join(map(str, expected))} items)"
    )
    others = [l for l in LAYOUTS if len(l.fields) == n and (l.format, l.corpus) != (fmt, corpus)]
    if others:
        hints = ", ".join(f"--format {l.format} --corpus {l.corpus}" for l in others)
        message += f"; {n} items is the layout of {hints}"
    raise PipelineError(message)


# ----------------------------------------------------------------------------- splits


def _id_sort_key(key: Any) -> tuple:
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return (0, int(key), "")
    return (1, 0, str(key))


def carve_dev(train_ids: Iterable[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(train, dev): ids sorted, shuffled with random.Random(seed), the first int(fraction * n) -> dev.

    Both lists come back in sorted order.
    """
    ordered = sorted(train_ids, key=_id_sort_key)
    shuffled = list(ordered)
    random.Random(seed).shuffle(shuffled)
    dev = set(map(_id_sort_key, shuffled[: int(fraction * len(ordered))]))
    return [k for k in ordered if _id_sort_key(k) not in dev], [k for k in ordered if _id_sort_key(k) in dev]


def _split_rule(name: str, fraction: float, seed: int, n_train_vid: int, n_dev: int) -> str:
    return (
        f"imported from {name}: testVid -> test; trainVid ({n_train_vid} dialogues) sorted "
        f"(integer ids numerically, then string ids), shuffled with random.Random({seed}), "
        f"the first int({fraction} * {n_train_vid}) = {n_dev} -> dev, the rest -> train"
    )


def _split_list(items: Mapping[str, Any], field: str, path: Path) -> list[Any]:
    value = items[field]
    if isinstance(value, Mapping):
        value = list(value.keys())
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise PipelineError(f"{path}: {field} must be a list of dialogue ids, got {type(value).__name__}")
    ids = [k.item() if isinstance(k, np.generic) else k for k in value]
    counts = Counter(str(k) for k in ids)
    twice = sorted(k for k, n in counts.items() if n > 1)
    if twice:
        raise PipelineError(f"{path}: {field} lists dialogue {twice[0]!r} more than once")
    return ids


# ----------------------------------------------------------------------------- per-utterance values


def _json_safe(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    return str(value)


def _label(value: Any, n_classes: int) -> tuple[int | None, str | None]:
    """(label index, None) or (None, reason it is excluded)."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None, f"label {value!r} is not an integer class index"
    if not 0 <= value < n_classes:
        return None, f"label {value} outside the {n_classes} classes 0..{n_classes - 1}"
    return value, None


@dataclass
class _Speaker:
    name: str
    index: int | None = None
    flag: str | None = None


def _speaker(value: Any, corpus: str, where: str) -> _Speaker:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if corpus == "iemocap":
        if not isinstance(value, str):
            raise PipelineError(
                f"{where}: speaker {value!r} is not a string; IEMOCAP pickles hold 'M'/'F' "
                "(one-hot speakers are MELD's): is --corpus right?"
            )
        return _Speaker(value)
    if isinstance(value, str):
        raise PipelineError(
            f"{where}: speaker {value!r} is a string; MELD pickles hold one-hot speaker vectors "
            "('M'/'F' are IEMOCAP's): is --corpus right?"
        )
    try:
        vector = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{where}: speaker is not a one-hot vector ({one_line(exc)})") from None
    if vector.ndim != 1 or vector.size == 0:
        raise PipelineError(f"{where}: speaker has shape {tuple(vector.shape)}, not a one-hot vector")
    index = int(np.argmax(vector))
    one_hot = bool(np.isin(vector, (0.0, 1.0)).all()) and vector.sum() == 1
    if one_hot:
        return _Speaker(str(index), index)
    if not np.isfinite(vector).all() or vector.max() <= 0:
        return _Speaker("unknown", None, "speaker_not_one_hot")
    return _Speaker(str(index), index, "speaker_not_one_hot")


def _vector(value: Any, where: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{where} is not a numeric vector ({one_line(exc)})") from None
    if array.ndim == 0:
        raise PipelineError(f"{where} is a single value ({value!r}), not a feature vector")
    return np.ascontiguousarray(array)


class _Shapes:
    """The shape of each tuple item's vectors, fixed by the first one seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.first: dict[str, tuple[tuple[int, ...], str]] = {}

    def check(self, field: str, array: np.ndarray, dialogue: str, index: int) -> None:
        shape = tuple(array.shape)
        if field not in self.first:
            self.first[field] = (shape, dialogue)
            return
        want, where = self.first[field]
        if shape != want:
            raise PipelineError(
                f"{self.path}: dialogue {dialogue!r}, utterance {index}: {field} vector has shape {shape}, "
                f"but the vectors of dialogue {where!r} have {want}; one modality must have one dimension"
            )


def _combine_text(layers: list[np.ndarray], mode: str) -> np.ndarray:
    if len(layers) == 1 or mode == "last":
        return layers[0]
    if mode == "concat":
        return np.concatenate(layers)
    total = layers[0].copy()
    for layer in layers[1:]:
        total = total + layer  # float32, left to right: (((r1 + r2) + r3) + r4) / 4 as COSMIC
    return total / np.float32(4)


# ----------------------------------------------------------------------------- reading


@dataclass
class _Imported:
    result: CorpusReadResult
    features: dict[str, dict[str, np.ndarray | str]]  # modality -> utterance id -> vector or reason
    dims: dict[str, list[int] | None]
    split_of_dialogue: dict[str, str]
    seen_per_split: Counter


def _dicts(items: Mapping[str, Any], layout: Layout, path: Path) -> None:
    for field in layout.per_utterance_fields:
        if not isinstance(items[field], Mapping):
            index = layout.fields.index(field) + 1
            raise PipelineError(
                f"{path}: item {index} ({field}) must be a dict keyed by dialogue id, "
                f"got {type(items[field]).__name__}; read as the {layout.name} layout: "
                "are --format and --corpus right?"
            )


def _read(
    items: Mapping[str, Any], layout: Layout, path: Path, pickle_sha: str,
    fraction: float, seed: int, text_layers: str, dtype: str,
) -> _Imported:
    corpus = layout.corpus
    labels = LABEL_NAMES[corpus]
    _dicts(items, layout, path)
    train_vid = _split_list(items, "trainVid", path)
    test_vid = _split_list(items, "testVid", path)
    if not train_vid and not test_vid:
        raise PipelineError(f"{path}: trainVid and testVid are both empty")
    overlap = sorted({str(k) for k in train_vid} & {str(k) for k in test_vid})
    if overlap:
        raise PipelineError(f"{path}: dialogue {overlap[0]!r} is in both trainVid and testVid")
    train, dev = carve_dev(train_vid, fraction, seed)
    test = sorted(test_vid, key=_id_sort_key)
    order = [("train", k) for k in train] + [("dev", k) for k in dev] + [("test", k) for k in test]

    fingerprint = Fingerprint(role="features", path=path.name, size=path.stat().st_size, sha256=pickle_sha)
    result = CorpusReadResult(
        corpus=corpus,
        label_policy=f"imported-{layout.format}",
        label_names=list(labels),
        utterances=[],
        raw_files=[fingerprint],
        split_rule=_split_rule(path.name, fraction, seed, len(train_vid), len(dev)),
    )
    for index, field in enumerate(layout.fields, start=1):
        if field == _IGNORED:
            result.ignore("tuple_items", f"item {index} (unnamed in every loader)")
    in_splits = {str(k) for k in train_vid} | {str(k) for k in test_vid}
    for key in sorted(items["videoLabels"], key=_id_sort_key):
        if str(key) not in in_splits:
            result.ignore("dialogues_in_no_split", str(key))

    modality_fields = layout.modality_fields()
    features: dict[str, dict[str, np.ndarray | str]] = {m: {} for m in modality_fields}
    dims: dict[str, list[int] | None] = {m: None for m in modality_fields}
    shapes = _Shapes(path)
    split_of_dialogue: dict[str, str] = {}
    seen: Counter = Counter()
    dialogue_ids: dict[str, Any] = {}
    for split, key in order:
        dialogue = str(key)
        if dialogue in dialogue_ids:
            raise PipelineError(
                f"{path}: dialogue ids {dialogue_ids[dialogue]!r} and {key!r} both become {dialogue!r} as text"
            )
        dialogue_ids[dialogue] = key
        split_of_dialogue[dialogue] = split
        lists = _dialogue_lists(items, layout, key, dialogue, path)
        n = len(lists["videoLabels"])
        seen[split] += n
        result.utterances_seen += n
        for i in range(n):
            utt_id = f"{dialogue}_{i}"
            where = f"{path}: dialogue {dialogue!r}, utterance {i}"
            vectors = {
                m: [(f, _vector(lists[f][i], f"{where}: {f}")) for f in fields] for m, fields in modality_fields.items()
            }
            for pairs in vectors.values():
                for field, array in pairs:
                    shapes.check(field, array, dialogue, i)
            speaker = _speaker(lists["videoSpeakers"][i], corpus, where)
            label_index, reason = _label(lists["videoLabels"][i], len(labels))
            if reason is not None:
                result.excluded.append(Exclusion(split, utt_id, reason, f"{path.name}:videoLabels[{dialogue!r}][{i}]"))
                continue
            utt = Utterance(
                corpus=corpus, split=split, dialogue_id=dialogue, turn_index=i, utterance_id=utt_id,
                speaker=speaker.name, text=_text(lists["videoSentence"][i]),
                label=labels[label_index], label_index=label_index,
                start_s=None, end_s=None, audio_path=None, audio_start_s=None, audio_end_s=None,
                video_path=None, video_start_s=None, video_end_s=None, video_region="full",
                has_text=False, has_audio=False, has_video=False,
                sources=[fingerprint],
                attributes={"pickle_id": _json_safe(lists["videoIDs"][i])},
            )
            if speaker.index is not None:
                utt.attributes["speaker_index"] = speaker.index
            if speaker.flag:
                utt.flag(speaker.flag)
            if "videoSentiments" in lists:
                utt.attributes["sentiment_index"] = _json_safe(lists["videoSentiments"][i])
            for modality, pairs in vectors.items():
                stored = _stored_value(modality, pairs, text_layers, dtype, utt)
                features[modality][utt_id] = stored
                if isinstance(stored, np.ndarray):
                    setattr(utt, _HAS_FIELD[modality], True)
                    dims[modality] = list(stored.shape)
            result.utterances.append(utt)
    if not result.utterances:
        raise PipelineError(f"{path}: no utterance to keep (every label was excluded)")
    return _Imported(result, features, dims, split_of_dialogue, seen)


def _dialogue_lists(items: Mapping[str, Any], layout: Layout, key: Any, dialogue: str, path: Path) -> dict[str, Any]:
    lists: dict[str, Any] = {}
    for field in layout.per_utterance_fields:
        table = items[field]
        if key not in table:
            raise PipelineError(f"{path}: dialogue {dialogue!r} is in a split list but missing from {field}")
        value = table[key]
        if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__") or (
            isinstance(value, np.ndarray) and value.ndim == 0
        ):
            raise PipelineError(
                f"{path}: dialogue {dialogue!r}: {field} must be a per-utterance list, got {type(value).__name__}"
            )
        lists[field] = value
    lengths = {field: len(value) for field, value in lists.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{field} {n}" for field, n in lengths.items())
        raise PipelineError(f"{path}: dialogue {dialogue!r}: per-utterance lists differ in length ({listed})")
    return lists


def _stored_value(
    modality: str, pairs: list[tuple[str, np.ndarray]], text_layers: str, dtype: str, utt: Utterance
) -> np.ndarray | str:
    """The vector to store, or the reason it is missing (the utterance is flagged)."""
    bad = [(field, int((~np.isfinite(a)).sum()), a.size) for field, a in pairs if not np.isfinite(a).all()]
    if bad:
        utt.flag(f"nonfinite_{modality}")
        return "; ".join(f"{field} vector has {k} NaN/inf of {size} values" for field, k, size in bad)
    vector = _combine_text([a for _, a in pairs], text_layers) if modality == "text" else pairs[0][1]
    with np.errstate(over="ignore"):
        overflows = dtype == "float16" and not np.isfinite(vector.astype(np.float16)).all()
    if overflows:
        utt.flag(f"float16_overflow_{modality}")
        peak = float(np.abs(vector).max())
        return f"{modality} vector overflows float16 (largest |value| {peak:g}); import with --dtype float32"
    return vector


# ----------------------------------------------------------------------------- writing


def _check_replaceable(prepared: Path, features: Path, pickle_path: Path) -> None:
    """Refuse to replace folders that another stage (`mer prepare`, `mer extract`) or no `mer` stage
    made, or that hold the pickle (`pipeline.core.outputs`); an earlier import is replaced."""
    for folder, legacy in ((prepared, _imported_manifest), (features, _imported_stores)):
        check_output(folder, STAGE, [("PICKLE", pickle_path)], subject="this output of --out", legacy=legacy)


def _imported_manifest(prepared: Path) -> bool:
    """An import written before outputs carried a marker: its manifest's label policy says so."""
    manifest = prepared / MANIFEST_FILE
    return manifest.is_file() and manifest_metadata(manifest).get("label_policy", "").startswith("imported-")


def _imported_stores(features: Path) -> bool:
    """Stores imported before outputs carried a marker: every entry is a store of `import:<format>`."""
    from pipeline.formats.feature_store import INDEX_FILE  # torch: loaded only when there is a store to check

    for child in sorted(features.iterdir()):
        index = child / INDEX_FILE
        extractor = ""
        if index.is_file():
            store = json.loads(index.read_text(encoding="utf-8")).get("store", {})
            extractor = str(store.get("extractor", ""))
        if not extractor.startswith("import:"):
            return False
    return True


def _write_stores(
    prepared: Path, features: Path, imported: _Imported, layout: Layout, pickle_path: Path, pickle_sha: str,
    text_layers: str | None, dtype: str,
) -> dict[str, dict[str, Any]]:
    """One store per modality of the layout in `features`, in the order of the manifest in `prepared`."""
    import torch

    from pipeline.formats.feature_store import FeatureStoreWriter, StoreMetadata

    ids = [row["utterance_id"] for row in read_manifest(prepared / MANIFEST_FILE)]
    manifest_sha = sha256_file(prepared / MANIFEST_FILE)
    reports = {}
    for modality, fields in layout.modality_fields().items():
        values = imported.features[modality]
        metadata = StoreMetadata(
            corpus=layout.corpus, modality=modality, extractor=f"import:{layout.format}",
            extractor_version=EXTRACTOR_VERSION, model_id=pickle_path.name, model_sha256=pickle_sha,
            manifest_sha256=manifest_sha,
            params={
                "format": layout.format, "layout": layout.name, "fields": list(fields),
                "text_layers": text_layers if modality == "text" else None,
            },
        )
        folder = features / modality
        torch_dtype = torch.float32 if dtype == "float32" else torch.float16
        with FeatureStoreWriter(folder, metadata, ids, SHARD_SIZE, torch_dtype, stage=STAGE) as writer:
            for k in writer.pending_shards():
                shard = writer.shard_ids(k)
                tensors = {u: torch.from_numpy(values[u]) for u in shard if not isinstance(values[u], str)}
                flags = {u: values[u] for u in shard if isinstance(values[u], str)}
                writer.write_shard(k, tensors, flags)
            reports[modality] = writer.finalize()
    return reports


def import_features(
    pickle_path: Path | str,
    fmt: str,
    corpus: str,
    out_dir: Path | str,
    dev_fraction: float = 0.1,
    seed: int = 0,
    text_layers: str | None = None,
    dtype: str = "float32",
    wait_s: float = 0.0,
) -> dict[str, Any]:
    """Convert one feature pickle; returns the summary (also written to prepared/<corpus>/summary.json).

    After the output checks the run holds the locks of both outputs, prepared/<corpus> then
    features/<corpus> (`pipeline.core.locks`, the same locks `mer prepare` and another import take),
    waiting up to `wait_s` seconds for each."""
    pickle_path, out_dir = Path(pickle_path), Path(out_dir)
    if fmt not in FORMATS:
        raise PipelineError(f"unknown feature pickle format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if corpus not in CORPORA:
        raise PipelineError(f"unknown corpus {corpus!r}; choose one of {', '.join(CORPORA)}")
    if not 0.0 <= dev_fraction < 1.0:
        raise PipelineError(f"--dev-fraction must be in [0, 1), got {dev_fraction}")
    if dtype not in DTYPES:
        raise PipelineError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if fmt == "sdt":
        text_layers = text_layers or "mean"
        if text_layers not in TEXT_LAYER_MODES:
            raise PipelineError(f"unknown --text-layers {text_layers!r}; choose one of {', '.join(TEXT_LAYER_MODES)}")
    elif text_layers is not None:
        raise PipelineError(f"--text-layers applies to --format sdt only (a {fmt} pickle has one text vector)")
    if not pickle_path.is_file():
        raise PipelineError(f"{pickle_path}: feature pickle does not exist")
    # a folder (or none yet) that gets prepared/ and features/; those two get the full check
    check_output(out_dir, STAGE, [("PICKLE", pickle_path)], container=True)
    prepared_final = out_dir / "prepared" / corpus
    features_final = out_dir / "features" / corpus
    _check_replaceable(prepared_final, features_final, pickle_path)
    with output_locks([prepared_final, features_final], STAGE, wait_s):
        return _import(pickle_path, fmt, corpus, prepared_final, features_final, dev_fraction, seed, text_layers,
                       dtype)


def _import(
    pickle_path: Path, fmt: str, corpus: str, prepared_final: Path, features_final: Path, dev_fraction: float,
    seed: int, text_layers: str | None, dtype: str,
) -> dict[str, Any]:
    """`import_features` after its checks, with the locks of both outputs held."""
    pickle_sha = sha256_file(pickle_path)
    obj = load_pickle(pickle_path)
    layout = select_layout(obj, fmt, corpus, pickle_path)
    items = dict(zip(layout.fields, obj))
    imported = _read(items, layout, pickle_path, pickle_sha, dev_fraction, seed, text_layers or "last", dtype)
    result = imported.result

    summary = build_summary(result, record_raw_root(pickle_path, prepared_final))
    summary["raw_tree_sha256"] = pickle_sha
    summary["pipeline_version"] = __version__
    metadata = {
        "corpus": corpus,
        "label_policy": result.label_policy,
        "label_map": json.dumps(summary["label_map"]),
        "raw_root": summary["raw_root"],
        "raw_tree_sha256": pickle_sha,
        "pipeline_version": __version__,
    }
    # Both folders are written in full before either is renamed into place: leaving the inner block
    # publishes features/<corpus>, then leaving the outer one prepared/<corpus>; an error anywhere in
    # the blocks removes both temporary folders and leaves an earlier import untouched.
    with atomic_output_dir(prepared_final, STAGE, legacy=_imported_manifest) as prepared_tmp:
        write_manifest(result.utterances, prepared_tmp / MANIFEST_FILE, metadata)
        with atomic_output_dir(features_final, STAGE, legacy=_imported_stores) as features_tmp:
            reports = _write_stores(prepared_tmp, features_tmp, imported, layout, pickle_path, pickle_sha,
                                    text_layers, dtype)
            summary["import"] = _import_section(imported, layout, pickle_path, pickle_sha, reports,
                                                fraction=dev_fraction, seed=seed, text_layers=text_layers,
                                                dtype=dtype)
            write_summary_and_report(prepared_tmp, result, summary, stage="import-features")
            _check_replaceable(prepared_final, features_final, pickle_path)  # nothing else appeared meanwhile
    return summary


def _import_section(
    imported: _Imported, layout: Layout, path: Path, sha: str, reports: dict[str, dict[str, Any]], *,
    fraction: float, seed: int, text_layers: str | None, dtype: str,
) -> dict[str, Any]:
    result = imported.result
    splits: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        kept = [u for u in result.utterances if u.split == split]
        splits[split] = {
            "dialogues": sum(1 for s in imported.split_of_dialogue.values() if s == split),
            "utterances_in": imported.seen_per_split[split],
            "utterances_out": len(kept),
            "excluded": sum(1 for e in result.excluded if e.split == split),
            "flagged": sum(1 for u in kept if u.flags),
        }
    modalities: dict[str, Any] = {}
    for modality, fields in layout.modality_fields().items():
        values = imported.features[modality]
        per_split = {}
        for split in SPLITS:
            ids = [u.utterance_id for u in result.utterances if u.split == split]
            stored = sum(1 for u in ids if not isinstance(values[u], str))
            per_split[split] = {"in": len(ids), "out": stored, "missing": len(ids) - stored}
        reasons = Counter(v for v in values.values() if isinstance(v, str))
        modalities[modality] = {
            "fields": list(fields),
            "dim": imported.dims[modality],
            "splits": per_split,
            "counts": reports[modality]["counts"],
            "missing_reasons": dict(sorted(reasons.items())),
        }
    return {
        "format": layout.format,
        "layout": layout.name,
        "layout_source": layout.source,
        "tuple_items": list(layout.fields),
        "pickle": str(path.resolve()),
        "pickle_sha256": sha,
        "text_layers": text_layers,
        "dtype": dtype,
        "dev_fraction": fraction,
        "seed": seed,
        "splits": splits,
        "modalities": modalities,
        "absent_modalities": [m for m in MODALITIES if m not in modalities],
    }


def describe(summary: dict[str, Any], out_dir: Path | str | None = None) -> str:
    """The terminal report: counts in / out / excluded / flagged per split, stored / missing per modality."""
    info = summary["import"]
    counts = summary["counts"]
    lines = [
        f"{summary['corpus']} ({info['layout']}, {info['dtype']}"
        + (f", text layers: {info['text_layers']}" if info["text_layers"] else "")
        + f"): {counts['utterances_seen']} utterances in, {counts['utterances_out']} kept, "
        f"{counts['excluded']} excluded, {counts['flagged']} flagged"
    ]
    for split, s in info["splits"].items():
        labels = summary["splits"].get(split, {}).get("labels", {})
        label_text = ", ".join(f"{k} {v}" for k, v in labels.items())
        lines.append(
            f"  {split}: {s['dialogues']} dialogues, {s['utterances_in']} utterances in, {s['utterances_out']} kept, "
            f"{s['excluded']} excluded, {s['flagged']} flagged" + (f" ({label_text})" if label_text else "")
        )
    for modality, m in info["modalities"].items():
        per_split = ", ".join(f"{split} {v['out']}/{v['in']}" for split, v in m["splits"].items())
        lines.append(f"  {modality} {m['dim']} from {'+'.join(m['fields'])}: stored {per_split}")
        for reason, n in m["missing_reasons"].items():
            lines.append(f"    missing {n} x {reason}")
    for modality in info["absent_modalities"]:
        lines.append(f"  {modality}: not in this layout")
    for reason, n in summary["exclusion_counts"].items():
        lines.append(f"  excluded {n} x {reason}")
    for flag, n in summary["flag_counts"].items():
        lines.append(f"  flagged {n} x {flag}")
    if out_dir is not None:
        corpus = summary["corpus"]
        lines.append(f"written to {Path(out_dir) / 'prepared' / corpus} and {Path(out_dir) / 'features' / corpus}")
    return "\n".join(lines)
