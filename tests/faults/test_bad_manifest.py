"""A truncated, garbage or foreign `manifest.parquet`: every command that reads one gives one line and exit 2.

It was an "unexpected error" (exit 1) with pyarrow's message and no file name.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.helpers.faults import assert_one_line_error, run_cli, section

pytestmark = pytest.mark.faults


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def garbage(data: bytes) -> bytes:
    return b"this is not parquet\n" * 50


def foreign(_: bytes) -> bytes:
    """A valid Parquet file with other columns (e.g. someone's own table saved under the name)."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"utterance": ["a"], "label": [1]}), sink)
    return sink.getvalue().to_pybytes()


BREAKS = {"truncated": truncated, "garbage": garbage, "foreign": foreign}


@pytest.fixture(params=sorted(BREAKS))
def broken_prepared(request, prepared_demo, tmp_path: Path) -> Path:
    prepared = tmp_path / "prepared"
    shutil.copytree(prepared_demo["meld"], prepared)
    manifest = prepared / "manifest.parquet"
    manifest.write_bytes(BREAKS[request.param](manifest.read_bytes()))
    return prepared


def test_extract_names_the_unreadable_manifest(broken_prepared, tiny_models, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"extract": {"text": section("text", tiny_models)}}))
    code, _, err = run_cli(["extract", "text", "--manifest", str(broken_prepared), "--out", str(tmp_path / "store"),
                            "--params", str(params)], capsys)
    assert_one_line_error(code, err, "extract", f"{broken_prepared / 'manifest.parquet'}: not a readable manifest",
                          "rerun `mer prepare`")
    assert not (tmp_path / "store").exists()


def test_lineage_names_the_unreadable_manifest(broken_prepared, tmp_path, capsys):
    code, _, err = run_cli(["lineage", str(broken_prepared / "manifest.parquet"), "--project", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "lineage", "not a readable manifest")


def test_train_names_the_unreadable_manifest(broken_prepared, tmp_path, capsys):
    (tmp_path / "features").mkdir()
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"epochs": 1}}))
    code, _, err = run_cli(["train", "--corpus", "meld", "--prepared", str(broken_prepared), "--features",
                            str(tmp_path / "features"), "--out", str(tmp_path / "run"), "--params", str(params)], capsys)
    assert_one_line_error(code, err, "train", "not a readable manifest")
    assert not (tmp_path / "run").exists()
