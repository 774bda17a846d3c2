"""The trainer (model/data.py, model/train.py, `mer train`) on synthetic feature stores with a planted class signal.

Chance on the planted corpus: 4 balanced classes, so a weighted F1 near 0.25. The alignment check
requires a test weighted F1 above 0.8 with the features in place and below 0.4 with them shuffled
across utterances (`feature_shuffle`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import PROJECT_ROOT
from model.batch import IGNORE_LABEL
from pipeline.training.data import SpeakerMap, load_corpus
from pipeline.stages.train import TrainConfig, load_train_config, train
from pipeline.cli import main
from pipeline.core.errors import PipelineError
from pipeline.formats.feature_store import FeatureStoreReader
from pipeline.core.fingerprint import sha256_file
from pipeline.formats.manifest import MANIFEST_FILE, manifest_metadata, read_manifest, write_manifest
from tests.helpers.train_corpus import LABELS, make_corpus

SMALL = TrainConfig(
    seed=0, epochs=4, lr=3e-3, batch_size=4, patience=0,
    model={"hidden_size": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.1},
)
QUIET = {"log": lambda line: None}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py




@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    return make_corpus(tmp_path_factory.mktemp("synthetic"), dialogues={"train": 20, "dev": 7, "test": 7})


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    train("meld", *corpus, out, SMALL, **QUIET)
    return out


# ---------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------


def test_batches_hold_each_utterances_own_features_in_turn_order(corpus):
    prepared, features = corpus
    data = load_corpus(prepared, features, ["text", "audio", "face"])
    rows = {r["utterance_id"]: r for r in read_manifest(prepared)}
    stores = {m: FeatureStoreReader(features / m) for m in ("text", "audio", "face")}
    split = data.splits["dev"]
    batch = split.collate([0, 3, 5])
    lengths = [split.lengths[i] for i in (0, 3, 5)]
    assert batch.mask.shape == (3, max(lengths)) and batch.mask.sum(1).tolist() == lengths
    assert (batch.labels[~batch.mask] == IGNORE_LABEL).all() and (batch.speakers[~batch.mask] == 0).all()
    for row, ids in enumerate(batch.utterance_ids):
        turns = [rows[u]["turn_index"] for u in ids]
        assert turns == sorted(turns) and len({rows[u]["dialogue_id"] for u in ids}) == 1
        for i, uid in enumerate(ids):
            assert batch.labels[row, i] == rows[uid]["label_index"]
            for m, store in stores.items():
                assert bool(batch.available[m][row, i]) == (uid in store)
                expected = store.get(uid) if uid in store else torch.zeros(data.input_dims[m])
                assert torch.equal(batch.features[m][row, i], expected.float()), (m, uid)
        assert not batch.features["text"][row, len(ids):].any()


def test_speaker_ids_are_built_from_train_by_rule():
    gender = SpeakerMap.build("gender", ["Ses01_F", "Ses01_M", "Ses02_F", "F"])
    assert gender.ids == {"F": 1, "M": 2}
    assert gender.id("Ses05_M") == 2 and gender.id("Ses05_X") == 0  # a test-session actor maps by gender
    names = SpeakerMap.build("name", ["Ross", "Ross", "Rachel", "Rachel", "Rachel", "Guest", ""], min_count=2)
    assert names.ids == {"Rachel": 1, "Ross": 2}  # by count, then name
    assert names.id("Guest") == 0 and names.id("Chandler") == 0 and names.num_speakers == 3
    assert SpeakerMap.from_dict(json.loads(json.dumps(names.to_dict()))) == names


def test_a_store_built_from_another_manifest_is_refused_naming_it(tmp_path, capsys):
    prepared, features = make_corpus(tmp_path, dialogues={"train": 3, "dev": 2, "test": 2})
    rows = read_manifest(prepared)
    # the same utterances, rewritten: same content but a different file, as after a new `mer prepare`
    from pipeline.formats.manifest import Utterance

    meta = manifest_metadata(prepared)
    utterances = [Utterance(**{**r, "sources": [], "text": r["text"] + "!"}) for r in rows]
    write_manifest(utterances, prepared / MANIFEST_FILE, meta)
    with pytest.raises(PipelineError, match=r"text feature store was built from another manifest.*rerun extraction"):
        load_corpus(prepared, features, ["text"])
    code = main(["train", "--corpus", "meld", "--prepared", str(prepared), "--features", str(features),
                 "--out", str(tmp_path / "out"), "--params", str(PROJECT_ROOT / "params.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(features / "text") in err and "rerun extraction" in err


def test_utterances_without_a_usable_label_are_counted_and_ignored(tmp_path):
    prepared, features = make_corpus(tmp_path, dialogues={"train": 4, "dev": 3, "test": 3}, label_map_size=3)
    rows = read_manifest(prepared)
    data = load_corpus(prepared, features, ["text"])
    assert data.label_names == LABELS[:3]
    expected = {s: sum(1 for r in rows if r["split"] == s and r["label_index"] == 3) for s in ("train", "dev", "test")}
    assert sum(expected.values()) > 0
    assert {s: data.report["splits"][s]["unlabelled"] for s in expected} == expected
    assert all(int((data.splits[s].labels == IGNORE_LABEL).sum()) == n for s, n in expected.items())
    assert "unlabelled" in data.describe()


# ---------------------------------------------------------------------------------------------------
# params
# ---------------------------------------------------------------------------------------------------


def test_params_yaml_train_section_loads_for_both_corpora_with_overrides():
    meld = load_train_config(PROJECT_ROOT / "params.yaml", "meld")
    iemocap = load_train_config(PROJECT_ROOT / "params.yaml", "iemocap")
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["train"]
    assert meld.lr == raw["lr"] and meld.min_speaker_count == raw["meld"].get("min_speaker_count", raw["min_speaker_count"])
    assert iemocap.model["hidden_size"] == raw["model"]["hidden_size"]


def test_corpus_overrides_merge_model_key_by_key_and_unknown_keys_are_named(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {
        "lr": 0.01, "model": {"hidden_size": 32, "dropout": 0.2},
        "iemocap": {"lr": 0.002, "model": {"hidden_size": 64}},
    }}))
    assert load_train_config(params, "meld").model == {"hidden_size": 32, "dropout": 0.2}
    iemocap = load_train_config(params, "iemocap")
    assert iemocap.lr == 0.002 and iemocap.model == {"hidden_size": 64, "dropout": 0.2}
    params.write_text(yaml.safe_dump({"train": {"iemocap": {"learning_rate": 0.1}}}))
    with pytest.raises(PipelineError, match=r"train\.iemocap\.learning_rate: unknown key; known keys: .*\blr\b"):
        load_train_config(params, "iemocap")
    params.write_text(yaml.safe_dump({"train": {"model": {"num_classes": 3}}}))
    with pytest.raises(PipelineError, match=r"train\.model\.num_classes: comes from the data"):
        load_train_config(params, "meld")


def test_dvc_train_stage_tracks_every_shared_key_and_the_corpus_overrides():
    """`dvc exp run -S train.<key>=...` must rerun training: every TrainConfig field is a tracked param."""
    stage = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]["train"]
    assert stage["foreach"] == ["meld", "iemocap"]
    tracked = set(stage["do"]["params"])
    assert tracked == {f"train.{f.name}" for f in fields(TrainConfig)} | {"train.${item}"}
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["train"]
    assert {f.name for f in fields(TrainConfig)} <= set(raw) and {"meld", "iemocap"} <= set(raw)


# ---------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------


def test_two_cpu_runs_give_identical_weights_and_metrics(corpus, straight, tmp_path):
    again = tmp_path / "again"
    train("meld", *corpus, again, SMALL, **QUIET)
    for name in ("best/model.safetensors", "best/checkpoint.json", "last/model.safetensors", "metrics.json"):
        assert sha256_file(straight / name) == sha256_file(again / name), name


def test_a_killed_run_resumes_to_exactly_the_straight_run(corpus, straight, tmp_path):
    class Killed(Exception):
        pass

    def kill_after_second_epoch(epoch: int) -> None:
        if epoch == 2:
            raise Killed

    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        train("meld", *corpus, out, SMALL, on_epoch_end=kill_after_second_epoch, **QUIET)
    assert json.loads((out / "last/trainer_state.json").read_text())["epochs_done"] == 2
    lines: list[str] = []
    train("meld", *corpus, out, SMALL, log=lines.append)
    assert any("resuming" in line and "after epoch 2" in line for line in lines), lines
    assert not any(line.startswith("epoch 1/") or line.startswith("epoch 2/") for line in lines)
    for name in (
        "best/model.safetensors", "best/checkpoint.json", "last/model.safetensors", "last/optimizer.bin",
        "last/scheduler.bin", "last/trainer_state.json", "metrics.json", "dvclive/metrics.json",
        "dvclive/plots/metrics/dev/weighted_f1.tsv", "dvclive/plots/metrics/train/loss.tsv",
    ):
        assert sha256_file(straight / name) == sha256_file(out / name), name
    curve = (out / "dvclive/plots/metrics/dev/weighted_f1.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in curve] == ["step", "1", "2", "3", "4"]  # every epoch once


def test_changed_config_does_not_resume(corpus, straight, tmp_path):
    out = tmp_path / "changed"
    shutil.copytree(straight, out)
    lines: list[str] = []
    train("meld", *corpus, out, replace(SMALL, epochs=1, lr=1e-3), log=lines.append)
    assert any("starting afresh" in line for line in lines)
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 1


def test_checkpoint_records_what_lineage_needs(corpus, straight):
    prepared, features = corpus
    record = json.loads((straight / "best/checkpoint.json").read_text())
    assert record["weights_sha256"] == sha256_file(straight / "best/model.safetensors")
    assert record["data"]["manifest_sha256"] == sha256_file(prepared / MANIFEST_FILE)
    for m in ("text", "audio", "face"):
        store = record["data"]["stores"][m]
        assert store["metadata"]["manifest_sha256"] == record["data"]["manifest_sha256"]
        assert store["metadata"]["model_sha256"] and store["index_sha256"] == sha256_file(features / m / "index.json")
    assert record["label_map"] == {n: i for i, n in enumerate(LABELS)}
    assert record["speaker_map"]["rule"] == "name" and record["seed"] == 0
    assert record["train_config"]["lr"] == SMALL.lr and record["model_config"]["hidden_size"] == 16
    assert set(record["code"]) == {"git_commit", "git_dirty", "model_sources_sha256"}
    metrics = json.loads((straight / "metrics.json").read_text())
    assert record["epoch"] == metrics["best_epoch"] and record["test"]["weighted_f1"] == metrics["test"]["weighted_f1"]
    assert metrics["test_best_epoch_oracle"]["weighted_f1"] >= metrics["test"]["weighted_f1"]


def test_planted_signal_is_learned_and_shuffled_features_fall_to_chance(tmp_path):
    """Alignment: the same corpus with every utterance given another utterance's features is not learnable."""
    # measured over corpus seeds 0-4 x training seeds 0-1: aligned 0.90-1.00, shuffled 0.15-0.28 (chance 0.25)
    prepared, features = make_corpus(tmp_path, dialogues={"train": 40, "dev": 12, "test": 24}, signal=2.0, seed=3)
    config = replace(SMALL, epochs=8)
    aligned = train("meld", prepared, features, tmp_path / "aligned", config, **QUIET)
    shuffled = train("meld", prepared, features, tmp_path / "shuffled", config, feature_shuffle=1, **QUIET)
    assert aligned["test"]["weighted_f1"] > 0.8, aligned
    assert shuffled["test"]["weighted_f1"] < 0.4, shuffled
    assert shuffled["feature_shuffle"] == 1
    record = json.loads((tmp_path / "shuffled/best/checkpoint.json").read_text())
    assert record["data"]["feature_shuffle"] == 1


