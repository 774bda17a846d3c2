"""Face crops of the speaker, shared by the face extractors (`facenet`, `hf_face`): MTCNN finds the
speaker's face in frames sampled over the utterance, and each extractor's embedder turns the crops
into one feature per utterance (the mean of the crops' embeddings).

Decoder (DataLoader worker, CPU, no model)
    PyAV (bundled FFmpeg) opens ``video_path``, seeks to ``video_start_s`` and samples
    ``n = min(max_frames, max(1, ceil(duration * fps)))`` timestamps at the centres of n equal
    slices of the span ``video_start_s..video_end_s`` (``None`` = start / end of the clip); each
    timestamp takes the frame on screen then (the last frame starting at or before it), a frame
    picked twice is kept once. Only the speaker's part of the frame is kept (``video_region``:
    IEMOCAP shows the actor of the dialogue's session letter on the left half and the other on the
    right, see ``speaker_frame_side`` in pipeline/corpora/iemocap.py; MELD uses the full frame), downscaled with INTER_AREA so its
    longer side is at most ``max_side``. At most ``max_frames`` uint8 frames per utterance cross
    the process boundary, so memory is bounded whatever the clip length.

encode (main process, on the device)
    MTCNN (P/R/O-net weights ship in the facenet-pytorch wheel) runs on the frames of one
    utterance in one call (they share a size), faces with probability < ``min_face_prob`` are
    dropped, the speaker rule below picks at most one face per frame, ``extract_face`` cuts the
    box (plus ``margin``) to the embedder's square input size, and the embedder embeds every crop
    of the batch. MTCNN crops by the box; there is no landmark warp.

Speaker rule (frames with several faces, e.g. MELD's group shots): per frame, the face that
maximises ``area_fraction * (1 - d / d_max)`` is the speaker, where ``area_fraction`` is the box
area over the frame (region) area, ``d`` the distance from box centre to frame centre and
``d_max`` half the frame diagonal; ties go to the higher probability, then the leftmost box. MELD
says nothing about where the speaker is, and its shot / reverse-shot editing usually frames the
speaker large and central; the rule fails on over-the-shoulder shots of a listener. There is no
tracking across frames: sampled frames lie 1/fps s apart, where identity links would be guesses.

Feature: float32 [D], the mean of the frames' embeddings (FaceNet's are L2-normalised: a mean norm
well below 1 says the face changed a lot). ``with_frame_count: true`` appends one value, the
fraction of sampled frames in which a face was used (in [0, 1], comparable across utterance
lengths), giving [D + 1].

Missing (no tensor; the store's availability mask is False, which is what the trainer masks on):
``no_video`` (manifest says has_video False or no path; the manifest's own flag, e.g.
``unreadable_clip`` or ``clip_without_video``, when it gives one), ``video_file_not_found``,
``empty_video_file``, ``unreadable_video`` (container does not open: truncated, garbage),
``no_video_stream`` (e.g. audio-only mp4), ``no_decodable_frame``, ``span_outside_video`` (the
span starts after the last frame), and ``no_face`` (no face >= min_face_prob in any sampled
frame). ``no_face`` is missing rather than a stored zero vector so that the availability mask, not
a magic value, tells the trainer there is no face; the trainer fills the zeros. Flag (tensor kept):
``span_past_video_end`` (some timestamps fell after the last frame and were dropped).

Where MTCNN runs: in encode(), on the device. Measured on the 2-core CPU machine, 40 demo MELD
utterances (105 frames at fps 2, 2 decode workers, 4 utterances per batch), six runs each: MTCNN
in encode() took 6.6-8.6 s, MTCNN in the decode workers (one torch thread each, crops sent to the
main process) 7.6-8.6 s. Moving it gains nothing because both cores are busy either way (per
frame, MTCNN costs 35 ms on one thread and 26 ms on two; InceptionResnetV1 27 ms per crop on two).
On a GPU machine the workers would run MTCNN on CPU while the GPU idles, and the Decoder
interface keeps models out of workers anyway.

Determinism: the frames an utterance gets depend only on its row; MTCNN sees exactly that
utterance's frames; each embedder runs a fixed number of crops per call (see its module), so
features are bitwise identical whatever else shares the batch and however many workers decode.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import torch

from pipeline.core.torchvision_compat import ensure_torchvision_ops

ensure_torchvision_ops()  # facenet_pytorch imports torchvision, whose NMS a CPU-only torch lacks

from facenet_pytorch import MTCNN  # noqa: E402
from facenet_pytorch.models.utils.detect_face import extract_face  # noqa: E402

from extractors.base import Decoded, Decoder, Encoded, Extractor, ExtractorConfig  # noqa: E402
from pipeline.core.errors import PipelineError  # noqa: E402
from pipeline.core.params import ParamError  # noqa: E402

MTCNN_DETECT_SIZE = 160  # the crop size MTCNN is built with (detection only; crops are cut per embedder)
REGIONS = ("full", "left", "right")
# manifest flags that say why a row has no video, most specific first (see pipeline/corpora)
NO_VIDEO_FLAGS = ("missing_clip", "unreadable_clip", "clip_without_video", "missing_video", "unreadable_video")
_TIME_EPS = 1e-6  # seconds; a frame starting within this of a timestamp is on screen at it


@dataclass
class FaceCropConfig(ExtractorConfig):
    """The settings every face extractor shares: which frames, which face, how it is cut."""

    fps: float = 2.0  # frames sampled per second of the utterance's span
    max_frames: int = 32  # cap per utterance, spread evenly over the span
    max_side: int = 640  # frames (or their speaker half) are downscaled to this longer side
    min_face_prob: float = 0.9  # MTCNN detections below this probability are ignored
    min_face_size: int = 20  # MTCNN's smallest face, in px of the downscaled frame
    margin: int = 0  # extra px around the box, in the embedder's crop (facenet-pytorch's convention)
    with_frame_count: bool = False  # append the fraction of sampled frames with a face (dim D + 1)
    batch_size: int = 4  # utterances per encode() call

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.fps > 0:
            raise ParamError("fps", f"must be positive, got {self.fps}")
        for name in ("max_frames", "max_side", "min_face_size"):
            if getattr(self, name) < 1:
                raise ParamError(name, f"must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.min_face_prob <= 1.0:
            raise ParamError("min_face_prob", f"must be in [0, 1], got {self.min_face_prob}")
        if self.margin < 0:
            raise ParamError("margin", f"must be 0 or more, got {self.margin}")


# --------------------------------------------------------------------------------------------
# Frame sampling and decoding (worker side)


def sample_times(start_s: float, end_s: float, fps: float, max_frames: int) -> list[float]:
    """Timestamps at the centres of n equal slices of [start_s, end_s], n = min(max_frames, ceil(d * fps)).

    At least one timestamp, even for an empty span (its start).
    """
    duration = max(0.0, end_s - start_s)
    n = max(1, min(max_frames, math.ceil(duration * fps - 1e-9)))
    return [start_s + (i + 0.5) * duration / n for i in range(n)]


def crop_region(frame: np.ndarray, region: str) -> np.ndarray:
    """The part of an [H, W, 3] frame that shows the speaker: the full frame, or its left / right half."""
    if region == "left":
        return frame[:, : frame.shape[1] // 2]
    if region == "right":
        return frame[:, frame.shape[1] // 2 :]
    return frame


def fit_max_side(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale (INTER_AREA) so the longer side is at most max_side; returns the image and its scale."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale >= 1.0:
        return np.ascontiguousarray(image), 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


class _NoFrames(Exception):
    """Decoding found no usable frame; the message is the missing reason."""


def _frames_with_times(container: av.container.InputContainer, stream: av.VideoStream) -> Iterator[tuple[float, Any]]:
    """(seconds since the stream's start, frame) in decode order; damaged packets are skipped."""
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    step = 1.0 / float(stream.average_rate) if stream.average_rate else 0.04
    last = None
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except (av.error.FFmpegError, OSError):  # a damaged tail ends the stream; frames before it count
            return
        try:
            frames = packet.decode()
        except av.error.FFmpegError:  # a damaged packet: skip it
            continue
        for frame in frames:
            if frame.time is not None:
                t = float(frame.time) - start
            else:  # no timestamp: count on from the previous frame
                t = 0.0 if last is None else last + step
            last = t
            yield t, frame


def _stream_duration(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return None


@dataclass(frozen=True)
class _Picked:
    frames: list[Any]  # av.VideoFrame, on screen at the timestamps
    times: list[float]  # their own start times
    dropped: int  # timestamps after the last frame


def _pick_frames(path: Path, start_s: float | None, end_s: float | None, fps: float, max_frames: int) -> _Picked:
    """The frames on screen at the span's timestamps, decoding only as far as the last one.

    A span that starts later than 0 is reached by seeking to the keyframe before it; when that
    seek fails or lands after the first timestamp, the file is decoded again from its start.
    """
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError):
        raise _NoFrames("unreadable_video") from None
    with container:
        if not container.streams.video:
            raise _NoFrames("no_video_stream")
        stream = container.streams.video[0]
        start = max(0.0, start_s or 0.0)
        end = end_s if end_s is not None else _stream_duration(container, stream)
        if end is None:  # unknown length: sample from the start at the configured rate
            end = start + max_frames / fps
        targets = sample_times(start, max(start, end), fps, max_frames)
        step = 1.0 / float(stream.average_rate) if stream.average_rate else 0.04
        if start > 0:
            try:
                offset = int(start / stream.time_base) + (stream.start_time or 0)
                container.seek(offset, stream=stream, backward=True, any_frame=False)
                picked = _assign(_frames_with_times(container, stream), targets, step, after_seek=True)
            except (av.error.FFmpegError, OSError, ValueError):
                picked = None
            if picked is not None:
                return picked
        else:
            return _assign(_frames_with_times(container, stream), targets, step, after_seek=False)
    with av.open(str(path), mode="r") as container:  # the seek did not work: from the start
        stream = container.streams.video[0]
        return _assign(_frames_with_times(container, stream), targets, step, after_seek=False)


def _assign(
    frames: Iterator[tuple[float, Any]], targets: list[float], step: float, after_seek: bool
) -> _Picked | None:
    """Give each timestamp the frame on screen at it (one frame per timestamp at most, duplicates merged).

    A timestamp before the first decoded frame takes that frame when decoding began at the
    stream's start; after a seek, a first frame more than one frame late means the seek
    overshot (or found nothing), and the answer is None.
    """
    chosen: list[tuple[float, Any]] = []
    pending = list(targets)
    previous: tuple[float, Any] | None = None
    for t, frame in frames:
        while pending and t > pending[0] + _TIME_EPS:
            if previous is None:
                if after_seek and t > pending[0] + step:
                    return None
                previous = (t, frame)
            if not chosen or chosen[-1][1] is not previous[1]:
                chosen.append(previous)
            pending.pop(0)
        if not pending:
            break
        previous = (t, frame)
    if previous is None:
        if after_seek:
            return None
        raise _NoFrames("no_decodable_frame")
    dropped = 0
    for target in pending:  # the stream ended: its last frame stays on screen for one frame period
        if target <= previous[0] + step + _TIME_EPS:
            if not chosen or chosen[-1][1] is not previous[1]:
                chosen.append(previous)
        else:
            dropped += 1
    if not chosen:
        raise _NoFrames("span_outside_video")
    return _Picked([f for _, f in chosen], [t for t, _ in chosen], dropped)


class FaceDecoder(Decoder):
    """Manifest row -> the speaker's part of up to max_frames sampled frames, uint8 [n, H, W, 3]."""

    def __init__(self, raw_root: Path, fps: float, max_frames: int, max_side: int) -> None:
        self.raw_root = Path(raw_root)
        self.fps = fps
        self.max_frames = max_frames
        self.max_side = max_side

    def __call__(self, row: dict[str, Any]) -> Decoded:
        uid = row["utterance_id"]
        if not row.get("has_video") or not row.get("video_path"):
            reason = next((f for f in NO_VIDEO_FLAGS if f in (row.get("flags") or [])), "no_video")
            return Decoded(uid, missing=reason)  # the manifest's reason when it gives one
        region = row.get("video_region") or "full"
        if region not in REGIONS:
            raise PipelineError(f"utterance {uid}: video_region {region!r} is not one of {', '.join(REGIONS)}")
        path = self.raw_root / row["video_path"]
        if not path.is_file():
            return Decoded(uid, missing="video_file_not_found")
        if path.stat().st_size == 0:
            return Decoded(uid, missing="empty_video_file")
        try:
            picked = _pick_frames(path, row.get("video_start_s"), row.get("video_end_s"), self.fps, self.max_frames)
            images = [crop_region(frame.to_ndarray(format="rgb24"), region) for frame in picked.frames]
        except _NoFrames as exc:
            return Decoded(uid, missing=str(exc))
        except (av.error.FFmpegError, OSError, ValueError):  # damage discovered while converting frames
            return Decoded(uid, missing="no_decodable_frame")
        fitted = [fit_max_side(image, self.max_side) for image in images]
        size = fitted[0][0].shape[:2]
        frames = [img if img.shape[:2] == size else cv2.resize(img, size[::-1], interpolation=cv2.INTER_AREA)
                  for img, _ in fitted]  # a mid-stream resolution change: one size per utterance
        data = {"frames": np.stack(frames), "times": picked.times, "scale": fitted[0][1]}
        flags = ["span_past_video_end"] if picked.dropped else []
        return Decoded(uid, data=data, flags=flags)


# --------------------------------------------------------------------------------------------
# Face choice and the models (main-process side)


def choose_face(boxes: np.ndarray, probs: np.ndarray, width: int, height: int) -> int | None:
    """Index of the speaker's face among [k, 4] (x1, y1, x2, y2) boxes: max area fraction x centrality."""
    if len(boxes) == 0:
        return None
    boxes = np.asarray(boxes, dtype=np.float64)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2 - width / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2 - height / 2
    centrality = np.clip(1.0 - np.hypot(centre_x, centre_y) / (np.hypot(width, height) / 2), 0.0, None)
    score = area / (width * height) * centrality
    # lexsort: last key is primary -> score desc, then probability desc, then leftmost
    order = np.lexsort((boxes[:, 0], -np.asarray(probs, dtype=np.float64), -score))
    return int(order[0])


def build_mtcnn(device: torch.device, min_face_size: int = 20) -> MTCNN:
    """facenet-pytorch's MTCNN returning every face (our own rule picks the speaker)."""
    return MTCNN(
        image_size=MTCNN_DETECT_SIZE, margin=0, min_face_size=min_face_size, select_largest=False, keep_all=True,
        post_process=True, device=device,
    ).eval()


class FaceCropExtractor(Extractor):
    """A face extractor: the shared MTCNN speaker crops, embedded by the subclass's `embed`."""

    modality = "face"
    config: FaceCropConfig

    def __init__(self, config: FaceCropConfig, raw_root: Path, device: torch.device) -> None:
        super().__init__(config, raw_root, device)
        if not config.margin < self.crop_size:
            raise PipelineError(f"extract.face.margin {config.margin} must be below the crop size {self.crop_size}")
        self.mtcnn = build_mtcnn(device, config.min_face_size)

    @property
    @abstractmethod
    def crop_size(self) -> int:
        """The square input size, in px, the embedder takes its crops at."""

    @abstractmethod
    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        """[k, 3, S, S] float crops (RGB values 0..255, S = crop_size) -> [k, D] float32 embeddings."""

    def size_hint(self, row: dict[str, Any]) -> float:
        """Seconds of the span (frames sampled grow with it); the utterance's times when the clip end is open."""
        for start, end in ((row.get("video_start_s"), row.get("video_end_s")), (row.get("start_s"), row.get("end_s"))):
            if start is not None and end is not None:
                return max(0.0, float(end) - float(start))
        return 0.0

    def decoder(self) -> FaceDecoder:
        return FaceDecoder(self.raw_root, self.config.fps, self.config.max_frames, self.config.max_side)

    def speaker_boxes(self, frames: np.ndarray) -> list[np.ndarray | None]:
        """Per frame of one utterance, the speaker's (x1, y1, x2, y2) box, or None: MTCNN, filter, rule."""
        height, width = frames.shape[1:3]
        if min(height, width) < self.config.min_face_size:
            return [None] * len(frames)  # MTCNN's image pyramid would be empty
        all_boxes, all_probs = self.mtcnn.detect(frames)
        chosen: list[np.ndarray | None] = []
        for boxes, probs in zip(all_boxes, all_probs):
            if boxes is None:
                chosen.append(None)
                continue
            boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            probs = np.asarray(probs, dtype=np.float64).reshape(-1)
            keep = probs >= self.config.min_face_prob
            index = choose_face(boxes[keep], probs[keep], width, height)
            chosen.append(None if index is None else boxes[keep][index])
        return chosen

    def crops(self, frames: np.ndarray) -> tuple[torch.Tensor, int]:
        """The [k, 3, S, S] speaker crops (0..255) of an utterance's frames, and the frame count."""
        size = self.crop_size
        crops = []
        for frame, box in zip(frames, self.speaker_boxes(frames)):
            if box is None:
                continue
            x1, y1 = max(box[0], 0), max(box[1], 0)
            x2, y2 = min(box[2], frame.shape[1]), min(box[3], frame.shape[0])
            if x2 - x1 < 2 or y2 - y1 < 2:  # a box (nearly) outside the frame
                continue
            crops.append(extract_face(frame, box, size, self.config.margin))
        if not crops:
            return torch.empty(0, 3, size, size), len(frames)
        return torch.stack(crops), len(frames)

    def encode(self, batch: list[Decoded]) -> list[Encoded]:
        """Mean embedding per utterance; missing "no_face" when none of its frames has a usable face."""
        per_item = [self.crops(item.data["frames"]) for item in batch]
        counts = [len(c) for c, _ in per_item]
        embeddings = self.embed(torch.cat([c for c, _ in per_item])) if sum(counts) else None
        out: list[Encoded] = []
        offset = 0
        for item, (crops, n_frames), k in zip(batch, per_item, counts):
            if k == 0:
                out.append(Encoded(item.utterance_id, None, missing="no_face", flags=list(item.flags)))
                continue
            feature = embeddings[offset : offset + k].mean(dim=0).cpu()
            offset += k
            if self.config.with_frame_count:
                feature = torch.cat([feature, torch.tensor([k / n_frames], dtype=torch.float32)])
            out.append(Encoded(item.utterance_id, feature, flags=list(item.flags)))
        return out
