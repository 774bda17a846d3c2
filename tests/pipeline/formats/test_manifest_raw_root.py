"""How a manifest records its raw root: relative inside the project (a copy reads its own files), absolute outside."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.formats.manifest import raw_root_of, record_raw_root


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = tmp_path / "project"
    (project / "data/demo/MELD.Raw").mkdir(parents=True)
    monkeypatch.chdir(project)
    return project


def test_a_root_given_relative_is_recorded_relative_to_the_manifest(project: Path) -> None:
    recorded = record_raw_root(Path("data/demo/MELD.Raw"), Path("data/prepared/meld"))
    assert recorded == "../../demo/MELD.Raw"
    assert raw_root_of(Path("data/prepared/meld"), {"raw_root": recorded}) == Path("data/demo/MELD.Raw")


def test_an_absolute_root_inside_the_project_is_recorded_relative_too(project: Path) -> None:
    recorded = record_raw_root(project / "data/demo/MELD.Raw", project / "data/prepared/meld")
    assert recorded == "../../demo/MELD.Raw"


def test_a_corpus_outside_the_project_keeps_its_absolute_path(project: Path, tmp_path: Path) -> None:
    outside = tmp_path / "corpora" / "MELD.Raw"
    assert record_raw_root(outside, Path("data/prepared/meld")) == outside.as_posix()
    assert raw_root_of(Path("data/prepared/meld"), {"raw_root": outside.as_posix()}) == outside


def test_a_copied_project_resolves_to_its_own_raw_tree(project: Path, tmp_path: Path) -> None:
    recorded = record_raw_root(Path("data/demo/MELD.Raw"), Path("data/prepared/meld"))
    copy = tmp_path / "copy"
    assert raw_root_of(copy / "data/prepared/meld", {"raw_root": recorded}) == copy / "data/demo/MELD.Raw"


def test_symlinks_on_the_way_are_kept_not_resolved(project: Path, tmp_path: Path) -> None:
    """A raw root reached through a link (e.g. data/demo -> another disk) is recorded as the user wrote it."""
    disk = tmp_path / "disk"
    (disk / "MELD.Raw").mkdir(parents=True)
    os.symlink(disk, project / "data/linked", target_is_directory=True)
    recorded = record_raw_root(Path("data/linked/MELD.Raw"), Path("data/prepared/meld"))
    assert recorded == "../../linked/MELD.Raw"


def test_no_recorded_root_is_none() -> None:
    assert raw_root_of(Path("anywhere"), {}) is None
