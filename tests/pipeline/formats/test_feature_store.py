"""The feature store: deterministic, resumable, exclusive shards and a reader that checks them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline.core.errors import PipelineError
from pipeline.core.outputs import MARKER_FILE
from pipeline.formats.feature_store import (
    FITTED_FILE,
    FeatureStoreReader,
    FeatureStoreWriter,
    FittedState,
    StoreMetadata,
    fitted_state_bytes,
    parse_fitted_state,
    saved_fitted_state,
    shard_name,
)
from tests.helpers import PROJECT_ROOT

IDS = [f"dia{d}_utt{u}" for d in range(3) for u in range(3)]  # 9 ids; shard size 2 -> 5 shards
SHARD_SIZE = 2
MISSING = {"dia0_utt2": "no_face"}  # no tensor: recorded as missing
FLAGGED = {"dia2_utt0": "low_confidence"}  # has a tensor and a caveat
META = StoreMetadata(
    corpus="meld",
    modality="face",
    extractor="face_pool",
    extractor_version="1",
    model_id="test/model",
    model_sha256="ab" * 32,
    manifest_sha256="cd" * 32,
    params={"fps": 2, "crop": [0.1, 0.2]},
)


def make_features(scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Deterministic features of mixed shapes: pooled [8] and frame-level [T, 8]."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(8,) if i % 2 == 0 else (i + 1, 8) for i in range(len(IDS))]
    feats = {uid: torch.randn(shape, generator=gen) * scale for uid, shape in zip(IDS, shapes)}
    return {uid: t for uid, t in feats.items() if uid not in MISSING}


FEATURES = make_features()


def shard_inputs(writer: FeatureStoreWriter, k: int, features: dict[str, torch.Tensor] = FEATURES):
    ids = writer.shard_ids(k)
    flags = {uid: r for uid, r in {**MISSING, **FLAGGED}.items() if uid in ids}
    return {uid: features[uid] for uid in ids if uid in features}, flags


def build_store(
    folder: Path,
    meta: StoreMetadata = META,
    shard_size: int = SHARD_SIZE,
    reverse: bool = False,
    features: dict[str, torch.Tensor] = FEATURES,
    fitted: FittedState | None = None,
) -> None:
    """A complete store; `reverse` writes shards, and each shard's dict, in the opposite order."""
    with FeatureStoreWriter(folder, meta, IDS, shard_size, fitted=fitted) as writer:
        shards = writer.pending_shards()
        for k in reversed(shards) if reverse else shards:
            feats, flags = shard_inputs(writer, k, features)
            if reverse:
                feats = dict(reversed(list(feats.items())))
            writer.write_shard(k, feats, flags)
        writer.finalize()


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_child(script: str, *args: str, **popen) -> subprocess.Popen:
    code = f"import sys; sys.path.insert(0, {str(PROJECT_ROOT)!r})\n{script}"
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=PROJECT_ROOT, text=True, **popen)


def test_two_independent_writes_are_byte_identical(tmp_path):
    build_store(tmp_path / "a")
    build_store(tmp_path / "b", reverse=True)  # other shard order, other dict order
    digest = folder_digest(tmp_path / "a")
    assert set(digest) == {*(shard_name(k) for k in range(5)), "index.json", "report.json",
                           "availability.safetensors", ".lock", MARKER_FILE}
    assert digest == folder_digest(tmp_path / "b")


KILLED_WRITER = """
import json, os, signal
from safetensors.torch import load_file
from pipeline.formats.feature_store import FeatureStoreWriter, StoreMetadata
folder, inputs, spec = sys.argv[1], load_file(sys.argv[2]), json.loads(open(sys.argv[3]).read())
real_replace = os.replace
def replace_then_die(src, dst):
    if os.path.basename(dst) == "shard-00002.safetensors":  # killed after writing the temp file
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
os.replace = replace_then_die
with FeatureStoreWriter(folder, StoreMetadata(**spec["meta"]), spec["ids"], spec["shard_size"]) as w:
    for k in w.pending_shards():
        ids = w.shard_ids(k)
        flags = {u: r for u, r in spec["flags"].items() if u in ids}
        w.write_shard(k, {u: inputs[u] for u in ids if u in inputs}, flags)
"""


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    inputs, spec = tmp_path / "inputs.safetensors", tmp_path / "spec.json"
    save_file(FEATURES, inputs)
    spec.write_text(json.dumps({"meta": dataclasses.asdict(META), "ids": IDS, "shard_size": SHARD_SIZE,
                                "flags": {**MISSING, **FLAGGED}}))
    folder = tmp_path / "resumed"
    child = run_child(KILLED_WRITER, str(folder), str(inputs), str(spec))
    assert child.wait(timeout=60) == -signal.SIGKILL
    assert any(p.name.startswith(".shard-00002") for p in folder.iterdir())  # the orphaned temp file

    with FeatureStoreWriter(folder, META, IDS, SHARD_SIZE) as writer:
        assert writer.pending_shards() == [2, 3, 4]
        for k in writer.pending_shards():
            writer.write_shard(k, *shard_inputs(writer, k))
        writer.finalize()
    build_store(tmp_path / "clean")
    assert folder_digest(folder) == folder_digest(tmp_path / "clean")


