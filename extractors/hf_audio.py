"""Speech-encoder audio features: one pooled vector per utterance from a Hugging Face speech encoder.

Families (`model_type` of the checkpoint's config; anything else is a one-line error):

- waveform encoders, a conv feature encoder then a transformer, loaded with `AutoModel`:
  ``wav2vec2``, ``hubert``, ``wavlm``, ``data2vec-audio``;
- ``whisper``: the encoder only (`WhisperModel`'s, or a checkpoint saved as `WhisperEncoder`), on
  the checkpoint's log-mel input. It always sees a full 30 s input (its position embeddings are
  fixed), so `window_s` above 30 s is a one-line error, and pooling uses only the encoder frames
  that cover real audio: ceil(ceil(samples / hop_length) / 2) per window (the mel frames centred on
  audio, halved by the stride-2 conv), never the padding. There is no conv-stack minimum input.

A checkpoint whose files lack some of the encoder's weights is a one-line error, not a silently
random layer (`WhisperEncoder.from_pretrained` on a full Whisper checkpoint loads nothing, for one).

Worker side (`HFAudioDecoder`, `WhisperDecoder`): read the utterance's span as a mono waveform at
the feature extractor's rate (`extractors.audio`, shared by every audio extractor), normalise it
once over the whole utterance when the checkpoint's feature extractor normalises (so every window
of a long clip shares one level), and cut it into windows of at most `window_s`; for Whisper each
window is turned into its 30 s log-mel input here, in the worker. Main process (`encode`): run the
model on the windows, average the chosen `layers` (indices into the hidden states: the transformer
input, then each layer's output), pool over all frames of all windows of the utterance (`mean`, or
`mean_std` = mean and population std concatenated, 2 * hidden).

Batching rule. Padded batching (windows of several utterances in one forward of at most
`batch_size` windows, longest first, each pooled over its own valid frames only) is used where
padding does not reach the valid frames:

- wav2vec2 / HuBERT / WavLM with ``feat_extract_norm == "layer"`` (wav2vec2-large-lv60,
  HuBERT-large, WavLM-large style): the conv stack normalises each frame on its own, the encoder
  zeroes padded frames before its single positional conv and masks them in attention. Measured
  against each window alone: equal to float32 rounding (max abs difference ~1e-6 on CPU);
- Whisper: every window is padded to 30 s anyway, so a batch only stacks equal-shape inputs.

Every other checkpoint runs each window alone, as a batch of one, exactly as before this rule:
group-norm feature encoders (wav2vec2-base, HuBERT-base, WavLM-base(-plus), the demo's tiny model)
normalise each conv channel over the whole input, padding included, so zero-padding moves every
frame; data2vec-audio has layer norm in its conv stack but a stack of positional convs whose second
layer reads the (no longer zero) padded frames, which moves the last frames of a padded window
(0.7 s for data2vec-audio-base's 5 layers of kernel 19; both measured: differences of order 1, not
rounding). Running alone keeps a group-norm feature a
function of its utterance only, bit for bit: not of the other rows of its batch, `batch_size`, the
worker count or where a resumed run restarts. A batched feature depends on its batch only within
float rounding (the tests hold it to rtol 1e-4, atol 1e-5 on CPU float32); a store stays
byte-reproducible since a shard's batches are a function of the manifest and `batch_size`.

Edge cases, all giving a well-defined feature or one short missing reason, never an exception:

- audio shorter than `min_duration_s` is flagged ``audio_too_short``; for a waveform encoder below
  the conv stack's minimum input (400 samples = 25 ms at 16 kHz for wav2vec2-base) it is zero-padded
  at the end to that minimum, after normalisation, so zero is the normalised mean;
- audio whose RMS is below `silence_rms` is flagged ``silent_audio``; the feature extractor's
  zero-mean/unit-variance step divides by sqrt(var + 1e-7), so all-zero input stays all zero (no NaN);
- zero samples (an empty span, an audio track that decodes to nothing) is missing ``empty_audio``:
  a feature made of padding alone would say nothing about the utterance;
- no file, an empty file, no audio stream, an undecodable file: missing with a reason naming it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, PretrainedConfig, WhisperModel  # noqa: E402
from transformers.models.whisper.modeling_whisper import WhisperEncoder  # noqa: E402

PARAM_KEY = "extract.audio.model"
WAVEFORM_FAMILIES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
FAMILIES = (*WAVEFORM_FAMILIES, "whisper")
# families whose layer-norm feature encoder (feat_extract_norm == "layer") makes padding harmless
PADDABLE_WITH_LAYER_NORM = ("wav2vec2", "hubert", "wavlm")
# parameters a checkpoint may lack without changing any output (used only for training-time masking)
UNUSED_WEIGHTS = ("masked_spec_embed",)


@dataclass
class HFAudioConfig(AudioInputConfig):
    """params.yaml `extract.<set>` with `extractor: hf_audio`."""

    model: str = "facebook/wav2vec2-base"  # a local folder or a hub id
    layers: list[int] = field(default_factory=lambda: [-1])  # hidden_states indices, averaged
    pooling: Literal["mean", "mean_std"] = "mean"  # mean | mean_std (mean and std over time: 2 * hidden)
    window_s: float = 20.0  # long clips are encoded in windows of at most this (bounds memory; Whisper: <= 30)

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


@dataclass
class MelInput:
    """A decoded utterance for Whisper: each window's 30 s log-mel input and its frames that hold audio."""

    features: torch.Tensor  # float32 [windows, mel bins, mel frames of 30 s]
    windows: list[tuple[int, int]]  # [start, stop) samples of each window in the utterance
    valid_frames: list[int]  # encoder frames of each window that cover audio, not padding


