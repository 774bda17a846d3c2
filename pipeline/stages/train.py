"""Train CMATH on one corpus: `mer train --corpus C --prepared P --features F --out O --params params.yaml`.

One loop, top to bottom (`train`): load the corpus once, build the model, then per epoch train on
the train split, score dev and test, keep the best epoch by dev weighted F1 (model selection sees
dev only; test at that epoch is what is reported), save the resumable `last` state, stop early
after `patience` epochs without a better dev score.

Built on HF accelerate, so the same command runs on CPU, one GPU, or several processes
(`accelerate launch --multi_gpu --num_processes N -m pipeline.cli train ...`, which on a machine
without GPUs runs N CPU processes with gloo; note that accelerate 1.x's `--cpu --num_processes N`
starts ONE process unless an MPI hostfile is given); predictions are gathered per dialogue with
`gather_for_metrics` and unpadded per utterance (`pipeline.stages.evaluate.predict`).

Params (params.yaml `train`): the keys directly under `train` are `TrainConfig` fields and apply to
every corpus; `train.<corpus>` (a corpus name of `pipeline.corpora`) overrides any of them for that
corpus, with `model` merged key by key. `train.model` holds `CMATHConfig` fields except input_dims,
num_classes and num_speakers, which come from the data; `class_weights: balanced` means inverse
train-label frequency, normalised to mean 1.

Output folder `O`:

    best/model.safetensors   weights of the selected epoch
    best/feature_stats.safetensors   the train split's per-dimension feature mean/std (standardize)
    best/checkpoint.json     CMATHConfig, label and speaker maps, train config, seed, epoch, metrics,
                             git commit, data lineage (manifest sha256, every store's metadata incl.
                             model_sha256), weights sha256: what the evaluator and `mer lineage` read
    last/                    accelerator.save_state (weights, optimizer, scheduler, RNG states of
                             every process) + trainer_state.json (epoch, history, best so far) +
                             best/ (the best checkpoint so far; best/ above is published from it)
    dvclive/                 per-epoch losses and metrics (DVC plots), rebuilt from the history
    metrics.json             the selected epoch's dev and test metrics, and `test_best_epoch_oracle`
                             (the best test score over all epochs: an optimistic bound, NOT a result)

Both checkpoints are written to a temporary folder and renamed. A rerun with the same data, config,
code and process count resumes from `last` (from the start of the epoch after it); anything else
starts afresh and says so. On CPU a resumed run is bit-identical to a straight one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.errors import PipelineError
from pipeline.core.fingerprint import sha256_file
from pipeline.core.progress import progress
from pipeline.formats.stage_report import REPORT_FILE

TRAIN_STATE = "trainer_state.json"
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
SCHEDULERS = ("cosine", "constant")
DATA_FIELDS = ("input_dims", "num_classes", "num_speakers")
# the sources whose change makes a `last/` state another run (paths from the project root)
CODE_FILES = (
    "model/batch.py", "model/cmath.py", "pipeline/training/data.py", "pipeline/stages/train.py",
    "pipeline/stages/evaluate.py",
)


@dataclass
class TrainConfig:
    """params.yaml `train` (after the corpus's overrides); see the module docstring."""

    seed: int = 0
    epochs: int = 30
    lr: float = 1e-4
    weight_decay: float = 1e-4
    batch_size: int = 16  # dialogues per batch and process
    patience: int = 10  # epochs without a better dev weighted F1 before stopping; 0 = never stop early
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping
    warmup_ratio: float = 0.0  # share of all steps with a linear warm-up
    scheduler: str = "cosine"  # cosine decay to 0 | constant, after the warm-up
    modalities: list[str] = field(default_factory=lambda: ["text", "audio", "face"])
    mixed_precision: str = "auto"  # auto: bf16 on a GPU, no on CPU | no | bf16 | fp16
    speaker_rule: str = "auto"  # auto: gender for iemocap, name otherwise | gender | name
    min_speaker_count: int = 1  # name rule: speakers seen fewer times in train get id 0 ("other")
    bucket_by_length: bool = True  # batch dialogues of similar length (less padding)
    standardize: bool = True  # z-score each feature dimension with train-split statistics (saved with the model)
    model: dict[str, Any] = field(default_factory=dict)  # CMATHConfig fields

    def __post_init__(self) -> None:
        for name in ("seed", "epochs", "batch_size", "patience", "min_speaker_count"):
            value, least = getattr(self, name), 1 if name in ("epochs", "batch_size") else 0
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        for name in ("lr", "weight_decay", "grad_clip", "warmup_ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
            setattr(self, name, float(value))
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup_ratio >= 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.speaker_rule not in ("auto", "gender", "name"):
            raise ValueError(f"speaker_rule must be auto, gender or name, got {self.speaker_rule!r}")
        names = self.modalities
        if not isinstance(names, list) or not names or not all(isinstance(m, str) for m in names):
            raise ValueError(f"modalities must be a non-empty list of names, got {self.modalities!r}")
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities lists a modality twice: {self.modalities}")
        if not isinstance(self.model, dict):
            raise ValueError(f"model must be a mapping of CMATHConfig fields, got {self.model!r}")
        given = sorted(set(self.model) & set(DATA_FIELDS))
        if given:
            raise ValueError(f"model.{given[0]} comes from the data (feature stores, label map, speakers); remove it")


def load_train_config(params: Path | str, corpus: str) -> TrainConfig:
    """`train` of the params file with `train.<corpus>` applied (see the module docstring)."""
    from pipeline.core.params import load_params, section_to_dataclass
    from pipeline.corpora import available_corpora

    section = load_params(Path(params)).get("train")
    if not isinstance(section, dict):
        raise PipelineError(f"{params}: section 'train' not found")
    corpora = set(available_corpora())
    base = {k: v for k, v in section.items() if k not in corpora}
    override = section.get(corpus) or {}
    if not isinstance(override, dict):
        raise PipelineError(f"{params}:train.{corpus} must be a mapping of train keys to override")
    section_to_dataclass(TrainConfig, override, f"{params}:train.{corpus}")  # unknown keys named here
    merged = {**base, **override, "model": {**(base.get("model") or {}), **(override.get("model") or {})}}
    return section_to_dataclass(TrainConfig, merged, f"{params}:train (with train.{corpus})")


def resolve_mixed_precision(mode: str, cpu: bool = False) -> str:
    if mode == "auto":
        return "bf16" if torch.cuda.is_available() and not cpu else "no"
    return mode


def make_accelerator(mode: str, cpu: bool = False):
    """An Accelerator for this process, with `mode` resolved ("auto": bf16 on a GPU, no on CPU).

    Several processes on a machine without GPUs (`accelerate launch --multi_gpu --num_processes N`
    there) run on CPU with gloo; accelerate would otherwise start each process alone, and N
    independent runs would write the same folder, so that mismatch is an error.
    """
    from accelerate import Accelerator

    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and not torch.cuda.is_available():
        cpu = True
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(mode, cpu), cpu=cpu)
    if accelerator.num_processes != world:
        raise PipelineError(
            f"launched as {world} processes but accelerate joined {accelerator.num_processes}; "
            "check the launcher's settings (`accelerate launch --multi_gpu --num_processes N`)"
        )
    return accelerator


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def code_version() -> dict[str, Any]:
    """The git commit of this code (None outside a git checkout) and the sha256 of the model's sources."""
    here = Path(__file__).resolve().parents[2]
    sources = {n: sha256_file(here / n) for n in CODE_FILES if (here / n).is_file()}

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=10, check=True).stdout

    commit, dirty = None, None
    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--", *CODE_FILES).strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"git_commit": commit or None, "git_dirty": dirty, "model_sources_sha256": sources}


