"""The trainer (pipeline/training, pipeline/stages/train.py, `mer train`) on synthetic feature stores with a planted
class signal, for CMATH and the baselines.

Chance on the planted corpus: 4 balanced classes, so a weighted F1 near 0.25. The alignment check
requires a test weighted F1 above 0.8 with the features in place and below 0.4 with them shuffled
across utterances (`feature_shuffle`).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import PROJECT_ROOT
from model.batch import IGNORE_LABEL
from model.registry import model_names, model_spec
from pipeline.training.data import SpeakerMap, load_corpus
from pipeline.stages.train import CODE_FILES, TrainConfig, code_version, load_train_config, train
from pipeline.cli import main
from pipeline.core.errors import PipelineError
from pipeline.formats.feature_store import FeatureStoreReader
from pipeline.core.fingerprint import sha256_file
from pipeline.formats.manifest import MANIFEST_FILE, manifest_metadata, read_manifest, write_manifest
from pipeline.formats.run_files import BEST_DIR
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


def _params(tmp_path: Path, train_section: dict) -> Path:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": train_section}))
    return params


def test_train_features_choose_each_modalitys_store_and_a_wrong_choice_is_named(tmp_path, capsys):
    """`train.features` reads a modality from the store of another feature set, e.g. eGeMAPS audio."""
    import shutil

    prepared, features = make_corpus(tmp_path, dialogues={"train": 6, "dev": 3, "test": 3})
    shutil.move(features / "audio", features / "audio_other")
    config = replace(SMALL, epochs=1, features={"audio": "audio_other"})
    out = tmp_path / "run"
    train("meld", prepared, features, out, config, **QUIET)
    record = json.loads((out / BEST_DIR / "checkpoint.json").read_text())
    assert record["train_config"]["features"] == {"audio": "audio_other"} and "audio" in record["modalities"]
    assert record["data"]["stores"]["audio"]["folder"].endswith("audio_other")
    # a set of another modality, and a name that is a path, are refused where they are written
    with pytest.raises(PipelineError, match=r"features/meld/text: holds text features, not audio \(check train.features\)"):
        load_corpus(prepared, features, ["audio"], feature_sets={"audio": "text"})
    code = main(["train", "--corpus", "meld", "--prepared", str(prepared), "--features", str(features), "--out",
                 str(tmp_path / "none"), "--params", str(_params(tmp_path, {"features": {"audio": "audio_nope"}}))])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "none" / "best").exists() and err.count("\n") == 1
    assert "no store of feature set 'audio_nope', which train.features.audio names" in err
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"features": {"audio": "../audio"}}}))
    with pytest.raises(PipelineError, match=r"train\.features\.audio: must be a feature set's name"):
        load_train_config(params, "meld")
    params.write_text(yaml.safe_dump({"train": {"meld": {"features": {"audio": "audio_other"}}}}))
    with pytest.raises(PipelineError, match=r"train\.meld\.features: the feature sets are chosen for every corpus"):
        load_train_config(params, "meld")


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


# ---------------------------------------------------------------------------------------------------
# models: CMATH (the default) and the baselines, selected by train.model.name
# ---------------------------------------------------------------------------------------------------

BASELINES = ("mlp", "bigru", "late_fusion")


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path]:
    return make_corpus(tmp_path_factory.mktemp("planted"), dialogues={"train": 40, "dev": 12, "test": 24},
                       signal=2.0, seed=3)


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_trains_through_the_same_trainer_and_learns_the_planted_signal(planted, tmp_path, name):
    # measured over corpus seeds 0, 1, 3 x training seeds 0-1: test weighted F1 0.977-1.00 (chance 0.25)
    out = tmp_path / "out"
    config = replace(SMALL, epochs=8, model={"name": name, "hidden_size": 16, "dropout": 0.1})
    metrics = train("meld", *planted, out, config, **QUIET)
    assert metrics["model"] == name and metrics["test"]["weighted_f1"] > 0.8, metrics
    record = json.loads((out / "best/checkpoint.json").read_text())
    assert record["model_name"] == name and record["train_config"]["model"]["name"] == name
    config_class = model_spec(name).config_class
    assert set(record["model_config"]) == {f.name for f in fields(config_class)}
    assert record["model_config"]["input_dims"] == {"text": 12, "audio": 8, "face": 6}
    # the shared dvclive logging: the model's one loss term and the total, per epoch
    curves = out / "dvclive/plots/metrics"
    assert sorted(p.name for p in (curves / "train").iterdir()) == ["ce.tsv", "loss.tsv"]
    assert len((curves / "dev/weighted_f1.tsv").read_text().splitlines()) == 1 + 8
    state = json.loads((out / "last/trainer_state.json").read_text())
    assert all(set(entry["train"]) == {"loss", "ce"} for entry in state["history"])


def test_cmath_named_explicitly_trains_exactly_the_default_model(corpus, straight, tmp_path):
    named = replace(SMALL, model={**SMALL.model, "name": "cmath"})
    assert named.model_name == SMALL.model_name == "cmath"
    metrics = train("meld", *corpus, tmp_path / "named", named, **QUIET)
    assert sha256_file(tmp_path / "named/best/model.safetensors") == sha256_file(straight / "best/model.safetensors")
    assert metrics["test"] == json.loads((straight / "metrics.json").read_text())["test"]
    record = json.loads((straight / "best/checkpoint.json").read_text())
    assert record["model_name"] == "cmath" and metrics["model"] == "cmath"


def test_another_model_with_the_same_settings_does_not_resume(corpus, tmp_path):
    out = tmp_path / "out"
    mlp = replace(SMALL, epochs=1, model={"name": "mlp", "hidden_size": 16})
    train("meld", *corpus, out, mlp, **QUIET)
    lines: list[str] = []
    train("meld", *corpus, out, replace(mlp, model={"name": "late_fusion", "hidden_size": 16}), log=lines.append)
    assert any("starting afresh" in line for line in lines), lines
    assert any(line.startswith("model late_fusion: ") and line.endswith(" parameters") for line in lines)
    assert json.loads((out / "best/checkpoint.json").read_text())["model_name"] == "late_fusion"


def _train_cli(corpus, tmp_path: Path, train_section: dict) -> tuple[int, Path, Path]:
    """`mer train` with a params file holding `train_section`: (exit code, params file, --out)."""
    params = _params(tmp_path, train_section)
    out = tmp_path / "out"
    code = main(["train", "--corpus", "meld", "--prepared", str(corpus[0]), "--features", str(corpus[1]),
                 "--out", str(out), "--params", str(params)])
    return code, params, out


def test_cli_unknown_model_name_is_one_line_exit_2_listing_the_choices(corpus, tmp_path, capsys):
    for section, key in (({"model": {"name": "transformer"}}, "train.model.name"),
                         ({"meld": {"model": {"name": "transformer"}}}, "train.meld.model.name")):
        code, params, out = _train_cli(corpus, tmp_path, section)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert f"{params}:{key}: unknown model 'transformer'; choose one of cmath, mlp, bigru, late_fusion" in err
        assert not out.exists()


def test_cli_a_setting_the_named_model_does_not_have_is_one_line_exit_2(corpus, tmp_path, capsys):
    code, params, out = _train_cli(corpus, tmp_path, {"model": {"name": "bigru", "hidden_size": 16, "num_heads": 2}})
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and not out.exists(), err
    assert f"{params}:train.model.num_heads: unknown key; known keys: class_weights, dropout, hidden_size, name, " \
           "num_layers, use_speaker_embedding (the bigru model's settings; num_heads is a setting of cmath only: " \
           "put it under train.model.cmath, which only cmath reads)" in err
    code, params, out = _train_cli(corpus, tmp_path, {"model": {"name": "mlp", "use_speaker_embedding": False}})
    err = capsys.readouterr().err
    assert code == 2 and "train.model.use_speaker_embedding: unknown key" in err and not out.exists()
    assert "use_speaker_embedding is a setting of cmath, bigru: put it under train.model.<model name> for each" in err


@pytest.mark.parametrize("model, message", [
    ({"name": "mlp", "bigru": {"hiden_size": 3}}, "train.model.bigru.hiden_size: unknown key; known keys: "),
    ({"cmath": {"num_heads": "two"}}, "train.model.cmath.num_heads: must be an integer, got 'two'"),
    ({"cmath": [2]}, "train.model.cmath: must be a mapping of cmath settings, got [2]"),
    ({"name": "late_fusion", "late_fusion": {"num_classes": 3}},
     "train.model.late_fusion.num_classes: comes from the data"),
    ({"name": ["mlp"]}, "train.model.name: unknown model ['mlp']; choose one of"),
])
def test_model_blocks_and_names_are_checked_where_they_are_written(tmp_path, model, message):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"model": model}}))
    with pytest.raises(PipelineError, match=re.escape(f"{params}:{message}")):
        load_train_config(params, "meld")


def test_a_models_block_applies_only_to_it_and_is_merged_key_by_key_with_the_corpus_override(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {
        "model": {"hidden_size": 32, "cmath": {"num_heads": 2, "dropout": 0.3}, "bigru": {"dropout": 0.2}},
        "iemocap": {"model": {"name": "bigru", "cmath": {"num_heads": 4}, "bigru": {"num_layers": 2}}},
    }}))
    meld = load_train_config(params, "meld")
    assert meld.model_name == "cmath" and meld.model_settings() == {"hidden_size": 32, "dropout": 0.3, "num_heads": 2}
    iemocap = load_train_config(params, "iemocap")
    assert iemocap.model["cmath"] == {"num_heads": 4, "dropout": 0.3}  # the corpus's block merged into the shared one
    assert iemocap.model_name == "bigru"
    assert iemocap.model_settings() == {"hidden_size": 32, "dropout": 0.2, "num_layers": 2}
    params.write_text(yaml.safe_dump({"train": {
        "model": {"cmath": {"num_heads": 2}}, "iemocap": {"model": {"cmath": {"num_heads": "x"}}},
    }}))
    bad = f"{params}:train.iemocap.model.cmath.num_heads: must be an integer"
    with pytest.raises(PipelineError, match=re.escape(bad)):
        load_train_config(params, "iemocap")


def test_a_setting_beside_the_name_and_in_a_block_is_an_error_not_a_silent_choice(tmp_path):
    """README's "size it like the paper" sets train.model.num_heads; with the cmath block holding it too,
    neither may silently win."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"model": {"num_heads": 4, "cmath": {"num_heads": 2}}}}))
    with pytest.raises(PipelineError, match=re.escape(
            f"{params}:train.model.num_heads: is set both here and in the cmath block (cmath.num_heads); "
            "write a setting once")):
        load_train_config(params, "meld")
    params.write_text(yaml.safe_dump({"train": {"model": {"cmath": {"num_heads": 2}},
                                                "iemocap": {"model": {"num_heads": 4}}}}))
    with pytest.raises(PipelineError, match=re.escape(f"{params}:train.iemocap.model.num_heads: is set both here")):
        load_train_config(params, "iemocap")
    assert load_train_config(params, "meld").model_settings() == {"num_heads": 2}


