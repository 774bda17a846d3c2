"""`mer evaluate`: a checkpoint on the dev and test splits -> metrics.json, confusion plots, predictions.

Predictions are gathered across processes by `pipeline.training.loop.predict`; the metrics are
`pipeline.training.metrics` (scikit-learn). Utterances without a label are not scored but counted.

`mer evaluate --checkpoint data/train/C/best --prepared P --features F --out data/eval/C` writes

    metrics.json        {"checkpoint": {path, model, corpus, epoch, seed, weights_sha256},
                         "test": {accuracy, weighted_f1, macro_f1, per_class_f1, counts}, "dev": {...}}
    confusion.csv       test: one row per labelled utterance, columns actual,predicted (label names),
                        for `dvc plots` with the confusion template
    predictions.csv     test: utterance_id, dialogue_id, gold, predicted, prob_<label> per class
    confusion_dev.csv, predictions_dev.csv   the same for dev

The checkpoint's model (`model_name`: CMATH or a baseline) is rebuilt by
`pipeline.training.checkpoint.load_model`. The features must be the ones the model was trained on:
the manifest's sha256 and every store's metadata are compared with the checkpoint's record, and a
difference is an error.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from model.batch import IGNORE_LABEL
from pipeline.core.atomic import atomic_output_dir
from pipeline.core.errors import PipelineError
from pipeline.core.locks import output_lock
from pipeline.core.outputs import check_output
from pipeline.core.params import ParamError
from pipeline.formats.manifest import RELEASE_SPLIT
from pipeline.formats.stage_report import REPORT_FILE
from pipeline.training.checkpoint import checkpoint_model_name, load_feature_stats, load_model
from pipeline.training.data import CorpusData, DialogueBatchSampler, SpeakerMap, load_corpus
from pipeline.training.loop import Predictions, dialogue_loader, is_main_launch_process, make_accelerator, predict
from pipeline.formats.run_files import METRICS_FILE
from pipeline.training.metrics import classification_metrics


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


@dataclass
class EvaluateConfig:
    """params.yaml `evaluate` section."""

    splits: list[Literal["train", "dev", "test"]] | None = None  # default ["dev", "test"]
    batch_size: int = 0  # dialogues per batch; 0 = the training batch size recorded in the checkpoint

    def __post_init__(self) -> None:
        """Value rules; keys and types are checked before (pipeline.core.params.section_to_dataclass)."""
        self.splits = list(self.splits) if self.splits is not None else ["dev", "test"]
        if not self.splits:
            raise ParamError("splits", "must name at least one of train, dev, test")
        if len(set(self.splits)) != len(self.splits):
            raise ParamError("splits", f"lists a split twice: {self.splits}")
        if self.batch_size < 0:
            raise ParamError("batch_size", f"must be an integer >= 0, got {self.batch_size!r}")


def evaluate_checkpoint(
    checkpoint: Path | str, prepared: Path | str, features: Path | str, out: Path | str,
    config: EvaluateConfig | None = None, cpu: bool = False, params_file: Path | None = None,
    wait_s: float = 0.0,
) -> dict[str, Any]:
    """Evaluate `checkpoint` on the configured splits; writes the files listed in the module docstring.

    `out` must not overlap an input (the checkpoint, the manifest folder, the stores, `params_file`)
    and must be absent, empty or an earlier evaluation (`pipeline.core.outputs`): checked first.
    Then the run holds `out`'s lock (`pipeline.core.locks`; in a multi-process run the main process,
    which writes `out`), waiting up to `wait_s` seconds for another run on it."""
    config = config or EvaluateConfig()
    checkpoint, out = Path(checkpoint), Path(out)
    check_output(out, "evaluate", [("--checkpoint", checkpoint), ("--prepared", Path(prepared)),
                                   ("--features", Path(features)), ("--params", params_file)])
    with output_lock(out, "evaluate", wait_s, enabled=is_main_launch_process()):
        return _evaluate(checkpoint, prepared, features, out, config, cpu)


def _evaluate(
    checkpoint: Path, prepared: Path | str, features: Path | str, out: Path, config: EvaluateConfig, cpu: bool
) -> dict[str, Any]:
    model, record = load_model(checkpoint)
    data = load_corpus(
        prepared, features, record["modalities"], speaker_map=SpeakerMap.from_dict(record["speaker_map"]),
        require_all_modalities=True, split=record["train_config"].get("split", RELEASE_SPLIT),  # as trained
        feature_sets=record["train_config"].get("features") or {},  # the stores it was trained on
    )
    check_data_matches(data, record, checkpoint)
    stats = load_feature_stats(checkpoint, record)
    if stats is not None:
        data.standardize(stats)
    label_names = record["label_names"]
    batch_size = config.batch_size or int(record["train_config"]["batch_size"])
    # the training's precision on a GPU (bf16 under "auto"); full precision on CPU
    accelerator = make_accelerator(record["train_config"]["mixed_precision"], cpu)
    model = accelerator.prepare(model)
    results: dict[str, Any] = {
        "checkpoint": {
            "path": str(checkpoint), "model": checkpoint_model_name(record), "corpus": record["corpus"],
            "epoch": record["epoch"], "seed": record["seed"],
            "weights_sha256": record["weights_sha256"],
            "inference_modalities": record.get("inference_modalities", record["modalities"]),
        }
    }
    files: dict[str, str] = {}
    scored: dict[str, int] = {}
    for name in config.splits:
        if name not in data.splits:
            raise PipelineError(f"{data.manifest_path}: no {name} split to evaluate")
        split = data.splits[name]
        loader = dialogue_loader(split, DialogueBatchSampler(split.lengths, batch_size, shuffle=False))
        # the modalities dev selected at training (train.select_modalities), None: every trained one
        predictions = predict(accelerator, model, accelerator.prepare(loader), split, len(label_names),
                              record.get("inference_modalities"))
        results[name] = classification_metrics(predictions.gold, predictions.predicted, label_names)
        scored[name] = len(predictions.probabilities)
        suffix = "" if name == "test" else f"_{name}"
        files[f"predictions{suffix}.csv"] = predictions_csv(predictions, label_names)
        files[f"confusion{suffix}.csv"] = confusion_csv(predictions, label_names)
    if accelerator.is_main_process:
        with atomic_output_dir(out, "evaluate") as tmp:
            # not key-sorted: per-class entries stay in label-index order
            (tmp / METRICS_FILE).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
            report = data.stage_report("evaluate", config.splits, scored=scored)
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            for file, text in files.items():
                (tmp / file).write_text(text, encoding="utf-8")
    accelerator.wait_for_everyone()
    return results


def describe(results: dict[str, Any]) -> str:
    checkpoint = results["checkpoint"]
    lines = [f"checkpoint {checkpoint['path']} (model {checkpoint['model']}, epoch {checkpoint['epoch']})"]
    for name in ("train", "dev", "test"):
        if name in results:
            m = results[name]
            lines.append(
                f"  {name}: accuracy {m['accuracy']:.4f}, weighted F1 {m['weighted_f1']:.4f}, macro F1 {m['macro_f1']:.4f} "
                f"({m['counts']['labelled']} labelled, {m['counts']['unlabelled']} unlabelled)"
            )
    return "\n".join(lines)