def test_changed_metadata_makes_every_shard_stale_and_never_mixes(tmp_path):
    folder = tmp_path / "store"
    build_store(folder)
    new_meta = dataclasses.replace(META, params={**META.params, "fps": 5})
    new_features = make_features(scale=2.0)
    with FeatureStoreWriter(folder, new_meta, IDS, SHARD_SIZE) as writer:
        assert writer.pending_shards() == [0, 1, 2, 3, 4]
        writer.write_shard(0, *shard_inputs(writer, 0, new_features))
        assert writer.pending_shards() == [1, 2, 3, 4]
        with pytest.raises(PipelineError, match="stale"):
            writer.finalize()
    with pytest.raises(PipelineError, match="did not finish"):  # the old index was withdrawn
        FeatureStoreReader(folder)

    build_store(folder, meta=new_meta, features=new_features)
    reader = FeatureStoreReader(folder)
    assert reader.metadata["params"] == {"fps": 5, "crop": [0.1, 0.2]}
    for uid, tensor in new_features.items():
        torch.testing.assert_close(reader.get(uid), tensor, rtol=1e-3, atol=1e-2)


def test_new_shard_plan_removes_old_shards(tmp_path):
    build_store(tmp_path / "store")  # 5 shards of 2
    build_store(tmp_path / "store", shard_size=4)  # 3 shards of 4
    build_store(tmp_path / "fresh", shard_size=4)
    assert folder_digest(tmp_path / "store") == folder_digest(tmp_path / "fresh")
    assert not (tmp_path / "store" / shard_name(3)).exists()


def test_half_written_files_are_ignored_and_cleaned(tmp_path):
    folder = tmp_path / "store"
    with FeatureStoreWriter(folder, META, IDS, SHARD_SIZE) as writer:
        for k in (0, 1):
            writer.write_shard(k, *shard_inputs(writer, k))
    temp = folder / ".shard-00002.safetensors.x1y2.tmp"
    temp.write_bytes(b"\x10\x00\x00\x00half a shard")
    whole = (folder / shard_name(1)).read_bytes()
    (folder / shard_name(3)).write_bytes(whole[:100])  # a truncated shard under its final name

    with FeatureStoreWriter(folder, META, IDS, SHARD_SIZE) as writer:
        assert writer.pending_shards() == [2, 3, 4]
        for k in writer.pending_shards():
            writer.write_shard(k, *shard_inputs(writer, k))
        writer.finalize()
    assert not temp.exists()
    build_store(tmp_path / "clean")
    assert folder_digest(folder) == folder_digest(tmp_path / "clean")


LOCK_HOLDER = """
from pipeline.formats.feature_store import FeatureStoreWriter, StoreMetadata
with FeatureStoreWriter(sys.argv[1], StoreMetadata(*"abcdefg"), ["u1"], 1):
    print("locked", flush=True)
    sys.stdin.readline()  # hold the lock until the parent closes our stdin
"""


