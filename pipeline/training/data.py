"""Training data: one corpus (a manifest and its feature stores) loaded into memory once, served as
padded dialogue batches (`model.batch.DialogueBatch`).

Rules (the trainer and the evaluator both load through `load_corpus`):

- **Inputs.** ``prepared`` holds ``manifest.parquet`` (from ``mer prepare`` or ``mer import-features``);
  ``features`` holds one feature store per modality, ``features/<modality>/``. Every store must
  have been built from exactly this manifest: its ``manifest_sha256`` must equal the manifest
  file's sha256, otherwise loading fails naming the store ("built from another manifest; rerun
  extraction"). Each stored feature must be one vector [D]; all of a store's vectors have one D.
- **Modalities.** The caller names the modalities to use. A named modality without a store folder
  (or whose store holds no feature at all, so its width is unknown) is dropped and reported in
  ``CorpusData.dropped``, unless ``require_all_modalities`` (the evaluator: the model needs them).
  An utterance that a store lacks (corrupt clip, no face...) has ``available = False`` and zeros.
- **Dialogues.** Utterances are grouped by ``dialogue_id`` (dialogues in manifest order), in
  ``turn_index`` order inside a dialogue. A dialogue in two splits, or an unknown split, is an error.
- **Labels.** ``label_map`` comes from the manifest's metadata. An utterance whose ``label_index`` is
  missing or outside the label map gets ``IGNORE_LABEL`` and is counted (``report[split]["unlabelled"]``).
- **Speakers.** One id per speaker *key*, built from the train split only (``SpeakerMap.build``):
  rule ``gender`` (IEMOCAP's default: the key is the part after the last ``_``, so ``Ses01_F`` -> ``F``;
  a session's two actors never recur in the test session, so actor ids would not generalise) or
  ``name`` (MELD's: the speaker string itself; a key seen fewer than ``min_count`` times in train is
  not given an id). Ids 1..K go to the kept keys by descending train count, then by key; id 0 means
  "other": a rare, unseen or empty speaker. The map is saved with every checkpoint and reused as is
  by the evaluator.
- **feature_shuffle** (alignment check ONLY): with a seed, each split's feature rows (and their
  availability) are permuted across that split's utterances, so every utterance gets some other
  utterance's features while labels and speakers stay. A model trained on that must fall to chance;
  it is recorded in every checkpoint and metrics file of such a run.

**Standardisation** (the trainer's `standardize`, on by default): every feature dimension is
z-scored with the mean and std of the train split's available utterances (`CorpusData.feature_stats`);
the statistics are saved with the checkpoint and reused by the evaluator. Extracted features differ
in scale by orders of magnitude (FaceNet embeddings are unit vectors, wav2vec2 states are not).

Everything is pre-tensorised: one flat [U, D] tensor per (split, modality) in the store's dtype, with
dialogue offsets; `SplitData.collate` only slices and pads.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from model.batch import IGNORE_LABEL, DialogueBatch
from pipeline.core.errors import PipelineError
from pipeline.formats.feature_store import INDEX_FILE, FeatureStoreReader
from pipeline.core.fingerprint import sha256_file
from pipeline.formats.manifest import (
    MANIFEST_FILE, RELEASE_SPLIT, SPLITS, apply_split, manifest_metadata, read_manifest,
)

SPEAKER_RULES = ("gender", "name")
OTHER_SPEAKER = 0


# --------------------------------------------------------------------------------------------------
# Speakers
# --------------------------------------------------------------------------------------------------


def default_speaker_rule(corpus: str) -> str:
    """IEMOCAP: the gender suffix (actors do not recur across sessions); any other corpus: the name."""
    return "gender" if corpus == "iemocap" else "name"


@dataclass(frozen=True)
class SpeakerMap:
    """Speaker string -> id; 0 is "other" (see the module docstring for the rule)."""

    rule: str
    min_count: int
    ids: dict[str, int]  # key -> id in 1..K

    @staticmethod
    def key_of(rule: str, speaker: str | None) -> str:
        speaker = (speaker or "").strip()
        if rule == "gender":
            return speaker.rsplit("_", 1)[-1]
        return speaker

    @classmethod
    def build(cls, rule: str, train_speakers: list[str | None], min_count: int = 1) -> SpeakerMap:
        if rule not in SPEAKER_RULES:
            raise PipelineError(f"unknown speaker rule {rule!r}; choose one of {', '.join(SPEAKER_RULES)} or auto")
        counts = Counter(cls.key_of(rule, s) for s in train_speakers)
        counts.pop("", None)
        kept = sorted((k for k, n in counts.items() if n >= min_count), key=lambda k: (-counts[k], k))
        return cls(rule=rule, min_count=min_count, ids={k: i + 1 for i, k in enumerate(kept)})

    def id(self, speaker: str | None) -> int:
        return self.ids.get(self.key_of(self.rule, speaker), OTHER_SPEAKER)

    @property
    def num_speakers(self) -> int:
        return len(self.ids) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "min_count": self.min_count, "other_id": OTHER_SPEAKER, "ids": dict(self.ids)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SpeakerMap:
        ids = {key: int(value) for key, value in values["ids"].items()}
        return cls(rule=values["rule"], min_count=int(values["min_count"]), ids=ids)


# --------------------------------------------------------------------------------------------------
# One split, pre-tensorised
# --------------------------------------------------------------------------------------------------


@dataclass
class SplitData:
    """The utterances of one split, flat and grouped by dialogue: dialogue i is rows offsets[i]:offsets[i+1]."""

    name: str
    dialogue_ids: list[str]
    offsets: list[int]
    utterance_ids: list[str]
    features: dict[str, torch.Tensor]  # modality -> [U, D_m] (zeros where unavailable)
    available: dict[str, torch.Tensor]  # modality -> bool [U]
    speakers: torch.Tensor  # long [U]
    labels: torch.Tensor  # long [U], IGNORE_LABEL where unlabelled

    def __len__(self) -> int:
        return len(self.dialogue_ids)

    @property
    def num_utterances(self) -> int:
        return len(self.utterance_ids)

    @property
    def lengths(self) -> list[int]:
        return [self.offsets[i + 1] - self.offsets[i] for i in range(len(self.dialogue_ids))]

    @property
    def dialogue_of_utterance(self) -> list[str]:
        return [d for i, d in enumerate(self.dialogue_ids) for _ in range(self.offsets[i + 1] - self.offsets[i])]

    def dialogue_index(self, first_utterance_id: str) -> int:
        """Which dialogue a batch row is, from its first utterance id (ids are unique in a corpus)."""
        if not hasattr(self, "_first_index"):
            self._first_index = {self.utterance_ids[self.offsets[i]]: i for i in range(len(self.dialogue_ids))}
        return self._first_index[first_utterance_id]

    def collate(self, indices: list[int]) -> DialogueBatch:
        """Dialogues `indices` padded to the longest: zeros, mask off, IGNORE_LABEL on padding."""
        lengths = [self.offsets[i + 1] - self.offsets[i] for i in indices]
        size, longest = len(indices), max(lengths, default=0)
        mask = torch.zeros(size, longest, dtype=torch.bool)
        labels = torch.full((size, longest), IGNORE_LABEL, dtype=torch.long)
        speakers = torch.zeros(size, longest, dtype=torch.long)
        features = {m: torch.zeros(size, longest, t.shape[1], dtype=torch.float32) for m, t in self.features.items()}
        available = {m: torch.zeros(size, longest, dtype=torch.bool) for m in self.available}
        ids = []
        for row, (i, n) in enumerate(zip(indices, lengths)):
            start, end = self.offsets[i], self.offsets[i + 1]
            mask[row, :n] = True
            labels[row, :n] = self.labels[start:end]
            speakers[row, :n] = self.speakers[start:end]
            for m in features:
                features[m][row, :n] = self.features[m][start:end]
                available[m][row, :n] = self.available[m][start:end]
            ids.append(self.utterance_ids[start:end])
        return DialogueBatch(features, available, speakers, mask, labels, ids)


class DialogueIndices(Dataset):
    """Item i is dialogue i's index; `SplitData.collate` builds the batch (no per-item work)."""

    def __init__(self, split: SplitData):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> int:
        return index