@pytest.mark.parametrize("name", model_names())
def test_the_projects_params_select_every_model_by_its_name_alone(tmp_path, name):
    """`dvc exp run -S train.model.name=<name>`: the project's params.yaml with only the name changed is valid,
    and CMATH keeps the demo's settings."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    assert raw["train"]["model"]["name"] == "cmath"
    raw["train"]["model"]["name"] = name
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    for corpus_name in ("meld", "iemocap"):
        config = load_train_config(params, corpus_name)
        settings = config.model_settings()
        assert config.model_name == name
        model_spec(name).config_class(input_dims={"text": 8}, num_classes=4, num_speakers=3, **settings)
    if name == "cmath":
        assert settings == {"hidden_size": 64, "num_layers": 1, "num_heads": 2, "dropout": 0.1, "class_weights": None}
    else:
        assert "num_heads" not in settings


def test_code_files_hold_every_model_and_training_module():
    """A `last/` state trained by other model or training code is another run: every such module counts."""
    modules = {p.relative_to(PROJECT_ROOT).as_posix()
               for folder in ("model", "pipeline/training") for p in (PROJECT_ROOT / folder).glob("*.py")}
    assert modules | {"pipeline/stages/train.py"} == set(CODE_FILES)
    assert set(code_version()["model_sources_sha256"]) == set(CODE_FILES)


# ---------------------------------------------------------------------------------------------------
# split schemes (IEMOCAP's leave-one-session-out folds)
# ---------------------------------------------------------------------------------------------------

FOLD = {"dev": ["train_dia000", "train_dia001"], "test": ["dev_dia000", "dev_dia001", "test_dia000"]}


@pytest.fixture(scope="module")
def folded(tmp_path_factory) -> tuple[Path, Path]:
    return make_corpus(tmp_path_factory.mktemp("folded"), dialogues={"train": 12, "dev": 4, "test": 4},
                       split_schemes={"fold-a": FOLD})


def test_a_split_scheme_of_the_manifest_decides_train_dev_and_test(folded, tmp_path):
    data = load_corpus(*folded, ["text"], split="fold-a")
    assert sorted(data.splits["test"].dialogue_ids) == FOLD["test"]
    assert sorted(data.splits["dev"].dialogue_ids) == FOLD["dev"]
    assert "test_dia001" in data.splits["train"].dialogue_ids  # release test, train in this scheme
    metrics = train("meld", *folded, tmp_path / "run", replace(SMALL, epochs=2, split="fold-a"), **QUIET)
    assert metrics["split"] == "fold-a"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["split"] == "fold-a"
    from pipeline.stages.evaluate import evaluate_checkpoint

    results = evaluate_checkpoint(tmp_path / "run" / "best", *folded, tmp_path / "eval", cpu=True)
    assert results["test"]["weighted_f1"] == metrics["test"]["weighted_f1"]  # scored on the trained scheme's test
    ids = {line.split(",")[0] for line in (tmp_path / "eval" / "predictions.csv").read_text().splitlines()[1:]}
    assert {uid.rsplit("_", 1)[0] for uid in ids} == set(FOLD["test"])


def test_cli_a_split_the_manifest_does_not_offer_is_one_line_exit_2(folded, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"epochs": 1}}))
    out = tmp_path / "out"
    code = main(["train", "--corpus", "meld", "--prepared", str(folded[0]), "--features", str(folded[1]),
                 "--out", str(out), "--params", str(params), "--split", "loso-6"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "has no split 'loso-6'; it offers release, fold-a" in err
    assert not out.exists()  # nothing half-written


def test_cli_model_override_trains_the_named_baseline_and_names_the_flag_on_error(folded, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"epochs": 1, "model": {"hidden_size": 8}}}))
    argv = ["train", "--corpus", "meld", "--prepared", str(folded[0]), "--features", str(folded[1]), "--params", str(params)]
    assert main([*argv, "--out", str(tmp_path / "run"), "--model", "mlp"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["model"] == "mlp"
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "bad"), "--model", "transformer"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model: unknown model 'transformer'" in err, err


def test_select_modalities_uses_the_dev_best_subset_for_test_and_evaluation(folded, tmp_path):
    """Each epoch scores dev with the four subsets that keep text; the selected epoch's subset is the
    argmax, recorded in the checkpoint, and `mer evaluate` reproduces the test score with it."""
    config = replace(SMALL, epochs=3, modality_dropout=0.3, select_modalities=True)
    metrics = train("meld", *folded, tmp_path / "run", config, **QUIET)
    history = json.loads((tmp_path / "run" / "last" / "trainer_state.json").read_text())["history"]
    for entry in history:
        by_subset = entry["dev_by_modalities"]
        order = ["text+audio+face", "text+audio", "text+face", "text"]  # fullest first
        assert sorted(by_subset) == sorted(order)
        best = max(by_subset.values())
        chosen = "+".join(entry["modalities"])
        assert by_subset[chosen] == best == entry["dev"]["weighted_f1"]
        assert chosen == next(k for k in order if by_subset[k] == best)  # the fuller subset on ties
    record = json.loads((tmp_path / "run" / "best" / "checkpoint.json").read_text())
    assert record["inference_modalities"] == metrics["inference_modalities"]
    from pipeline.stages.evaluate import evaluate_checkpoint

    results = evaluate_checkpoint(tmp_path / "run" / "best", *folded, tmp_path / "eval", cpu=True)
    assert results["test"]["weighted_f1"] == metrics["test"]["weighted_f1"]
    assert results["checkpoint"]["inference_modalities"] == record["inference_modalities"]


def test_modality_dropout_changes_training_and_a_resumed_run_draws_the_same(folded, tmp_path):
    plain = train("meld", *folded, tmp_path / "plain", replace(SMALL, epochs=2), **QUIET)
    config = replace(SMALL, epochs=2, modality_dropout=0.5)
    dropped = train("meld", *folded, tmp_path / "dropped", config, **QUIET)
    assert dropped["test"] != plain["test"] or dropped["dev"] != plain["dev"]
    again = train("meld", *folded, tmp_path / "again", config, **QUIET)
    assert (again["dev"], again["test"]) == (dropped["dev"], dropped["test"])  # seeded per epoch
    weights = lambda run: (tmp_path / run / "best" / "model.safetensors").read_bytes()  # noqa: E731
    assert weights("again") == weights("dropped")
