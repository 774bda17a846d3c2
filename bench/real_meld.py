"""Real-data benchmark: every model on the real MELD dialogues, with weak, missing or partial modalities.

A benchmark, not a test: it prints figures measured in one run on this machine and saves them.

Data: the real MELD transcripts in ../shared/data/meld/github-head (real sentences, speakers,
dialogues and the official splits; no clips, so `mer prepare` flags every utterance
`missing_clip`), through `mer prepare` and the `tfidf` text extractor (fitted on train only).
Conditions (audio 1024-d, face 512-d, widths of wav2vec2-large / FaceNet):
  text_only  train.modalities = [text]
  noise      text + seeded random audio and face for every utterance (uninformative, ordinary stores)
  missing    text + audio and face stores in which every utterance is missing
  partial    text + random audio and face present for a seeded 50 % of the utterances
Models: every model of `model.registry` (the baselines and CMATH), `--seeds` seeds each. Reported per
(model, condition): test weighted F1 at the dev-selected epoch, mean +- std over seeds, and the
test-oracle (the best test epoch: an optimistic bound, not a result); the dev weighted F1 curve's
largest fall below its running peak (the robustness target: at most 5 points).

    python bench/real_meld.py                      # the full grid, ~30 min on 2 CPU cores
    python bench/real_meld.py --seeds 1 --models mlp cmath --conditions text_only noise
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
import yaml

from model.registry import model_names
from pipeline.core.fingerprint import sha256_file
from pipeline.corpora.meld import CSV_FILES, RELEASE_DIR
from pipeline.formats.feature_store import FeatureStoreWriter, StoreMetadata
from pipeline.formats.manifest import MANIFEST_FILE, read_manifest
from pipeline.formats.run_files import LAST_DIR, TRAIN_STATE
from pipeline.stages.extract import extract_features
from pipeline.stages.prepare import prepare_corpus
from pipeline.stages.train import TrainConfig, train

PROJECT = Path(__file__).resolve().parents[1]
MELD_CSVS = PROJECT.parent / "shared" / "data" / "meld" / "github-head"
CONDITIONS = ("text_only", "noise", "missing", "partial")
NOISE_DIMS = {"audio": 1024, "face": 512}
TEXT = {"extractor": "tfidf", "width": 100, "ngram_max": 2, "min_df": 2, "sublinear_tf": True,
        "device": "cpu", "num_workers": 0}
# sized to fit the whole grid (4 models x 4 conditions x 5 seeds) in about 30 minutes on 2 CPU cores
# the project's robust setting for every model (params.yaml): modality dropout, modalities selected on dev
TRAIN = {"epochs": 10, "lr": 2e-3, "weight_decay": 1e-4, "batch_size": 32, "patience": 0, "scheduler": "cosine",
         "mixed_precision": "no", "min_speaker_count": 2, "modality_dropout": 0.5, "select_modalities": True}
MODEL = {"hidden_size": 64, "dropout": 0.2}
MODEL_EXTRA = {"cmath": {"num_layers": 1, "num_heads": 2}, "bigru": {"num_layers": 1}}


def prepare_real_meld(work: Path) -> Path:
    """The three real CSVs in a MELD.Raw tree without clips, prepared into work/prepared."""
    raw = work / RELEASE_DIR
    raw.mkdir(parents=True)
    for name in CSV_FILES.values():
        shutil.copy2(MELD_CSVS / name, raw / name)
    prepare_corpus("meld", raw, work / "prepared")
    return work / "prepared"


def noise_store(folder: Path, prepared: Path, modality: str, present: float, seed: int) -> None:
    """An ordinary feature store of seeded N(0, 1) vectors: for a `present` share of utterances (chosen by a
    hash of id and seed), the others missing with a reason."""
    ids = [row["utterance_id"] for row in read_manifest(prepared)]
    metadata = StoreMetadata(
        corpus="meld", modality=modality, extractor="bench-noise", extractor_version="1",
        model_id=f"noise-{NOISE_DIMS[modality]}d-seed{seed}", model_sha256="",
        manifest_sha256=sha256_file(prepared / MANIFEST_FILE),
        params={"width": NOISE_DIMS[modality], "present": present, "seed": seed},
    )
    with FeatureStoreWriter(folder, metadata, ids, shard_size=2048, dtype=torch.float16, stage="bench") as writer:
        for k in writer.pending_shards():
            features, flags = {}, {}
            for uid in writer.shard_ids(k):
                digest = int.from_bytes(hashlib.sha256(f"{modality}:{seed}:{uid}".encode()).digest()[:8], "big")
                if (digest % 10_000) / 10_000 < present:
                    generator = torch.Generator().manual_seed(digest)
                    features[uid] = torch.randn(NOISE_DIMS[modality], generator=generator)
                else:
                    flags[uid] = "not present in this benchmark condition"
            writer.write_shard(k, features, flags)
        writer.finalize()


def condition_features(work: Path, prepared: Path, text_store: Path) -> dict[str, Path]:
    """features/<condition>/{text,audio,face}: the one tfidf store, and the condition's audio and face."""
    folders = {}
    for condition in CONDITIONS:
        folder = work / "features" / condition
        folder.mkdir(parents=True)
        (folder / "text").symlink_to(text_store, target_is_directory=True)
        present = {"text_only": None, "noise": 1.0, "missing": 0.0, "partial": 0.5}[condition]
        if present is not None:
            for modality in NOISE_DIMS:
                noise_store(folder / modality, prepared, modality, present, seed=17)
        folders[condition] = folder
    return folders