def build_model_config(config: TrainConfig, data, where: str = "train.model"):
    """CMATHConfig from the data's widths, labels and speakers plus the `train.model` kwargs."""
    from model.cmath import CMATHConfig

    kwargs = dict(config.model)
    if kwargs.get("class_weights") == "balanced":
        labels = data.splits["train"].labels
        counts = torch.bincount(labels[labels >= 0], minlength=len(data.label_names)).double()
        weights = torch.where(counts > 0, counts.sum() / counts.clamp_min(1) / len(counts), torch.zeros_like(counts))
        kwargs["class_weights"] = (weights / weights[counts > 0].mean()).tolist()
    try:
        return CMATHConfig(
            input_dims=data.input_dims, num_classes=len(data.label_names),
            num_speakers=data.speaker_map.num_speakers, **kwargs,
        )
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"{where}: {exc} (modalities in use: {data.modalities})") from None


def _lr_lambda(total_steps: int, warmup_steps: int, kind: str) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _save_folder(accelerator, final: Path, write: Callable[[Path], None], collective: bool = False) -> None:
    """Write a folder atomically: into a temporary sibling, then renamed over `final` by the main process.

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
        old = final.parent / f".{final.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _recover_folder(accelerator, final: Path) -> None:
    """Undo a kill between `_save_folder`'s two renames: `final` is gone and `.<name>.old` is the whole
    previous folder (the new one in `.<name>.partial` may be incomplete), so the old one is put back."""
    old = final.parent / f".{final.name}.old"
    if accelerator.is_main_process and not final.exists() and old.is_dir():
        os.replace(old, final)
    accelerator.wait_for_everyone()


def train_epoch(accelerator, model, loader, optimizer, scheduler, grad_clip: float, loss_names: list[str]
                ) -> dict[str, float]:
    """One pass over the training dialogues: {"loss": mean total loss, <term>: mean of each loss term},
    averaged over the batches of all processes."""
    model.train()
    sums = torch.zeros(2 + len(loss_names), dtype=torch.float64, device=accelerator.device)  # loss, batches, terms
    for batch in loader:
        output = model(batch)
        # a batch without any label still takes part (zero loss), so processes stay in step
        loss = output.loss if output.loss is not None else output.logits.sum() * 0.0
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        zero, one = torch.zeros((), device=loss.device), torch.ones((), device=loss.device)
        terms = [output.losses.get(name, zero).detach() for name in loss_names]
        sums += torch.stack([loss.detach().float(), one, *[t.float() for t in terms]]).to(sums)
    sums = accelerator.reduce(sums, reduction="sum").cpu()
    losses = {"loss": float(sums[0] / sums[1])}
    losses.update({name: float(sums[2 + i] / sums[1]) for i, name in enumerate(loss_names)})
    return losses


def _publish_best(accelerator, source: Path, best_dir: Path) -> None:
    """Copy last/best to best/ (atomically) unless best/ already holds that checkpoint."""
    from pipeline.stages.evaluate import CHECKPOINT_JSON

    current = best_dir / CHECKPOINT_JSON
    if current.is_file() and current.read_bytes() == (source / CHECKPOINT_JSON).read_bytes():
        return
    _save_folder(accelerator, best_dir, lambda tmp: shutil.copytree(source, tmp, dirs_exist_ok=True))


def _atomic_json(path: Path, value: Any) -> None:
    from pipeline.core.atomic import atomic_write_bytes

    atomic_write_bytes(path, _json_bytes(value))


def _summary(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: metrics[k] for k in ("accuracy", "weighted_f1", "macro_f1")}


def train(
    corpus: str,
    prepared: Path | str,
    features: Path | str,
    out: Path | str,
    config: TrainConfig,
    *,
    fresh: bool = False,
    cpu: bool = False,
    feature_shuffle: int | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train one model (seed `config.seed`) into `out`; returns the content of `out/metrics.json`.

    `feature_shuffle` (alignment check only) permutes features across utterances, see pipeline.training.data.
    `on_epoch_end(epoch)` is called after each epoch's `last` state is saved (tests stop a run there).
    """
    from accelerate.utils import set_seed
    from safetensors.torch import save_file
    from torch.utils.data import DataLoader

    from model.cmath import CMATH
    from pipeline.training.data import DialogueBatchSampler, DialogueIndices, load_corpus
    from pipeline.stages.evaluate import CHECKPOINT_JSON, STATS_FILE, WEIGHTS_FILE, predict, split_metrics

    out = Path(out)
    accelerator = make_accelerator(config.mixed_precision, cpu)
    mixed_precision = accelerator.mixed_precision
    say = log or accelerator.print

    # ---- data ----
    data = load_corpus(
        prepared, features, config.modalities, speaker_rule=config.speaker_rule,
        min_speaker_count=config.min_speaker_count, feature_shuffle=feature_shuffle,
    )
    if data.corpus and data.corpus != corpus:
        raise PipelineError(f"{data.manifest_path}: is a {data.corpus} manifest, not {corpus}")
    stats = data.feature_stats() if config.standardize else None
    if stats is not None:
        data.standardize(stats)
    for needed in ("dev", "test"):
        if needed not in data.splits:
            raise PipelineError(
                f"{data.manifest_path}: no {needed} split (model selection needs dev; results need test)"
            )
    say(data.describe())

    # ---- model, optimizer, schedule ----
    set_seed(config.seed)
    model_config = build_model_config(config, data)
    model = CMATH(model_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    train_split = data.splits["train"]
    train_sampler = DialogueBatchSampler(
        train_split.lengths, config.batch_size, shuffle=True, seed=config.seed, bucket=config.bucket_by_length
    )
    total_steps = config.epochs * len(train_sampler)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, int(config.warmup_ratio * total_steps), config.scheduler)
    )

    def loader(split, sampler):
        return DataLoader(DialogueIndices(split), batch_sampler=sampler, collate_fn=split.collate)

    eval_splits = {name: data.splits[name] for name in ("dev", "test")}
    loaders = [loader(train_split, train_sampler)] + [
        loader(s, DialogueBatchSampler(s.lengths, config.batch_size, shuffle=False)) for s in eval_splits.values()
    ]
    prepared_objects = accelerator.prepare(model, optimizer, scheduler, *loaders)
    model, optimizer, scheduler, train_loader, *eval_loaders = prepared_objects
    eval_loaders = dict(zip(eval_splits, eval_loaders))

    # ---- what this run is: a `last` state is resumed only if all of it is the same ----
    code = code_version()
    identity = {
        "train_config": asdict(config), "model_config": model_config.to_dict(),
        "data": {  # contents, not paths: the same data under another path still resumes
            "manifest_sha256": data.manifest_sha256, "dropped": sorted(data.dropped),
            "feature_shuffle": feature_shuffle,
            "stores": {m: {k: st[k] for k in ("metadata", "index_sha256")} for m, st in data.stores.items()},
        },
        "sources": code["model_sources_sha256"], "num_processes": accelerator.num_processes,
        "mixed_precision": mixed_precision,
    }
    run_id = _sha256_json(identity)
    last_dir, best_dir = out / "last", out / "best"
    state = {"run_id": run_id, "epochs_done": 0, "history": [], "best_epoch": None, "best_dev_weighted_f1": None,
             "bad_epochs": 0, "stopped_early": False}
    _recover_folder(accelerator, last_dir)
    previous = last_dir / TRAIN_STATE
    if not fresh and previous.is_file():
        saved = json.loads(previous.read_text(encoding="utf-8"))
        if saved.get("run_id") == run_id:
            accelerator.load_state(str(last_dir))
            state = saved
            _publish_best(accelerator, last_dir / "best", best_dir)
            say(f"resuming from {last_dir} after epoch {state['epochs_done']}")
        else:
            say(f"{last_dir} is from another run (data, config, code or process count differ): starting afresh")
    if state["epochs_done"] == 0 and accelerator.is_main_process:
        for stale in (best_dir, last_dir, out / "metrics.json"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    accelerator.wait_for_everyone()

    record = {
        "format_version": 1,
        "corpus": corpus,
        "model_config": model_config.to_dict(),
        "label_names": data.label_names,
        "label_map": {name: i for i, name in enumerate(data.label_names)},
        "speaker_map": data.speaker_map.to_dict(),
        "modalities": data.modalities,
        "train_config": asdict(config),
        "seed": config.seed,
        "mixed_precision": mixed_precision,
        "num_processes": accelerator.num_processes,
        "code": code,
        "data": data.lineage(),
        "data_report": data.report,
    }

    # ---- the loop ----
    epochs = range(state["epochs_done"], config.epochs)
    for epoch in progress(epochs, f"train {corpus}", unit="epoch") if accelerator.is_main_process else epochs:
        if state["stopped_early"]:
            break
        train_sampler.set_epoch(epoch)
        train_loader.set_epoch(epoch)
        losses = train_epoch(accelerator, model, train_loader, optimizer, scheduler, config.grad_clip,
                             list(model_config.loss_weights))
        scores = {
            name: split_metrics(
                predict(accelerator, model, eval_loaders[name], split, len(data.label_names)), data.label_names
            )
            for name, split in eval_splits.items()
        }
        entry = {"epoch": epoch + 1, "lr": float(scheduler.get_last_lr()[0]), "train": losses, **scores}
        state["history"].append(entry)
        state["epochs_done"] = epoch + 1
        dev_f1 = scores["dev"]["weighted_f1"]
        improved = state["best_dev_weighted_f1"] is None or dev_f1 > state["best_dev_weighted_f1"]
        weights = None
        if improved:
            state.update(best_epoch=epoch + 1, best_dev_weighted_f1=dev_f1, bad_epochs=0)
            state_dict = accelerator.unwrap_model(model).state_dict()
            weights = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
        else:
            state["bad_epochs"] += 1
            state["stopped_early"] = config.patience > 0 and state["bad_epochs"] >= config.patience
        say(
            f"epoch {epoch + 1}/{config.epochs}: loss {losses['loss']:.4f}, dev wF1 {dev_f1:.4f}, "
            f"test wF1 {scores['test']['weighted_f1']:.4f}{' *' if improved else ''}"
        )

        def write_last(tmp: Path) -> None:
            # last/ = the accelerator state, the trainer state and (last/best/) the best checkpoint so far,
            # renamed into place as one: a kill at any moment leaves a consistent pair to resume from
            accelerator.save_state(str(tmp))
            if not accelerator.is_main_process:
                return
            (tmp / TRAIN_STATE).write_bytes(_json_bytes(state))
            if weights is None:
                shutil.copytree(last_dir / "best", tmp / "best")
                return
            (tmp / "best").mkdir()
            save_file(weights, str(tmp / "best" / WEIGHTS_FILE))
            best = {**record, "epoch": epoch + 1, "dev": scores["dev"], "test": scores["test"],
                    "weights_sha256": sha256_file(tmp / "best" / WEIGHTS_FILE), "feature_stats_sha256": None}
            if stats is not None:
                save_file(stats, str(tmp / "best" / STATS_FILE))
                best["feature_stats_sha256"] = sha256_file(tmp / "best" / STATS_FILE)
            (tmp / "best" / CHECKPOINT_JSON).write_bytes(_json_bytes(best))

        _save_folder(accelerator, last_dir, write_last, collective=True)
        _publish_best(accelerator, last_dir / "best", best_dir)
        if accelerator.is_main_process:
            _write_dvclive(out / "dvclive", state["history"])
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)

    # ---- results ----
    history = state["history"]
    best = next(h for h in history if h["epoch"] == state["best_epoch"])
    oracle = max(history, key=lambda h: (h["test"]["weighted_f1"], -h["epoch"]))
    metrics = {
        "corpus": corpus,
        "seed": config.seed,
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "stopped_early": state["stopped_early"],
        "dev": _summary(best["dev"]),
        "test": _summary(best["test"]),
        "test_per_class_f1": best["test"]["per_class_f1"],
        # the best test score over ALL epochs: selected on test, so an optimistic bound, not a result
        "test_best_epoch_oracle": {"epoch": oracle["epoch"], **_summary(oracle["test"])},
        "feature_shuffle": feature_shuffle,
    }
    if accelerator.is_main_process:
        _write_dvclive(out / "dvclive", history, artifact=(best_dir, f"cmath-{corpus}"))
        _atomic_json(out / "metrics.json", metrics)
        _atomic_json(out / REPORT_FILE, data.stage_report("train"))
    accelerator.wait_for_everyone()
    say(
        f"best epoch {best['epoch']} (dev wF1 {best['dev']['weighted_f1']:.4f}): "
        f"test wF1 {best['test']['weighted_f1']:.4f}, accuracy {best['test']['accuracy']:.4f}; checkpoint {best_dir}"
    )
    return metrics


