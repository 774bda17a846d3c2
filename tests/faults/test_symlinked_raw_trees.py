"""Raw trees with symlinks: a session, a clip folder or one clip linked from another disk, and DVC's link caches.

Each linked tree must read exactly as the same tree with real files (same utterances, same paths
as seen under the root, same content hashes), extract, and pass lineage. A link that points at
nothing is a missing clip, not a crash.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.corpora import iemocap, meld
from pipeline.formats.manifest import read_manifest
from pipeline.stages.lineage import trace
from tests.helpers.faults import assert_accounted, extract, meld_clip, prepare

pytestmark = pytest.mark.faults

BIN = Path(sys.executable).parent


def move_and_link(path: Path, disk: Path) -> Path:
    """Move `path` to another folder ("another disk") and leave a symlink in its place."""
    target = disk / path.name
    disk.mkdir(parents=True, exist_ok=True)
    shutil.move(path, target)
    path.symlink_to(target, target_is_directory=target.is_dir())
    return target


def rows_by_id(prepared: Path) -> dict[str, dict]:
    return {row["utterance_id"]: row for row in read_manifest(prepared)}


def assert_same_manifest(linked: Path, plain: Path) -> None:
    """Same utterances, paths and content hashes; only the media mtimes (shortcut, not identity) may differ."""
    def strip(row: dict) -> dict:
        return {**row, "sources": [{k: v for k, v in s.items() if k != "mtime_ns"} for s in row["sources"]]}

    linked_rows, plain_rows = rows_by_id(linked), rows_by_id(plain)
    assert linked_rows.keys() == plain_rows.keys()
    assert all(strip(linked_rows[k]) == strip(plain_rows[k]) for k in plain_rows)


def test_meld_with_a_linked_clip_folder_and_a_linked_clip_reads_as_the_plain_tree(meld_raw, tmp_path, tiny_models):
    plain = prepare("meld", meld_raw, tmp_path / "plain") and tmp_path / "plain"
    move_and_link(meld_raw / meld.CLIP_FOLDERS["train"], tmp_path / "disk1")
    move_and_link(meld_clip(meld_raw, "dev", 0, 2), tmp_path / "disk2")
    prepare("meld", meld_raw, tmp_path / "linked")
    assert_same_manifest(tmp_path / "linked", plain)
    train_row = next(r for r in read_manifest(tmp_path / "linked") if r["split"] == "train")
    assert train_row["audio_path"].startswith(f"{meld.CLIP_FOLDERS['train']}/")  # as seen, not disk1/
    report = extract("audio", tmp_path / "linked", tmp_path / "audio", tiny_models)
    assert "dev_dia0_utt2" not in {m["utterance_id"] for m in report["missing"]}
    assert_accounted("meld", meld_raw, tmp_path / "linked", tmp_path / "audio")
    assert trace([tmp_path / "linked" / "manifest.parquet"], project=tmp_path).broken == []


def test_iemocap_with_a_linked_session_reads_as_the_plain_tree(iemocap_raw, tmp_path):
    prepare("iemocap", iemocap_raw, tmp_path / "plain")
    move_and_link(iemocap.session_dir(iemocap_raw, 2), tmp_path / "disk")
    prepare("iemocap", iemocap_raw, tmp_path / "linked")
    assert_same_manifest(tmp_path / "linked", tmp_path / "plain")
    assert any(row["audio_path"].startswith("Session2/") for row in read_manifest(tmp_path / "linked"))
    assert trace([tmp_path / "linked" / "manifest.parquet"], project=tmp_path).broken == []


def test_a_dangling_clip_link_is_a_missing_clip_not_a_crash(meld_raw, tmp_path):
    clip = meld_clip(meld_raw, "dev", 0, 3)
    clip.unlink()
    clip.symlink_to(tmp_path / "unmounted-disk" / clip.name)
    summary = prepare("meld", meld_raw, tmp_path / "prepared")
    row = rows_by_id(tmp_path / "prepared")["dev_dia0_utt3"]
    assert "missing_clip" in row["flags"] and not row["has_audio"]
    assert f"{meld.CLIP_FOLDERS['dev']}/{clip.name}" in summary["ignored"]["broken_symlinks"]
    assert_accounted("meld", meld_raw, tmp_path / "prepared")


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([str(BIN / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True, check=True)


@pytest.mark.parametrize("cache_type", ["symlink", "hardlink"])
def test_a_raw_tree_checked_out_from_dvc_link_caches_prepares_and_passes_lineage(meld_raw, tmp_path, cache_type):
    """`dvc add` with cache.type symlink/hardlink turns every clip into a link to DVC's (read-only) cache."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.move(meld_raw, project / meld.RELEASE_DIR)
    raw = project / meld.RELEASE_DIR
    dvc(project, "init", "--no-scm", "-q")
    dvc(project, "config", "cache.type", cache_type)
    dvc(project, "add", "-q", meld.RELEASE_DIR)
    clip = meld_clip(raw, "dev", 0, 0)
    assert clip.is_symlink() if cache_type == "symlink" else clip.stat().st_nlink == 2
    prepare("meld", raw, project / "prepared")
    row = rows_by_id(project / "prepared")["dev_dia0_utt0"]
    assert row["has_audio"] and row["audio_path"] == f"{meld.CLIP_FOLDERS['dev']}/{clip.name}"
    assert trace([project / "prepared" / "manifest.parquet"], project=project).broken == []
    dvc(project, "checkout", "-q", "--relink", "-f")  # new links, new times: the content still matches
    assert trace([project / "prepared" / "manifest.parquet"], project=project).broken == []