def window_bounds(num_samples: int, window: int, min_tail: int, max_window: int | None = None) -> list[tuple[int, int]]:
    """[start, stop) windows of `window` samples covering `num_samples`.

    A last window shorter than `min_tail` is merged into the one before it (so no window is below
    the conv stack's minimum input); windows are therefore at most `window + min_tail` long, unless
    the merge would exceed `max_window` (Whisper's 30 s), where the short tail stays its own window.
    """
    bounds = [(start, min(start + window, num_samples)) for start in range(0, num_samples, window)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_tail:
        if max_window is None or bounds[-1][1] - bounds[-2][0] <= max_window:
            _, stop = bounds.pop()
            bounds[-1] = (bounds[-1][0], stop)
    return bounds


def conv_output_frames(samples: int, kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Frames a padding-free conv stack makes of `samples` (the formula the models use for their masks)."""
    frames = samples
    for kernel, stride in zip(kernels, strides):
        frames = (frames - kernel) // stride + 1
    return frames


def whisper_encoder_frames(samples: int, hop_length: int) -> int:
    """Whisper encoder frames that cover `samples` of audio: mel frames centred on audio, then the stride-2 conv."""
    return math.ceil(math.ceil(samples / hop_length) / 2)


def normalise(audio: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the whole utterance, as the checkpoints' feature extractors do."""
    return ((audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)).astype(np.float32)


@dataclass
class HFAudioDecoder(Decoder):
    """Manifest row -> normalised waveform and windows. Holds the feature extractor, never the model."""

    raw_root: Path
    feature_extractor: Any  # the checkpoint's feature extractor (plain, picklable)
    min_input_samples: int  # the conv stack's minimum input length (1: none)
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
        return Decoded(uid, data=self.prepare(audio), flags=flags)

    def prepare(self, audio: np.ndarray) -> AudioInput | MelInput:
        """The model's input for one utterance's waveform."""
        fe = self.feature_extractor
        values = fe(audio, sampling_rate=self.sampling_rate, return_tensors="np")["input_values"][0]
        values = np.asarray(values, dtype=np.float32)
        if len(values) < self.min_input_samples:
            pad = np.full(self.min_input_samples - len(values), fe.padding_value, np.float32)
            values = np.concatenate([values, pad])
        min_samples = round(self.config.min_duration_s * self.sampling_rate)
        windows = window_bounds(len(values), self.window_samples, max(self.min_input_samples, min_samples))
        return AudioInput(torch.from_numpy(np.ascontiguousarray(values)), windows)


@dataclass
class WhisperDecoder(HFAudioDecoder):
    """Manifest row -> one 30 s log-mel input per window (computed here, in the worker)."""

    def prepare(self, audio: np.ndarray) -> MelInput:
        fe = self.feature_extractor
        if getattr(fe, "do_normalize", False):  # one level for the whole utterance, not per window
            audio = normalise(audio)
        min_samples = round(self.config.min_duration_s * self.sampling_rate)
        windows = window_bounds(len(audio), self.window_samples, min_samples, max_window=int(fe.n_samples))
        chunks = [audio[start:stop] for start, stop in windows]
        mels = fe(chunks, sampling_rate=self.sampling_rate, return_tensors="np", do_normalize=False)["input_features"]
        valid = [whisper_encoder_frames(stop - start, int(fe.hop_length)) for start, stop in windows]
        return MelInput(torch.from_numpy(np.ascontiguousarray(mels, dtype=np.float32)), windows, valid)


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
        model_config, self._model_dir = load_pretrained("audio", config.model, AutoConfig.from_pretrained, PARAM_KEY)
        self.family: str = model_config.model_type
        if self.family not in FAMILIES:
            raise PipelineError(
                f"extract.audio.model {config.model!r} is a {self.family!r} model; hf_audio encodes "
                f"{', '.join(FAMILIES)} checkpoints"
            )
        self.model = self._load_model(model_config).eval().to(device)
        self.feature_extractor, _ = load_pretrained(
            "audio", config.model, AutoFeatureExtractor.from_pretrained, PARAM_KEY
        )
        self._check_feature_extractor()
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
        if self.family == "whisper" and self.window_samples > self.feature_extractor.n_samples:
            limit = self.feature_extractor.n_samples / self.sampling_rate
            raise PipelineError(
                f"extract.audio.window_s {config.window_s} is longer than the {limit:g} s that the Whisper "
                f"encoder {config.model!r} takes at once; set window_s to {limit:g} or less"
            )
        if self.window_samples < self.min_input_samples:
            raise PipelineError(
                f"extract.audio.window_s {config.window_s} is shorter than the model's minimum input "
                f"({self.min_input_samples / self.sampling_rate:.3f} s)"
            )

    def _load_model(self, model_config: PretrainedConfig) -> torch.nn.Module:
        """The encoder in float32 (autocast handles the GPU); missing encoder weights are an error."""
        whisper_encoder_only = self.family == "whisper" and "WhisperEncoder" in (model_config.architectures or [])

        def load(path: str, **kwargs: Any) -> tuple[torch.nn.Module, list[str]]:
            options = {"config": model_config, "dtype": torch.float32, "output_loading_info": True, **kwargs}
            if whisper_encoder_only:
                encoder, info = WhisperEncoder.from_pretrained(path, **options)
                return encoder, info["missing_keys"]
            if self.family == "whisper":  # drop the decoder, keep its encoder
                full, info = WhisperModel.from_pretrained(path, **options)
                return full.get_encoder(), [k for k in info["missing_keys"] if k.startswith("encoder.")]
            model, info = AutoModel.from_pretrained(path, **options)
            return model, info["missing_keys"]

        (model, missing), _ = load_pretrained("audio", self.config.model, load, PARAM_KEY)
        missing = sorted(k for k in missing if not k.endswith(UNUSED_WEIGHTS))
        if missing:
            raise PipelineError(
                f"extract.audio.model {self.config.model!r}: its weight files lack {len(missing)} of the "
                f"{self.family} encoder's tensors (e.g. {missing[0]}), which would be random; "
                f"is it a checkpoint of this architecture?"
            )
        return model

    def _check_feature_extractor(self) -> None:
        """The feature extractor must make what the model reads (a waveform, or Whisper's mel frames)."""
        fe, model = self.feature_extractor, self.model
        made = (getattr(fe, "model_input_names", None) or ["?"])[0]
        if made != model.main_input_name:
            raise PipelineError(
                f"extract.audio.model {self.config.model!r}: its feature extractor ({type(fe).__name__}) makes "
                f"{made!r} but the {self.family} model reads {model.main_input_name!r}"
            )
        if self.family == "whisper":
            expected = model.config.max_source_positions * model.conv1.stride[0] * model.conv2.stride[0]
            if fe.nb_max_frames != expected:
                raise PipelineError(
                    f"extract.audio.model {self.config.model!r}: its feature extractor makes {fe.nb_max_frames} "
                    f"mel frames per input but the encoder takes {expected}"
                )

    def _min_input_samples(self) -> int:
        """Fewest samples the conv feature encoder turns into one frame (400 for wav2vec2-base; Whisper: 1)."""
        if self.family == "whisper":
            return 1  # every input is padded to 30 s: any number of samples makes a full input
        samples = 1
        for kernel, stride in reversed(list(zip(self.model.config.conv_kernel, self.model.config.conv_stride))):
            samples = (samples - 1) * stride + kernel
        return samples

    @property
    def padded_batches(self) -> bool:
        """Whether windows of several utterances share a forward (see the module docstring)."""
        if self.family == "whisper":
            return True
        norm = getattr(self.model.config, "feat_extract_norm", None)
        return self.family in PADDABLE_WITH_LAYER_NORM and norm == "layer"

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
        decoder_class = WhisperDecoder if self.family == "whisper" else HFAudioDecoder
        return decoder_class(
            raw_root=self.raw_root,
            feature_extractor=self.feature_extractor,
            min_input_samples=self.min_input_samples,
            window_samples=self.window_samples,
            config=self.config,
        )

    def encode(self, batch: list[Decoded]) -> list[Encoded]:
        with torch.inference_mode():
            if not self.padded_batches:
                return [Encoded(d.utterance_id, self._encode_one(d.data), flags=list(d.flags)) for d in batch]
            frames = self._encode_padded([d.data for d in batch])
            return [Encoded(d.utterance_id, self._pool(f), flags=list(d.flags)) for d, f in zip(batch, frames)]

    def _encode_one(self, data: AudioInput) -> torch.Tensor:
        """Each window alone (see the module docstring), frames of all windows pooled together."""
        frames = []
        for start, stop in data.windows:
            window = data.values[start:stop].unsqueeze(0).to(self.device)
            with autocast(self.device):
                hidden = self.model(window, output_hidden_states=True).hidden_states
            chosen = torch.stack([hidden[i][0].float() for i in self.config.layers])
            frames.append(chosen.mean(dim=0))
        return self._pool(torch.cat(frames))

    def _encode_padded(self, inputs: list[AudioInput | MelInput]) -> list[torch.Tensor]:
        """Every window of `inputs` in padded forwards of at most `batch_size` windows, longest first;
        returns each utterance's valid frames [frames, hidden], its windows in order."""
        keys = [(item, w) for item, data in enumerate(inputs) for w in range(len(data.windows))]
        length = {(item, w): inputs[item].windows[w][1] - inputs[item].windows[w][0] for item, w in keys}
        keys.sort(key=lambda key: -length[key])  # stable: ties keep utterance order
        window_frames: dict[tuple[int, int], torch.Tensor] = {}
        size = self.config.batch_size
        for group in (keys[i : i + size] for i in range(0, len(keys), size)):
            batch_input, valid = self._padded_input(inputs, group, [length[k] for k in group])
            with autocast(self.device):
                hidden = self.model(**batch_input, output_hidden_states=True).hidden_states
            # [windows, frames, hidden]
            chosen = torch.stack([hidden[i].float() for i in self.config.layers]).mean(dim=0)
            for row, key in enumerate(group):
                window_frames[key] = chosen[row, : valid[row]]
        return [
            torch.cat([window_frames[(item, w)] for w in range(len(data.windows))]) for item, data in enumerate(inputs)
        ]

    def _padded_input(
        self, inputs: list[AudioInput | MelInput], group: list[tuple[int, int]], lengths: list[int]
    ) -> tuple[dict[str, torch.Tensor], list[int]]:
        """The model's keyword inputs for a group of windows, and each window's valid frame count."""
        if self.family == "whisper":
            mels = torch.stack([inputs[item].features[w] for item, w in group])  # already 30 s each
            valid = [inputs[item].valid_frames[w] for item, w in group]
            return {"input_features": mels.to(self.device)}, valid
        waveforms = torch.full((len(group), max(lengths)), float(self.feature_extractor.padding_value))
        attention_mask = torch.zeros(len(group), max(lengths), dtype=torch.long)
        for row, ((item, w), samples) in enumerate(zip(group, lengths)):
            start, stop = inputs[item].windows[w]
            waveforms[row, :samples] = inputs[item].values[start:stop]
            attention_mask[row, :samples] = 1
        config = self.model.config
        valid = [conv_output_frames(n, config.conv_kernel, config.conv_stride) for n in lengths]
        return {"input_values": waveforms.to(self.device), "attention_mask": attention_mask.to(self.device)}, valid

    def _pool(self, states: torch.Tensor) -> torch.Tensor:
        """[frames, hidden] -> the utterance's vector (`mean`, or mean and population std)."""
        mean = states.mean(dim=0)
        if self.config.pooling == "mean_std":
            return torch.cat([mean, states.std(dim=0, correction=0)]).cpu()
        return mean.cpu()
