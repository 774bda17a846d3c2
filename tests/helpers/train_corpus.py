"""A synthetic corpus for the trainer's tests: a real manifest and real feature stores with a planted class signal.

Every utterance's feature in each modality is its class's fixed random direction times `signal`,
plus unit Gaussian noise, so a model that reads the features of the right utterance separates
the classes and one that reads another utterance's features cannot.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pipeline.formats.feature_store import FeatureStoreWriter, StoreMetadata
from pipeline.core.fingerprint import sha256_file
from pipeline.formats.manifest import MANIFEST_FILE, Utterance, write_manifest

LABELS = ["neutral", "joy", "sadness", "anger"]
DIMS = {"text": 12, "audio": 8, "face": 6}
SPEAKERS = {"meld": ["Ross", "Rachel", "Joey", "Guest"], "iemocap": ["F", "M"]}


def make_corpus(
    root: Path,
    corpus: str = "meld",
    dialogues: dict[str, int] | None = None,
    signal: float = 1.5,
    modalities: tuple[str, ...] = ("text", "audio", "face"),
    missing: dict[str, float] | None = None,
    seed: int = 0,
    label_map_size: int | None = None,
    split_schemes: dict[str, dict[str, list[str]]] | None = None,
) -> tuple[Path, Path]:
    """Write root/prepared/<corpus>/manifest.parquet and root/features/<corpus>/<modality>/; return both folders.

    `missing[m]`: share of utterances without a feature in modality m (1.0 = none at all).
    `label_map_size`: the manifest's label map keeps only the first k classes, so the utterances of the
    others have a label index outside it (as from a reader bug or a hand-edited manifest).
    `split_schemes`: other splits the manifest offers, as a reader records them (e.g. IEMOCAP's folds).
    """
    dialogues = dialogues or {"train": 40, "dev": 12, "test": 12}
    missing = missing or {"face": 0.2}
    rng = np.random.default_rng(seed)
    utterances = []
    for split, count in dialogues.items():
        for d in range(count):
            length = int(rng.integers(3, 9))
            for t in range(length):
                label = int(rng.integers(len(LABELS)))
                session = f"Ses0{1 + d % 5}"
                speaker = SPEAKERS[corpus][int(rng.integers(len(SPEAKERS[corpus])))]
                if corpus == "iemocap":
                    speaker = f"{session}_{speaker}"
                utterances.append(Utterance(
                    corpus=corpus, split=split, dialogue_id=f"{split}_dia{d:03d}", turn_index=2 * t,
                    utterance_id=f"{split}_dia{d:03d}_utt{t}", speaker=speaker, text=f"utterance {t}",
                    label=LABELS[label], label_index=label, start_s=None, end_s=None, audio_path=None,
                    audio_start_s=None, audio_end_s=None, video_path=None, video_start_s=None, video_end_s=None,
                    video_region="full", has_text=True, has_audio=True, has_video=True,
                ))
    prepared = root / "prepared" / corpus
    prepared.mkdir(parents=True, exist_ok=True)
    label_map = {n: i for i, n in enumerate(LABELS[:label_map_size])}
    metadata = {"corpus": corpus, "label_policy": "synthetic", "label_map": json.dumps(label_map)}
    if split_schemes:
        metadata["split_schemes"] = json.dumps(split_schemes)
    write_manifest(utterances, prepared / MANIFEST_FILE, metadata)
    write_stores(root / "features" / corpus, prepared, utterances, signal, modalities, missing, seed)
    return prepared, root / "features" / corpus


def write_stores(folder, prepared, utterances, signal, modalities, missing, seed) -> None:
    from pipeline.formats.manifest import read_manifest

    rows = read_manifest(prepared)  # manifest order
    by_id = {u.utterance_id: u for u in utterances}
    manifest_sha = sha256_file(prepared / MANIFEST_FILE)
    rng = np.random.default_rng(seed + 1)
    for modality in modalities:
        width = DIMS[modality]
        directions = rng.normal(size=(len(LABELS), width))
        metadata = StoreMetadata(
            corpus=rows[0]["corpus"], modality=modality, extractor="synthetic", extractor_version="1",
            model_id="planted-signal", model_sha256="0" * 64, manifest_sha256=manifest_sha, params={"signal": signal},
        )
        ids = [r["utterance_id"] for r in rows]
        with FeatureStoreWriter(folder / modality, metadata, ids, shard_size=64) as writer:
            for k in writer.pending_shards():
                tensors, flags = {}, {}
                for uid in writer.shard_ids(k):
                    if rng.random() < missing.get(modality, 0.0):
                        flags[uid] = "synthetic: no feature"
                        continue
                    vector = signal * directions[by_id[uid].label_index] + rng.normal(size=width)
                    tensors[uid] = torch.tensor(vector, dtype=torch.float32)
                writer.write_shard(k, tensors, flags)
            writer.finalize()
