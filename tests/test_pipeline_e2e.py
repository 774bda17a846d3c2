"""The main job, as a user runs it: `dvc repro` on the demo corpus in a fresh copy of the project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT
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


def test_dvc_status_is_clean_after_repro(project):
    out = run(["dvc", "status"], project).stdout
    assert "changed" not in out, out


def test_changing_one_corpus_params_reruns_only_its_stage(project):
    params = project / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("label_policy: benchmark", "label_policy: four-class"))
    try:
        status = run(["dvc", "status"], project).stdout
        assert "prepare@iemocap" in status
        assert "prepare@meld" not in status and "demo_corpus" not in status
        run(["dvc", "repro"], project)
        summary = json.loads((project / "data/prepared/iemocap/summary.json").read_text())
        assert summary["label_policy"] == "four-class"
        assert list(summary["label_map"]) == ["ang", "hap", "sad", "neu"]
    finally:
        params.write_text(original)