class DialogueBatchSampler(Sampler[list[int]]):
    """Batches of `batch_size` dialogues; every batch is full except possibly the LAST one.

    Training (`shuffle`): the order depends only on (seed, epoch), set with `set_epoch`, so a resumed
    run sees the same batches as a straight one. With `bucket`, pools of `pool_batches` batches of
    the shuffled order are sorted by length before cutting (less padding), then the full batches
    are shuffled. Evaluation (no shuffle): dialogues sorted by length (longest first), fixed.
    The partial batch stays last because accelerate's multi-process sharding (`even_batches`) and
    `gather_for_metrics` assume it.
    """

    def __init__(
        self, lengths: list[int], batch_size: int, shuffle: bool, seed: int = 0, bucket: bool = True, pool_batches: int = 8
    ):
        if batch_size < 1:
            raise PipelineError(f"batch_size must be at least 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.drop_last = False
        self.shuffle = shuffle
        self.seed = seed
        self.bucket = bucket
        self.pool_batches = pool_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def batches(self) -> list[list[int]]:
        n, size = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: (-self.lengths[i], i))
            return [order[k : k + size] for k in range(0, n, size)]
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n).tolist()
        if self.bucket:
            pool = size * self.pool_batches
            order = [i for k in range(0, n, pool) for i in sorted(order[k : k + pool], key=lambda i: self.lengths[i])]
        batches = [order[k : k + size] for k in range(0, n, size)]
        full = [b for b in batches if len(b) == size]
        partial = [b for b in batches if len(b) < size]
        return [full[i] for i in rng.permutation(len(full)).tolist()] + partial

    def __iter__(self):
        return iter(self.batches())


