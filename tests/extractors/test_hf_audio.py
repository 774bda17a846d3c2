"""wav2vec2 audio extractor: decoding of real wav/mp4 layouts, windowing, exact batch independence,
short/silent/broken audio, and clear errors for bad model settings. Runs on the tiny random model."""

from __future__ import annotations

import pickle
import socket
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import soundfile
import torch
from torch.utils.data import DataLoader

from extractors.audio import _read_av, read_audio
from extractors.hf_audio import HFAudioConfig, HFAudioExtractor, window_bounds
from extractors.base import Decoded, extractor_for, get_extractor, weights_sha256
from tests.helpers import PROJECT_ROOT
from pipeline.demo.tiny_models import build_tiny_wav2vec2
from pipeline.core.params import load_section, section_to_dataclass
from pipeline.demo.media import write_mp4_clip
from pipeline.core.errors import PipelineError
from pipeline.formats.manifest import read_manifest

SR = 16_000
HIDDEN = 64  # the tiny model's hidden size
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_wav2vec2(tmp_path_factory.mktemp("models") / "wav2vec2-tiny")


@pytest.fixture
def make(model_dir: Path, tmp_path: Path):
    """make(**config) -> an extractor over raw root tmp_path with the tiny model."""

    def make(root: Path = tmp_path, **overrides: Any) -> HFAudioExtractor:
        return HFAudioExtractor(HFAudioConfig(**{"model": str(model_dir), **overrides}), root, CPU)

    return make


def row(path: str | None, start: float | None = 0.0, end: float | None = None, **extra: Any) -> dict[str, Any]:
    base = {"utterance_id": Path(path or "none").stem, "has_audio": path is not None, "audio_path": path,
            "audio_start_s": start, "audio_end_s": end, "flags": []}  # fmt: skip
    return {**base, **extra}


def noise(seconds: float, seed: int = 0, rate: int = SR, scale: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(round(seconds * rate)) * scale).astype(np.float32)


def write_wav(root: Path, name: str, audio: np.ndarray, rate: int = SR, subtype: str = "FLOAT") -> str:
    soundfile.write(str(root / name), audio, rate, subtype=subtype)
    return name


def write_mp4(root: Path, name: str, audio: np.ndarray, rate: int = SR) -> str:
    frames = (np.full((64, 64, 3), i * 20, np.uint8) for i in range(5))
    write_mp4_clip(root / name, frames, (64, 64), 5, audio, rate)
    return name


def dominant_hz(audio: np.ndarray, rate: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[spectrum.argmax()])