def test_second_writer_fails_fast_then_waits_for_the_lock(tmp_path):
    folder = tmp_path / "store"
    holder = run_child(LOCK_HOLDER, str(folder), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(PipelineError, match="another process is writing this feature store"):
            with FeatureStoreWriter(folder, META, IDS, SHARD_SIZE):
                pass
        with pytest.raises(PipelineError, match="still writing this feature store after waiting"):
            with FeatureStoreWriter(folder, META, IDS, SHARD_SIZE, wait_s=0.2):
                pass
        threading.Timer(0.5, holder.stdin.close).start()
        start = time.monotonic()
        with FeatureStoreWriter(folder, META, IDS, SHARD_SIZE, wait_s=30) as writer:
            assert time.monotonic() - start >= 0.3
            assert writer.pending_shards() == [0, 1, 2, 3, 4]
    finally:
        holder.kill()
        holder.wait()


def test_reader_detects_tampered_and_missing_shards(tmp_path):
    folder = tmp_path / "store"
    build_store(folder)
    FeatureStoreReader(folder)
    shard = folder / shard_name(1)
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(PipelineError, match=r"shard-00001\.safetensors: sha256 does not match"):
        FeatureStoreReader(folder)
    FeatureStoreReader(folder, verify=False)  # hashing skipped on request

    (folder / shard_name(3)).unlink()
    missing = r"shard-00003\.safetensors: shard listed in index\.json is missing"
    with pytest.raises(PipelineError, match=missing):
        FeatureStoreReader(folder, verify=False)


def test_unfinished_folder_is_not_a_store(tmp_path):
    folder = tmp_path / "store"
    with FeatureStoreWriter(folder, META, IDS, SHARD_SIZE) as writer:
        writer.write_shard(0, *shard_inputs(writer, 0))
    with pytest.raises(PipelineError, match="extraction stage did not finish"):
        FeatureStoreReader(folder)


def test_float16_round_trip_and_bulk_load(tmp_path):
    folder = tmp_path / "store"
    build_store(folder)
    reader = FeatureStoreReader(folder)
    assert reader.metadata["dtype"] == "float16"
    assert reader.utterance_ids == [uid for uid in IDS if uid not in MISSING]
    bulk = reader.load_all()
    assert list(bulk) == reader.utterance_ids
    for uid, original in FEATURES.items():
        one = reader.get(uid)
        assert one.dtype == torch.float32 and one.shape == original.shape
        torch.testing.assert_close(one, original, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(bulk[uid], one)
    assert "dia0_utt2" not in reader
    with pytest.raises(KeyError, match="dia0_utt2"):
        reader.get("dia0_utt2")


def test_availability_and_report_follow_the_flags(tmp_path):
    folder = tmp_path / "store"
    build_store(folder)
    reader = FeatureStoreReader(folder)
    avail = reader.availability()
    assert avail.utterance_ids == IDS
    assert avail.mask.dtype == torch.bool
    assert avail.mask.tolist() == [uid not in MISSING for uid in IDS]
    assert reader.report["counts"] == {"in": 9, "out": 8, "dropped": 1, "missing": 1, "flagged": 1}
    assert reader.report["dropped_by_reason"] == {"no_face": 1}
    assert reader.report["flagged_by_reason"] == {"low_confidence": 1}
    assert reader.report["missing"] == [{"utterance_id": "dia0_utt2", "reason": "no_face"}]
    assert reader.report["flagged"] == [{"utterance_id": "dia2_utt0", "reason": "low_confidence"}]
    entry = json.loads((folder / "index.json").read_text())["utterances"]["dia0_utt1"]
    assert entry == {"shard": shard_name(0), "shape": [2, 8], "dtype": "float16"}


NAN, INF, ONES = float("nan"), float("inf"), torch.ones(2)


@pytest.mark.parametrize(
    ("features", "flags", "message"),
    [
        ({"dia0_utt0": torch.tensor([1.0, NAN]), "dia0_utt1": ONES}, {}, "'dia0_utt0'.*NaN"),
        ({"dia0_utt0": ONES, "dia0_utt1": torch.tensor([INF])}, {}, "'dia0_utt1'.*NaN or inf"),
        ({"dia0_utt0": ONES, "dia0_utt1": torch.tensor([1e6])}, {}, "'dia0_utt1'.*overflows float16"),
        ({"dia0_utt0": ONES, "dia0_utt1": ONES, "dia1_utt0": ONES}, {}, "'dia1_utt0' is not in"),
        ({"dia0_utt0": ONES}, {"dia2_utt2": "no_face"}, "'dia2_utt2' is not in this shard's plan"),
        ({"dia0_utt0": ONES}, {"dia0_utt1": ""}, "flag of 'dia0_utt1' must be a non-empty reason"),
        ({"dia0_utt0": ONES}, {}, r"neither a feature nor a flag.*dia0_utt1"),
    ],
)
def test_bad_shard_input_is_rejected(tmp_path, features, flags, message):
    with FeatureStoreWriter(tmp_path / "store", META, IDS, SHARD_SIZE) as writer:
        with pytest.raises(PipelineError, match=message):
            writer.write_shard(0, features, flags)
        assert writer.pending_shards() == [0, 1, 2, 3, 4]


def fitted_state(scale: float = 1.0, fit_sha256: str = "ef" * 32) -> FittedState:
    """A fitted extractor's state as the extract stage hands it to the store: JSON info + named tensors."""
    return FittedState(
        info={"vocabulary": ["happy", "so happy", "wedding"], "settings": {"min_df": 2, "ngram_range": [1, 2]}},
        tensors={"idf": torch.tensor([1.5, 2.0, 1.25]) * scale, "components": torch.arange(6.0).reshape(2, 3)},
        fit_sha256=fit_sha256,
        num_inputs=7,
    )


def test_a_fitted_state_is_saved_with_the_store_and_hashed_into_its_identity(tmp_path):
    folder = tmp_path / "store"
    build_store(folder, fitted=fitted_state())
    data = (folder / FITTED_FILE).read_bytes()
    assert data == fitted_state_bytes(fitted_state())  # deterministic bytes
    reader = FeatureStoreReader(folder)
    assert reader.metadata["fitted"] == {"file": FITTED_FILE, "sha256": hashlib.sha256(data).hexdigest(),
                                         "fit_sha256": "ef" * 32, "num_inputs": 7}
    index = json.loads((folder / "index.json").read_text())
    assert index["store"]["fitted"]["sha256"] == hashlib.sha256(data).hexdigest()
    state = reader.fitted_state()
    assert state.info == fitted_state().info and state.fit_sha256 == "ef" * 32 and state.num_inputs == 7
    assert all(torch.equal(state.tensors[k], v) for k, v in fitted_state().tensors.items())
    # a plain safetensors file: any safetensors reader opens it, no code runs (no pickle)
    from safetensors import safe_open

    with safe_open(folder / FITTED_FILE, framework="pt") as handle:
        assert sorted(handle.keys()) == ["components", "idf"]
        assert json.loads(handle.metadata()["mer_fitted"])["info"]["vocabulary"][1] == "so happy"
    build_store(tmp_path / "plain")  # an extractor without a fit step: no state, no "fitted" key
    assert FeatureStoreReader(tmp_path / "plain").fitted_state() is None
    assert not (tmp_path / "plain" / FITTED_FILE).exists() and "fitted" not in FeatureStoreReader(tmp_path / "plain").metadata


def test_another_fitted_state_makes_every_shard_stale_and_withdraws_the_index(tmp_path):
    folder = tmp_path / "store"
    build_store(folder, fitted=fitted_state())
    with FeatureStoreWriter(folder, META, IDS, SHARD_SIZE, fitted=fitted_state(scale=2.0)) as writer:
        assert writer.pending_shards() == [0, 1, 2, 3, 4]
        assert not (folder / "index.json").exists()  # no reader sees the old index beside the new state
        assert (folder / FITTED_FILE).read_bytes() == fitted_state_bytes(fitted_state(scale=2.0))
    # the same state again: the finished shards stay finished
    build_store(tmp_path / "same", fitted=fitted_state())
    with FeatureStoreWriter(tmp_path / "same", META, IDS, SHARD_SIZE, fitted=fitted_state()) as writer:
        assert writer.pending_shards() == []
        assert (tmp_path / "same" / "index.json").exists()


def test_a_store_that_is_no_longer_fitted_drops_its_fitted_state(tmp_path):
    build_store(tmp_path / "store", fitted=fitted_state())
    build_store(tmp_path / "store")  # the same metadata without a fit step: every shard is redone
    build_store(tmp_path / "fresh")
    assert folder_digest(tmp_path / "store") == folder_digest(tmp_path / "fresh")
    assert "fitted" not in FeatureStoreReader(tmp_path / "store").metadata


def test_a_saved_state_is_reused_only_for_the_same_fit_and_once_the_store_committed_to_it(tmp_path):
    folder = tmp_path / "store"
    assert saved_fitted_state(folder, "ef" * 32) is None  # nothing saved
    with FeatureStoreWriter(folder, META, IDS, SHARD_SIZE, fitted=fitted_state()) as writer:
        assert (folder / FITTED_FILE).is_file()
        assert saved_fitted_state(folder, "ef" * 32) is None  # saved, but no shard was made with it yet
        writer.write_shard(0, *shard_inputs(writer, 0))
    saved = saved_fitted_state(folder, "ef" * 32)  # killed after shard 0: a resume reuses it
    assert saved is not None and fitted_state_bytes(saved) == fitted_state_bytes(fitted_state())
    assert saved_fitted_state(folder, "00" * 32) is None  # fitted on other inputs

    edited = fitted_state(scale=3.0)  # same recorded fit, other numbers: not what the shard was made with
    (folder / FITTED_FILE).write_bytes(fitted_state_bytes(edited))
    assert saved_fitted_state(folder, "ef" * 32) is None
    (folder / FITTED_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    assert saved_fitted_state(folder, "ef" * 32) is None
    with pytest.raises(ValueError, match="not a fitted-state file"):
        parse_fitted_state((folder / FITTED_FILE).read_bytes())


def test_reader_detects_an_edited_or_missing_fitted_state(tmp_path):
    folder = tmp_path / "store"
    build_store(folder, fitted=fitted_state())
    path = folder / FITTED_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one tensor byte
    path.write_bytes(bytes(data))
    with pytest.raises(PipelineError, match=r"fitted\.safetensors: sha256 does not match index\.json"):
        FeatureStoreReader(folder)
    FeatureStoreReader(folder, verify=False)  # hashing skipped on request
    path.unlink()
    with pytest.raises(PipelineError, match=r"fitted\.safetensors: the fitted state listed in index\.json is missing"):
        FeatureStoreReader(folder, verify=False)
