"""Train a model on one corpus: `mer train --corpus C --prepared P --features F --out O --params params.yaml`.

One loop, top to bottom (`train`): load the corpus once, build the model, then per epoch train on
the train split, score dev and test, keep the best epoch by dev weighted F1 (model selection sees
dev only; test at that epoch is what is reported), save the resumable `last` state, stop early
after `patience` epochs without a better dev score. The passes themselves are in
`pipeline.training.loop` (accelerate: CPU, one GPU or several processes), saving and resuming in
`pipeline.training.checkpoint`.

Params (params.yaml `train`): the keys directly under `train` are `TrainConfig` fields and apply to
every corpus; `train.<corpus>` (a corpus name of `pipeline.corpora`) overrides any of them for that
corpus, with `model` merged key by key (and each model's own block key by key).

`train.model` selects and configures the model (`check_model_params`):

    name: cmath             one of `model.registry.MODELS` (cmath, mlp, bigru, late_fusion); default cmath
    <setting>: value        a field of the named model's config, other than input_dims, num_classes and
                            num_speakers, which come from the data (`DATA_FIELDS`)
    <model name>: {...}     settings read only when that model is the one named (e.g. `cmath: {num_heads: 2}`),
                            so one params file serves every model; a setting is written once, beside
                            `name` or in a block (both is an error: neither silently wins)

Every key is checked against the config of the model it is for: a setting the named model does not
have is a one-line error naming the key. `class_weights: balanced` means inverse train-label
frequency, normalised to mean 1. Every model trains through the same loop, selection, metrics,
checkpoints, dvclive curves and report; `model_name` in `best/checkpoint.json` says which it was.

Output folder `O`: `best/` and `last/` (see `pipeline.training.checkpoint`), and

    dvclive/                 per-epoch losses and metrics (DVC plots), rebuilt from the history
    metrics.json             the selected epoch's dev and test metrics, and `test_best_epoch_oracle`
                             (the best test score over all epochs: an optimistic bound, NOT a result)
    .mer-output.json         the marker naming this stage (pipeline.core.outputs), written before the
                             first epoch; a folder without it (unless it holds only the files above) or
                             with another stage's is refused, as is an --out overlapping an input

Both checkpoints are written to a temporary folder and renamed. A rerun with the same data, config,
code and process count resumes from `last` (from the start of the epoch after it); anything else
starts afresh and says so. On CPU a resumed run is bit-identical to a straight one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from dvclive import Live

from model.registry import DATA_FIELDS, DEFAULT_MODEL, MODELS, build_model, model_names, model_spec
from pipeline.core.atomic import atomic_write_bytes, write_marker
from pipeline.core.errors import PipelineError, one_line
from pipeline.core.fingerprint import sha256_file
from pipeline.core.locks import output_lock
from pipeline.core.outputs import check_output
from pipeline.core.params import (
    MODALITIES,
    ParamError,
    check_mapping,
    field_types,
    load_section,
    require_choice,
    require_finite,
    section_to_dataclass,
)
from pipeline.core.progress import progress
from pipeline.corpora import corpus_names
from pipeline.formats.manifest import RELEASE_SPLIT
from pipeline.formats.stage_report import REPORT_FILE
from pipeline.training.checkpoint import (
    BestCheckpoint,
    TrainerState,
    cpu_weights,
    json_bytes,
    resume_or_start,
    save_last,
)
from pipeline.training.data import CorpusData, DialogueBatchSampler, load_corpus
from pipeline.training.loop import (
    MIXED_PRECISION,
    SCHEDULERS,
    dialogue_loader,
    is_main_launch_process,
    lr_schedule,
    make_accelerator,
    modality_subsets,
    score,
    train_epoch,
)
from pipeline.formats.run_files import BEST_DIR, LAST_DIR, METRICS_FILE
from pipeline.training.metrics import SUMMARY_KEYS, aggregate_runs, summary

STAGE = "train"  # the `mer` subcommand, named by the output folder's marker
MODEL_NAME_KEY = "name"  # `train.model.name`
FEATURE_SET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a store folder's name, never a path


def _param_types(config_class: type) -> dict[str, Any]:
    """A model config's fields but the data's, as typed there; class_weights may also be "balanced"."""
    types = {name: hint for name, hint in field_types(config_class).items() if name not in DATA_FIELDS}
    if "class_weights" in types:
        types["class_weights"] = list[float] | Literal["balanced"] | None
    return types


# model name -> the settings `train.model` may give it, with their types
MODEL_PARAM_TYPES = {name: _param_types(spec.config_class) for name, spec in MODELS.items()}
# the sources whose change makes a `last/` state another run (paths from the project root); every module
# of model/ and pipeline/training/ is one (tests/pipeline/stages/test_train.py checks it)
CODE_FILES = (
    "model/__init__.py", "model/batch.py", "model/common.py", "model/registry.py",
    "model/cmath.py", "model/mlp.py", "model/bigru.py", "model/late_fusion.py",
    "pipeline/training/__init__.py", "pipeline/training/data.py", "pipeline/training/loop.py",
    "pipeline/training/checkpoint.py", "pipeline/training/metrics.py", "pipeline/stages/train.py",
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
    scheduler: str = "cosine"  # cosine decay to 0 | constant, after the warm-up (SCHEDULERS)
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))  # each one of MODALITIES
    mixed_precision: str = "auto"  # auto: bf16 on a GPU, no on CPU | no | bf16 | fp16 (MIXED_PRECISION)
    speaker_rule: Literal["auto", "gender", "name"] = "auto"  # auto: gender for iemocap, name otherwise
    min_speaker_count: int = 1  # name rule: speakers seen fewer times in train get id 0 ("other")
    bucket_by_length: bool = True  # batch dialogues of similar length (less padding)
    standardize: bool = True  # z-score each feature dimension with train-split statistics (saved with the model)
    split: str = RELEASE_SPLIT  # the manifest's own split, or a scheme it offers (IEMOCAP: loso-1..loso-5)
    # each utterance loses each non-text modality with this probability in training (modality dropout)
    modality_dropout: float = 0.0
    # score dev each epoch with every subset of the modalities that keeps text; the best (epoch, subset)
    # is selected, and test scored with that subset (ties: the fuller subset)
    select_modalities: bool = False
    model: dict[str, Any] = field(default_factory=dict)  # `name` and the model's settings (check_model_params)
    # the feature set each modality's store is read from, `<features>/<set>`; a modality it leaves out
    # reads the set named after it (`extract.<set>` in params.yaml makes the store)
    features: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Value rules; keys and types are checked before (pipeline.core.params.section_to_dataclass)."""
        for name in ("seed", "epochs", "batch_size", "patience", "min_speaker_count"):
            value, least = getattr(self, name), 1 if name in ("epochs", "batch_size") else 0
            if value < least:
                raise ParamError(name, f"must be an integer >= {least}, got {value!r}")
        for name in ("lr", "weight_decay", "grad_clip", "warmup_ratio", "modality_dropout"):
            value = require_finite(float(getattr(self, name)), name)
            if value < 0:
                raise ParamError(name, f"must be a finite number >= 0, got {value!r}")
            setattr(self, name, value)
        if self.lr <= 0:
            raise ParamError("lr", f"must be > 0, got {self.lr}")
        if self.warmup_ratio >= 1:
            raise ParamError("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        if self.modality_dropout >= 1:
            raise ParamError("modality_dropout", f"must be in [0, 1), got {self.modality_dropout}")
        require_choice(self.scheduler, SCHEDULERS, "scheduler")
        require_choice(self.mixed_precision, MIXED_PRECISION, "mixed_precision")
        if not self.modalities:
            raise ParamError("modalities", f"must name at least one of {', '.join(MODALITIES)}")
        for i, name in enumerate(self.modalities):
            require_choice(name, MODALITIES, f"modalities[{i}]")
        if len(set(self.modalities)) != len(self.modalities):
            raise ParamError("modalities", f"lists a modality twice: {self.modalities}")
        for modality, name in self.features.items():
            require_choice(modality, MODALITIES, "features")
            if not FEATURE_SET_NAME.fullmatch(name):
                raise ParamError(f"features.{modality}", f"must be a feature set's name (letters, digits, _ . -), got {name!r}")
        self.model = check_model_params(self.model)

    def feature_set(self, modality: str) -> str:
        """The feature set (store folder under --features) that `modality` is read from."""
        return self.features.get(modality, modality)

    @property
    def model_name(self) -> str:
        """The model `train.model.name` selects (cmath when it is not given)."""
        return self.model.get(MODEL_NAME_KEY, DEFAULT_MODEL)

    def model_settings(self) -> dict[str, Any]:
        """The named model's settings: the keys beside `name` and those of its own block."""
        shared = {k: v for k, v in self.model.items() if k != MODEL_NAME_KEY and k not in MODELS}
        return {**shared, **(self.model.get(self.model_name) or {})}


def check_model_params(values: dict[str, Any]) -> dict[str, Any]:
    """`train.model` checked (see the module docstring): the name is a model, every key beside it is a
    setting of that model, every `<model name>` block holds settings of that model, each of the type
    its config gives it; none is a field that comes from the data. Returns the values, converted."""
    name = values.get(MODEL_NAME_KEY, DEFAULT_MODEL)
    if not isinstance(name, str) or name not in MODELS:
        raise ParamError(f"model.{MODEL_NAME_KEY}", f"unknown model {name!r}; choose one of {', '.join(model_names())}")
    blocks = {block: values[block] for block in MODELS if block in values}
    for block, settings in blocks.items():
        if settings is not None and not isinstance(settings, dict):
            raise ParamError(f"model.{block}", f"must be a mapping of {block} settings, got {settings!r}")
    for where, settings in [("model", values), *((f"model.{b}", s or {}) for b, s in blocks.items())]:
        given = sorted(set(settings) & set(DATA_FIELDS))
        if given:
            raise ParamError(f"{where}.{given[0]}",
                             "comes from the data (feature stores, label map, speakers): remove it")
    types = MODEL_PARAM_TYPES[name]
    shared = {k: v for k, v in values.items() if k != MODEL_NAME_KEY and k not in MODELS}
    unknown = sorted(str(k) for k in shared if k not in types)
    if unknown:
        raise ParamError(f"model.{unknown[0]}", _unknown_setting(unknown[0], name))
    for block, settings in blocks.items():
        twice = sorted(set(shared) & set(settings or {}))
        if twice:
            raise ParamError(f"model.{twice[0]}", f"is set both here and in the {block} block ({block}.{twice[0]}); "
                             "write a setting once: beside `name` for every model that has it, or in a model's "
                             "block for that model only")
    checked = {MODEL_NAME_KEY: name} if MODEL_NAME_KEY in values else {}
    checked.update(check_mapping(shared, types, "model"))
    for block, settings in blocks.items():
        checked[block] = check_mapping(settings or {}, MODEL_PARAM_TYPES[block], f"model.{block}")
    return checked


def _unknown_setting(key: str, name: str) -> str:
    """The problem with `train.model.<key>` that model `name` does not have, and where it could go."""
    known = ", ".join(sorted([*MODEL_PARAM_TYPES[name], MODEL_NAME_KEY]))
    owners = [m for m, types in MODEL_PARAM_TYPES.items() if key in types]
    where_else = ""
    if len(owners) == 1:
        where_else = (f"; {key} is a setting of {owners[0]} only: put it under train.model.{owners[0]}, "
                      f"which only {owners[0]} reads")
    elif owners:
        where_else = (f"; {key} is a setting of {', '.join(owners)}: put it under train.model.<model name> for "
                      "each, which only that model reads")
    # the message starts as every unknown key's does (pipeline.core.params.check_mapping)
    return f"unknown key; known keys: {known} (the {name} model's settings{where_else})"



def load_train_config(params: Path | str, corpus: str) -> TrainConfig:
    """`train` of the params file with `train.<corpus>` applied (see the module docstring); `train.model`
    and each model's block in it are merged key by key.

    The shared keys are checked on their own first, then the corpus's overrides on the merged
    config, so every problem names the key where it was written (`train.lr` or `train.meld.lr`)."""
    section = load_section(params, "train")
    corpora = set(corpus_names())
    base = {k: v for k, v in section.items() if k not in corpora}
    section_to_dataclass(TrainConfig, base, f"{params}:train")
    where = f"{params}:train.{corpus}"
    override = section.get(corpus)
    override = {} if override is None else override
    if not isinstance(override, dict):
        raise PipelineError(f"{where}: must be a mapping of train keys to override, got {override!r}")
    if "features" in override:
        # dvc.yaml names each train stage's stores from train.features: a per-corpus choice would read a
        # store that is not the stage's dependency
        raise PipelineError(f"{where}.features: the feature sets are chosen for every corpus at once; "
                            f"set train.features instead")
    merged = {**base, **override}
    sources = {key: f"{where}.{key}" for key in override}
    if isinstance(override.get("model"), dict):
        base_model = base.get("model") if isinstance(base.get("model"), dict) else {}
        merged["model"] = {**base_model, **override["model"]}
        sources.pop("model")
        sources.update({f"model.{key}": f"{where}.model.{key}" for key in override["model"]})
        for block in MODELS:  # a model's own block is merged key by key too
            if isinstance(base_model.get(block), dict) and isinstance(override["model"].get(block), dict):
                merged["model"][block] = {**base_model[block], **override["model"][block]}
                sources.pop(f"model.{block}")
                sources.update({f"model.{block}.{key}": f"{where}.model.{block}.{key}"
                                for key in override["model"][block]})
    return section_to_dataclass(TrainConfig, merged, f"{params}:train", sources=sources)


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



def build_model_config(config: TrainConfig, data: CorpusData, where: str = "train.model"):
    """The named model's config from the data's widths, labels and speakers plus its `train.model` settings."""
    name = config.model_name
    kwargs = config.model_settings()
    if kwargs.get("class_weights") == "balanced":
        labels = data.splits["train"].labels
        counts = torch.bincount(labels[labels >= 0], minlength=len(data.label_names)).double()
        weights = torch.where(counts > 0, counts.sum() / counts.clamp_min(1) / len(counts), torch.zeros_like(counts))
        kwargs["class_weights"] = (weights / weights[counts > 0].mean()).tolist()
    try:
        return model_spec(name).config_class(
            input_dims=data.input_dims, num_classes=len(data.label_names),
            num_speakers=data.speaker_map.num_speakers, **kwargs,
        )
    except (TypeError, ValueError) as exc:
        # model/ cannot raise ParamError (it imports nothing of pipeline/): its messages start with
        # the field they are about, which becomes the key (in the model's own block if it was set there)
        message = one_line(exc, limit=1000)
        field_name = message.split(" ", 1)[0]
        if field_name in MODEL_PARAM_TYPES[name] and " " in message:
            block = f".{name}" if field_name in (config.model.get(name) or {}) else ""
            where, message = f"{where}{block}.{field_name}", message.split(" ", 1)[1]
        raise PipelineError(f"{where}: {message} (model {name}; modalities in use: {data.modalities})") from None




def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def load_training_data(corpus: str, prepared: Path | str, features: Path | str, config: TrainConfig,
                       feature_shuffle: int | None) -> tuple[CorpusData, dict[str, torch.Tensor] | None]:
    """The corpus in memory, standardised with its train split's statistics (returned, or None)."""
    data = load_corpus(
        prepared, features, config.modalities, speaker_rule=config.speaker_rule,
        min_speaker_count=config.min_speaker_count, feature_shuffle=feature_shuffle, split=config.split,
        feature_sets=config.features,
    )
    if data.corpus and data.corpus != corpus:
        raise PipelineError(f"{data.manifest_path}: is a {data.corpus} manifest, not {corpus}")
    for needed in ("dev", "test"):
        if needed not in data.splits:
            raise PipelineError(f"{data.manifest_path}: no {needed} split (model selection needs dev; results need test)")
    stats = data.feature_stats() if config.standardize else None
    if stats is not None:
        data.standardize(stats)
    return data, stats


def run_identity(config: TrainConfig, model_config, data: CorpusData, code: dict[str, Any],
                 accelerator: Accelerator, feature_shuffle: int | None) -> str:
    """What this run is: a `last` state is resumed only if all of it is the same. Contents, not paths:
    the same data under another path still resumes."""
    return _sha256_json({
        "train_config": asdict(config), "model_name": config.model_name, "model_config": model_config.to_dict(),
        "data": {
            "manifest_sha256": data.manifest_sha256, "dropped": sorted(data.dropped),
            "feature_shuffle": feature_shuffle,
            "stores": {m: {k: st[k] for k in ("metadata", "index_sha256")} for m, st in data.stores.items()},
        },
        "sources": code["model_sources_sha256"], "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
    })


def checkpoint_record(corpus: str, config: TrainConfig, model_config, data: CorpusData,
                      code: dict[str, Any], accelerator: Accelerator) -> dict[str, Any]:
    """checkpoint.json's fields that every epoch shares (the epoch's own are added when it is best);
    `model_name` and `model_config` are what `pipeline.training.checkpoint.load_model` rebuilds."""
    return {
        "format_version": 1, "corpus": corpus, "model_name": config.model_name, "model_config": model_config.to_dict(),
        "label_names": data.label_names, "label_map": {name: i for i, name in enumerate(data.label_names)},
        "speaker_map": data.speaker_map.to_dict(), "modalities": data.modalities,
        "train_config": asdict(config), "seed": config.seed, "mixed_precision": accelerator.mixed_precision,
        "num_processes": accelerator.num_processes, "code": code, "data": data.lineage(),
        "data_report": data.report,
    }


def final_metrics(state: TrainerState, corpus: str, config: TrainConfig, feature_shuffle: int | None
                  ) -> dict[str, Any]:
    """metrics.json: the dev-selected epoch's scores, and the test oracle labelled as what it is."""
    best = state.entry(state.best_epoch)
    oracle = max(state.history, key=lambda h: (h["test"]["weighted_f1"], -h["epoch"]))
    return {
        "corpus": corpus, "model": config.model_name, "seed": config.seed, "split": config.split,
        "best_epoch": best["epoch"], "inference_modalities": best.get("modalities"),
        "epochs_run": len(state.history),
        "stopped_early": state.stopped_early, "dev": summary(best["dev"]), "test": summary(best["test"]),
        "test_per_class_f1": best["test"]["per_class_f1"],
        # the best test score over ALL epochs: selected on test, so an optimistic bound, not a result
        "test_best_epoch_oracle": {"epoch": oracle["epoch"], **summary(oracle["test"])},
        "feature_shuffle": feature_shuffle,
    }


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
    params_file: Path | None = None,
    wait_s: float = 0.0,
) -> dict[str, Any]:
    """Train one model (seed `config.seed`) into `out`; returns the content of `out/metrics.json`.

    `feature_shuffle` (alignment check only) permutes features across utterances, see pipeline.training.data.
    `on_epoch_end(epoch)` is called after each epoch's `last` state is saved (tests stop a run there).
    `out` must not overlap an input (`prepared`, `features`, `params_file`, the file the config came
    from) and must be absent, empty or a training folder (`check_train_output`), checked first; it
    is marked as `mer train`'s output just before the first epoch. The run holds `out`'s lock
    (`pipeline.core.locks`; in a multi-process run the main process does) from after that check to the
    end, waiting up to `wait_s` seconds for another run on it.
    """
    out = Path(out)
    check_train_output(out, prepared, features, params_file)
    with output_lock(out, STAGE, wait_s, enabled=is_main_launch_process()):
        return _train(corpus, prepared, features, out, config, fresh=fresh, cpu=cpu, feature_shuffle=feature_shuffle,
                      on_epoch_end=on_epoch_end, log=log)


