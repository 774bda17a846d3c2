"""The extract stage (runner + store + CLI), exercised with the text extractor on the demo corpus.

Determinism, resumption after SIGKILL, which settings invalidate a store, and full coverage of the
manifest are properties of the runner, so they are tested once here with the fastest extractor;
each extractor's own tests cover its decoding and model. The fit step of a fitted extractor
(train split only, its state saved and reused on resume, traced by lineage) is tested with `tfidf`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.core.errors import PipelineError
from pipeline.stages.extract import extract_features
from pipeline.formats.feature_store import FeatureStoreReader
from pipeline.formats.manifest import MANIFEST_FILE, manifest_metadata, raw_root_of, read_manifest
from tests.helpers import PROJECT_ROOT


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
    assert store["extractor"] == "hf_text" and store["modality"] == "text" and store["corpus"] == "meld"
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


def test_a_changed_extractor_code_redoes_every_shard(prepared_demo, tiny_models, tmp_path: Path, monkeypatch) -> None:
    """The store records its extractor's code hash: an edit to that code redoes the shards, not only
    reruns the stage (which, under DVC, would otherwise keep every shard of an unchanged version)."""
    import pipeline.stages.extract as stage

    out = tmp_path / "store"
    extract_features("text", prepared_demo["meld"], out, text_section(tiny_models))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    extract_features("text", prepared_demo["meld"], out, text_section(tiny_models))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")} == stamps  # same code: kept
    monkeypatch.setattr(stage, "code_sha256", lambda cls: "0" * 64)  # as if extractors/hf_text.py were edited
    extract_features("text", prepared_demo["meld"], out, text_section(tiny_models))
    assert all(p.stat().st_mtime_ns != stamps[p.name] for p in out.glob("shard-*"))
    assert FeatureStoreReader(out).metadata["code_sha256"] == "0" * 64


def test_the_code_hash_follows_statements_not_comments_or_docstrings(tmp_path: Path, monkeypatch) -> None:
    from extractors.base import code_modules, code_sha256, get_extractor, modules_code_sha256

    module = tmp_path / "mer_code_probe.py"
    monkeypatch.syspath_prepend(str(tmp_path))
    module.write_text('"""Doc."""\n\ndef f(x):\n    """Doc."""\n    return x + 1\n')
    first = modules_code_sha256(["mer_code_probe"])
    module.write_text('"""Other doc."""\n# a comment\n\n\ndef f(x):  # why\n    return x + 1\n')
    assert modules_code_sha256(["mer_code_probe"]) == first
    module.write_text('"""Doc."""\n\ndef f(x):\n    """Doc."""\n    return x + 2\n')
    assert modules_code_sha256(["mer_code_probe"]) != first
    with pytest.raises(PipelineError, match="mer_no_such_module"):
        modules_code_sha256(["mer_no_such_module"])
    # an extractor's code: its modality's shared module, then its own (its DVC stage's code deps)
    assert code_modules(get_extractor("tfidf")) == ["extractors.text", "extractors.tfidf"]
    assert code_sha256(get_extractor("tfidf")) == modules_code_sha256(["extractors.text", "extractors.tfidf"])


def test_a_named_feature_set_records_its_name_and_needs_its_modality(prepared_demo, tmp_path: Path) -> None:
    out = tmp_path / "text_tfidf"
    report = extract_features("text_tfidf", prepared_demo["meld"], out, tfidf_section(modality="text"))
    store = FeatureStoreReader(out).metadata
    assert store["feature_set"] == "text_tfidf" and store["modality"] == "text" and store["extractor"] == "tfidf"
    assert report["store"]["feature_set"] == "text_tfidf"
    with pytest.raises(PipelineError, match=r"extract\.text_tfidf\.modality: missing; feature set 'text_tfidf' must say"):
        extract_features("text_tfidf", prepared_demo["meld"], tmp_path / "other", tfidf_section())
    with pytest.raises(PipelineError, match=r"extract\.text_tfidf\.modality: must be one of text, audio, face, got 'txt'"):
        extract_features("text_tfidf", prepared_demo["meld"], tmp_path / "other", tfidf_section(modality="txt"))
    with pytest.raises(PipelineError, match="makes text features, not audio"):
        extract_features("audio_tfidf", prepared_demo["meld"], tmp_path / "other", tfidf_section(modality="audio"))
    assert not (tmp_path / "other").exists()


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
        extract_features("audio", prepared_demo["meld"], tmp_path / "out", {"extractor": "hf_text"})


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


# ---- a fitted extractor (tfidf): the fit step ----

def tfidf_section(**overrides) -> dict:
    return {"extractor": "tfidf", "width": 32, "shard_size": 16, **overrides}


def copied_manifest(src: Path, dst: Path, keep, edit=lambda row: row) -> Path:
    """The rows of the manifest in `src` that `keep` accepts, passed through `edit`, written to `dst`."""
    table = pq.read_table(src / MANIFEST_FILE)
    meta = manifest_metadata(src)
    meta["raw_root"] = str(raw_root_of(src, meta).resolve())
    rows = [edit(dict(r)) for r in table.to_pylist() if keep(r)]
    dst.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema.with_metadata(meta)), dst / MANIFEST_FILE)
    return dst


@pytest.fixture(scope="module")
def meld_tfidf_store(prepared_demo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "meld-tfidf"
    extract_features("text", prepared_demo["meld"], out, tfidf_section())
    return out


KILLED_EXTRACT = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
real_replace = os.replace
def replace_then_die(src, dst):
    if os.path.basename(dst) == "shard-00003.safetensors":  # killed with shards 0-2 and the fitted state written
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
os.replace = replace_then_die
from pipeline.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_killed_fitted_run_resumes_with_its_saved_state_to_the_same_store(
    meld_tfidf_store: Path, prepared_demo, tmp_path: Path
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"extract": {"text": tfidf_section()}}))
    out = tmp_path / "store"
    args = ["extract", "text", "--manifest", str(prepared_demo["meld"]), "--out", str(out), "--params", str(params)]
    killed = subprocess.run([sys.executable, "-c", KILLED_EXTRACT, str(PROJECT_ROOT), *args], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in out.glob("shard-*")) == [f"shard-0000{k}.safetensors" for k in range(3)]
    assert (out / "fitted.safetensors").is_file() and not (out / "index.json").exists()

    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")}
    resumed = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, check=True)
    assert "fitted on 76 train utterances only (reused the state saved in the store" in resumed.stdout
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # state and finished shards kept
    assert files(out) == files(meld_tfidf_store)


def test_a_manifest_without_a_train_split_is_refused_before_anything_is_written(prepared_demo, tmp_path: Path, capsys) -> None:
    from pipeline.cli import main

    held_out = copied_manifest(prepared_demo["meld"], tmp_path / "held-out", keep=lambda r: r["split"] != "train")
    out = tmp_path / "store"
    with pytest.raises(PipelineError) as info:
        extract_features("text", held_out, out, tfidf_section())
    message = str(info.value)
    assert message.startswith(f"{held_out / MANIFEST_FILE}: has no train split (splits: dev, test)")
    assert "fitted on the train split only" in message and "\n" not in message
    assert not out.exists()

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"extract": {"text": tfidf_section()}}))
    assert main(["extract", "text", "--manifest", str(held_out), "--out", str(out), "--params", str(params)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("mer extract: error: ") and "has no train split" in line
    assert not out.exists()

    def no_train_text(r):
        if r["split"] == "train":
            r["text"], r["has_text"] = "", False
        return r

    silent = copied_manifest(prepared_demo["meld"], tmp_path / "silent", keep=lambda r: True, edit=no_train_text)
    with pytest.raises(PipelineError, match=r"manifest\.parquet: none of its 76 train utterances has a non-empty text"):
        extract_features("text", silent, out, tfidf_section())
    assert not out.exists()


def test_lineage_shows_the_fitted_state_and_an_edited_one_is_a_broken_link(meld_tfidf_store: Path, tmp_path: Path) -> None:
    import shutil

    from pipeline.stages.lineage import describe, trace

    store = tmp_path / "features" / "meld" / "text"
    shutil.copytree(meld_tfidf_store, store)
    lineage = trace([store], project=tmp_path)
    [link] = lineage.links.values()
    recorded = FeatureStoreReader(store).metadata["fitted"]
    assert link.facts["fitted state"].startswith(f"fitted.safetensors sha256 {recorded['sha256'][:12]}, fitted on 76 train")
    assert link.facts["model"] == "fitted on the train split (no pretrained weights)"
    assert lineage.broken == [] and lineage.problems("warning") == []  # no weights to look for
    assert any(c.status == "ok" and c.what.startswith("fitted.safetensors matches index.json") for c in link.checks)
    assert "fitted state: fitted.safetensors" in describe(lineage)

    state = store / "fitted.safetensors"
    data = bytearray(state.read_bytes())
    data[-1] ^= 0xFF  # one number of the SVD components
    state.write_bytes(bytes(data))
    [broken] = trace([store], project=tmp_path).broken
    assert "fitted.safetensors changed since extraction" in broken and recorded["sha256"][:12] in broken
    state.unlink()
    [broken] = trace([store], project=tmp_path).broken
    assert "fitted.safetensors recorded in index.json is missing" in broken


@pytest.mark.parametrize("user_value, in_force", [(None, "32"), ("7", "7")])
def test_the_stage_caps_onednn_kernel_cache_before_the_model_runs_unless_the_user_set_it(
    tiny_models, prepared_demo, user_value, in_force
) -> None:
    # oneDNN keeps a kernel per input shape (1024 by default), which grew wav2vec2-base extraction to
    # ~3.9 GiB; it reads the cap when it builds its first kernel, so it must be set before any forward
    check = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from pipeline.stages.extract import build_extractor\n"
        "build_extractor('audio', {'model': sys.argv[1], 'device': 'cpu'}, Path(sys.argv[2]), 'test')\n"
        "print(os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    if user_value is not None:
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = user_value
    root = raw_root_of(prepared_demo["meld"], manifest_metadata(prepared_demo["meld"] / MANIFEST_FILE))
    done = subprocess.run([sys.executable, "-c", check, str(tiny_models["audio"]), str(root)], env=env,
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == in_force
