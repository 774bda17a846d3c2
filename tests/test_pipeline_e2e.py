"""The main job, as a user runs it: `dvc repro` on the demo corpus in a fresh copy of the project."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT
from pipeline.feature_store import FeatureStoreReader
from pipeline.manifest import read_manifest

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@localhost",
        "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@localhost",
        "DVC_NO_ANALYTICS": "1",
    }
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the project's tracked and not-ignored files, as a fresh clone would have them."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    dest = tmp_path_factory.mktemp("clone")
    for name in filter(None, files):
        if (PROJECT_ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / name, dest / name)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "clone"], dest)
    run(["dvc", "repro"], dest)
    return dest


def test_dvc_repro_prepares_both_demo_layouts(project):
    truth = json.loads((project / "data/demo/demo_corpus.json").read_text())
    for corpus in ("meld", "iemocap"):
        summary = json.loads((project / f"data/prepared/{corpus}/summary.json").read_text())
        rows = read_manifest(project / f"data/prepared/{corpus}")
        assert summary["counts"]["utterances_out"] == len(rows) > 50
        assert sum(s["utterances"] for s in summary["splits"].values()) == len(rows)
        assert set(summary["splits"]) == {"train", "dev", "test"}
        assert truth  # the generator's record of what it planted exists beside the corpus


@contextlib.contextmanager
def edited_params(project: Path, old: str, new: str):
    """Edit params.yaml for one test; afterwards restore params, dvc.lock and the outputs (from DVC's cache)."""
    params, lock = project / "params.yaml", project / "dvc.lock"
    saved_params, saved_lock = params.read_text(), lock.read_text()
    assert old in saved_params
    params.write_text(saved_params.replace(old, new))
    try:
        yield
    finally:
        params.write_text(saved_params)
        lock.write_text(saved_lock)
        run(["dvc", "checkout", "--force"], project)


def test_dvc_repro_extracts_every_modality_of_both_layouts(project):
    """Every manifest utterance is in each store or reported with its reason (the planted quirks included)."""
    for corpus in ("meld", "iemocap"):
        ids = [r["utterance_id"] for r in read_manifest(project / f"data/prepared/{corpus}")]
        for modality in ("text", "audio", "face"):
            reader = FeatureStoreReader(project / f"data/features/{corpus}/{modality}")
            missing = {m["utterance_id"]: m["reason"] for m in reader.report["missing"]}
            assert sorted([*reader.utterance_ids, *missing]) == sorted(ids), (corpus, modality)
            assert len(reader.utterance_ids) > 0.8 * len(ids), (corpus, modality, missing)
            assert reader.availability().mask.tolist() == [uid in reader for uid in ids]
    meld_audio = FeatureStoreReader(project / "data/features/meld/audio").report
    assert "train_dia3_utt2" in {m["utterance_id"] for m in meld_audio["missing"]}  # the planted corrupt clip


def test_dvc_repro_trains_and_evaluates_both_corpora_far_above_chance(project):
    """The whole chain on the planted demo signal: test weighted F1 > 0.5 (chance: 1/7 MELD, 1/6 IEMOCAP)."""
    for corpus in ("meld", "iemocap"):
        metrics = json.loads((project / f"data/eval/{corpus}/metrics.json").read_text())
        assert metrics["test"]["weighted_f1"] > 0.5, (corpus, metrics["test"])
        test_ids = {r["utterance_id"] for r in read_manifest(project / f"data/prepared/{corpus}") if r["split"] == "test"}
        lines = (project / f"data/eval/{corpus}/predictions.csv").read_text().splitlines()
        assert {line.split(",")[0] for line in lines[1:]} == test_ids
        assert (project / f"data/train/{corpus}/best/model.safetensors").is_file()


def test_dvc_status_is_clean_after_repro(project):
    out = run(["dvc", "status"], project).stdout
    assert "changed" not in out, out


def test_changing_audio_settings_reruns_only_the_audio_stages(project):
    untouched = {
        p: p.stat().st_mtime_ns
        for corpus in ("meld", "iemocap")
        for modality in ("text", "face")
        for p in (project / f"data/features/{corpus}/{modality}").iterdir()
    }
    with edited_params(project, "pooling: mean_std", "pooling: mean"):
        status = run(["dvc", "status"], project).stdout
        stages = {line.rstrip(":").strip() for line in status.splitlines() if line and not line.startswith(("\t", " "))}
        assert stages == {"extract@meld-audio", "extract@iemocap-audio"}, status
        run(["dvc", "repro"], project)
        assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
        audio = FeatureStoreReader(project / "data/features/meld/audio")
        assert audio.metadata["params"]["pooling"] == "mean"
        assert "changed" not in run(["dvc", "status"], project).stdout
    assert "changed" not in run(["dvc", "status"], project).stdout  # restored for the next test


def test_changing_one_corpus_params_reruns_only_its_branch(project):
    with edited_params(project, "label_policy: benchmark", "label_policy: four-class"):
        status = run(["dvc", "status"], project).stdout
        assert "prepare@iemocap" in status
        assert "prepare@meld" not in status and "demo_corpus" not in status and "extract@meld" not in status
        run(["dvc", "repro", "--single-item", "prepare@iemocap"], project)
        summary = json.loads((project / "data/prepared/iemocap/summary.json").read_text())
        assert summary["label_policy"] == "four-class"
        assert list(summary["label_map"]) == ["ang", "hap", "sad", "neu"]
        downstream = run(["dvc", "status"], project).stdout  # the new manifest invalidates its extract stages
        assert all(f"extract@iemocap-{m}" in downstream for m in ("text", "audio", "face")), downstream
        assert "extract@meld" not in downstream
    assert "changed" not in run(["dvc", "status"], project).stdout