def _train(
    corpus: str,
    prepared: Path | str,
    features: Path | str,
    out: Path,
    config: TrainConfig,
    *,
    fresh: bool,
    cpu: bool,
    feature_shuffle: int | None,
    on_epoch_end: Callable[[int], None] | None,
    log: Callable[[str], None] | None,
) -> dict[str, Any]:
    """`train` after its output check, with `out`'s lock held."""
    accelerator = make_accelerator(config.mixed_precision, cpu)
    say = log or accelerator.print
    data, stats = load_training_data(corpus, prepared, features, config, feature_shuffle)
    say(data.describe())

    # model, optimizer, schedule, loaders
    set_seed(config.seed)
    model_config = build_model_config(config, data)
    model = build_model(config.model_name, model_config)
    say(f"model {config.model_name}: {sum(p.numel() for p in model.parameters()):,} parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    train_split = data.splits["train"]
    train_sampler = DialogueBatchSampler(
        train_split.lengths, config.batch_size, shuffle=True, seed=config.seed, bucket=config.bucket_by_length
    )
    scheduler = lr_schedule(optimizer, config.epochs * len(train_sampler), config.warmup_ratio, config.scheduler)
    eval_splits = {name: data.splits[name] for name in ("dev", "test")}
    loaders = [dialogue_loader(train_split, train_sampler)] + [
        dialogue_loader(s, DialogueBatchSampler(s.lengths, config.batch_size, shuffle=False))
        for s in eval_splits.values()
    ]
    model, optimizer, scheduler, train_loader, *eval_loaders = accelerator.prepare(model, optimizer, scheduler, *loaders)

    # resume this same run, or start afresh
    code = code_version()
    run_id = run_identity(config, model_config, data, code, accelerator, feature_shuffle)
    if accelerator.is_main_process:
        _mark(out)
    state = resume_or_start(accelerator, out, run_id, fresh, say)
    record = checkpoint_record(corpus, config, model_config, data, code, accelerator)

    epochs = range(state.epochs_done, config.epochs)
    for epoch in progress(epochs, f"train {corpus}", unit="epoch") if accelerator.is_main_process else epochs:
        if state.stopped_early:
            break
        train_sampler.set_epoch(epoch)
        train_loader.set_epoch(epoch)
        dropout_draws = torch.Generator().manual_seed(config.seed * 100_003 + epoch)  # per epoch: resumes alike
        losses = train_epoch(accelerator, model, train_loader, optimizer, scheduler, config.grad_clip,
                             list(model_config.loss_weights), config.modality_dropout, dropout_draws)
        used, scores, dev_by_subset = score_epoch(accelerator, model, eval_loaders, eval_splits, data, config)
        improved = state.end_epoch(
            {"epoch": epoch + 1, "lr": float(scheduler.get_last_lr()[0]), "train": losses, **scores,
             "modalities": list(used), **({"dev_by_modalities": dev_by_subset} if dev_by_subset else {})},
            config.patience,
        )
        say(f"epoch {epoch + 1}/{config.epochs}: loss {losses['loss']:.4f}, dev wF1 {scores['dev']['weighted_f1']:.4f}, "
            f"test wF1 {scores['test']['weighted_f1']:.4f}{' *' if improved else ''}")
        best = None
        if improved:
            best_record = {**record, "epoch": epoch + 1, "dev": scores["dev"], "test": scores["test"],
                           "inference_modalities": list(used)}
            best = BestCheckpoint(cpu_weights(accelerator, model), stats, best_record)
        save_last(accelerator, out, state, best)
        if accelerator.is_main_process:
            _write_dvclive(out / "dvclive", state.history)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)

    metrics = final_metrics(state, corpus, config, feature_shuffle)
    if accelerator.is_main_process:
        _write_dvclive(out / "dvclive", state.history, artifact=(out / BEST_DIR, f"{config.model_name}-{corpus}"))
        atomic_write_bytes(out / METRICS_FILE, json_bytes(metrics))
        atomic_write_bytes(out / REPORT_FILE, json_bytes(data.stage_report("train")))
    accelerator.wait_for_everyone()
    say(f"{config.model_name}: best epoch {metrics['best_epoch']} (dev wF1 {metrics['dev']['weighted_f1']:.4f}): "
        f"test wF1 {metrics['test']['weighted_f1']:.4f}, accuracy {metrics['test']['accuracy']:.4f}; checkpoint {out / BEST_DIR}")
    return metrics


