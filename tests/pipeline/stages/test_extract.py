"""The extract stage (runner + store + CLI), exercised with the text extractor on the demo corpus.

Determinism, resumption after SIGKILL, which settings invalidate a store, and full coverage of the
manifest are properties of the runner, so they are tested once here with the fastest extractor;
each extractor's own tests cover its decoding and model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.core.errors import PipelineError
from pipeline.stages.extract import extract_features
from pipeline.formats.feature_store import FeatureStoreReader
from pipeline.formats.manifest import read_manifest


def text_section(tiny_models, **overrides) -> dict:
    return {"model": str(tiny_models["text"]), "layers": [-1], "context_window": 2, "shard_size": 16,
            "num_workers": 0, **overrides}  # fmt: skip


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".lock"}


@pytest.fixture(scope="module")
def meld_text_store(prepared_demo, tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "meld-text"
    extract_features("text", prepared_demo["meld"], out, text_section(tiny_models))
    return out


def test_every_manifest_utterance_is_stored_or_reported(meld_text_store: Path, prepared_demo) -> None:
    ids = [r["utterance_id"] for r in read_manifest(prepared_demo["meld"])]
    reader = FeatureStoreReader(meld_text_store)
    report = reader.report
    missing = {m["utterance_id"] for m in report["missing"]}
    assert set(reader.utterance_ids) | missing == set(ids)
    assert not set(reader.utterance_ids) & missing
    assert report["counts"]["in"] == len(ids) == report["counts"]["out"] + report["counts"]["missing"]
    availability = reader.availability()
    assert availability.utterance_ids == ids
    assert [bool(v) for v in availability.mask] == [uid in reader for uid in ids]
    assert len(list(meld_text_store.glob("shard-*.safetensors"))) == -(-len(ids) // 16)


def test_store_records_what_made_it(meld_text_store: Path, prepared_demo, tiny_models) -> None:
    from extractors.base import weights_sha256
    from pipeline.core.fingerprint import sha256_file

    store = FeatureStoreReader(meld_text_store).metadata
    assert store["extractor"] == "roberta" and store["modality"] == "text" and store["corpus"] == "meld"
    assert store["model_id"] == str(tiny_models["text"])
    assert store["model_sha256"] == weights_sha256(tiny_models["text"])
    assert store["manifest_sha256"] == sha256_file(prepared_demo["meld"] / "manifest.parquet")
    assert store["params"]["context_window"] == 2 and "num_workers" not in store["params"]


def test_same_inputs_give_byte_identical_stores_whatever_the_worker_count(
    meld_text_store: Path, prepared_demo, tiny_models, tmp_path: Path
) -> None:
    extract_features("text", prepared_demo["meld"], tmp_path / "again", text_section(tiny_models, num_workers=2))
    assert files(tmp_path / "again") == files(meld_text_store)


def test_a_run_killed_mid_way_resumes_to_the_same_store(meld_text_store: Path, prepared_demo, tiny_models, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"extract": {"text": text_section(tiny_models)}}))
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "pipeline.cli", "extract", "text", "--manifest", str(prepared_demo["meld"]),
           "--out", str(out), "--params", str(params)]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "shard-00000.safetensors").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = sorted(p.name for p in out.glob("shard-*.safetensors"))
    assert written and not (out / "index.json").exists(), "the run finished before it could be killed"
    assert len(written) < len(list(meld_text_store.glob("shard-*")))

    before = {name: (out / name).stat().st_mtime_ns for name in written}
    subprocess.run(cmd, check=True, capture_output=True)
    assert {name: (out / name).stat().st_mtime_ns for name in written} == before  # finished shards kept
    assert files(out) == files(meld_text_store)


def test_runtime_settings_keep_the_store_and_content_settings_redo_it(prepared_demo, tiny_models, tmp_path: Path) -> None:
    out = tmp_path / "store"
    extract_features("text", prepared_demo["meld"], out, text_section(tiny_models))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    extract_features("text", prepared_demo["meld"], out, text_section(tiny_models, num_workers=1))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")} == stamps

    extract_features("text", prepared_demo["meld"], out, text_section(tiny_models, pooling="cls"))
    assert all(p.stat().st_mtime_ns != stamps[p.name] for p in out.glob("shard-*"))
    assert FeatureStoreReader(out).metadata["params"]["pooling"] == "cls"


def test_missing_manifest_and_moved_raw_root_are_clear_errors(prepared_demo, tiny_models, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="manifest not found"):
        extract_features("text", tmp_path / "nothing", tmp_path / "out", text_section(tiny_models))
    with pytest.raises(PipelineError, match="pass --root"):
        extract_features("text", prepared_demo["meld"], tmp_path / "out", text_section(tiny_models), raw_root=tmp_path / "gone")
    assert not (tmp_path / "out" / "index.json").exists()


def test_unknown_extractor_and_unknown_setting_name_the_problem(prepared_demo, tiny_models, tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="unknown extractor 'bert-ish'"):
        extract_features("text", prepared_demo["meld"], tmp_path / "out", {"extractor": "bert-ish"})
    with pytest.raises(PipelineError, match=r"extract\.text\.poolin: unknown key; known keys: .*\bpooling\b"):
        extract_features("text", prepared_demo["meld"], tmp_path / "out", text_section(tiny_models, poolin="cls"))
    with pytest.raises(PipelineError, match="makes text features, not audio"):
        extract_features("audio", prepared_demo["meld"], tmp_path / "out", {"extractor": "roberta"})


def test_cli_reports_counts_and_exits_2_on_a_bad_section(prepared_demo, tiny_models, tmp_path: Path) -> None:
    from pipeline.cli import main

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"extract": {"text": text_section(tiny_models, device="cuda:7")}}))
    args = ["extract", "text", "--manifest", str(prepared_demo["iemocap"]), "--out", str(tmp_path / "s"), "--params", str(params)]
    if not __import__("torch").cuda.is_available():
        assert main(args) == 2
    params.write_text(yaml.safe_dump({"extract": {"audio": {}}}))
    assert main(args) == 2
    params.write_text(yaml.safe_dump({"extract": {"text": text_section(tiny_models)}}))
    assert main(args) == 0
    assert (tmp_path / "s" / "index.json").exists()