def _write_dvclive(folder: Path, history: list[dict[str, Any]], artifact: tuple[Path, str] | None = None) -> None:
    """The per-epoch curves, rewritten from the run's history after every epoch (so a resumed run has
    every epoch exactly once); at the end the best checkpoint is logged as a model artifact."""
    import logging

    from dvclive import Live

    logging.getLogger("dvclive").setLevel(logging.ERROR)
    # dvcyaml=False: dvc.yaml is written by hand (its top-level plots/artifacts name these files)
    with Live(dir=str(folder), save_dvc_exp=False, dvcyaml=False) as live:
        for entry in history:
            live.step = entry["epoch"]  # the plots' x axis is the epoch (1-based)
            live.log_metric("lr", entry["lr"])
            for name in sorted(entry["train"]):  # sorted: a resumed history was reloaded from sorted JSON
                live.log_metric(f"train/{name}", entry["train"][name])
            for split in ("dev", "test"):
                for name in ("accuracy", "weighted_f1", "macro_f1"):
                    live.log_metric(f"{split}/{name}", entry[split][name])
            live.next_step()
        if artifact is not None:
            live.log_artifact(str(artifact[0]), type="model", name=artifact[1], cache=False)


def train_seeds(
    corpus: str, prepared: Path | str, features: Path | str, out: Path | str, config: TrainConfig, seeds: int,
    **kwargs: Any,
) -> dict[str, Any]:
    """`seeds` runs with seeds seed..seed+seeds-1 into out/seed-<s>/, and out/seeds.json with mean and std."""
    from dataclasses import replace

    out = Path(out)
    seed_list = [config.seed + k for k in range(seeds)]
    runs = [
        train(corpus, prepared, features, out / f"seed-{s}", replace(config, seed=s), **kwargs) for s in seed_list
    ]
    keys = [(split, name) for split in ("dev", "test") for name in ("accuracy", "weighted_f1", "macro_f1")]
    values = {f"{s}.{n}": np.array([r[s][n] for r in runs]) for s, n in keys}
    summary = {
        "corpus": corpus,
        "seeds": [r["seed"] for r in runs],
        "runs": [{"seed": r["seed"], "best_epoch": r["best_epoch"], "dev": r["dev"], "test": r["test"]} for r in runs],
        "mean": {k: float(v.mean()) for k, v in values.items()},
        # sample standard deviation (ddof=1); 0 for a single run
        "std": {k: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()},
    }
    from accelerate import PartialState

    if PartialState().is_main_process:
        _atomic_json(out / "seeds.json", summary)
    return summary