# --------------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------------


@dataclass
class CorpusData:
    corpus: str
    manifest_path: Path
    manifest_sha256: str
    label_policy: str
    label_names: list[str]
    speaker_map: SpeakerMap
    modalities: list[str]
    input_dims: dict[str, int]
    splits: dict[str, SplitData]
    stores: dict[str, dict[str, Any]]  # modality -> {"folder", "metadata", "index_sha256"}
    dropped: dict[str, str] = field(default_factory=dict)  # modality -> why it is not used
    report: dict[str, Any] = field(default_factory=dict)
    feature_shuffle: int | None = None

    def feature_stats(self) -> dict[str, torch.Tensor]:
        """Per-dimension mean and std of each modality over the train split's available utterances
        ("<modality>.mean", "<modality>.std"; a std below 1e-6 becomes 1, so constant dimensions stay 0)."""
        stats = {}
        train = self.splits["train"]
        for m in self.modalities:
            rows = train.features[m][train.available[m]].double()
            mean = rows.mean(0) if len(rows) else torch.zeros(self.input_dims[m], dtype=torch.float64)
            std = rows.std(0, unbiased=False) if len(rows) > 1 else torch.ones(self.input_dims[m], dtype=torch.float64)
            stats[f"{m}.mean"] = mean.float()
            stats[f"{m}.std"] = torch.where(std < 1e-6, torch.ones_like(std), std).float()
        return stats

    def standardize(self, stats: dict[str, torch.Tensor]) -> None:
        """z-score every split's features in place with `stats` (from `feature_stats` of the train split,
        or from a checkpoint); unavailable utterances stay all-zero. Features become float32."""
        for split in self.splits.values():
            for m in self.modalities:
                scaled = (split.features[m].float() - stats[f"{m}.mean"]) / stats[f"{m}.std"]
                split.features[m] = torch.where(split.available[m].unsqueeze(1), scaled, 0.0)

    def lineage(self) -> dict[str, Any]:
        """What a checkpoint records about its data (read by `mer lineage` and checked by the evaluator)."""
        return {
            "corpus": self.corpus,
            "manifest": str(self.manifest_path),
            "manifest_sha256": self.manifest_sha256,
            "label_policy": self.label_policy,
            "stores": self.stores,
            "dropped_modalities": self.dropped,
            "feature_shuffle": self.feature_shuffle,
        }

    def stage_report(self, stage: str, splits: Sequence[str] | None = None,
                     scored: dict[str, int] | None = None) -> dict[str, Any]:
        """The stage report (`pipeline.formats.stage_report`) of a train or evaluate run over `splits`.

        Every utterance of those splits goes in and comes out (as context in its dialogue, and with a
        prediction when evaluated); `scored` (split -> utterances with a prediction) lets the
        evaluator prove it. Flagged: no usable label (not scored), and each modality it lacks.
        """
        from pipeline.formats.stage_report import stage_counts

        names = [s for s in (splits or self.splits) if s in self.splits]
        n_in = sum(len(self.splits[s].utterance_ids) for s in names)
        n_out = n_in if scored is None else sum(scored.get(s, 0) for s in names)
        flagged = []
        for name in names:
            split = self.splits[name]
            for i, uid in enumerate(split.utterance_ids):
                reasons = ["unlabelled (not scored)"] if int(split.labels[i]) == IGNORE_LABEL else []
                reasons += [f"no {m} feature" for m in self.modalities if not bool(split.available[m][i])]
                if reasons:
                    flagged.append((uid, "; ".join(reasons)))
        # nothing is dropped here: a prediction count short of the input raises (a bug, never a report line)
        report = stage_counts(stage, self.corpus, n_in, n_out, dropped=[], flagged=flagged)
        report.update({"splits": {s: self.report["splits"][s] for s in names}, "modalities_not_used": self.dropped})
        return report

    def describe(self) -> str:
        lines = [f"{self.corpus}: modalities {', '.join(f'{m} ({self.input_dims[m]})' for m in self.modalities)}; "
                 f"{self.speaker_map.num_speakers - 1} speaker ids ({self.speaker_map.rule} rule) + other"]
        lines += [f"  modality {m} not used: {why}" for m, why in self.dropped.items()]
        for name, info in self.report["splits"].items():
            avail = ", ".join(f"{m} {n}" for m, n in info["available"].items())
            lines.append(
                f"  {name}: {info['dialogues']} dialogues, {info['utterances']} utterances "
                f"({info['unlabelled']} unlabelled, {info['other_speaker']} other-speaker; available: {avail})"
            )
        if self.feature_shuffle is not None:
            lines.append(
                f"  WARNING: features shuffled across utterances (seed {self.feature_shuffle}): alignment check only"
            )
        return "\n".join(lines)


