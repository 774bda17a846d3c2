"""wav2vec2 audio features: one pooled vector per utterance from a transformers wav2vec2 encoder.

Worker side (`AudioDecoder`): read the utterance's span (soundfile for WAV and the other libsndfile
formats, PyAV with its bundled FFmpeg for the audio track of MELD's mp4 clips), average the channels,
resample to the feature extractor's rate with soxr, normalise with the checkpoint's own feature
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

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
import soundfile
import soxr
import torch

from extractors.base import (
    Decoded,
    Decoder,
    Encoded,
    Extractor,
    ExtractorConfig,
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
# manifest flags that say why a row has no audio, most specific first (see pipeline/corpora)
NO_AUDIO_FLAGS = ("missing_clip", "unreadable_clip", "clip_without_audio", "missing_audio", "unreadable_audio")


@dataclass
class AudioConfig(ExtractorConfig):
    """params.yaml `extract.audio`."""

    model: str = "facebook/wav2vec2-base"  # a local folder or a hub id
    layers: list[int] = field(default_factory=lambda: [-1])  # hidden_states indices, averaged
    pooling: Literal["mean", "mean_std"] = "mean"  # mean | mean_std (mean and std over time: 2 * hidden)
    window_s: float = 20.0  # long clips are encoded in windows of at most this (bounds memory)
    min_duration_s: float = 0.1  # shorter audio is flagged audio_too_short
    silence_rms: float = 1e-4  # RMS (full scale 1.0) below which audio is flagged silent_audio

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.layers:
            raise ParamError("layers", "must be a non-empty list of hidden-state indices, got []")
        if len(set(self.layers)) != len(self.layers):
            raise ParamError("layers", f"lists an index twice: {self.layers!r}")
        if not self.window_s > 0:
            raise ParamError("window_s", f"must be positive, got {self.window_s}")
        if not self.min_duration_s >= 0:
            raise ParamError("min_duration_s", f"must be 0 or more, got {self.min_duration_s}")
        if not self.silence_rms >= 0:
            raise ParamError("silence_rms", f"must be 0 or more, got {self.silence_rms}")


@dataclass
class AudioInput:
    """A decoded utterance: the normalised mono waveform and the [start, stop) sample windows to encode."""

    values: torch.Tensor  # float32 [samples]
    windows: list[tuple[int, int]]


class AudioUnavailable(Exception):
    """Why an utterance has no audio feature; the message is the store's missing reason."""


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


