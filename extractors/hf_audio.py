"""Speech-encoder audio features: one pooled vector per utterance from a Hugging Face speech encoder.

Worker side (`HFAudioDecoder`): read the utterance's span as a mono waveform at the feature
extractor's rate (`extractors.audio`, shared by every audio extractor), normalise with the checkpoint's own feature
extractor (once over the whole utterance, so every window of a long clip shares one level), and cut
the result into windows of at most `window_s`. Main process (`encode`): run the model on each window,
average the chosen `layers`, pool over all frames of all windows (`mean`, or `mean_std` = mean and
population std concatenated, 2 * hidden).

Batching rule: every window runs through the model alone, as a batch of one. Group-norm wav2vec2
(wav2vec2-base and the tiny test model) changes its outputs when inputs are zero-padded, and even
equal-length inputs stacked in one batch do not give bitwise the same outputs as each run alone
(measured on CPU; GPU libraries also pick kernels by shape). Running windows alone
makes an utterance's feature a function of that utterance only: it does not depend on the other
rows of its batch, on `batch_size`, on the worker count or on where a resumed run restarts.

Edge cases, all giving a well-defined feature or one short missing reason, never an exception:

- audio shorter than `min_duration_s` is flagged ``audio_too_short``; below the conv stack's
  minimum input (400 samples = 25 ms at 16 kHz for wav2vec2-base) it is zero-padded at the end to
  that minimum, after normalisation, so zero is the normalised mean;
- audio whose RMS is below `silence_rms` is flagged ``silent_audio``; the feature extractor's
  zero-mean/unit-variance step divides by sqrt(var + 1e-7), so all-zero input stays all zero (no NaN);
- zero samples (an empty span, an audio track that decodes to nothing) is missing ``empty_audio``:
  a feature made of padding alone would say nothing about the utterance;
- no file, an empty file, no audio stream, an undecodable file: missing with a reason naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from extractors.audio import AudioInputConfig, AudioUnavailable, audio_flags, audio_seconds, utterance_audio

from extractors.base import (
    Decoded,
    Decoder,
    Encoded,
    Extractor,
    autocast,
    load_pretrained,
    register_extractor,
    weights_sha256,
)
from pipeline.core.torchvision_compat import ensure_torchvision_ops
from pipeline.core.errors import PipelineError
from pipeline.core.params import ParamError

# transformers' model modules import torchvision, which fails on a CPU-only torch until the
# fallback NMS is registered.
ensure_torchvision_ops()

from transformers import AutoFeatureExtractor, Wav2Vec2Model  # noqa: E402

PARAM_KEY = "extract.audio.model"


@dataclass
class HFAudioConfig(AudioInputConfig):
    """params.yaml `extract.<set>` with `extractor: hf_audio`."""

    model: str = "facebook/wav2vec2-base"  # a local folder or a hub id
    layers: list[int] = field(default_factory=lambda: [-1])  # hidden_states indices, averaged
    pooling: Literal["mean", "mean_std"] = "mean"  # mean | mean_std (mean and std over time: 2 * hidden)
    window_s: float = 20.0  # long clips are encoded in windows of at most this (bounds memory)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.layers:
            raise ParamError("layers", "must be a non-empty list of hidden-state indices, got []")
        if len(set(self.layers)) != len(self.layers):
            raise ParamError("layers", f"lists an index twice: {self.layers!r}")
        if not self.window_s > 0:
            raise ParamError("window_s", f"must be positive, got {self.window_s}")


@dataclass
class AudioInput:
    """A decoded utterance: the normalised mono waveform and the [start, stop) sample windows to encode."""

    values: torch.Tensor  # float32 [samples]
    windows: list[tuple[int, int]]


def window_bounds(num_samples: int, window: int, min_tail: int) -> list[tuple[int, int]]:
    """[start, stop) windows of `window` samples covering `num_samples`.

    A last window shorter than `min_tail` is merged into the one before it (so no window is below
    the conv stack's minimum input); windows are therefore at most `window + min_tail` long.
    """
    bounds = [(start, min(start + window, num_samples)) for start in range(0, num_samples, window)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_tail:
        _, stop = bounds.pop()
        bounds[-1] = (bounds[-1][0], stop)
    return bounds


@dataclass
class HFAudioDecoder(Decoder):
    """Manifest row -> normalised waveform and windows. Holds the feature extractor, never the model."""

    raw_root: Path
    feature_extractor: Any  # the checkpoint's feature extractor (plain, picklable)
    min_input_samples: int  # the conv stack's minimum input length
    window_samples: int
    config: AudioInputConfig  # min_duration_s, silence_rms

    @property
    def sampling_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    def __call__(self, row: dict[str, Any]) -> Decoded:
        uid = row["utterance_id"]
        try:
            audio = utterance_audio(row, self.raw_root, self.sampling_rate)
        except AudioUnavailable as exc:
            return Decoded(uid, missing=str(exc))
        flags = audio_flags(audio, self.config, self.sampling_rate)
        fe = self.feature_extractor
        values = fe(audio, sampling_rate=self.sampling_rate, return_tensors="np")["input_values"][0]
        values = np.asarray(values, dtype=np.float32)
        if len(values) < self.min_input_samples:
            pad = np.full(self.min_input_samples - len(values), fe.padding_value, np.float32)
            values = np.concatenate([values, pad])
        min_samples = round(self.config.min_duration_s * self.sampling_rate)
        windows = window_bounds(len(values), self.window_samples, max(self.min_input_samples, min_samples))
        return Decoded(uid, data=AudioInput(torch.from_numpy(np.ascontiguousarray(values)), windows), flags=flags)


@register_extractor
class HFAudioExtractor(Extractor):
    """Hugging Face speech-encoder utterance embeddings: windowed, layer-averaged, pooled over time."""

    name = "hf_audio"
    modality = "audio"
    version = "1"
    config_class = HFAudioConfig

    def __init__(self, config: HFAudioConfig, raw_root: Path, device: torch.device) -> None:
        super().__init__(config, raw_root, device)
        self.config: HFAudioConfig = config
        model, self._model_dir = load_pretrained("audio", config.model, Wav2Vec2Model.from_pretrained, PARAM_KEY)
        self.feature_extractor, _ = load_pretrained(
            "audio", config.model, AutoFeatureExtractor.from_pretrained, PARAM_KEY
        )
        self.model = model.eval().to(device)
        layers = self.model.config.num_hidden_layers + 1  # hidden_states: the encoder input, then each layer
        bad = [i for i in config.layers if not -layers <= i < layers]
        if bad:
            raise PipelineError(
                f"extract.audio.layers {bad} out of range: {config.model!r} has {layers} hidden states "
                f"(indices {-layers}..{layers - 1})"
            )
        self.sampling_rate = int(self.feature_extractor.sampling_rate)
        self.min_input_samples = self._min_input_samples()
        self.window_samples = round(config.window_s * self.sampling_rate)
        if self.window_samples < self.min_input_samples:
            raise PipelineError(
                f"extract.audio.window_s {config.window_s} is shorter than the model's minimum input "
                f"({self.min_input_samples / self.sampling_rate:.3f} s)"
            )

    def _min_input_samples(self) -> int:
        """Fewest samples the conv feature encoder turns into one frame (400 for wav2vec2-base)."""
        samples = 1
        for kernel, stride in reversed(list(zip(self.model.config.conv_kernel, self.model.config.conv_stride))):
            samples = (samples - 1) * stride + kernel
        return samples

    @property
    def model_id(self) -> str:
        return self.config.model

    @cached_property
    def model_sha256(self) -> str:
        return weights_sha256(self._model_dir)

    @property
    def output_dim(self) -> int:
        hidden = int(self.model.config.hidden_size)
        return 2 * hidden if self.config.pooling == "mean_std" else hidden

    def size_hint(self, row: dict[str, Any]) -> float:
        return audio_seconds(row)

    def decoder(self) -> HFAudioDecoder:
        return HFAudioDecoder(
            raw_root=self.raw_root,
            feature_extractor=self.feature_extractor,
            min_input_samples=self.min_input_samples,
            window_samples=self.window_samples,
            config=self.config,
        )

    def encode(self, batch: list[Decoded]) -> list[Encoded]:
        with torch.inference_mode():
            return [Encoded(item.utterance_id, self._encode_one(item.data), flags=list(item.flags)) for item in batch]

    def _encode_one(self, data: AudioInput) -> torch.Tensor:
        """Each window alone (see the module docstring), frames of all windows pooled together."""
        frames = []
        for start, stop in data.windows:
            window = data.values[start:stop].unsqueeze(0).to(self.device)
            with autocast(self.device):
                hidden = self.model(window, output_hidden_states=True).hidden_states
            chosen = torch.stack([hidden[i][0].float() for i in self.config.layers])
            frames.append(chosen.mean(dim=0))
        states = torch.cat(frames)  # [frames, hidden]
        mean = states.mean(dim=0)
        if self.config.pooling == "mean_std":
            return torch.cat([mean, states.std(dim=0, correction=0)]).cpu()
        return mean.cpu()