def score_epoch(accelerator: Accelerator, model, eval_loaders: list, eval_splits: dict, data: CorpusData,
                config: TrainConfig) -> tuple[tuple[str, ...], dict[str, Any], dict[str, float]]:
    """(modalities used, {"dev", "test"} scores, dev weighted F1 per subset) of this epoch's weights.

    Under `select_modalities` dev is scored with every subset that keeps text and the best subset
    is used for test (model selection still sees dev only); otherwise every modality is used."""
    dev_loader, test_loader = eval_loaders
    subsets = modality_subsets(data.modalities) if config.select_modalities else [tuple(data.modalities)]
    dev = {subset: score(accelerator, model, dev_loader, eval_splits["dev"], data.label_names, subset)
           for subset in subsets}
    used = max(subsets, key=lambda subset: dev[subset]["weighted_f1"])  # the first best: the fuller on ties
    test = score(accelerator, model, test_loader, eval_splits["test"], data.label_names, used)
    by_subset = {"+".join(subset): dev[subset]["weighted_f1"] for subset in subsets} if len(subsets) > 1 else {}
    return used, {"dev": dev[used], "test": test}, by_subset


def is_train_folder(folder: Path) -> bool:
    """True if every entry of the non-empty `folder` is one `mer train` writes (best/, last/, dvclive/,
    metrics.json, report.json, seeds.json, seed-<s>/ and their temporary names): a training folder
    from before outputs carried a marker, which a rerun resumes."""
    try:
        names = [entry.name for entry in os.scandir(folder)]
    except OSError:
        return False
    return bool(names) and all(_TRAIN_ENTRY.match(name) for name in names)