@pytest.mark.parametrize("how", ["store_absent", "all_unavailable", "nearly_all_unavailable"])
def test_training_survives_a_missing_modality(tmp_path, how):
    missing = {"face": 1.0 if how == "all_unavailable" else 0.95}
    prepared, features = make_corpus(tmp_path, dialogues={"train": 10, "dev": 4, "test": 4}, missing=missing)
    if how == "store_absent":
        shutil.rmtree(features / "face")
    metrics = train("meld", prepared, features, tmp_path / "out", replace(SMALL, epochs=2), **QUIET)
    record = json.loads((tmp_path / "out/best/checkpoint.json").read_text())
    if how == "nearly_all_unavailable":
        assert record["modalities"] == ["text", "audio", "face"]
    else:
        assert record["modalities"] == ["text", "audio"] and "face" in record["data"]["dropped_modalities"]
    assert all(torch.isfinite(torch.tensor(metrics[s]["weighted_f1"])) for s in ("dev", "test"))
    from pipeline.stages.evaluate import evaluate_checkpoint

    results = evaluate_checkpoint(tmp_path / "out/best", prepared, features, tmp_path / "eval")
    assert results["test"]["counts"]["utterances"] == len([r for r in read_manifest(prepared) if r["split"] == "test"])


def test_cli_seeds_writes_one_run_per_seed_and_mean_std(corpus, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {
        "seed": 7, "epochs": 1, "lr": 0.003, "batch_size": 4, "patience": 0,
        "model": {"hidden_size": 16, "num_layers": 1, "num_heads": 2},
    }}))
    out = tmp_path / "out"
    code = main(["train", "--corpus", "meld", "--prepared", str(corpus[0]), "--features", str(corpus[1]),
                 "--out", str(out), "--params", str(params), "--seeds", "2"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [7, 8] and sorted(p.name for p in out.glob("seed-*")) == ["seed-7", "seed-8"]
    runs = [json.loads((out / f"seed-{s}/metrics.json").read_text()) for s in (7, 8)]
    values = [r["test"]["weighted_f1"] for r in runs]
    assert summary["mean"]["test.weighted_f1"] == pytest.approx(sum(values) / 2)
    assert summary["std"]["test.weighted_f1"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    assert "+-" in capsys.readouterr().out
