"""`mer aggregate`: folds' and seeds' metrics into one table, mean and sample std, traceable run by run."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.stages.aggregate import aggregate
from tests.helpers.faults import assert_one_line_error, run_cli

SCORES = ("accuracy", "weighted_f1", "macro_f1")


def write_run(folder: Path, test_f1: float, *, model: str = "cmath", seed: int = 0, oracle: float | None = None,
              split: str = "loso-1") -> Path:
    folder.mkdir(parents=True)
    metrics = {"corpus": "iemocap", "model": model, "seed": seed, "split": split,
               "dev": {"accuracy": 0.5, "weighted_f1": test_f1 - 0.1, "macro_f1": 0.4},
               "test": {"accuracy": 0.6, "weighted_f1": test_f1, "macro_f1": test_f1 / 2}}
    if oracle is not None:
        metrics["test_best_epoch_oracle"] = {"epoch": 3, "accuracy": 0.7, "weighted_f1": oracle, "macro_f1": 0.5}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_mean_and_sample_std_of_every_score(tmp_path: Path) -> None:
    values = [0.50, 0.56, 0.47, 0.61, 0.52]
    runs = [write_run(tmp_path / f"fold-{k}", v, seed=k, oracle=v + 0.03, split=f"loso-{k}")
            for k, v in enumerate(values, start=1)]
    table = aggregate(runs, tmp_path / "summary.json")
    assert table == json.loads((tmp_path / "summary.json").read_text())
    assert table["count"] == 5 and (table["corpus"], table["model"]) == ("iemocap", "cmath")
    assert table["mean"]["test.weighted_f1"] == pytest.approx(statistics.fmean(values))
    assert table["std"]["test.weighted_f1"] == pytest.approx(statistics.stdev(values))  # ddof=1
    assert table["mean"]["test.macro_f1"] == pytest.approx(statistics.fmean(values) / 2)
    assert table["mean"]["test_best_epoch_oracle.weighted_f1"] == pytest.approx(statistics.fmean(values) + 0.03)
    assert table["std"]["dev.accuracy"] == 0.0
    assert [r["split"] for r in table["runs"]] == [f"loso-{k}" for k in range(1, 6)]
    assert table["runs"][0]["path"] == (runs[0] / "metrics.json").as_posix()


def test_one_run_has_std_zero_and_the_oracle_only_when_every_run_has_it(tmp_path: Path) -> None:
    table = aggregate([write_run(tmp_path / "a", 0.5)], tmp_path / "one.json")
    assert table["count"] == 1 and table["std"]["test.weighted_f1"] == 0.0
    mixed = aggregate([tmp_path / "a", write_run(tmp_path / "b", 0.6, oracle=0.7)], tmp_path / "two.json")
    assert not any(key.startswith("test_best_epoch_oracle") for key in mixed["mean"])


def test_an_evaluation_metrics_file_counts_as_a_run(tmp_path: Path) -> None:
    (tmp_path / "eval").mkdir()
    scores = {k: 0.5 for k in SCORES}
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(
        {"checkpoint": {"corpus": "iemocap", "model": "bigru", "seed": 3}, "dev": scores, "test": scores}))
    table = aggregate([tmp_path / "eval"], tmp_path / "t.json")
    assert (table["model"], table["runs"][0]["seed"]) == ("bigru", 3)


def test_runs_of_different_models_are_refused(tmp_path: Path) -> None:
    runs = [write_run(tmp_path / "a", 0.5), write_run(tmp_path / "b", 0.5, model="mlp")]
    with pytest.raises(PipelineError, match="different models \\(cmath, mlp\\)"):
        aggregate(runs, tmp_path / "s.json")
    assert not (tmp_path / "s.json").exists()


def test_bad_runs_and_outputs_are_one_line_errors(tmp_path: Path, capsys) -> None:
    good = write_run(tmp_path / "good", 0.5)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "metrics.json").write_text("{not json")
    code, _, err = run_cli(["aggregate", str(tmp_path / "absent"), "--out", str(tmp_path / "s.json")], capsys)
    assert_one_line_error(code, err, "aggregate", "no such metrics file")
    code, _, err = run_cli(["aggregate", str(tmp_path / "junk"), "--out", str(tmp_path / "s.json")], capsys)
    assert_one_line_error(code, err, "aggregate", "not a readable metrics.json")
    code, _, err = run_cli(["aggregate", str(good), "--out", str(good / "metrics.json")], capsys)
    assert_one_line_error(code, err, "aggregate", "--out")  # the input itself: refused, untouched
    assert json.loads((good / "metrics.json").read_text())["test"]["weighted_f1"] == 0.5
    (tmp_path / "notes.json").write_text('{"mine": 1}')
    code, _, err = run_cli(["aggregate", str(good), "--out", str(tmp_path / "notes.json")], capsys)
    assert_one_line_error(code, err, "aggregate", "--out")  # a file no aggregate wrote
    assert run_cli(["aggregate", str(good), "--out", str(tmp_path / "s.json")], capsys)[0] == 0
    assert run_cli(["aggregate", str(good), "--out", str(tmp_path / "s.json")], capsys)[0] == 0  # replaces its own
