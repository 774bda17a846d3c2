"""pipeline/core/outputs.py: the output check and the marker; with core/atomic.py, what a stage may replace.

The stage-by-stage cases (every command, every kind of bad --out) are in tests/faults/test_output_safety.py.
"""

from __future__ import annotations

import json

import pytest

from pipeline.core.atomic import atomic_output_dir, write_marker
from pipeline.core.errors import PipelineError
from pipeline.core.outputs import (
    MARKER_FILE,
    OutputPathError,
    check_output,
    check_output_file,
    marker_bytes,
    read_marker,
)


def test_the_marker_names_the_stage_and_is_the_same_bytes_every_time(tmp_path):
    assert marker_bytes("prepare") == marker_bytes("prepare") != marker_bytes("train")
    assert json.loads(marker_bytes("prepare"))["stage"] == "prepare"
    write_marker(tmp_path, "prepare")
    assert read_marker(tmp_path) == "prepare"
    mtime = (tmp_path / MARKER_FILE).stat().st_mtime_ns
    write_marker(tmp_path, "prepare")  # an identical marker is not rewritten
    assert (tmp_path / MARKER_FILE).stat().st_mtime_ns == mtime
    (tmp_path / MARKER_FILE).write_text("not json")
    assert read_marker(tmp_path) is None
    assert read_marker(tmp_path / "absent") is None


def test_absent_empty_and_own_folders_are_accepted(tmp_path):
    assert check_output(tmp_path / "new" / "deeper", "prepare") == tmp_path / "new" / "deeper"
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", "prepare")
    own = tmp_path / "own"
    own.mkdir()
    (own / "manifest.parquet").write_text("x")
    write_marker(own, "prepare")
    check_output(own, "prepare")
    with pytest.raises(OutputPathError, match="holds the output of `mer prepare`, not the output of `mer train`"):
        check_output(own, "train")
    assert not list(tmp_path.glob("**/.mer-probe-*")) and not (tmp_path / "new").exists()


def test_a_legacy_folder_is_accepted_only_when_the_stage_recognises_it(tmp_path):
    (tmp_path / "index.json").write_text("{}")
    with pytest.raises(OutputPathError, match="no mer stage wrote it"):
        check_output(tmp_path, "extract")
    check_output(tmp_path, "extract", legacy=lambda folder: (folder / "index.json").is_file())


def test_inputs_are_compared_resolved(tmp_path):
    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    (tmp_path / "link").symlink_to(data)
    inputs = [("--root", data / "raw")]
    for out, words in ((tmp_path / "link" / "raw", "is the input --root"),
                       (data / "raw" / ".." / "raw" / "x", "lies inside the input --root"),
                       (tmp_path / "link", "contains the input --root")):
        with pytest.raises(OutputPathError, match=words) as info:
            check_output(out, "prepare", inputs)
        assert str(info.value).startswith(f"{out}: --out ")
        assert isinstance(info.value, PipelineError) and "\n" not in str(info.value)
    check_output(tmp_path / "elsewhere", "prepare", [*inputs, ("--params", None), ("--x", tmp_path / "absent")])
    # a container (import-features' --out) may hold its inputs, but not be one or lie inside one
    check_output(tmp_path, "import-features", inputs, container=True)
    with pytest.raises(OutputPathError, match="lies inside the input"):
        check_output(data / "raw" / "x", "import-features", inputs, container=True)


def test_files_links_and_unwritable_places_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    cases = {
        tmp_path / "file": "is an existing file, not a folder",
        tmp_path / "dangling": "is an existing symbolic link to a missing target",
        tmp_path / "file" / "sub": "cannot be created: .* is not a folder",
        "/proc/mer-test/out": r"cannot be created: nothing can be created in /proc \(",
        "/sys/mer-test": r"cannot be created: nothing can be created in /sys \(",
    }
    for out, words in cases.items():
        with pytest.raises(OutputPathError, match=words):
            check_output(out, "prepare")


def test_atomic_output_dir_marks_the_folder_and_rechecks_before_the_rename(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out, "evaluate") as tmp:
        (tmp / "metrics.json").write_text("{}")
    assert read_marker(out) == "evaluate" and sorted(p.name for p in out.iterdir()) == [MARKER_FILE, "metrics.json"]
    with atomic_output_dir(out, "evaluate") as tmp:  # its own output: replaced
        (tmp / "metrics.json").write_text('{"again": 1}')
    assert (out / "metrics.json").read_text() == '{"again": 1}'
    with pytest.raises(OutputPathError, match="not the output of `mer report`"):
        with atomic_output_dir(out, "report"):
            pytest.fail("the block must not run")
    late = tmp_path / "late"
    with pytest.raises(OutputPathError, match="no mer stage wrote it"):
        with atomic_output_dir(late, "evaluate") as tmp:
            late.mkdir()  # someone else's folder appears while the stage runs
            (late / "theirs.txt").write_text("kept")
    assert sorted(p.name for p in late.iterdir()) == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late", "out"]  # no temporary folder left


def test_an_output_file_replaces_only_its_own_kind(tmp_path):
    def ours(path):
        return path.read_text() == "ours"

    (tmp_path / "ours.json").write_text("ours")
    check_output_file(tmp_path / "ours.json", option="--json", replaceable=ours, what="ours")
    check_output_file(tmp_path / "new.json", option="--json", replaceable=ours, what="ours")
    (tmp_path / "theirs.json").write_text("theirs")
    for path, words in ((tmp_path / "theirs.json", "is an existing file that is not ours"),
                        (tmp_path, "is an existing folder, not a file"),
                        (tmp_path / "ours.json" / "x", "cannot be created"),
                        ("/proc/mer-test.json", "cannot be created")):
        with pytest.raises(OutputPathError, match=words):
            check_output_file(path, option="--json", replaceable=ours, what="ours")
    with pytest.raises(OutputPathError, match="is the input PATH"):
        check_output_file(tmp_path / "ours.json", [("PATH", tmp_path / "ours.json")], option="--json",
                          replaceable=ours, what="ours")