_TRAIN_ENTRY = re.compile(
    rf"^\.?({BEST_DIR}|{LAST_DIR})(\.partial|\.old)?$|^dvclive$|^seed-\d+$"
    rf"|^\.?({re.escape(METRICS_FILE)}|{re.escape(REPORT_FILE)}|seeds\.json)(\..+\.tmp)?$"
)


def check_train_output(out: Path, prepared: Path | str, features: Path | str, params_file: Path | None) -> None:
    """`mer train`'s output check (`pipeline.core.outputs.check_output`), before anything is loaded."""
    inputs = [("--prepared", Path(prepared)), ("--features", Path(features)), ("--params", params_file)]
    check_output(out, STAGE, inputs, legacy=is_train_folder)


def _mark(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, STAGE)


def _write_dvclive(folder: Path, history: list[dict[str, Any]], artifact: tuple[Path, str] | None = None) -> None:
    """The per-epoch curves, rewritten from the run's history after every epoch (so a resumed run has
    every epoch exactly once); at the end the best checkpoint is logged as a model artifact."""
    logging.getLogger("dvclive").setLevel(logging.ERROR)
    # dvcyaml=False: dvc.yaml is written by hand (its top-level plots/artifacts name these files)
    with Live(dir=str(folder), save_dvc_exp=False, dvcyaml=False) as live:
        for entry in history:
            live.step = entry["epoch"]  # the plots' x axis is the epoch (1-based)
            live.log_metric("lr", entry["lr"])
            for name in sorted(entry["train"]):  # sorted: a resumed history was reloaded from sorted JSON
                live.log_metric(f"train/{name}", entry["train"][name])
            for split in ("dev", "test"):
                for name in SUMMARY_KEYS:
                    live.log_metric(f"{split}/{name}", entry[split][name])
            live.next_step()
        if artifact is not None:
            live.log_artifact(str(artifact[0]), type="model", name=artifact[1], cache=False)