def _seconds(value: Any) -> float | None:
    """A manifest time: None (and NaN, as pandas reads a null) mean "not given"."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def read_audio(path: Path, start_s: float, end_s: float | None, sampling_rate: int) -> np.ndarray:
    """Samples of `path` from `start_s` to `end_s` (None = end of file): mono float32 at `sampling_rate`.

    Raises AudioUnavailable naming the problem (no audio stream, undecodable file).
    """
    path = Path(path)
    if path.suffix.lstrip(".").upper() in soundfile.available_formats():
        try:
            samples, rate = _read_soundfile(path, start_s, end_s)
        except (RuntimeError, ValueError):  # e.g. a WAV codec libsndfile lacks: FFmpeg may still read it
            samples, rate = _read_av(path, start_s, end_s)
    else:
        samples, rate = _read_av(path, start_s, end_s)
    mono = np.ascontiguousarray(samples.mean(axis=0, dtype=np.float32) if samples.shape[0] > 1 else samples[0])
    if rate != sampling_rate and mono.size:
        mono = soxr.resample(mono, rate, sampling_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _read_soundfile(path: Path, start_s: float, end_s: float | None) -> tuple[np.ndarray, int]:
    """(channels x samples float32, rate), reading only the span."""
    with soundfile.SoundFile(str(path)) as f:
        rate = f.samplerate
        first = round(start_s * rate)
        if first >= f.frames:
            return np.zeros((f.channels, 0), np.float32), rate
        f.seek(first)
        count = -1 if end_s is None else max(0, round(end_s * rate) - first)
        return f.read(count, dtype="float32", always_2d=True).T, rate


def _read_av(path: Path, start_s: float, end_s: float | None) -> tuple[np.ndarray, int]:
    """(channels x samples float32, rate) of the first audio stream, decoding only from a seek point
    before `start_s` up to `end_s`. Damaged packets are skipped; a stream that breaks off keeps what
    decoded before (both are rare in real clips and cost a few ms of audio)."""
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise AudioUnavailable(f"unreadable_audio: {_describe(exc)}") from None
    with container:
        if not container.streams.audio:
            raise AudioUnavailable("no_audio_stream")
        stream = container.streams.audio[0]
        channels, rate = stream.channels or 1, stream.sample_rate or 1
        if start_s > 0 and stream.time_base:
            try:
                container.seek(int(start_s / stream.time_base), stream=stream)  # lands at or before start
            except av.error.FFmpegError:
                container.seek(0, stream=stream)
        chunks: list[np.ndarray] = []
        first_time: float | None = None
        decoded = 0
        error: BaseException | None = None
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as exc:  # one damaged packet
                    error = exc
                    continue
                for frame in frames:
                    if first_time is None:
                        rate = frame.sample_rate
                        first_time = float(frame.time) if frame.time is not None else 0.0
                    chunks.append(_frame_samples(frame))
                    decoded += frame.samples
                if end_s is not None and first_time is not None and first_time + decoded / rate >= end_s:
                    break
        except av.error.FFmpegError as exc:  # the container breaks off
            error = exc
    if not chunks:
        if error is not None:
            raise AudioUnavailable(f"unreadable_audio: {_describe(error)}")
        return np.zeros((channels, 0), np.float32), rate
    samples = np.concatenate(chunks, axis=1)
    assert first_time is not None
    begin = max(0, round((start_s - first_time) * rate))
    stop = samples.shape[1] if end_s is None else min(samples.shape[1], max(begin, round((end_s - first_time) * rate)))
    return samples[:, begin:stop], rate


def _frame_samples(frame: av.AudioFrame) -> np.ndarray:
    """An audio frame as channels x samples float32 in [-1, 1], whatever its sample format."""
    channels = len(frame.layout.channels)
    array = frame.to_ndarray()
    if not frame.format.is_planar:
        array = array.reshape(-1, channels).T  # packed: interleaved samples
    if array.dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    if array.dtype.kind == "u":  # u8: offset binary
        half = 2.0 ** (8 * array.dtype.itemsize - 1)
        return ((array.astype(np.float64) - half) / half).astype(np.float32)
    scale = 2.0 ** (8 * array.dtype.itemsize - 1)
    return (array.astype(np.float64) / scale).astype(np.float32)


def _describe(exc: BaseException) -> str:
    """An error in one short line, without the file name (the row says which file)."""
    text = getattr(exc, "strerror", None) or str(exc)
    text = text.strip().splitlines()[0] if text.strip() else ""
    # the runner joins an utterance's reasons with "; "
    return f"{type(exc).__name__}: {text}".replace(";", ",")[:200]


@dataclass
class AudioDecoder(Decoder):
    """Manifest row -> normalised waveform and windows. Holds the feature extractor, never the model."""

    raw_root: Path
    feature_extractor: Any  # the checkpoint's Wav2Vec2FeatureExtractor (plain, picklable)
    min_input_samples: int  # the conv stack's minimum input length
    min_samples: int  # min_duration_s in samples
    window_samples: int
    silence_rms: float

    @property
    def sampling_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    def __call__(self, row: dict[str, Any]) -> Decoded:
        uid = row["utterance_id"]
        try:
            values, flags = self._decode(row)
        except AudioUnavailable as exc:
            return Decoded(uid, missing=str(exc))
        windows = window_bounds(len(values), self.window_samples, max(self.min_input_samples, self.min_samples))
        data = AudioInput(torch.from_numpy(values), windows)
        return Decoded(uid, data=data, flags=flags)

    def _decode(self, row: dict[str, Any]) -> tuple[np.ndarray, list[str]]:
        if not row.get("has_audio") or not row.get("audio_path"):
            reason = next((f for f in NO_AUDIO_FLAGS if f in (row.get("flags") or [])), "no_audio")
            raise AudioUnavailable(reason)
        path = self.raw_root / row["audio_path"]
        if not path.is_file():
            raise AudioUnavailable("missing_file")
        if path.stat().st_size == 0:
            raise AudioUnavailable("empty_file")
        start = _seconds(row.get("audio_start_s")) or 0.0
        end = _seconds(row.get("audio_end_s"))
        try:
            audio = read_audio(path, start, end, self.sampling_rate)
        except (av.error.FFmpegError, RuntimeError, OSError, ValueError, EOFError) as exc:
            raise AudioUnavailable(f"unreadable_audio: {_describe(exc)}") from None
        if audio.size == 0:
            raise AudioUnavailable("empty_audio")
        if not np.isfinite(audio).all():
            raise AudioUnavailable("non_finite_audio")
        flags = []
        if len(audio) < self.min_samples:
            flags.append("audio_too_short")
        if float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) < self.silence_rms:
            flags.append("silent_audio")
        fe = self.feature_extractor
        values = fe(audio, sampling_rate=self.sampling_rate, return_tensors="np")["input_values"][0]
        values = np.asarray(values, dtype=np.float32)
        if len(values) < self.min_input_samples:
            pad = np.full(self.min_input_samples - len(values), fe.padding_value, np.float32)
            values = np.concatenate([values, pad])
        return np.ascontiguousarray(values), flags


@register_extractor
class AudioExtractor(Extractor):
    """wav2vec2 (transformers) utterance embeddings: windowed, layer-averaged, pooled over time."""

    name = "wav2vec2"
    modality = "audio"
    version = "1"
    config_class = AudioConfig

    def __init__(self, config: AudioConfig, raw_root: Path, device: torch.device) -> None:
        super().__init__(config, raw_root, device)
        self.config: AudioConfig = config
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
        """Seconds of audio: the audio span, else the utterance span (IEMOCAP's wav runs to its end)."""
        if not row.get("has_audio") or not row.get("audio_path"):
            return 0.0
        start, end = _seconds(row.get("audio_start_s")) or 0.0, _seconds(row.get("audio_end_s"))
        if end is not None:
            return max(end - start, 0.0)
        start, end = _seconds(row.get("start_s")), _seconds(row.get("end_s"))
        return max(end - start, 0.0) if start is not None and end is not None else 0.0

    def decoder(self) -> AudioDecoder:
        return AudioDecoder(
            raw_root=self.raw_root,
            feature_extractor=self.feature_extractor,
            min_input_samples=self.min_input_samples,
            min_samples=round(self.config.min_duration_s * self.sampling_rate),
            window_samples=self.window_samples,
            silence_rms=self.config.silence_rms,
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
