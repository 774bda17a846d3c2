"""`mer lineage` (pipeline/lineage.py) outside a DVC project, on a small real training run.

The whole demo chain, with dvc.lock, raw files and tampering, is tested in tests/test_pipeline_e2e.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from pipeline.stages.train import TrainConfig, train
from pipeline.cli import main
from pipeline.stages.lineage import describe, remote_configured, trace
from tests.helpers.train_corpus import make_corpus

CONFIG = {
    "seed": 0, "epochs": 1, "lr": 0.003, "batch_size": 4, "patience": 0, "mixed_precision": "no",
    "model": {"hidden_size": 16, "num_layers": 1, "num_heads": 2},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_torch_thread) -> Path:
    """A project folder with prepared/, features/ and a trained checkpoint in train/best, made with
    paths relative to the folder (as DVC runs stages), so a copy of the folder is a whole project."""
    root = tmp_path_factory.mktemp("lineage")
    cwd = os.getcwd()
    try:
        os.chdir(root)
        make_corpus(Path("."), dialogues={"train": 6, "dev": 3, "test": 3})
        train("meld", Path("prepared/meld"), Path("features/meld"), Path("train"), TrainConfig(**CONFIG),
              log=lambda line: None)
    finally:
        os.chdir(cwd)
    return root


def test_a_checkpoint_traces_to_its_stores_and_manifest(run):
    lineage = trace([run / "train/metrics.json"], project=run)
    kinds = [link.kind for link in lineage.links.values()]
    assert kinds.count("feature_store") == 3 and kinds.count("manifest") == 1 and kinds[0] == "metrics"
    assert lineage.broken == []
    # a hand-made corpus: no real model behind the stores, no summary.json or report.json beside the
    # manifest, no raw folder; worth a warning each, none of them a break
    warnings = lineage.problems("warning")
    assert sum("weights of 'planted-signal' are not on this machine" in w for w in warnings) == 3
    assert sum("summary.json is missing" in w for w in warnings) == 1
    assert sum("no report.json in prepared/meld" in w for w in warnings) == 1
    assert sum("records no raw corpus folder" in w for w in warnings) == 1
    text = describe(lineage)
    assert "checkpoint train/best" in text and text.splitlines()[-1].endswith("0 broken, 6 warnings")
    stores = [link for link in lineage.links.values() if link.kind == "feature_store"]
    assert all(link.facts["stage report"].startswith("extract meld: ") for link in stores)


def test_a_missing_store_is_broken_and_says_how_to_get_it_back(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "features/meld/audio")
    code = main(["lineage", str(copy / "train/best"), "--project", str(copy), "--json", str(tmp_path / "l.json")])
    out = capsys.readouterr().out
    assert code == 1
    broken = json.loads((tmp_path / "l.json").read_text())["broken"]
    assert broken == ["train/best: audio store features/meld/audio is not in the workspace: run `dvc repro` first"]
    assert out.splitlines()[-1].startswith("BROKEN train/best: audio store")

    # in a DVC project without a remote, the hint says how to add one
    (copy / ".dvc").mkdir()
    (copy / ".dvc/config").write_text("[core]\n    autostage = true\n")
    (copy / "dvc.lock").write_text("schema: '2.0'\nstages:\n  extract_meld@audio:\n    cmd: mer extract audio\n"
                                   "    outs:\n    - path: features/meld/audio\n")
    assert not remote_configured(copy)
    [message] = trace([copy / "train/best"], project=copy).broken
    assert "`dvc pull extract_meld@audio`" in message and "`dvc remote add -d <name> <url>`" in message
    (copy / ".dvc/config").write_text("[core]\n    remote = store\n['remote \"store\"']\n    url = /somewhere\n")
    assert remote_configured(copy)
    assert "remote add" not in trace([copy / "train/best"], project=copy).broken[0]


def test_a_path_that_is_no_artifact_is_a_one_line_error(run, tmp_path, capsys):
    assert main(["lineage", str(tmp_path / "absent"), "--project", str(run)]) == 2
    assert main(["lineage", str(run / "prepared"), "--project", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].endswith("absent: does not exist")
    assert err[1].endswith("not a metrics file, checkpoint folder, feature store or manifest")
    assert main(["lineage", "--project", str(tmp_path)]) == 2
    assert "dvc.yaml: not found" in capsys.readouterr().err