def train_seeds(
    corpus: str, prepared: Path | str, features: Path | str, out: Path | str, config: TrainConfig, seeds: int,
    **kwargs: Any,
) -> dict[str, Any]:
    """`seeds` runs with seeds seed..seed+seeds-1 into out/seed-<s>/, and out/seeds.json with mean and std."""
    out = Path(out)
    wait_s = kwargs.pop("wait_s", 0.0)
    params_file = kwargs.pop("params_file", None)
    check_train_output(out, prepared, features, params_file)
    with output_lock(out, STAGE, wait_s, enabled=is_main_launch_process()):  # one lock for all the seeds
        return _train_seeds(corpus, prepared, features, out, config, seeds, params_file, **kwargs)


def _train_seeds(
    corpus: str, prepared: Path | str, features: Path | str, out: Path, config: TrainConfig, seeds: int,
    params_file: Path | None, **kwargs: Any,
) -> dict[str, Any]:
    kwargs = {"fresh": False, "cpu": False, "feature_shuffle": None, "on_epoch_end": None, "log": None, **kwargs}
    if PartialState().is_main_process:
        _mark(out)
    seed_list = [config.seed + k for k in range(seeds)]
    runs = []
    for s in seed_list:
        check_train_output(out / f"seed-{s}", prepared, features, params_file)
        runs.append(_train(corpus, prepared, features, out / f"seed-{s}", replace(config, seed=s), **kwargs))
    scores = aggregate_runs(runs)  # mean and sample std (ddof=1) per score, the test-oracle included
    summary = {
        "corpus": corpus,
        "seeds": [r["seed"] for r in runs],
        "runs": [{"seed": r["seed"], "best_epoch": r["best_epoch"], "dev": r["dev"], "test": r["test"]} for r in runs],
        "mean": scores["mean"],
        "std": scores["std"],
    }
    if PartialState().is_main_process:
        atomic_write_bytes(out / "seeds.json", json_bytes(summary))
    return summary
