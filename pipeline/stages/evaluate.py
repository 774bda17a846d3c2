"""Evaluation: per-utterance predictions of a split (gathered across processes), metrics, and
`mer evaluate` (a checkpoint on the dev and test splits -> metrics.json, confusion plots, predictions).

Metrics (computed here from the confusion matrix, no sklearn needed; tests compare with sklearn):
accuracy; per-class F1 = 2 TP / (2 TP + FP + FN), 0 when the class has no gold and no predicted
utterance; weighted F1 = per-class F1 averaged with the gold support as weight (what MER papers
report as "w-F1"); macro F1 = the plain mean over the classes that occur in gold or predictions
(sklearn's `f1_score(average="macro")` default). Utterances without a label are not scored but counted.

`mer evaluate --checkpoint data/train/C/best --prepared P --features F --out data/eval/C` writes

    metrics.json        {"checkpoint": {...},
                         "test": {accuracy, weighted_f1, macro_f1, per_class_f1, counts}, "dev": {...}}
    confusion.csv       test: one row per labelled utterance, columns actual,predicted (label names),
                        for `dvc plots` with the confusion template
    predictions.csv     test: utterance_id, dialogue_id, gold, predicted, prob_<label> per class
    confusion_dev.csv, predictions_dev.csv   the same for dev

The features must be the ones the model was trained on: the manifest's sha256 and every store's
metadata are compared with the checkpoint's record, and a difference is an error.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.batch import IGNORE_LABEL
from pipeline.training.data import CorpusData, SplitData
from pipeline.core.errors import PipelineError

CHECKPOINT_JSON = "checkpoint.json"
WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "feature_stats.safetensors"


# --------------------------------------------------------------------------------------------------
# Predictions and metrics
# --------------------------------------------------------------------------------------------------


@dataclass
class Predictions:
    """One row per utterance of the split, in the split's (dialogue, turn) order."""

    split: SplitData
    probabilities: np.ndarray  # float [U, C]

    @property
    def gold(self) -> np.ndarray:
        return self.split.labels.numpy()

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


def predict(accelerator, model, loader, split: SplitData, num_classes: int) -> Predictions:
    """Run `model` over `loader` (prepared by `accelerator`) and gather every utterance's probabilities.

    Each batch row is a whole dialogue: its index in the split is gathered with its padded
    probabilities (`gather_for_metrics` drops the dialogues duplicated to even out the last batch
    across processes), then the valid utterances are unpadded by the split's own offsets. Every
    utterance must come back exactly once.
    """
    model.eval()
    probabilities = np.zeros((split.num_utterances, num_classes), dtype=np.float32)
    seen = np.zeros(split.num_utterances, dtype=np.int64)
    with torch.no_grad():
        for batch in loader:
            output = model(batch)
            probs = output.logits.float().softmax(dim=-1)
            index = torch.tensor(
                [split.dialogue_index(ids[0]) for ids in batch.utterance_ids], dtype=torch.long, device=probs.device
            )
            probs = accelerator.pad_across_processes(probs, dim=1)
            index, probs = accelerator.gather_for_metrics((index, probs))
            probs = probs.cpu().numpy()
            for row, dialogue in enumerate(index.tolist()):
                start, end = split.offsets[dialogue], split.offsets[dialogue + 1]
                probabilities[start:end] = probs[row, : end - start]
                seen[start:end] += 1
    if not (seen == 1).all():
        twice, never = int((seen > 1).sum()), int((seen == 0).sum())
        raise RuntimeError(
            f"{split.name}: gathered predictions cover {never} utterance(s) never and {twice} more than once"
        )
    return Predictions(split, probabilities)


