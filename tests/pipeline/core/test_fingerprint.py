"""Raw-file fingerprints: content identity that survives a checkout or a copy, paths as the user sees them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.core.fingerprint import (
    content_fingerprint,
    fingerprint_problem,
    media_fingerprint,
    relative_to_root,
    tree_digest,
)


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "root" / "clips" / "dia0_utt0.mp4"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00\x01" * 5000)
    return path


def set_mtime(path: Path, mtime_ns: int) -> None:
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_media_are_fingerprinted_by_content_with_mtime_as_a_shortcut(clip: Path) -> None:
    fp = media_fingerprint(clip.parents[1], clip, "media")
    assert fp.path == "clips/dia0_utt0.mp4" and fp.size == 10000
    assert fp.sha256 == content_fingerprint(clip.parents[1], clip, "media").sha256
    assert fp.mtime_ns == clip.stat().st_mtime_ns
    assert "mtime_ns" not in fp.identity()


def test_the_tree_identity_ignores_times_and_follows_content(clip: Path) -> None:
    """What `dvc checkout`, `dvc pull` or a copy without times does to a tree must not change its identity."""
    root = clip.parents[1]
    before = tree_digest([media_fingerprint(root, clip, "media")])
    set_mtime(clip, clip.stat().st_mtime_ns + 10**9)
    assert tree_digest([media_fingerprint(root, clip, "media")]) == before
    clip.write_bytes(b"\x00\x02" * 5000)  # same size, other content
    assert tree_digest([media_fingerprint(root, clip, "media")]) != before


def test_a_file_with_new_times_but_the_same_content_still_matches(clip: Path) -> None:
    recorded = media_fingerprint(clip.parents[1], clip, "media").to_dict()
    set_mtime(clip, recorded["mtime_ns"] + 123_456_789)  # e.g. a checkout from DVC's cache
    assert fingerprint_problem(clip, recorded) is None
    assert fingerprint_problem(clip, recorded, rehash=True) is None


def test_changed_content_is_found_and_the_mtime_shortcut_is_stated(clip: Path) -> None:
    recorded = media_fingerprint(clip.parents[1], clip, "media").to_dict()
    clip.write_bytes(b"\x00\x02" * 5000)
    assert fingerprint_problem(clip, recorded) == "changed content (sha256)"
    set_mtime(clip, recorded["mtime_ns"])  # an edit that put the old time back: only a rehash sees it
    assert fingerprint_problem(clip, recorded) is None
    assert fingerprint_problem(clip, recorded, rehash=True) == "changed content (sha256)"
    clip.write_bytes(b"\x00")
    assert fingerprint_problem(clip, recorded).startswith("changed size (10000 -> 1 bytes)")


def test_missing_files_and_broken_links_are_named(clip: Path, tmp_path: Path) -> None:
    recorded = media_fingerprint(clip.parents[1], clip, "media").to_dict()
    link = tmp_path / "link.mp4"
    link.symlink_to(tmp_path / "gone.mp4")
    assert fingerprint_problem(tmp_path / "absent.mp4", recorded) == "is missing"
    assert fingerprint_problem(link, recorded) == "is a broken symlink"


def test_an_old_mtime_only_fingerprint_says_why_it_cannot_tell(clip: Path) -> None:
    old = {"role": "media", "path": "clips/dia0_utt0.mp4", "size": 10000, "sha256": None,
           "mtime_ns": clip.stat().st_mtime_ns}
    assert fingerprint_problem(clip, old) is None
    set_mtime(clip, old["mtime_ns"] + 1)
    assert "predates content hashes" in fingerprint_problem(clip, old)


def test_paths_under_a_symlinked_folder_stay_as_the_user_sees_them(tmp_path: Path) -> None:
    """A session folder linked from another disk: recorded under the root, not resolved to the other disk."""
    elsewhere = tmp_path / "other-disk" / "Session2"
    elsewhere.mkdir(parents=True)
    (elsewhere / "a.wav").write_bytes(b"RIFF")
    root = tmp_path / "release"
    root.mkdir()
    (root / "Session2").symlink_to(elsewhere, target_is_directory=True)
    (root / "b.wav").symlink_to(elsewhere / "a.wav")
    assert relative_to_root(root, root / "Session2" / "a.wav") == "Session2/a.wav"
    fp = media_fingerprint(root, root / "b.wav", "audio")
    assert fp.path == "b.wav" and fp.size == 4
