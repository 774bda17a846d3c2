"""openSMILE audio extractor: feature widths, bitwise determinism, missing/flag reasons on degenerate
audio, one-line param errors, lineage hashes, and the demo's planted audio signal learnt from eGeMAPS alone."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import opensmile
import pytest
import soundfile
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader

import extractors.opensmile as osm
from extractors.audio import AudioInputConfig
from extractors.base import Decoded, extractor_for, get_extractor
from extractors.opensmile import OpenSmileConfig, OpenSmileExtractor, config_files, config_sha256, finite_feature
from pipeline.core.errors import PipelineError
from pipeline.core.params import ParamError
from pipeline.formats.feature_store import FeatureStoreReader
from pipeline.formats.manifest import read_manifest
from pipeline.stages.extract import extract_features, extractor_config
from pipeline.stages.train import TrainConfig, train

SR = 16_000
CPU = torch.device("cpu")
WIDTHS = {("eGeMAPSv02", "functionals"): 88, ("ComParE_2016", "functionals"): 6373,
          ("eGeMAPSv02", "lld_mean_std"): 2 * 25, ("ComParE_2016", "lld_mean_std"): 2 * 65}  # fmt: skip


def make(root: Path, **overrides: Any) -> OpenSmileExtractor:
    return OpenSmileExtractor(OpenSmileConfig(**overrides), root, CPU)


def row(path: str | None, **extra: Any) -> dict[str, Any]:
    base = {"utterance_id": Path(path or "none").stem, "has_audio": path is not None, "audio_path": path,
            "audio_start_s": 0.0, "audio_end_s": None, "flags": []}  # fmt: skip
    return {**base, **extra}


def voice(seconds: float, f0: float = 180.0, seed: int = 0, level: float = 0.3) -> np.ndarray:
    """A pitched harmonic tone with syllable bursts and a little noise: what openSMILE is built for."""
    t = np.arange(round(seconds * SR)) / SR
    tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 5))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.6
    noise = np.random.default_rng(seed).normal(0, 0.005, t.size)
    return (level * envelope * tone / 2 + noise).astype(np.float32)


def write_wav(root: Path, name: str, audio: np.ndarray) -> str:
    soundfile.write(str(root / name), audio, SR, subtype="FLOAT")
    return name


def decode_all(extractor: OpenSmileExtractor, rows: list[dict[str, Any]]) -> dict[str, Decoded]:
    decoder = extractor.decoder()
    return {d.utterance_id: d for d in (decoder(r) for r in rows)}


def encode_one(extractor: OpenSmileExtractor, r: dict[str, Any]) -> torch.Tensor:
    (decoded,) = decode_all(extractor, [r]).values()
    assert decoded.missing is None, decoded.missing
    (encoded,) = extractor.encode([decoded])
    return encoded.feature


# --- registration, widths, determinism ---------------------------------------------------------------


def test_registered_as_an_audio_extractor() -> None:
    assert get_extractor("opensmile") is OpenSmileExtractor is extractor_for("audio", "opensmile")
    assert OpenSmileExtractor.modality == "audio" and OpenSmileExtractor.version == "1"
    assert issubclass(OpenSmileConfig, AudioInputConfig)
    config = OpenSmileConfig()
    assert (config.feature_set, config.level, config.dtype) == ("eGeMAPSv02", "functionals", "float32")


@pytest.mark.parametrize(("feature_set", "level"), sorted(WIDTHS))
def test_feature_width_per_set_and_level(tmp_path: Path, feature_set: str, level: str) -> None:
    name = write_wav(tmp_path, "u.wav", voice(1.5))
    extractor = make(tmp_path, feature_set=feature_set, level=level)
    feature = encode_one(extractor, row(name))
    assert feature.shape == (WIDTHS[feature_set, level],) == (extractor.output_dim,)
    assert feature.dtype == torch.float32 and torch.isfinite(feature).all()
    assert extractor.model_id == f"opensmile {opensmile.__version__} {feature_set} {level}"


def test_functionals_are_the_package_output_and_bitwise_deterministic(tmp_path: Path) -> None:
    """Same samples -> the same bits: across fresh extractors, batches, and pickled decoders in worker
    processes; and equal to openSMILE run directly on the samples."""
    names = [write_wav(tmp_path, f"u{i}.wav", voice(s, f0=f, seed=i)) for i, (s, f) in
             enumerate(((0.7, 120.0), (1.8, 260.0), (1.1, 350.0)))]  # fmt: skip
    rows = [row(n) for n in names]
    extractor = make(tmp_path)
    first = {e.utterance_id: e.feature for e in extractor.encode(list(decode_all(extractor, rows).values()))}
    second = {r["utterance_id"]: encode_one(make(tmp_path), r) for r in rows[::-1]}
    decoder = pickle.loads(pickle.dumps(make(tmp_path).decoder()))
    loader = DataLoader(rows, batch_size=2, num_workers=2, collate_fn=lambda b: [decoder(r) for r in b])
    in_workers = {d.utterance_id: torch.from_numpy(d.data) for batch in loader for d in batch}
    for uid, feature in first.items():
        assert torch.equal(feature, second[uid]) and torch.equal(feature, in_workers[uid]), uid
    smile = opensmile.Smile(opensmile.FeatureSet.eGeMAPSv02, opensmile.FeatureLevel.Functionals)
    direct = smile.process_signal(soundfile.read(str(tmp_path / names[1]), dtype="float32")[0], SR).to_numpy()[0]
    assert np.array_equal(first["u1"].numpy(), direct.astype(np.float32))


def test_the_decoder_pickles_without_its_smile(tmp_path: Path) -> None:
    decoder = make(tmp_path).decoder()
    decoder(row(write_wav(tmp_path, "u.wav", voice(0.5))))  # builds its Smile
    assert decoder._smile is not None and pickle.loads(pickle.dumps(decoder))._smile is None


# --- degenerate audio: missing reasons and flags -----------------------------------------------------


def test_missing_reasons_and_flags(tmp_path: Path) -> None:
    rows = [
        row(None, utterance_id="no_track", flags=["clip_without_audio"]),
        row(None, utterance_id="no_path"),
        row("absent.wav"),
        row(write_wav(tmp_path, "silent.wav", np.zeros(SR, np.float32))),
        row(write_wav(tmp_path, "blip.wav", voice(0.03))),  # below openSMILE's first 60 ms frame
        row(write_wav(tmp_path, "short.wav", voice(0.08))),  # a frame, but under min_duration_s
        row(write_wav(tmp_path, "ok.wav", voice(1.0))),
    ]
    extractor = make(tmp_path, feature_set="ComParE_2016")
    decoded = decode_all(extractor, rows)
    assert {u: d.missing for u, d in decoded.items() if d.missing} == {
        "no_track": "clip_without_audio", "no_path": "no_audio", "absent": "missing_file",
        "blip": "too_short_for_opensmile",
    }  # fmt: skip
    assert {u: d.flags for u, d in decoded.items() if d.flags} == {
        "silent": ["silent_audio"], "blip": ["audio_too_short"], "short": ["audio_too_short"],
    }  # fmt: skip
    encoded = {e.utterance_id: e for e in extractor.encode([d for d in decoded.values() if not d.missing])}
    assert set(encoded) == {"silent", "short", "ok"}
    for e in encoded.values():  # silence and a short clip keep a finite feature, with their flag
        assert e.feature.shape == (6373,) and torch.isfinite(e.feature).all()
        assert e.flags == decoded[e.utterance_id].flags


def test_non_finite_values_never_reach_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """All NaN (openSMILE made no frame) -> missing; some NaN/inf -> 0 there, flagged."""
    assert finite_feature(np.full(4, np.nan, np.float32)) == (None, "too_short_for_opensmile", [])
    values, missing, flags = finite_feature(np.array([1.5, np.nan, -np.inf, 2.0], np.float32))
    assert missing is None and flags == ["opensmile_non_finite"]
    assert values.dtype == np.float32 and values.tolist() == [1.5, 0.0, 0.0, 2.0]
    clean = np.arange(3, dtype=np.float32)
    assert finite_feature(clean)[0] is clean and finite_feature(clean)[1:] == (None, [])
    # through the decoder, as if openSMILE returned a partly undefined vector
    monkeypatch.setattr(osm, "smile_vector", lambda smile, audio, level: np.array([np.inf, 3.0], np.float32))
    name = write_wav(tmp_path, "u.wav", np.zeros(SR // 20, np.float32))
    (decoded,) = decode_all(make(tmp_path), [row(name)]).values()
    assert decoded.missing is None and decoded.data.tolist() == [0.0, 3.0]
    assert decoded.flags == ["audio_too_short", "silent_audio", "opensmile_non_finite"]


def test_full_scale_samples_do_not_wrap_in_the_int16_conversion(tmp_path: Path) -> None:
    """The package scales by 32768 into int16; +1.0 is clipped to the largest int16 first."""
    square = np.where(np.sin(2 * np.pi * 200 * np.arange(SR) / SR) >= 0, 1.0, -1.0).astype(np.float32)
    extractor = make(tmp_path)
    at_one = encode_one(extractor, row(write_wav(tmp_path, "one.wav", square)))
    at_max = encode_one(extractor, row(write_wav(tmp_path, "max.wav", np.minimum(square, 32767 / 32768))))
    assert torch.equal(at_one, at_max)


# --- params and lineage -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"feature_set": "GeMAPS"}, "feature_set: must be one of 'eGeMAPSv02', 'ComParE_2016', got 'GeMAPS'"),
        ({"level": "lld"}, "level: must be one of 'functionals', 'lld_mean_std', got 'lld'"),
        ({"feature_set": 3}, "feature_set: must be a string, got 3"),
        ({"silence_rms": -1}, "silence_rms: must be 0 or more"),
        ({"featureset": "ComParE_2016"}, "featureset: unknown key"),
    ],
)
def test_bad_params_are_one_line_errors(section: dict[str, Any], message: str) -> None:
    with pytest.raises(PipelineError) as info:
        extractor_config("audio", {"extractor": "opensmile", **section}, "params.yaml:extract.audio")
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"params.yaml:extract.audio.{message}"), text


def test_a_config_built_in_code_is_checked_too() -> None:
    with pytest.raises(ParamError, match=r"^feature_set must be one of .*got 'IS09'$"):
        OpenSmileConfig(feature_set="IS09")
    with pytest.raises(ParamError, match=r"^level must be one of .*got 'lld'$"):
        OpenSmileConfig(level="lld")


def test_model_sha256_is_the_version_and_the_sets_config_files(tmp_path: Path, monkeypatch) -> None:
    egemaps, compare = make(tmp_path), make(tmp_path, feature_set="ComParE_2016")
    assert egemaps.model_sha256 != compare.model_sha256
    assert make(tmp_path, level="lld_mean_std").model_sha256 == egemaps.model_sha256  # same configs; params differ
    names = {p.relative_to(osm._CONFIG_ROOT).as_posix() for p in config_files("eGeMAPSv02")}
    assert {"egemaps/v02/eGeMAPSv02.conf", "egemaps/v02/eGeMAPSv02_core.func.conf.inc",
            "gemaps/v01b/GeMAPSv01b_core.lld.conf.inc", "shared/BufferModeRb.conf.inc",
            "shared/standard_external_wave_input.conf.inc"} <= names  # fmt: skip
    assert not any(n.startswith("compare/") for n in names)
    before = {s: config_sha256(s) for s in ("eGeMAPSv02", "ComParE_2016")}
    # another openSMILE version
    monkeypatch.setattr(opensmile, "__version__", "9.9.9")
    assert all(config_sha256(s) != h for s, h in before.items())
    monkeypatch.undo()
    # an edited config file: only the sets that read it change
    copy = tmp_path / "config"
    shutil.copytree(osm._CONFIG_ROOT, copy)
    monkeypatch.setattr(osm, "_CONFIG_ROOT", copy)
    assert {s: config_sha256(s) for s in before} == before
    with open(copy / "gemaps/v01b/GeMAPSv01b_core.func.conf.inc", "a") as handle:
        handle.write("\n; edited\n")
    assert config_sha256("eGeMAPSv02") != before["eGeMAPSv02"]
    assert config_sha256("ComParE_2016") == before["ComParE_2016"]
    with open(copy / "shared/FrameModeFunctionals.conf.inc", "a") as handle:
        handle.write("\n; edited\n")
    assert config_sha256("ComParE_2016") != before["ComParE_2016"]


# --- the demo corpus: the planted audio signal, learnt from eGeMAPS alone ------------------------------


@pytest.fixture(scope="module")
def egemaps_demo(prepared_demo: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """eGeMAPS functionals of both demo corpora through the extract stage (MELD decoded in 2 worker
    processes, IEMOCAP in the main process): {corpus: (features root, report)}."""
    out = tmp_path_factory.mktemp("opensmile")
    stores = {}
    for corpus, workers in (("meld", 2), ("iemocap", 0)):
        section = {"extractor": "opensmile", "feature_set": "eGeMAPSv02", "num_workers": workers}
        report = extract_features("audio", prepared_demo[corpus], out / corpus / "audio", section)
        stores[corpus] = (out / corpus, report)
    return stores


def test_demo_stores_record_lineage_reasons_and_float32(egemaps_demo, demo_corpus) -> None:
    _, truth = demo_corpus
    for corpus, (features, report) in egemaps_demo.items():
        reader = FeatureStoreReader(features / "audio")
        store = reader.metadata
        assert store["extractor"] == "opensmile" and store["extractor_version"] == "1"
        assert store["model_id"] == f"opensmile {opensmile.__version__} eGeMAPSv02 functionals"
        assert store["model_sha256"] == config_sha256("eGeMAPSv02") and store["dtype"] == "float32"
        features_by_id = reader.load_all()
        assert all(f.shape == (88,) and f.dtype == torch.float32 and torch.isfinite(f).all()
                   for f in features_by_id.values())  # fmt: skip
        expected_missing = {"missing_clip": 1, "unreadable_clip": 1} if corpus == "meld" else {}
        assert report["dropped_by_reason"] == expected_missing
        assert report["flagged_by_reason"] == {"silent_audio": len(truth["quirks"][corpus]["silent_audio"])}


def _split(features: dict[str, torch.Tensor], rows: list[dict[str, Any]], split: str) -> tuple[np.ndarray, list[str]]:
    chosen = [r for r in rows if r["split"] == split and r["utterance_id"] in features]
    return np.stack([features[r["utterance_id"]].numpy() for r in chosen]), [r["label"] for r in chosen]


def test_demo_emotions_are_learnable_from_egemaps_alone(egemaps_demo, prepared_demo) -> None:
    """The demo plants pitch and loudness per emotion: a logistic regression on the train split's
    eGeMAPS functionals scores test far above chance (measured: MELD 0.89, IEMOCAP 1.00)."""
    for corpus, (features, _) in egemaps_demo.items():
        rows = read_manifest(prepared_demo[corpus])
        stored = FeatureStoreReader(features / "audio").load_all()
        (x_train, y_train), (x_test, y_test) = _split(stored, rows, "train"), _split(stored, rows, "test")
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train, y_train)
        score = f1_score(y_test, model.predict(x_test), average="weighted")
        chance = 1 / len(set(y_train))
        assert score > max(0.6, 3 * chance), f"{corpus}: test weighted F1 {score:.3f} (chance {chance:.3f})"


@pytest.mark.usefixtures("one_torch_thread")
def test_the_trainer_learns_the_demo_from_opensmile_audio_alone(egemaps_demo, prepared_demo, tmp_path) -> None:
    """The project's trainer (utterance MLP, train.modalities [audio]) on the eGeMAPS stores
    (measured: test weighted F1 MELD 0.77, IEMOCAP 0.92; chance 1/7 and 1/6)."""
    config = TrainConfig(seed=0, epochs=15, lr=0.01, batch_size=2, patience=0, mixed_precision="no",
                         modalities=["audio"], select_modalities=False, modality_dropout=0.0,
                         model={"name": "mlp", "hidden_size": 32, "num_layers": 1})  # fmt: skip
    for corpus, (features, _) in egemaps_demo.items():
        metrics = train(corpus, prepared_demo[corpus], features, tmp_path / corpus, config, cpu=True,
                        log=lambda line: None)
        labels = {r["label"] for r in read_manifest(prepared_demo[corpus]) if r["split"] == "train"}
        score, chance = metrics["test"]["weighted_f1"], 1 / len(labels)
        assert score > max(0.5, 3 * chance), f"{corpus}: trainer test weighted F1 {score:.3f} (chance {chance:.3f})"
        assert metrics["inference_modalities"] == ["audio"], metrics["inference_modalities"]
