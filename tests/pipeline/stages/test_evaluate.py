"""The evaluator (pipeline/stages/evaluate.py, `mer evaluate`): metrics, plots, predictions, and multi-process gathering."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.stages.train import TrainConfig, train
from pipeline.cli import main
from pipeline.formats.manifest import read_manifest
from pipeline.formats.stage_report import read_stage_report
from tests.helpers.train_corpus import LABELS, make_corpus

BIN = Path(sys.executable).parent
CONFIG = {
    "seed": 0, "epochs": 2, "lr": 0.003, "batch_size": 2, "patience": 0, "mixed_precision": "no",
    "model": {"hidden_size": 16, "num_layers": 1, "num_heads": 2},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    # odd dialogue counts: the last batch is partial and, on 2 processes, padded by accelerate
    return make_corpus(tmp_path_factory.mktemp("synthetic"), dialogues={"train": 12, "dev": 7, "test": 9})


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    train("meld", *corpus, out, TrainConfig(**CONFIG), log=lambda line: None)
    return out


def test_evaluate_writes_metrics_confusion_and_predictions(corpus, trained, tmp_path, capsys):
    prepared, features = corpus
    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(trained / "best"), "--prepared", str(prepared),
                 "--features", str(features), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    record = json.loads((trained / "best/checkpoint.json").read_text())
    rows = read_manifest(prepared)
    for split, suffix in (("test", ""), ("dev", "_dev")):
        expected = [r for r in rows if r["split"] == split]
        # the same checkpoint scored in a separate process equals what training recorded for it
        assert metrics[split] == record[split]
        assert set(metrics[split]) == {"accuracy", "weighted_f1", "macro_f1", "per_class_f1", "counts"}
        assert list(metrics[split]["per_class_f1"]) == LABELS
        assert metrics[split]["counts"]["utterances"] == len(expected)
        with open(out / f"predictions{suffix}.csv", newline="") as handle:
            predictions = list(csv.DictReader(handle))
        assert list(predictions[0]) == ["utterance_id", "dialogue_id", "gold", "predicted", *(f"prob_{n}" for n in LABELS)]
        assert sorted(p["utterance_id"] for p in predictions) == sorted(r["utterance_id"] for r in expected)
        by_id = {r["utterance_id"]: r for r in expected}
        for p in predictions:
            assert p["gold"] == by_id[p["utterance_id"]]["label"] and p["dialogue_id"] == by_id[p["utterance_id"]]["dialogue_id"]
            probs = [float(p[f"prob_{n}"]) for n in LABELS]
            assert sum(probs) == pytest.approx(1, abs=1e-4) and p["predicted"] == LABELS[int(np.argmax(probs))]
    # both stage reports account for every dev/test utterance; face is missing for some (the fixture's 20%)
    scored = [r for r in rows if r["split"] in ("dev", "test")]
    for stage, folder, n in (("evaluate", out, len(scored)), ("train", trained, len(rows))):
        report = read_stage_report(folder)
        assert report["stage"] == stage and report["counts"]["in"] == report["counts"]["out"] == n
        assert report["counts"]["dropped"] == 0 and report["flagged_by_reason"]["no face feature"] > 0
        accuracy = np.mean([p["gold"] == p["predicted"] for p in predictions])
        assert metrics[split]["accuracy"] == pytest.approx(accuracy)
        with open(out / f"confusion{suffix}.csv", newline="") as handle:
            confusion = list(csv.DictReader(handle))
        assert [(c["actual"], c["predicted"]) for c in confusion] == [(p["gold"], p["predicted"]) for p in predictions]
    assert "weighted F1" in capsys.readouterr().out


def test_evaluate_refuses_features_the_model_was_not_trained_on(corpus, trained, tmp_path, capsys):
    other_prepared, other_features = make_corpus(tmp_path, dialogues={"train": 12, "dev": 7, "test": 9}, seed=5)
    code = main(["evaluate", "--checkpoint", str(trained / "best"), "--prepared", str(other_prepared),
                 "--features", str(other_features), "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code == 2 and "not the manifest" in err and err.count("\n") == 1
    assert not (tmp_path / "eval").exists()


def test_evaluate_refuses_changed_weights(trained, corpus, tmp_path, capsys):
    import shutil

    checkpoint = tmp_path / "best"
    shutil.copytree(trained / "best", checkpoint)
    data = bytearray((checkpoint / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (checkpoint / "model.safetensors").write_bytes(bytes(data))
    code = main(["evaluate", "--checkpoint", str(checkpoint), "--prepared", str(corpus[0]),
                 "--features", str(corpus[1]), "--out", str(tmp_path / "eval")])
    assert code == 2 and "weights changed after training" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_training_gathers_exactly_what_one_process_evaluates(corpus, tmp_path):
    """Two CPU processes (gloo) under `accelerate launch`: dev/test metrics gathered across the two
    processes (with accelerate's padding of the uneven last batch dropped) equal a single-process
    evaluation of the saved checkpoint. About 10 s on 2 cores, so not marked slow."""
    prepared, features = corpus
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": CONFIG}))
    out = tmp_path / "ddp"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        # --multi_gpu: accelerate 1.x's `--cpu --num_processes 2` starts ONE process (without an MPI
        # hostfile); the torch.distributed launcher starts two, which join over gloo on CPU
        [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
         "-m", "pipeline.cli", "train", "--corpus", "meld", "--prepared", str(prepared), "--features", str(features),
         "--out", str(out), "--params", str(params)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((out / "best/checkpoint.json").read_text())
    assert record["num_processes"] == 2
    state = json.loads((out / "last/trainer_state.json").read_text())
    assert len(state["history"]) == 2
    rng_states = sorted(p.name for p in (out / "last").glob("random_states_*.pkl"))
    assert rng_states == ["random_states_0.pkl", "random_states_1.pkl"]  # one per process
    code = main(["evaluate", "--checkpoint", str(out / "best"), "--prepared", str(prepared),
                 "--features", str(features), "--out", str(tmp_path / "eval")])
    assert code == 0
    single = json.loads((tmp_path / "eval/metrics.json").read_text())
    for split in ("dev", "test"):
        assert single[split]["counts"]["utterances"] == record[split]["counts"]["utterances"]
        assert single[split] == record[split], split


@pytest.mark.parametrize("name", ["mlp", "bigru", "late_fusion"])
def test_a_baseline_checkpoint_evaluates_to_the_scores_training_reported(corpus, tmp_path, capsys, name):
    """The baseline's checkpoint goes through `load_model` in a separate `mer evaluate`: the same dev and
    test scores as training recorded for the selected epoch."""
    prepared, features = corpus
    trained = tmp_path / "train"
    train("meld", prepared, features, trained, TrainConfig(**{**CONFIG, "model": {"name": name, "hidden_size": 16}}),
          log=lambda line: None)
    out = tmp_path / "eval"
    code = main(["evaluate", "--checkpoint", str(trained / "best"), "--prepared", str(prepared),
                 "--features", str(features), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert f"(model {name}, epoch " in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    record = json.loads((trained / "best/checkpoint.json").read_text())
    reported = json.loads((trained / "metrics.json").read_text())
    assert metrics["checkpoint"]["model"] == record["model_name"] == reported["model"] == name
    for split in ("dev", "test"):
        assert metrics[split] == record[split], split
        assert {k: metrics[split][k] for k in ("accuracy", "weighted_f1", "macro_f1")} == reported[split]
    with open(out / "predictions.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == metrics["test"]["counts"]["utterances"]