def classification_metrics(gold: np.ndarray, predicted: np.ndarray, label_names: list[str]) -> dict[str, Any]:
    gold, predicted = np.asarray(gold), np.asarray(predicted)
    labelled = gold != IGNORE_LABEL
    g, p = gold[labelled], predicted[labelled]
    size = len(label_names)
    confusion = np.zeros((size, size), dtype=np.int64)
    np.add.at(confusion, (g, p), 1)
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1).astype(np.float64)
    predicted_count = confusion.sum(axis=0).astype(np.float64)
    denominator = support + predicted_count
    f1 = np.divide(2 * tp, denominator, out=np.zeros(size), where=denominator > 0)
    present = denominator > 0
    total = support.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "weighted_f1": float((f1 * support).sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_f1": {name: float(f1[i]) for i, name in enumerate(label_names)},
        "counts": {
            "utterances": int(len(gold)),
            "labelled": int(labelled.sum()),
            "unlabelled": int((~labelled).sum()),
            "gold": {name: int(support[i]) for i, name in enumerate(label_names)},
            "predicted": {name: int(predicted_count[i]) for i, name in enumerate(label_names)},
        },
    }


def split_metrics(predictions: Predictions, label_names: list[str]) -> dict[str, Any]:
    return classification_metrics(predictions.gold, predictions.predicted, label_names)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def read_checkpoint(folder: Path | str) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / CHECKPOINT_JSON
    if not path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise PipelineError(f"{folder}: not a checkpoint (needs {CHECKPOINT_JSON} and {WEIGHTS_FILE}; run `mer train`)")
    return json.loads(path.read_text(encoding="utf-8"))


def load_model(folder: Path | str):
    """(CMATH with the checkpoint's weights, checkpoint record); the weights' sha256 is checked."""
    from safetensors.torch import load_file

    from model.cmath import CMATH, CMATHConfig
    from pipeline.core.fingerprint import sha256_file

    folder = Path(folder)
    record = read_checkpoint(folder)
    weights = folder / WEIGHTS_FILE
    if sha256_file(weights) != record["weights_sha256"]:
        raise PipelineError(f"{weights}: sha256 differs from {CHECKPOINT_JSON}; the weights changed after training")
    model = CMATH(CMATHConfig.from_dict(record["model_config"]))
    model.load_state_dict(load_file(weights))
    return model, record


def check_data_matches(data: CorpusData, record: dict[str, Any], checkpoint: Path) -> None:
    """The evaluated features must be those the checkpoint was trained on (same manifest, same stores)."""
    trained = record["data"]
    if data.label_names != record["label_names"]:
        raise PipelineError(
            f"{data.manifest_path}: labels {data.label_names} differ from the checkpoint's {record['label_names']}"
        )
    if data.manifest_sha256 != trained["manifest_sha256"]:
        raise PipelineError(
            f"{data.manifest_path}: not the manifest {checkpoint} was trained on (sha256 {data.manifest_sha256[:12]}... "
            f"vs {trained['manifest_sha256'][:12]}...)"
        )
    for modality, store in data.stores.items():
        if store["metadata"] != trained["stores"][modality]["metadata"]:
            raise PipelineError(
                f"{store['folder']}: the {modality} features differ from those {checkpoint} was trained on "
                "(other extractor, model or params); evaluate with the training features"
            )


# --------------------------------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------------------------------


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def predictions_csv(predictions: Predictions, label_names: list[str]) -> str:
    split = predictions.split
    gold, predicted = predictions.gold, predictions.predicted
    dialogues = split.dialogue_of_utterance
    rows = [
        [uid, dialogues[i], label_names[gold[i]] if gold[i] != IGNORE_LABEL else "", label_names[predicted[i]],
         *(f"{p:.6f}" for p in predictions.probabilities[i])]
        for i, uid in enumerate(split.utterance_ids)
    ]
    return _csv(["utterance_id", "dialogue_id", "gold", "predicted", *(f"prob_{n}" for n in label_names)], rows)


def confusion_csv(predictions: Predictions, label_names: list[str]) -> str:
    """actual,predicted per labelled utterance: the input of DVC's `confusion` plot template."""
    pairs = [(g, p) for g, p in zip(predictions.gold, predictions.predicted) if g != IGNORE_LABEL]
    return _csv(["actual", "predicted"], [[label_names[g], label_names[p]] for g, p in pairs])


# --------------------------------------------------------------------------------------------------
# mer evaluate
# --------------------------------------------------------------------------------------------------


