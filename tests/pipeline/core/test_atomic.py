"""Atomic outputs appear whole, with ordinary permissions, or not at all."""

from __future__ import annotations

import os
import stat

import pytest

from pipeline.core.atomic import atomic_output_dir, atomic_write_text


def test_atomic_write_replaces_and_uses_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_atomic_output_dir_keeps_old_folder_on_failure(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out, "prepare") as tmp:
        (tmp / "x").write_text("first")
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~_umask()
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, "prepare") as tmp:
            (tmp / "x").write_text("second")
            raise RuntimeError("boom")
    assert (out / "x").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
