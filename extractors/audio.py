"""What every audio extractor reads from a manifest row: the utterance's span as a mono waveform.

Shared by the audio extractors (`hf_audio`, `opensmile`), so that they decode the same samples and
agree on why a row has no audio. soundfile reads WAV and the other libsndfile formats, PyAV (its
bundled FFmpeg) the audio track of MELD's mp4 clips; channels are averaged and the result resampled
with soxr to the rate the extractor asks for.

Why a row has no waveform is one short reason, raised as `AudioUnavailable` and stored as the
utterance's missing reason: the manifest's own flag when it gives one, `missing_file`, `empty_file`,
`unreadable_audio: <error>`, `no_audio_stream`, `empty_audio` (zero samples: a feature made of
padding alone would say nothing about the utterance), `non_finite_audio`. Short and silent audio keep
their feature and are flagged (`audio_too_short`, `silent_audio`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile
import soxr

from extractors.base import ExtractorConfig
from pipeline.core.params import ParamError

# manifest flags that say why a row has no audio, most specific first (see pipeline/corpora)
NO_AUDIO_FLAGS = ("missing_clip", "unreadable_clip", "clip_without_audio", "missing_audio", "unreadable_audio")


@dataclass
class AudioInputConfig(ExtractorConfig):
    """The settings every audio extractor shares (flags on the decoded waveform)."""

    min_duration_s: float = 0.1  # shorter audio is flagged audio_too_short
    silence_rms: float = 1e-4  # RMS (full scale 1.0) below which audio is flagged silent_audio

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.min_duration_s >= 0:
            raise ParamError("min_duration_s", f"must be 0 or more, got {self.min_duration_s}")
        if not self.silence_rms >= 0:
            raise ParamError("silence_rms", f"must be 0 or more, got {self.silence_rms}")


class AudioUnavailable(Exception):
    """Why an utterance has no audio feature; the message is the store's missing reason."""


def manifest_seconds(value: Any) -> float | None:
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
        raise AudioUnavailable(f"unreadable_audio: {describe_error(exc)}") from None
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
            raise AudioUnavailable(f"unreadable_audio: {describe_error(error)}")
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


def describe_error(exc: BaseException) -> str:
    """An error in one short line, without the file name (the row says which file)."""
    text = getattr(exc, "strerror", None) or str(exc)
    text = text.strip().splitlines()[0] if text.strip() else ""
    # the runner joins an utterance's reasons with "; "
    return f"{type(exc).__name__}: {text}".replace(";", ",")[:200]


def utterance_audio(row: dict[str, Any], raw_root: Path, sampling_rate: int) -> np.ndarray:
    """The row's audio span, mono float32 at `sampling_rate`, with at least one finite sample.

    Raises AudioUnavailable with the store's missing reason otherwise.
    """
    if not row.get("has_audio") or not row.get("audio_path"):
        reason = next((f for f in NO_AUDIO_FLAGS if f in (row.get("flags") or [])), "no_audio")
        raise AudioUnavailable(reason)
    path = Path(raw_root) / row["audio_path"]
    if not path.is_file():
        raise AudioUnavailable("missing_file")
    if path.stat().st_size == 0:
        raise AudioUnavailable("empty_file")
    start = manifest_seconds(row.get("audio_start_s")) or 0.0
    end = manifest_seconds(row.get("audio_end_s"))
    try:
        audio = read_audio(path, start, end, sampling_rate)
    except (av.error.FFmpegError, RuntimeError, OSError, ValueError, EOFError) as exc:
        raise AudioUnavailable(f"unreadable_audio: {describe_error(exc)}") from None
    if audio.size == 0:
        raise AudioUnavailable("empty_audio")
    if not np.isfinite(audio).all():
        raise AudioUnavailable("non_finite_audio")
    return audio


def audio_flags(audio: np.ndarray, config: AudioInputConfig, sampling_rate: int) -> list[str]:
    """The caveats kept with a feature: `audio_too_short`, `silent_audio`."""
    flags = []
    if len(audio) < round(config.min_duration_s * sampling_rate):
        flags.append("audio_too_short")
    if float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) < config.silence_rms:
        flags.append("silent_audio")
    return flags


def audio_seconds(row: dict[str, Any]) -> float:
    """Seconds of audio from the manifest alone (a size hint): the audio span, else the utterance span
    (IEMOCAP's wav runs to its end); 0 for a row without audio."""
    if not row.get("has_audio") or not row.get("audio_path"):
        return 0.0
    start, end = manifest_seconds(row.get("audio_start_s")) or 0.0, manifest_seconds(row.get("audio_end_s"))
    if end is not None:
        return max(end - start, 0.0)
    start, end = manifest_seconds(row.get("start_s")), manifest_seconds(row.get("end_s"))
    return max(end - start, 0.0) if start is not None and end is not None else 0.0