@dataclass
class EvaluateConfig:
    """params.yaml `evaluate` section."""

    splits: list[str] | None = None  # default ["dev", "test"]
    batch_size: int = 0  # dialogues per batch; 0 = the training batch size recorded in the checkpoint

    def __post_init__(self) -> None:
        self.splits = list(self.splits) if self.splits is not None else ["dev", "test"]
        unknown = [s for s in self.splits if s not in ("train", "dev", "test")]
        if unknown or not self.splits:
            raise ValueError(f"splits must be a non-empty list of train/dev/test, got {self.splits!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 0:
            raise ValueError(f"batch_size must be an integer >= 0, got {self.batch_size!r}")


def evaluate_checkpoint(
    checkpoint: Path | str, prepared: Path | str, features: Path | str, out: Path | str,
    config: EvaluateConfig | None = None, cpu: bool = False,
) -> dict[str, Any]:
    """Evaluate `checkpoint` on the configured splits; writes the files listed in the module docstring."""
    from torch.utils.data import DataLoader

    from pipeline.training.data import DialogueBatchSampler, DialogueIndices, SpeakerMap, load_corpus
    from pipeline.stages.train import make_accelerator
    from pipeline.core.atomic import atomic_output_dir
    from pipeline.formats.stage_report import REPORT_FILE

    config = config or EvaluateConfig()
    checkpoint, out = Path(checkpoint), Path(out)
    model, record = load_model(checkpoint)
    data = load_corpus(
        prepared, features, record["modalities"], speaker_map=SpeakerMap.from_dict(record["speaker_map"]),
        require_all_modalities=True,
    )
    check_data_matches(data, record, checkpoint)
    if record.get("feature_stats_sha256"):
        from safetensors.torch import load_file

        from pipeline.core.fingerprint import sha256_file

        if sha256_file(checkpoint / STATS_FILE) != record["feature_stats_sha256"]:
            raise PipelineError(
                f"{checkpoint / STATS_FILE}: sha256 differs from {CHECKPOINT_JSON}; it changed after training"
            )
        data.standardize(load_file(checkpoint / STATS_FILE))
    label_names = record["label_names"]
    batch_size = config.batch_size or int(record["train_config"]["batch_size"])
    # the training's precision on a GPU (bf16 under "auto"); full precision on CPU
    accelerator = make_accelerator(record["train_config"]["mixed_precision"], cpu)
    model = accelerator.prepare(model)
    results: dict[str, Any] = {
        "checkpoint": {
            "path": str(checkpoint), "corpus": record["corpus"], "epoch": record["epoch"], "seed": record["seed"],
            "weights_sha256": record["weights_sha256"],
        }
    }
    files: dict[str, str] = {}
    scored: dict[str, int] = {}
    for name in config.splits:
        if name not in data.splits:
            raise PipelineError(f"{data.manifest_path}: no {name} split to evaluate")
        split = data.splits[name]
        loader = DataLoader(
            DialogueIndices(split), batch_sampler=DialogueBatchSampler(split.lengths, batch_size, shuffle=False),
            collate_fn=split.collate,
        )
        predictions = predict(accelerator, model, accelerator.prepare(loader), split, len(label_names))
        results[name] = split_metrics(predictions, label_names)
        scored[name] = len(predictions.probabilities)
        suffix = "" if name == "test" else f"_{name}"
        files[f"predictions{suffix}.csv"] = predictions_csv(predictions, label_names)
        files[f"confusion{suffix}.csv"] = confusion_csv(predictions, label_names)
    if accelerator.is_main_process:
        with atomic_output_dir(out) as tmp:
            # not key-sorted: per-class entries stay in label-index order
            (tmp / "metrics.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
            report = data.stage_report("evaluate", config.splits, scored=scored)
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            for file, text in files.items():
                (tmp / file).write_text(text, encoding="utf-8")
    accelerator.wait_for_everyone()
    return results


def describe(results: dict[str, Any]) -> str:
    lines = [f"checkpoint {results['checkpoint']['path']} (epoch {results['checkpoint']['epoch']})"]
    for name in ("train", "dev", "test"):
        if name in results:
            m = results[name]
            lines.append(
                f"  {name}: accuracy {m['accuracy']:.4f}, weighted F1 {m['weighted_f1']:.4f}, macro F1 {m['macro_f1']:.4f} "
                f"({m['counts']['labelled']} labelled, {m['counts']['unlabelled']} unlabelled)"
            )
    return "\n".join(lines)