def largest_dev_drop(run: Path) -> float:
    """How far (in weighted-F1 points) dev fell below its running peak at the worst epoch after the peak."""
    history = json.loads((run / LAST_DIR / TRAIN_STATE).read_text())["history"]
    peak, worst = 0.0, 0.0
    for entry in history:
        score = entry["dev"]["weighted_f1"]
        peak = max(peak, score)
        worst = max(worst, peak - score)
    return 100 * worst


def one_run(model: str, condition: str, seed: int, prepared: Path, features: Path, out: Path,
            schedule: dict[str, object], settings: dict[str, object]) -> dict[str, float]:
    """One training (in a worker process); `schedule` and `settings` are TRAIN and the model's settings
    as the parent set them from the command line (a spawned worker re-imports this module's defaults)."""
    started = time.perf_counter()
    modalities = ["text"] if condition == "text_only" else ["text", "audio", "face"]
    config = TrainConfig(**schedule, seed=seed, modalities=modalities, model={"name": model, **settings})
    metrics = train("meld", prepared, features, out, config, cpu=True, log=lambda line: None)
    return {"test": metrics["test"]["weighted_f1"], "oracle": metrics["test_best_epoch_oracle"]["weighted_f1"],
            "dev_drop": largest_dev_drop(out), "best_epoch": metrics["best_epoch"],
            "modalities": "+".join(metrics["inference_modalities"] or []), "seconds": time.perf_counter() - started}


def stats(values: list[float]) -> dict[str, object]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=model_names(), choices=model_names())
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    parser.add_argument("--epochs", type=int, default=TRAIN["epochs"])
    parser.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1), help="runs side by side")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override a train setting for every run (YAML values), e.g. modality_dropout=0.5")
    parser.add_argument("--model-set", nargs="*", default=[], metavar="MODEL.KEY=VALUE",
                        help="override one model's setting, e.g. cmath.num_layers=2")
    parser.add_argument("--out", type=Path, default=PROJECT / "bench" / "results" / "real_meld.json")
    args = parser.parse_args()
    if not MELD_CSVS.is_dir():
        sys.exit(f"{MELD_CSVS}: the real MELD CSVs are not here (../shared/data beside the checkout)")
    TRAIN["epochs"] = args.epochs
    for assignment in args.set:
        key, _, value = assignment.partition("=")
        TRAIN[key] = yaml.safe_load(value)
    for assignment in args.model_set:
        dotted, _, value = assignment.partition("=")
        model, _, key = dotted.partition(".")
        MODEL_EXTRA.setdefault(model, {})[key] = yaml.safe_load(value)
    started = time.perf_counter()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepared = prepare_real_meld(work)
        extract_features("text", prepared, work / "text", TEXT)
        features = condition_features(work, prepared, work / "text")
        print(f"data ready in {time.perf_counter() - started:.0f} s", flush=True)
        grid = [(m, c, seed) for m in args.models for c in args.conditions for seed in range(args.seeds)]
        done: dict[tuple[str, str, int], dict[str, float]] = {}
        # one single-threaded process per core: small models on 2 cores run faster side by side than
        # one at a time on two threads
        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(1,)) as pool:
            futures = {pool.submit(one_run, m, c, seed, prepared, features[c], work / "runs" / f"{m}-{c}-{seed}",
                                   TRAIN, {**MODEL, **MODEL_EXTRA.get(m, {})}): (m, c, seed)
                       for m, c, seed in grid}
            for future in as_completed(futures):
                (m, c, seed), run = futures[future], future.result()
                done[(m, c, seed)] = run
                print(f"{m:12} {c:10} seed {seed}: test {run['test']:.4f} oracle {run['oracle']:.4f} dev drop "
                      f"{run['dev_drop']:.1f} pts, best epoch {run['best_epoch']} on {run['modalities']} "
                      f"({run['seconds']:.0f} s)", flush=True)
        for model in args.models:
            for condition in args.conditions:
                runs = [done[(model, condition, seed)] for seed in range(args.seeds)]
                results.setdefault(model, {})[condition] = {
                    "test_weighted_f1": stats([r["test"] for r in runs]),
                    "oracle_weighted_f1": stats([r["oracle"] for r in runs]),
                    "max_dev_drop_points": max(r["dev_drop"] for r in runs),
                    "seconds_per_run": statistics.fmean(r["seconds"] for r in runs),
                    "selected_modalities": [r["modalities"] for r in runs],
                }
    results["config"] = {
        "train": TRAIN, "model": MODEL, "model_extra": MODEL_EXTRA, "text": TEXT, "noise_dims": NOISE_DIMS,
        "seeds": args.seeds, "workers": args.workers, "data": "../shared/data/meld/github-head (real MELD CSVs, no clips)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU",
        "wall_s": round(time.perf_counter() - started),
    }
    print_table(results, args.models, args.conditions)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.out}")


def print_table(results: dict, models: list[str], conditions: list[str]) -> None:
    print("\ntest weighted F1 (dev-selected), mean +- std; [test-oracle mean]; max dev drop")
    print("| model | " + " | ".join(conditions) + " |")
    print("|---|" + "---|" * len(conditions))
    for model in models:
        cells = []
        for condition in conditions:
            cell = results[model][condition]
            test, oracle = cell["test_weighted_f1"], cell["oracle_weighted_f1"]
            cells.append(f"{test['mean']:.4f} +- {test['std']:.4f} [{oracle['mean']:.4f}]; "
                         f"{cell['max_dev_drop_points']:.1f}")
        print(f"| {model} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
