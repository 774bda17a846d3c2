"""Projects that move: a copy made with `cp -a`, or one that lost its file times, reads and checks its own raw files.

A manifest records its raw root relative to its own folder (inside the project), and raw files by
content, so neither the copy's extraction nor its lineage may touch, or depend on, the original.
The DVC-level versions (a `cp -a` of a reproduced project, `git clone` + `dvc pull`) are in
tests/e2e/test_dvc_repro.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.corpora import meld
from pipeline.formats.feature_store import FeatureStoreReader
from pipeline.formats.manifest import manifest_metadata, raw_root_of
from pipeline.stages.lineage import trace
from tests.helpers.faults import extract, meld_clip, prepare

pytestmark = pytest.mark.faults

RAW = Path("data/demo") / meld.RELEASE_DIR
PREPARED = Path("data/prepared/meld")


@pytest.fixture
def project(meld_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder holding one dev dialogue of the demo MELD.Raw, prepared from inside it with
    the root given as params.yaml gives it (relative)."""
    project = tmp_path / "project"
    (project / RAW).parent.mkdir(parents=True)
    shutil.move(meld_raw, project / RAW)
    monkeypatch.chdir(project)
    prepare("meld", RAW, PREPARED)
    return project


def copy_with_cp(src: Path, dst: Path, *flags: str) -> Path:
    subprocess.run(["cp", *flags, str(src), str(dst)], check=True)
    return dst


def broken_links(manifest_dir: Path, project: Path) -> list[str]:
    return trace([manifest_dir / "manifest.parquet"], project=project).broken


def test_the_manifest_records_its_root_relative_to_itself(project: Path) -> None:
    meta = manifest_metadata(project / PREPARED)
    assert meta["raw_root"] == "../../demo/MELD.Raw"
    assert raw_root_of(project / PREPARED, meta) == project / RAW


def test_a_cp_a_copy_extracts_and_checks_its_own_clips(project: Path, tiny_models, monkeypatch) -> None:
    """Break a clip in the original after copying: the copy's audio store and lineage are unaffected."""
    copy = copy_with_cp(project, project.parent / "copy", "-a")
    clip = meld_clip(project / RAW, "dev", 0, 0)
    clip.write_bytes(b"not an mp4 any more" * 100)

    monkeypatch.chdir(copy)
    report = extract("audio", PREPARED, Path("data/features/meld/audio"), tiny_models)
    store = FeatureStoreReader(copy / "data/features/meld/audio")
    assert "dev_dia0_utt0" in store, report["missing"]  # read from the copy's intact clip
    assert broken_links(copy / PREPARED, copy) == []
    broken = broken_links(project / PREPARED, project)  # the original does see its broken clip
    assert len(broken) == 1 and "dia0_utt0.mp4 changed" in broken[0], broken


def test_a_copy_that_lost_its_file_times_still_passes_lineage(project: Path) -> None:
    """`cp -r` (no -p) gives every file a new mtime, as `dvc checkout` or `dvc pull` do: content decides."""
    copy = copy_with_cp(project, project.parent / "copy", "-r")
    clip = meld_clip(copy / RAW, "dev", 0, 1)
    assert clip.stat().st_mtime_ns != meld_clip(project / RAW, "dev", 0, 1).stat().st_mtime_ns
    assert broken_links(copy / PREPARED, copy) == []
    clip.write_bytes(bytes(reversed(clip.read_bytes())))  # same size, other content
    broken = broken_links(copy / PREPARED, copy)
    assert len(broken) == 1 and "dia0_utt1.mp4 changed content (sha256)" in broken[0], broken


def test_a_corpus_outside_the_project_is_shared_by_every_copy(meld_raw: Path, tmp_path: Path, monkeypatch) -> None:
    """An absolute root outside the project (e.g. /data/MELD.Raw) is recorded as such: copies point at it."""
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    prepare("meld", meld_raw, PREPARED)
    copy = copy_with_cp(project, tmp_path / "copy", "-a")
    meta = manifest_metadata(copy / PREPARED)
    assert meta["raw_root"] == meld_raw.as_posix()
    assert raw_root_of(copy / PREPARED, meta) == meld_raw
    assert broken_links(copy / PREPARED, copy) == []
