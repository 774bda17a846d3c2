"""Cheap checks of media files with PyAV (which bundles FFmpeg; no system ffmpeg is needed).

`prepare` probes every clip once so the manifest can say which modalities are really there:
it opens the container and decodes the first frame of each audio and video stream, which
catches empty, truncated and garbage files without decoding whole clips.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av

MAX_PACKETS = 500  # packets to read while looking for the first decodable frame of each stream


@dataclass(frozen=True)
class MediaProbe:
    readable: bool  # the container opens and at least one stream decodes
    has_audio: bool  # an audio stream exists and its first frame decodes
    has_video: bool
    duration_s: float | None
    error: str | None = None  # why something is missing, for the manifest's flags


def _duration(container: av.container.InputContainer) -> float | None:
    if container.duration:
        return container.duration / 1_000_000
    for stream in container.streams:
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
    return None


def probe_media(path: Path) -> MediaProbe:
    """What a media file really holds: readable?, decodable audio?, decodable video?, duration."""
    path = Path(path)
    if path.stat().st_size == 0:
        return MediaProbe(False, False, False, None, "empty file")
    try:
        with av.open(str(path), mode="r") as container:
            duration = _duration(container)
            pending = {s.index: s.type for s in container.streams if s.type in ("audio", "video")}
            if not pending:
                return MediaProbe(False, False, False, duration, "no audio or video stream")
            decoded: set[str] = set()
            for n, packet in enumerate(container.demux(*[container.streams[i] for i in pending])):
                if n >= MAX_PACKETS or not pending:
                    break
                if packet.stream.index not in pending:
                    continue
                try:
                    if packet.decode():
                        decoded.add(pending.pop(packet.stream.index))
                except av.error.FFmpegError:
                    continue  # a damaged packet; keep looking for a decodable one
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)  # without the file name: the row says which file
        return MediaProbe(False, False, False, None, f"{type(exc).__name__}: {reason}")
    missing = sorted(set(pending.values()))
    error = f"no decodable {' or '.join(missing)} frame" if missing else None
    return MediaProbe(bool(decoded), "audio" in decoded, "video" in decoded, duration, error)