def features(extractor: HFAudioExtractor, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    decoder = extractor.decoder()
    decoded = [decoder(r) for r in rows]
    assert all(d.missing is None for d in decoded), [d.missing for d in decoded]
    return {e.utterance_id: e.feature for e in extractor.encode(decoded)}


# --- decoding ---------------------------------------------------------------------------------------


def test_demo_manifests_decode_with_reasons_and_flags(prepared_demo: dict[str, Path], demo_corpus, make) -> None:
    """Both raw layouts: sentence wavs and mp4 audio tracks decode to the expected length; the
    planted missing/corrupt clips are missing with the manifest's reason, the silent ones flagged."""
    root, truth = demo_corpus
    for corpus, raw in (("iemocap", "IEMOCAP_full_release"), ("meld", "MELD.Raw")):
        extractor = make(root / raw)
        rows = read_manifest(prepared_demo[corpus])
        decoder = extractor.decoder()
        decoded = {d.utterance_id: d for d in (decoder(r) for r in rows)}
        by_id = {r["utterance_id"]: r for r in rows}
        missing = {u: d.missing for u, d in decoded.items() if d.missing}
        silent = {u for u, d in decoded.items() if "silent_audio" in d.flags}
        if corpus == "meld":
            assert missing == {"train_dia3_utt2": "unreadable_clip", "dev_dia3_utt6": "missing_clip"}
            assert silent == {f"{q['split']}_{q['key']}" for q in truth["quirks"]["meld"]["silent_audio"]}
            for uid, d in decoded.items():
                if d.missing is None:  # AAC adds/drops at most a frame of 1024 samples at each end
                    assert abs(len(d.data.values) - by_id[uid]["audio_end_s"] * SR) <= 2048, uid
        else:
            assert missing == {}
            assert silent == {q["key"] for q in truth["quirks"]["iemocap"]["silent_audio"]}
            for uid, d in decoded.items():
                wav = root / raw / by_id[uid]["audio_path"]
                assert len(d.data.values) == soundfile.info(str(wav)).frames, uid
        assert all(extractor.size_hint(by_id[u]) > 0 for u in decoded if u not in missing)
        # a few real utterances (and the silent one) through the model: finite, one vector each
        sample = [u for u in decoded if u not in missing][:3] + sorted(silent)
        for e in extractor.encode([decoded[u] for u in sample]):
            assert e.feature.shape == (HIDDEN,) and torch.isfinite(e.feature).all()
            assert ("silent_audio" in e.flags) == (e.utterance_id in silent)


def test_resamples_44k_stereo_to_16k_mono(tmp_path: Path) -> None:
    t = np.arange(round(1.5 * 44_100)) / 44_100
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, np.zeros_like(left)], axis=1).astype(np.float32)
    write_wav(tmp_path, "stereo.wav", stereo, rate=44_100)
    mono = read_audio(tmp_path / "stereo.wav", 0.0, None, SR)
    assert mono.ndim == 1 and abs(len(mono) - 1.5 * SR) <= 1
    assert dominant_hz(mono) == pytest.approx(440, abs=1)
    # channels are averaged: a 0.5 sine on one channel, silence on the other -> amplitude 0.25
    assert np.abs(mono[SR // 10 : -SR // 10]).max() == pytest.approx(0.25, rel=0.02)


def test_span_inside_a_wav_is_exact_with_both_readers(tmp_path: Path) -> None:
    audio = noise(3.0)
    write_wav(tmp_path, "ramp.wav", audio)
    expected = audio[SR : 2 * SR + SR // 2]
    assert np.array_equal(read_audio(tmp_path / "ramp.wav", 1.0, 2.5, SR), expected)
    samples, rate = _read_av(tmp_path / "ramp.wav", 1.0, 2.5)  # the PyAV path (seek, then trim)
    assert rate == SR and np.array_equal(samples[0], expected)
    assert np.array_equal(read_audio(tmp_path / "ramp.wav", 2.0, None, SR), audio[2 * SR :])


def test_span_inside_an_mp4_audio_track(tmp_path: Path) -> None:
    """Seeking into an AAC track lands on the right tone: 300 Hz for 2 s, then 1200 Hz."""
    t = np.arange(4 * SR) / SR
    audio = (0.3 * np.sin(2 * np.pi * np.where(t < 2, 300, 1200) * t)).astype(np.float32)
    write_mp4(tmp_path, "tones.mp4", audio)
    first = read_audio(tmp_path / "tones.mp4", 0.5, 1.5, SR)
    second = read_audio(tmp_path / "tones.mp4", 2.5, 3.5, SR)
    assert len(first) == len(second) == SR
    assert dominant_hz(first) == pytest.approx(300, abs=2)
    assert dominant_hz(second) == pytest.approx(1200, abs=2)


# --- windows, pooling and batching ------------------------------------------------------------------


def test_window_bounds_merge_a_short_tail() -> None:
    assert window_bounds(65, 20, 4) == [(0, 20), (20, 40), (40, 60), (60, 65)]
    assert window_bounds(62, 20, 4) == [(0, 20), (20, 40), (40, 62)]
    assert window_bounds(3, 20, 4) == [(0, 3)]


def test_long_clip_is_encoded_in_bounded_windows(tmp_path: Path, make) -> None:
    name = write_wav(tmp_path, "long.wav", noise(65.0))
    extractor = make(window_s=20.0, pooling="mean_std")
    lengths: list[int] = []
    extractor.model.register_forward_pre_hook(lambda _, args: lengths.append(args[0].shape[-1]))
    decoded = extractor.decoder()(row(name))
    assert decoded.data.windows == [(0, 20 * SR), (20 * SR, 40 * SR), (40 * SR, 60 * SR), (60 * SR, 65 * SR)]
    (encoded,) = extractor.encode([decoded])
    assert lengths == [20 * SR, 20 * SR, 20 * SR, 5 * SR]  # the model never sees more than one window
    assert encoded.feature.shape == (2 * HIDDEN,) and torch.isfinite(encoded.feature).all()


def test_a_clip_within_one_window_equals_the_model_run_directly(tmp_path: Path, make) -> None:
    audio = noise(3.0, seed=1)
    name = write_wav(tmp_path, "clip.wav", audio)
    extractor = make(layers=[0, -1])
    values = extractor.feature_extractor(audio, sampling_rate=SR, return_tensors="pt")["input_values"]
    with torch.inference_mode():
        hidden = extractor.model(values, output_hidden_states=True).hidden_states
    expected = ((hidden[0][0] + hidden[-1][0]) / 2).mean(dim=0)
    torch.testing.assert_close(features(extractor, [row(name)])["clip"], expected, rtol=1e-5, atol=1e-6)


def test_features_do_not_depend_on_the_batch(tmp_path: Path, make) -> None:
    """Exact: an utterance alone, in a batch, in another order, decoded in worker processes."""
    names = [write_wav(tmp_path, f"u{i}.wav", noise(s, seed=i)) for i, s in enumerate((1.0, 2.5, 2.5, 0.3, 4.5))]
    rows = [row(n) for n in names]
    extractor = make(window_s=2.0, pooling="mean_std")  # the 4.5 s clip has three windows
    together = features(extractor, rows)
    reversed_ = features(extractor, rows[::-1])
    for r in rows:
        alone = features(extractor, [r])[r["utterance_id"]]
        assert torch.equal(alone, together[r["utterance_id"]]) and torch.equal(alone, reversed_[r["utterance_id"]])
    # decoding in 2 worker processes (the decoder pickles) gives the same tensors as in-process
    decoder = pickle.loads(pickle.dumps(extractor.decoder()))
    loader = DataLoader(rows, batch_size=2, num_workers=2, collate_fn=lambda b: [decoder(r) for r in b])
    in_workers: list[Decoded] = [d for batch in loader for d in batch]
    for d in in_workers:
        assert torch.equal(d.data.values, extractor.decoder()(rows[names.index(d.utterance_id + ".wav")]).data.values)
    from_workers = {e.utterance_id: e.feature for e in extractor.encode(in_workers)}
    assert from_workers.keys() == together.keys()
    assert all(torch.equal(feature, together[uid]) for uid, feature in from_workers.items())


def test_mean_std_doubles_the_dimension(tmp_path: Path, make) -> None:
    name = write_wav(tmp_path, "clip.wav", noise(1.0))
    mean = features(make(pooling="mean"), [row(name)])["clip"]
    mean_std = features(make(pooling="mean_std"), [row(name)])["clip"]
    assert mean.shape == (HIDDEN,) and mean_std.shape == (2 * HIDDEN,)
    assert torch.equal(mean_std[:HIDDEN], mean) and (mean_std[HIDDEN:] > 0).all()


# --- short, silent and broken audio -----------------------------------------------------------------


def test_silent_audio_is_flagged_with_a_finite_feature(tmp_path: Path, make) -> None:
    name = write_wav(tmp_path, "silence.wav", np.zeros(2 * SR, np.float32), subtype="PCM_16")
    extractor = make(pooling="mean_std")
    decoded = extractor.decoder()(row(name))
    assert decoded.flags == ["silent_audio"]
    # the feature extractor's zero-mean/unit-variance step must not turn all-zero input into NaN
    assert torch.equal(decoded.data.values, torch.zeros(2 * SR))
    (encoded,) = extractor.encode([decoded])
    assert encoded.flags == ["silent_audio"] and torch.isfinite(encoded.feature).all()
    # quiet but not silent audio is not flagged
    assert make().decoder()(row(write_wav(tmp_path, "quiet.wav", noise(2.0, scale=0.01)))).flags == []


def test_too_short_audio_is_flagged_and_padded_to_the_conv_minimum(tmp_path: Path, make) -> None:
    extractor = make(min_duration_s=0.1, pooling="mean_std")
    tiny = extractor.decoder()(row(write_wav(tmp_path, "tiny.wav", noise(0.01))))  # 160 samples
    short = extractor.decoder()(row(write_wav(tmp_path, "short.wav", noise(0.05))))  # 800 samples
    assert tiny.flags == short.flags == ["audio_too_short"]
    assert len(tiny.data.values) == extractor.min_input_samples == 400  # zero-padded at the end
    assert torch.equal(tiny.data.values[160:], torch.zeros(240))
    assert len(short.data.values) == 800  # long enough for the conv stack: not padded
    for encoded in extractor.encode([tiny, short]):
        assert encoded.feature.shape == (2 * HIDDEN,) and torch.isfinite(encoded.feature).all()


def test_broken_media_gives_a_missing_reason_not_an_exception(tmp_path: Path, make) -> None:
    good = write_mp4(tmp_path, "good.mp4", noise(2.0))
    (tmp_path / "truncated.mp4").write_bytes((tmp_path / good).read_bytes()[:4000])
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "garbage.wav").write_bytes(b"RIFF not really a wav file at all" * 10)
    with av.open(str(tmp_path / "video_only.mp4"), mode="w") as container:
        stream = container.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 40, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    write_wav(tmp_path, "one_second.wav", noise(1.0))
    decoder = make().decoder()
    reasons = {
        name: decoder(r).missing
        for name, r in {
            "no audio in manifest": row(None, flags=["clip_without_audio"]),
            "no audio, no flag": row(None),
            "file gone": row("gone.wav"),
            "empty file": row("empty.mp4"),
            "video only": row("video_only.mp4"),
            "span after the end": row("one_second.wav", 5.0, 6.0),
            "empty span": row("one_second.wav", 0.5, 0.5),
        }.items()
    }
    assert reasons == {
        "no audio in manifest": "clip_without_audio",
        "no audio, no flag": "no_audio",
        "file gone": "missing_file",
        "empty file": "empty_file",
        "video only": "no_audio_stream",
        "span after the end": "empty_audio",
        "empty span": "empty_audio",
    }
    for name in ("truncated.mp4", "garbage.wav"):
        missing = decoder(row(name)).missing
        assert missing.startswith("unreadable_audio: ") and "\n" not in missing and ";" not in missing
    assert decoder(row(good)).missing is None


# --- configuration and model loading ----------------------------------------------------------------


def test_params_yaml_section_loads_and_bad_values_are_one_line_errors() -> None:
    config = load_section(PROJECT_ROOT / "params.yaml", "extract.audio", HFAudioConfig)
    assert config.pooling in ("mean", "mean_std") and config.window_s > 0
    for bad, message in (
        ({"layers": []}, r"layers: must be a non-empty list"),
        ({"layers": [-1, -1]}, r"layers: lists an index twice"),
        ({"layers": [-1, "x"]}, r"layers\[1\]: must be an integer, got 'x'"),
        ({"pooling": "max"}, r"pooling: must be one of 'mean', 'mean_std', got 'max'"),
        ({"window_s": 0}, r"window_s: must be positive, got 0"),
        ({"window_s": "long"}, r"window_s: must be a number, got 'long'"),
    ):
        with pytest.raises(PipelineError, match=r"^params\.yaml:extract\.audio\." + message):
            section_to_dataclass(HFAudioConfig, bad, "params.yaml:extract.audio")


def test_layers_are_validated_against_the_model(make) -> None:
    make(layers=[0, 1, 2, -3])  # the tiny model has 2 layers: 3 hidden states
    for layers in ([3], [-4], [0, 7]):
        with pytest.raises(PipelineError, match=r"layers .* out of range.*3 hidden states \(indices -3\.\.2\)"):
            make(layers=layers)


def test_wrong_model_path_is_one_clear_line(make, tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as info:
        make(model=str(tmp_path / "no-such-model"))
    message = str(info.value)
    assert "no-such-model" in message and "extract.audio.model" in message and "\n" not in message
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(PipelineError, match="empty-model.*could not be loaded"):
        make(model=str(tmp_path / "empty-model"))


def test_unknown_hub_id_fails_fast_offline(make, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network (every connection refused): one line naming the model, in seconds, not after retries."""

    def unreachable(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    started = time.monotonic()
    with pytest.raises(PipelineError) as info:
        make(model="mer-test-nobody/wav2vec2-does-not-exist")
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "mer-test-nobody/wav2vec2-does-not-exist" in message and "\n" not in message


def test_registered_with_provenance(make, model_dir: Path) -> None:
    assert get_extractor("hf_audio") is HFAudioExtractor and extractor_for("audio") is HFAudioExtractor
    extractor = make()
    assert extractor.model_id == str(model_dir)
    assert extractor.model_sha256 == weights_sha256(model_dir)
    assert extractor.size_hint(row("a.mp4", 0.0, 2.5)) == 2.5
    assert extractor.size_hint(row("a.wav", 0.0, None, start_s=10.0, end_s=13.5)) == 3.5  # IEMOCAP: no end
    assert extractor.size_hint(row(None, start_s=10.0, end_s=13.5)) == 0.0
