"""Checkpoints: what `mer train` saves and resumes from, and what `mer evaluate` and `mer lineage` read.

A training output folder holds

    best/model.safetensors            weights of the selected epoch
    best/feature_stats.safetensors    the train split's per-dimension feature mean/std (standardize)
    best/checkpoint.json              the model's name (`model_name`, a name of `model.registry`) and
                                      config, label and speaker maps, train config, seed, epoch,
                                      metrics, code version, data lineage, weights sha256
    last/                             accelerator.save_state (weights, optimizer, scheduler, RNG states
                                      of every process) + trainer_state.json + best/ (the best so far;
                                      best/ above is published from it)

`last/` is written whole into `.last.partial` and swapped in by two renames (`core.atomic.replace_dir`),
so a kill at any moment leaves a consistent (state, best-so-far) pair; a kill between the renames is
undone by `restore_replaced_dir` before resuming. A rerun resumes from `last/` only when its run id
(data, model, config, code, process count) is the same. A checkpoint written before models had
names (no `model_name`) is a CMATH checkpoint, and loads as one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from model.registry import DEFAULT_MODEL, build_model, config_from_dict, model_names
from pipeline.core.atomic import replace_dir, restore_replaced_dir
from pipeline.core.errors import PipelineError
from pipeline.core.fingerprint import sha256_file
from pipeline.formats.run_files import (
    BEST_DIR,
    CHECKPOINT_JSON,
    LAST_DIR,
    METRICS_FILE,
    STATS_FILE,
    TRAIN_STATE,
    WEIGHTS_FILE,
)



def json_bytes(value: Any) -> bytes:
    """Key-sorted, indented JSON: the same record gives the same bytes (resume compares them)."""
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


# --------------------------------------------------------------------------------------------------
# Reading (evaluate, lineage)
# --------------------------------------------------------------------------------------------------


def read_checkpoint(folder: Path | str) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / CHECKPOINT_JSON
    if not path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise PipelineError(f"{folder}: not a checkpoint (needs {CHECKPOINT_JSON} and {WEIGHTS_FILE}; run `mer train`)")
    return json.loads(path.read_text(encoding="utf-8"))


def checkpoint_model_name(record: dict[str, Any]) -> str:
    """The model a checkpoint holds: its `model_name`, or CMATH for one written before models had names."""
    return record.get("model_name") or DEFAULT_MODEL


def load_model(folder: Path | str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(the checkpoint's model with its weights, checkpoint record); the weights' sha256 is checked."""
    folder = Path(folder)
    record = read_checkpoint(folder)
    weights = folder / WEIGHTS_FILE
    if sha256_file(weights) != record["weights_sha256"]:
        raise PipelineError(f"{weights}: sha256 differs from {CHECKPOINT_JSON}; the weights changed after training")
    name = checkpoint_model_name(record)
    if name not in model_names():
        raise PipelineError(
            f"{folder / CHECKPOINT_JSON}: model_name {name!r} is not a model of this code (models: "
            f"{', '.join(model_names())}); evaluate it with the code that trained it"
        )
    model = build_model(name, config_from_dict(name, record["model_config"]))
    model.load_state_dict(load_file(weights))
    return model, record


