"""hf_audio beyond wav2vec2-base: every supported family (wav2vec2, HuBERT, WavLM, data2vec-audio,
Whisper's encoder) loads from a tiny random checkpoint, selects layers and pools; padded batching is
used exactly where padding cannot reach the valid frames, and there equals one window at a time
within float rounding; everything else runs one window per forward, bit-identical to alone."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch
from transformers import BertConfig, WhisperFeatureExtractor

from extractors.hf_audio import (
    HFAudioConfig,
    HFAudioExtractor,
    MelInput,
    conv_output_frames,
    whisper_encoder_frames,
    window_bounds,
)
from pipeline.core.errors import PipelineError
from pipeline.demo.tiny_models import build_tiny_wav2vec2
from tests.helpers.tiny_audio_models import FAMILIES, build_tiny_audio_model, build_whisper_variants

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),  # see tests/conftest.py
    # WavLM's own attention mixes a bool padding mask with its float position bias (transformers' code)
    pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask and attn_mask:UserWarning"),
]

SR = 16_000
CPU = torch.device("cpu")
# batched vs alone, CPU float32: measured max abs difference ~1e-6 on these models
RTOL, ATOL = 1e-4, 1e-5
BATCHED = ("wav2vec2-layer", "hubert-layer", "wavlm-layer", "whisper")
ONE_AT_A_TIME = ("wav2vec2-group", "wavlm-group", "data2vec-audio")  # wav2vec2-group: the demo's tiny model
ALL = (*BATCHED, *ONE_AT_A_TIME)
MODEL_TYPE = {**{name: model_type for name, (model_type, _, _) in FAMILIES.items()}, "wav2vec2-group": "wav2vec2"}
HIDDEN = {**{name: hidden for name, (_, hidden, _) in FAMILIES.items()}, "wav2vec2-group": 64}
STATES = {**{name: states for name, (_, _, states) in FAMILIES.items()}, "wav2vec2-group": 3}
# seconds: below the conv minimum (padded), short, two lengths, and three 2 s windows
CLIP_SECONDS = (0.02, 0.7, 1.3, 1.3, 4.5)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audio-models")
    paths = {name: build_tiny_audio_model(name, root / name) for name in FAMILIES}
    paths["wav2vec2-group"] = build_tiny_wav2vec2(root / "wav2vec2-group")
    return paths


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """(raw root, manifest-like rows) of noise clips of CLIP_SECONDS."""
    root = tmp_path_factory.mktemp("clips")
    rows = []
    for i, seconds in enumerate(CLIP_SECONDS):
        audio = (np.random.default_rng(i).standard_normal(round(seconds * SR)) * 0.1).astype(np.float32)
        soundfile.write(str(root / f"u{i}.wav"), audio, SR, subtype="FLOAT")
        rows.append({"utterance_id": f"u{i}", "has_audio": True, "audio_path": f"u{i}.wav", "audio_start_s": 0.0,
                     "audio_end_s": None, "flags": []})  # fmt: skip
    return root, rows


def make(models: dict[str, Path], name: str, root: Path, **overrides: Any) -> HFAudioExtractor:
    return HFAudioExtractor(HFAudioConfig(**{"model": str(models[name]), **overrides}), root, CPU)


def encode(extractor: HFAudioExtractor, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    decoder = extractor.decoder()
    return {e.utterance_id: e.feature for e in extractor.encode([decoder(r) for r in rows])}


def forward_batch_sizes(extractor: HFAudioExtractor) -> list[int]:
    """Records the batch dimension of every model forward."""
    sizes: list[int] = []

    def hook(_: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        inputs = args[0] if args else kwargs.get("input_values", kwargs.get("input_features"))
        sizes.append(inputs.shape[0])

    extractor.model.register_forward_pre_hook(hook, with_kwargs=True)
    return sizes


def direct_layers(extractor: HFAudioExtractor, audio: np.ndarray, layers: list[int]) -> torch.Tensor:
    """The mean of `layers` over the frames that cover `audio`, run on the model by hand (one window)."""
    fe = extractor.feature_extractor
    with torch.inference_mode():
        if extractor.family == "whisper":
            mel = fe(audio, sampling_rate=SR, return_tensors="pt")["input_features"]
            hidden = extractor.model(mel, output_hidden_states=True).hidden_states
            frames = whisper_encoder_frames(len(audio), fe.hop_length)
        else:
            values = fe(audio, sampling_rate=SR, return_tensors="pt")["input_values"]
            hidden = extractor.model(values, output_hidden_states=True).hidden_states
            frames = hidden[0].shape[1]
    return torch.stack([hidden[i][0, :frames] for i in layers]).mean(dim=0).mean(dim=0)


# --- every family: loading, layers, pooling ---------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_family_loads_and_pools_the_chosen_layers(name: str, models, clips) -> None:
    root, rows = clips
    extractor = make(models, name, root, layers=[0, -1])
    assert extractor.family == MODEL_TYPE[name] and extractor.padded_batches == (name in BATCHED)
    hidden = HIDDEN[name]
    mean = encode(extractor, rows)
    mean_std = encode(make(models, name, root, layers=[0, -1], pooling="mean_std"), rows)
    assert make(models, name, root, pooling="mean_std").output_dim == 2 * hidden
    for uid in mean:
        assert mean[uid].shape == (hidden,) and mean_std[uid].shape == (2 * hidden,)
        assert torch.isfinite(mean_std[uid]).all() and (mean_std[uid][hidden:] >= 0).all()
        torch.testing.assert_close(mean_std[uid][:hidden], mean[uid], rtol=0, atol=0)  # same forwards
    assert (mean_std["u2"][hidden:] > 0).all()  # u0 is one frame: its std is 0
    # layer selection: the mean of the chosen hidden states, as the model gives them run directly
    audio = soundfile.read(str(root / rows[2]["audio_path"]), dtype="float32")[0]
    torch.testing.assert_close(mean["u2"], direct_layers(extractor, audio, [0, -1]), rtol=RTOL, atol=ATOL)
    only_last = encode(make(models, name, root, layers=[-1]), rows[2:3])["u2"]
    torch.testing.assert_close(only_last, direct_layers(extractor, audio, [-1]), rtol=RTOL, atol=ATOL)
    assert not torch.allclose(only_last, mean["u2"])


@pytest.mark.parametrize("name", ALL)
def test_layers_out_of_range_are_one_line(name: str, models, clips) -> None:
    root, _ = clips
    states = STATES[name]
    make(models, name, root, layers=list(range(states)))
    for layers in ([states], [-states - 1]):
        with pytest.raises(PipelineError, match=rf"layers .* out of range.*{states} hidden states") as info:
            make(models, name, root, layers=layers)
        assert "\n" not in str(info.value)


def test_conv_frames_match_the_models_own_output(models, clips) -> None:
    """The valid-frame count used for pooling is the frame count the model makes of an unpadded window."""
    root, _ = clips
    for name in ("wav2vec2-layer", "hubert-layer", "wavlm-layer", "data2vec-audio"):
        extractor = make(models, name, root)
        config = extractor.model.config
        for samples in (400, 401, 719, 720, 16_000, 23_999):
            with torch.inference_mode():
                frames = extractor.model(torch.zeros(1, samples)).last_hidden_state.shape[1]
            assert conv_output_frames(samples, config.conv_kernel, config.conv_stride) == frames, (name, samples)
            assert int(extractor.model._get_feat_extract_output_lengths(torch.tensor(samples))) == frames


# --- batching -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BATCHED)
def test_padded_batches_equal_one_window_at_a_time(name: str, models, clips) -> None:
    """Windows of several utterances share forwards of at most batch_size, each pooled over its own
    frames: the same features as every window alone, within RTOL/ATOL, in any order."""
    root, rows = clips
    extractor = make(models, name, root, window_s=2.0, pooling="mean_std", batch_size=3)
    sizes = forward_batch_sizes(extractor)
    together = encode(extractor, rows)
    windows = sum(len(extractor.decoder()(r).data.windows) for r in rows)
    assert windows == 7 and sizes == [3, 3, 1]  # 7 windows, longest first, 3 per forward
    reversed_ = encode(extractor, rows[::-1])
    sizes.clear()
    alone = {r["utterance_id"]: encode(extractor, [r])[r["utterance_id"]] for r in rows}
    assert max(sizes) <= 3
    for uid, feature in alone.items():
        torch.testing.assert_close(together[uid], feature, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(reversed_[uid], feature, rtol=RTOL, atol=ATOL)
    # a single long clip (three windows) alone is batched too, and matches its windows run one by one
    one_by_one = make(models, name, root, window_s=2.0, pooling="mean_std", batch_size=1)
    torch.testing.assert_close(encode(one_by_one, rows[4:])["u4"], together["u4"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ONE_AT_A_TIME)
def test_group_norm_and_data2vec_run_one_window_per_forward(name: str, models, clips) -> None:
    """Zero padding moves these models' frames, so every window runs alone: bit-identical features
    whatever the batch (the demo's tiny wav2vec2 is one of them)."""
    root, rows = clips
    extractor = make(models, name, root, window_s=2.0, pooling="mean_std", batch_size=8)
    sizes = forward_batch_sizes(extractor)
    together = encode(extractor, rows)
    assert sizes == [1] * 7
    for r in rows:
        assert torch.equal(encode(extractor, [r])[r["utterance_id"]], together[r["utterance_id"]])


# --- Whisper ------------------------------------------------------------------------------------------


def test_whisper_pools_only_the_frames_that_cover_audio(models, clips) -> None:
    root, rows = clips
    extractor = make(models, "whisper", root, window_s=2.0, min_duration_s=0.1)
    assert extractor.min_input_samples == 1  # no conv minimum: every input is padded to 30 s
    decoded = [extractor.decoder()(r) for r in rows]
    data = decoded[4].data
    assert isinstance(data, MelInput) and data.windows == [(0, 2 * SR), (2 * SR, 4 * SR), (4 * SR, round(4.5 * SR))]
    assert data.features.shape == (3, 80, 3000) and data.valid_frames == [100, 100, 25]
    assert decoded[0].flags == ["audio_too_short"] and decoded[0].data.valid_frames == [math.ceil(320 / 160 / 2)]
    assert whisper_encoder_frames(SR, 160) == 50 and whisper_encoder_frames(161, 160) == 1
    assert whisper_encoder_frames(30 * SR, 160) == 1500
    # the pooled mean is over the 65 encoder frames that cover the 1.3 s clip, not all 1500
    audio = soundfile.read(str(root / rows[2]["audio_path"]), dtype="float32")[0]
    mel = extractor.feature_extractor(audio, sampling_rate=SR, return_tensors="pt")["input_features"]
    with torch.inference_mode():
        last = extractor.model(mel).last_hidden_state[0]
    feature = encode(extractor, rows[2:3])["u2"]
    valid = whisper_encoder_frames(len(audio), 160)
    torch.testing.assert_close(feature, last[:valid].mean(dim=0), rtol=RTOL, atol=ATOL)
    assert not torch.allclose(feature, last.mean(dim=0), rtol=RTOL, atol=ATOL)
    decoder = pickle.loads(pickle.dumps(extractor.decoder()))  # runs in DataLoader workers
    assert torch.equal(decoder(rows[2]).data.features, extractor.decoder()(rows[2]).data.features)


def test_whisper_window_is_at_most_30_s(models, clips) -> None:
    root, _ = clips
    assert make(models, "whisper", root, window_s=30.0).window_samples == 30 * SR
    with pytest.raises(PipelineError, match=r"window_s 31\.0 is longer than the 30 s .*set window_s to 30 or less"):
        make(models, "whisper", root, window_s=31.0)
    # a short tail merges into the last window only while that stays within 30 s
    assert window_bounds(31 * SR, 30 * SR, SR // 10 * 11, max_window=30 * SR) == [(0, 30 * SR), (30 * SR, 31 * SR)]
    assert window_bounds(21 * SR, 20 * SR, 2 * SR, max_window=30 * SR) == [(0, 21 * SR)]


def test_whisper_loads_from_generation_and_encoder_only_checkpoints(tmp_path: Path, clips) -> None:
    """openai/whisper-* ship as WhisperForConditionalGeneration; an encoder saved alone loads too; a
    checkpoint whose encoder weights cannot be found is refused rather than run with random weights."""
    root, rows = clips
    paths = build_whisper_variants(tmp_path)
    full, encoder_only = ({"model": str(paths[k])} for k in ("generation", "encoder"))
    a = encode(HFAudioExtractor(HFAudioConfig(**full), root, CPU), rows[1:3])
    b = encode(HFAudioExtractor(HFAudioConfig(**encoder_only), root, CPU), rows[1:3])
    assert all(torch.equal(a[uid], b[uid]) for uid in a)
    with pytest.raises(PipelineError, match=r"weight files lack \d+ of the whisper encoder's tensors") as info:
        HFAudioExtractor(HFAudioConfig(model=str(paths["mislabelled"])), root, CPU)
    assert "\n" not in str(info.value)


# --- checkpoints hf_audio does not encode --------------------------------------------------------------


def test_unsupported_model_type_is_one_line(tmp_path: Path) -> None:
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(PipelineError, match=r"is a 'bert' model; hf_audio encodes wav2vec2, hubert, wavlm, "
                                            r"data2vec-audio, whisper checkpoints$"):  # fmt: skip
        HFAudioExtractor(HFAudioConfig(model=str(tmp_path)), tmp_path, CPU)


def test_a_feature_extractor_of_another_family_is_one_line(models, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for file in models["wav2vec2-layer"].iterdir():
        (mixed / file.name).write_bytes(file.read_bytes())
    WhisperFeatureExtractor().save_pretrained(mixed)  # replaces the wav2vec2 preprocessor_config.json
    with pytest.raises(PipelineError, match=r"WhisperFeatureExtractor\) makes 'input_features' but the wav2vec2 "
                                            r"model reads 'input_values'"):  # fmt: skip
        HFAudioExtractor(HFAudioConfig(model=str(mixed)), tmp_path, CPU)
