"""The architecture checks the test command runs (`lint-imports`, `deptry .`) pass on the project and
fail on a copy of it with one planted violation, so a broken layer or an undeclared import fails CI."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT

BIN = Path(sys.executable).parent
PACKAGES = ("pipeline", "extractors", "model")


def copy_project(dest: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in (".importlinter", "pyproject.toml"):
        shutil.copy2(PROJECT_ROOT / name, dest / name)
    return dest


def run_tool(tool: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # the copy's packages shadow the installed ones
    env = {**os.environ, "PYTHONPATH": str(cwd), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([str(BIN / tool), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def plant(path: Path, line: str) -> None:
    text = path.read_text(encoding="utf-8")
    marker = "from __future__ import annotations\n"
    assert marker in text
    path.write_text(text.replace(marker, marker + line + "\n", 1), encoding="utf-8")


def test_the_project_keeps_every_import_contract():
    proc = run_tool("lint-imports", PROJECT_ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("model/cmath.py", "import pipeline.core.errors  # noqa", "model/ imports nothing of pipeline/ or extractors/"),
        ("pipeline/formats/manifest.py", "import pipeline.stages.prepare  # noqa", "Layers"),
        ("pipeline/corpora/meld.py", "import extractors.base  # noqa", "Layers"),
        ("pipeline/corpora/meld.py", "import torch  # noqa", "corpus readers never import torch"),
        ("pipeline/stages/train.py", "import pipeline.stages.report  # noqa", None),  # fine on its own...
    ],
)
def test_a_planted_violation_breaks_its_contract(tmp_path, module, line, contract):
    copy = copy_project(tmp_path)
    plant(copy / module, line)
    proc = run_tool("lint-imports", copy)
    if contract is None:  # ...a stage importing a sibling stage is allowed while it makes no cycle
        assert proc.returncode == 0, proc.stdout
        return
    assert proc.returncode == 1, proc.stdout + proc.stderr
    broken = [line for line in proc.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(contract) for line in broken), proc.stdout


def test_an_import_cycle_between_sibling_modules_breaks_the_acyclic_contract(tmp_path):
    copy = copy_project(tmp_path)
    plant(copy / "pipeline/stages/train.py", "import pipeline.stages.report  # noqa")
    plant(copy / "pipeline/stages/report.py", "import pipeline.stages.train  # noqa")
    proc = run_tool("lint-imports", copy)
    assert proc.returncode == 1
    broken = [line for line in proc.stdout.splitlines() if line.endswith("BROKEN")]
    assert broken == ["no import cycles between sibling modules BROKEN"], proc.stdout


def test_every_import_is_declared_and_every_declared_dependency_imported():
    proc = run_tool("deptry", PROJECT_ROOT, ".", "--no-ansi")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_deptry_names_an_undeclared_import(tmp_path):
    copy = copy_project(tmp_path)
    plant(copy / "pipeline/core/errors.py", "import pandas  # noqa")  # installed (via dvc), but not declared
    proc = run_tool("deptry", copy, ".", "--no-ansi")
    assert proc.returncode == 1
    # DEP003: importable only as a transitive dependency of a declared one, so not declared
    assert re.search(r"pipeline/core/errors\.py:\d+:\d+: DEP00[13] 'pandas' imported but", proc.stdout + proc.stderr)