def load_feature_stats(folder: Path | str, record: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The standardisation statistics saved with the checkpoint (None if it trained without), checked."""
    if not record.get("feature_stats_sha256"):
        return None
    path = Path(folder) / STATS_FILE
    if not path.is_file() or sha256_file(path) != record["feature_stats_sha256"]:
        raise PipelineError(f"{path}: missing or sha256 differs from {CHECKPOINT_JSON}; it changed after training")
    return load_file(path)


# --------------------------------------------------------------------------------------------------
# Writing (train)
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainerState:
    """Where a run is: saved as last/trainer_state.json after every epoch."""

    run_id: str
    epochs_done: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch: lr, losses, scores
    best_epoch: int | None = None
    best_dev_weighted_f1: float | None = None
    bad_epochs: int = 0
    stopped_early: bool = False

    def end_epoch(self, entry: dict[str, Any], patience: int) -> bool:
        """Record one epoch's entry; True when its dev weighted F1 is the best so far (model selection
        sees dev only). After `patience` epochs without one the run stops (0: never early)."""
        self.history.append(entry)
        self.epochs_done = entry["epoch"]
        dev_f1 = entry["dev"]["weighted_f1"]
        if self.best_dev_weighted_f1 is None or dev_f1 > self.best_dev_weighted_f1:
            self.best_epoch, self.best_dev_weighted_f1, self.bad_epochs = entry["epoch"], dev_f1, 0
            return True
        self.bad_epochs += 1
        self.stopped_early = patience > 0 and self.bad_epochs >= patience
        return False

    def entry(self, epoch: int) -> dict[str, Any]:
        return next(h for h in self.history if h["epoch"] == epoch)


@dataclass
class BestCheckpoint:
    """A new best epoch, to be written into last/best/: weights, standardisation stats, record."""

    weights: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor] | None
    record: dict[str, Any]  # checkpoint.json without the files' sha256, which are added when written

    def write(self, folder: Path) -> None:
        folder.mkdir()
        save_file(self.weights, str(folder / WEIGHTS_FILE))
        record = {**self.record, "weights_sha256": sha256_file(folder / WEIGHTS_FILE), "feature_stats_sha256": None}
        if self.stats is not None:
            save_file(self.stats, str(folder / STATS_FILE))
            record["feature_stats_sha256"] = sha256_file(folder / STATS_FILE)
        (folder / CHECKPOINT_JSON).write_bytes(json_bytes(record))


def cpu_weights(accelerator: Accelerator, model) -> dict[str, torch.Tensor]:
    state_dict = accelerator.unwrap_model(model).state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}


def save_folder(accelerator: Accelerator, final: Path, write: Callable[[Path], None], collective: bool = False) -> None:
    """Write a folder atomically: into `.<name>.partial`, then swapped in by the main process.

    `collective`: every process takes part in `write` (accelerator.save_state); otherwise only the main one.
    """
    tmp = final.parent / f".{final.name}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if collective or accelerator.is_main_process:
        write(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_dir(tmp, final)
    accelerator.wait_for_everyone()


def save_last(accelerator: Accelerator, out: Path, state: TrainerState, best: BestCheckpoint | None) -> None:
    """last/ = the accelerator state, the trainer state and the best checkpoint so far, as one folder;
    then best/ is published from it."""
    last_dir = out / LAST_DIR

    def write(tmp: Path) -> None:
        accelerator.save_state(str(tmp))
        if not accelerator.is_main_process:
            return
        (tmp / TRAIN_STATE).write_bytes(json_bytes(asdict(state)))
        if best is None:
            shutil.copytree(last_dir / BEST_DIR, tmp / BEST_DIR)
        else:
            best.write(tmp / BEST_DIR)

    save_folder(accelerator, last_dir, write, collective=True)
    publish_best(accelerator, out)


def publish_best(accelerator: Accelerator, out: Path) -> None:
    """Copy last/best to best/ (atomically) unless best/ already holds that checkpoint."""
    source, best_dir = out / LAST_DIR / BEST_DIR, out / BEST_DIR
    current = best_dir / CHECKPOINT_JSON
    if current.is_file() and current.read_bytes() == (source / CHECKPOINT_JSON).read_bytes():
        return
    save_folder(accelerator, best_dir, lambda tmp: shutil.copytree(source, tmp, dirs_exist_ok=True))


def resume_or_start(accelerator: Accelerator, out: Path, run_id: str, fresh: bool,
                    say: Callable[[str], None]) -> TrainerState:
    """The saved state of this same run (its accelerator state loaded), or a fresh one; a fresh start
    clears the folder's old checkpoints and metrics, so nothing of another run is left beside it."""
    last_dir = out / LAST_DIR
    if accelerator.is_main_process:
        restore_replaced_dir(last_dir)
    accelerator.wait_for_everyone()
    state = TrainerState(run_id)
    saved_file = last_dir / TRAIN_STATE
    if not fresh and saved_file.is_file():
        saved = json.loads(saved_file.read_text(encoding="utf-8"))
        if saved.get("run_id") == run_id:
            accelerator.load_state(str(last_dir))
            state = TrainerState(**saved)
            publish_best(accelerator, out)
            say(f"resuming from {last_dir} after epoch {state.epochs_done}")
        else:
            say(f"{last_dir} is from another run (data, model, config, code or process count differ): "
                "starting afresh")
    if state.epochs_done == 0 and accelerator.is_main_process:
        # imported here, not at the top, so that `mer lineage` reads checkpoints without loading scikit-learn
        for stale in (out / BEST_DIR, last_dir, out / METRICS_FILE):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return state