def _open_store(folder: Path, modality: str, manifest_path: Path, manifest_sha: str) -> FeatureStoreReader:
    reader = FeatureStoreReader(folder)
    holds = reader.metadata.get("modality")
    if holds != modality:
        raise PipelineError(f"{folder}: holds {holds} features, not {modality} (check train.features)")
    found = reader.metadata.get("manifest_sha256")
    if found != manifest_sha:
        raise PipelineError(
            f"{folder}: the {modality} feature store was built from another manifest (its manifest_sha256 "
            f"{str(found)[:12]}..., {manifest_path} has {manifest_sha[:12]}...); rerun extraction"
        )
    return reader


def load_corpus(
    prepared: Path | str,
    features: Path | str,
    modalities: list[str],
    *,
    speaker_map: SpeakerMap | None = None,
    speaker_rule: str = "auto",
    min_speaker_count: int = 1,
    require_all_modalities: bool = False,
    feature_shuffle: int | None = None,
    split: str = RELEASE_SPLIT,
    feature_sets: Mapping[str, str] | None = None,
) -> CorpusData:
    """Load the manifest under `prepared` and the stores under `features` (see the module docstring).

    Each modality's store is `features/<set>`, the set `feature_sets` names for it (`train.features`),
    or the folder named after the modality when it names none.

    `split` is the manifest's own split (RELEASE_SPLIT) or one of the schemes it offers (e.g. IEMOCAP's
    "loso-3"), applied to the rows before anything else reads them."""
    prepared, features = Path(prepared), Path(features)
    manifest_path = prepared / MANIFEST_FILE if prepared.is_dir() or not prepared.suffix else prepared
    if not manifest_path.is_file():
        raise PipelineError(f"{manifest_path}: manifest not found (run `mer prepare` or `mer import-features` first)")
    if not modalities:
        raise PipelineError("no modality to load: name at least one (e.g. text)")
    meta = manifest_metadata(manifest_path)
    try:
        label_map = json.loads(meta["label_map"])
    except (KeyError, ValueError):
        raise PipelineError(f"{manifest_path}: no label_map in the manifest's metadata; rerun `mer prepare`") from None
    label_names = [name for name, _ in sorted(label_map.items(), key=lambda item: item[1])]
    if [label_map[n] for n in label_names] != list(range(len(label_names))):
        raise PipelineError(f"{manifest_path}: label_map indices are not 0..{len(label_names) - 1}: {label_map}")
    manifest_sha = sha256_file(manifest_path)
    rows = read_manifest(manifest_path)
    apply_split(rows, meta, split, manifest_path)
    corpus = meta.get("corpus") or (rows[0]["corpus"] if rows else "")

    # stores
    readers: dict[str, FeatureStoreReader] = {}
    dropped: dict[str, str] = {}
    for modality in modalities:
        folder = features / (feature_sets or {}).get(modality, modality)
        if not folder.exists():
            if modality in (feature_sets or {}):  # named on purpose (train.features): not silently dropped
                raise PipelineError(
                    f"{folder}: no store of feature set {feature_sets[modality]!r}, which train.features.{modality} "
                    f"names (extract it first: `mer extract {feature_sets[modality]}`)"
                )
            if require_all_modalities:
                raise PipelineError(f"{folder}: no {modality} feature store, and the model needs {modality} features")
            dropped[modality] = f"no feature store at {folder}"
            continue
        reader = _open_store(folder, modality, manifest_path, manifest_sha)
        if not reader.utterance_ids:
            if require_all_modalities:
                raise PipelineError(f"{folder}: the {modality} store holds no feature, and the model needs {modality}")
            dropped[modality] = f"{folder} holds no feature (all {reader.report['counts']['missing']} missing)"
            continue
        readers[modality] = reader
    if not readers:
        raise PipelineError(f"{features}: none of the modalities {modalities} has a usable feature store ({dropped})")

    # dialogues in manifest order, turns in turn_index order
    by_dialogue: dict[str, list[dict[str, Any]]] = {}
    split_of: dict[str, str] = {}
    for row in rows:
        split, dialogue = row["split"], row["dialogue_id"]
        if split not in SPLITS:
            raise PipelineError(f"{manifest_path}: utterance {row['utterance_id']!r} has unknown split {split!r}")
        if split_of.setdefault(dialogue, split) != split:
            raise PipelineError(f"{manifest_path}: dialogue {dialogue!r} is in both {split_of[dialogue]} and {split}")
        by_dialogue.setdefault(dialogue, []).append(row)
    for turns in by_dialogue.values():
        turns.sort(key=lambda r: r["turn_index"])

    if speaker_map is None:
        rule = default_speaker_rule(corpus) if speaker_rule == "auto" else speaker_rule
        train_speakers = [r["speaker"] for r in rows if r["split"] == "train"]
        speaker_map = SpeakerMap.build(rule, train_speakers, min_speaker_count)

    # features: every store's vectors, checked for shape
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    input_dims: dict[str, int] = {}
    for modality, reader in readers.items():
        dtype = getattr(torch, reader.metadata.get("dtype", "float32"))
        vectors = reader.load_all(dtype=dtype)
        dims = {tuple(t.shape) for t in vectors.values()}
        if len(dims) != 1 or len(next(iter(dims))) != 1:
            raise PipelineError(
                f"{reader.folder}: every feature must be one vector of the same width, found shapes {sorted(dims)[:4]}"
            )
        loaded[modality] = vectors
        input_dims[modality] = next(iter(dims))[0]

    splits: dict[str, SplitData] = {}
    report: dict[str, Any] = {"splits": {}}
    rng = np.random.default_rng(feature_shuffle) if feature_shuffle is not None else None
    for split in SPLITS:
        dialogues = [d for d, s in split_of.items() if s == split]
        if not dialogues:
            continue
        turns = [r for d in dialogues for r in by_dialogue[d]]
        offsets = np.cumsum([0] + [len(by_dialogue[d]) for d in dialogues]).tolist()
        ids = [r["utterance_id"] for r in turns]
        labels, unlabelled = [], 0
        for r in turns:
            index = r.get("label_index")
            if index is None or not 0 <= index < len(label_names):
                labels.append(IGNORE_LABEL)
                unlabelled += 1
            else:
                labels.append(int(index))
        speakers = [speaker_map.id(r["speaker"]) for r in turns]
        feats, avail = {}, {}
        for modality, vectors in loaded.items():
            width = input_dims[modality]
            any_vector = next(iter(vectors.values()))
            matrix = torch.zeros(len(ids), width, dtype=any_vector.dtype)
            present = torch.zeros(len(ids), dtype=torch.bool)
            for i, uid in enumerate(ids):
                vector = vectors.get(uid)
                if vector is not None:
                    matrix[i] = vector
                    present[i] = True
            feats[modality], avail[modality] = matrix, present
        if rng is not None:
            permutation = torch.from_numpy(rng.permutation(len(ids)))
            feats = {m: t[permutation] for m, t in feats.items()}
            avail = {m: t[permutation] for m, t in avail.items()}
        splits[split] = SplitData(
            name=split, dialogue_ids=dialogues, offsets=offsets, utterance_ids=ids, features=feats, available=avail,
            speakers=torch.tensor(speakers, dtype=torch.long), labels=torch.tensor(labels, dtype=torch.long),
        )
        report["splits"][split] = {
            "dialogues": len(dialogues),
            "utterances": len(ids),
            "unlabelled": unlabelled,
            "other_speaker": sum(1 for s in speakers if s == OTHER_SPEAKER),
            "available": {m: int(t.sum()) for m, t in avail.items()},
        }
    if "train" not in splits:
        raise PipelineError(f"{manifest_path}: no train split")

    stores = {
        m: {"folder": str(r.folder), "metadata": r.metadata, "index_sha256": sha256_file(r.folder / INDEX_FILE)}
        for m, r in readers.items()
    }
    return CorpusData(
        corpus=corpus, manifest_path=manifest_path, manifest_sha256=manifest_sha,
        label_policy=meta.get("label_policy", ""), label_names=label_names, speaker_map=speaker_map,
        modalities=list(readers), input_dims=input_dims, splits=splits, stores=stores, dropped=dropped,
        report=report, feature_shuffle=feature_shuffle,
    )
