"""Writing the demo's media files with PyAV and soundfile, byte-identically on every run.

Determinism needs single-threaded encoders (threads make encoder decisions depend on timing),
x264 without macroblock-tree rate control (see write_mp4_clip) and FFmpeg's bitexact flags,
which keep version strings out of the files; no creation time is ever written.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np
import soundfile

_BITEXACT = {"fflags": "+bitexact"}
_SINGLE_THREAD_BITEXACT = {"threads": "1", "flags": "+bitexact"}


def write_mp4_clip(
    path: Path,
    frames: Iterable[np.ndarray],
    size: tuple[int, int],
    fps: int,
    audio: np.ndarray,
    sample_rate: int,
) -> None:
    """An MP4 like a MELD clip: H.264 (libx264, yuv420p) video plus mono AAC audio.

    `frames` are RGB uint8 arrays of shape (height, width, 3) with `size` = (width, height).
    """
    with av.open(str(path), mode="w", format="mp4", options=_BITEXACT) as container:
        # Even single-threaded, x264's macroblock-tree rate control made the first frame differ
        # from run to run (with this build, even within one process); without it every run matches.
        options = {**_SINGLE_THREAD_BITEXACT, "preset": "veryfast", "crf": "30", "x264-params": "mbtree=0"}
        video = container.add_stream("libx264", rate=fps, options=options)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        sound = container.add_stream("aac", rate=sample_rate, layout="mono", options=_SINGLE_THREAD_BITEXACT)
        sound.bit_rate = 24_000
        _encode_video(container, video, frames)
        _encode_audio(container, sound, audio, sample_rate)


def write_divx_avi(path: Path, frames: Iterable[np.ndarray], size: tuple[int, int], fps: int) -> None:
    """A video-only AVI with MPEG-4 Part 2 video tagged DIVX, like IEMOCAP's dialog/avi/DivX files."""
    with av.open(str(path), mode="w", format="avi", options=_BITEXACT) as container:
        # A fixed quantiser (qmin = qmax) keeps the size small; rate control would pad to a bit rate.
        options = {**_SINGLE_THREAD_BITEXACT, "g": "100", "qmin": "10", "qmax": "10"}
        video = container.add_stream("mpeg4", rate=fps, options=options)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        video.codec_context.codec_tag = "DIVX"
        _encode_video(container, video, frames)


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """A mono 16-bit PCM WAV, the format of IEMOCAP's sentences/wav files."""
    soundfile.write(str(path), audio, sample_rate, subtype="PCM_16", format="WAV")


def _encode_video(
    container: av.container.OutputContainer, stream: av.VideoStream, frames: Iterable[np.ndarray]
) -> None:
    for index, image in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts = index
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def _encode_audio(
    container: av.container.OutputContainer, stream: av.AudioStream, audio: np.ndarray, sample_rate: int
) -> None:
    """The whole utterance as one frame; PyAV cuts it into the encoder's frame size."""
    samples = np.asarray(audio, np.float32)[np.newaxis, :]
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = 0
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
