"""The protocol pipelines beside the main one (protocols/*/dvc.yaml) stay in step with it.

A protocol's train stages run the main pipeline's `mer train` with another `--split`, so their code
deps and params must be the main train stage's (whose deps the e2e run checks against what the
command loads); only `train.split` is left out, since `--split` sets it. Fast: it reads YAML only.
"""

from __future__ import annotations

import yaml

from tests.helpers import PROJECT_ROOT

LOSO = PROJECT_ROOT / "protocols" / "iemocap-loso" / "dvc.yaml"


def main_train_stage(corpus: str) -> dict:
    stage = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]["train"]["do"]
    return {key: [entry.replace("${item}", corpus) for entry in stage[key]] for key in ("deps", "params")}


def test_the_loso_train_stages_have_the_main_train_stages_deps_and_params_but_the_split():
    loso = yaml.safe_load(LOSO.read_text())["stages"]["train"]
    main = main_train_stage("iemocap")
    assert loso["foreach"] == [1, 2, 3, 4, 5] and loso["do"]["wdir"] == "../.."
    assert loso["do"]["deps"] == main["deps"]
    assert loso["do"]["params"] == [p for p in main["params"] if p != "train.split"]
    assert "--split loso-${item}" in loso["do"]["cmd"]


def test_the_loso_aggregate_reads_every_fold_and_is_a_declared_metric():
    pipeline = yaml.safe_load(LOSO.read_text())
    stage = pipeline["stages"]["aggregate"]
    folds = [f"data/loso/iemocap/fold-{k}" for k in range(1, 6)]
    assert stage["cmd"].split()[2:7] == folds and all(f in stage["deps"] for f in folds)
    assert pipeline["metrics"] == ["../../data/loso/iemocap/summary.json"]
