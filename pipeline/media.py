"""Cheap checks of media files with PyAV (which bundles FFmpeg; no system ffmpeg is needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av


@dataclass(frozen=True)
class MediaProbe:
    readable: bool
    has_audio: bool
    has_video: bool
    duration_s: float | None
    error: str | None = None


def probe_media(path: Path) -> MediaProbe:
    """Open the container and read its stream headers (and one packet), never decoding the whole file.

    Returns readable=False with the decoder's message for a zero-byte, truncated or non-media file.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        return MediaProbe(False, False, False, None, "empty file")
    try:
        with av.open(str(path), mode="r") as container:
            has_audio = any(s.type == "audio" for s in container.streams)
            has_video = any(s.type == "video" for s in container.streams)
            duration = container.duration / 1_000_000 if container.duration else None
            if duration is None:
                stream = next(iter(container.streams), None)
                if stream is not None and stream.duration and stream.time_base:
                    duration = float(stream.duration * stream.time_base)
            # A container whose header parses but whose data is gone has no packet to read.
            packet = next((p for p in container.demux() if p.size), None)
            if packet is None:
                return MediaProbe(False, has_audio, has_video, duration, "no media data")
    except (av.error.FFmpegError, OSError, StopIteration, UnicodeDecodeError) as exc:
        return MediaProbe(False, False, False, None, f"{type(exc).__name__}: {exc}".strip())
    return MediaProbe(True, has_audio, has_video, duration, None)
