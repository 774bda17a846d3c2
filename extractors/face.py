"""FaceNet face features: MTCNN finds the speaker's face in frames sampled over the utterance,
InceptionResnetV1 embeds each 160x160 face crop, and the utterance's feature is their mean.

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
    box (plus ``margin``) to 160x160 with facenet's fixed standardisation, and InceptionResnetV1
    embeds every crop of the batch. MTCNN crops by the box; there is no landmark warp.

Speaker rule (frames with several faces, e.g. MELD's group shots): per frame, the face that
maximises ``area_fraction * (1 - d / d_max)`` is the speaker, where ``area_fraction`` is the box
area over the frame (region) area, ``d`` the distance from box centre to frame centre and
``d_max`` half the frame diagonal; ties go to the higher probability, then the leftmost box. MELD
says nothing about where the speaker is, and its shot / reverse-shot editing usually frames the
speaker large and central; the rule fails on over-the-shoulder shots of a listener. There is no
tracking across frames: sampled frames lie 1/fps s apart, where identity links would be guesses.

Feature: float32 [512], the mean of the frames' L2-normalised embeddings (not renormalised: a
norm well below 1 says the face changed a lot). ``with_frame_count: true`` appends one value, the
fraction of sampled frames in which a face was used (in [0, 1], comparable across utterance
lengths), giving [513].

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
utterance's frames; InceptionResnetV1 runs on exactly ``crops_per_forward`` crops per call (the
last call zero-padded), because kernels choose different algorithms, hence different float
rounding, for different batch sizes (measured on CPU: 3 crops alone differ from the same crops in a
batch of 8 in the 7th digit; GPU kernels do the same). Features are therefore bitwise identical
whatever else shares the batch and however many workers decode.

Weights: ``weights`` is a local InceptionResnetV1 state dict (``.safetensors``, or a torch
``.pt``/``.pth``/``.bin`` file); ``logits.*`` keys (VGGFace2's 8631-class head) are dropped before a
strict load. ``weights: vggface2`` lets facenet-pytorch download the VGGFace2 file into the torch
cache (``$TORCH_HOME/checkpoints``), which works only with internet access.
"""

from __future__ import annotations

import math
import socket
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

from facenet_pytorch import MTCNN, InceptionResnetV1  # noqa: E402
from facenet_pytorch.models.inception_resnet_v1 import get_torch_home  # noqa: E402
from facenet_pytorch.models.mtcnn import fixed_image_standardization  # noqa: E402
from facenet_pytorch.models.utils.detect_face import extract_face  # noqa: E402

from extractors.base import (  # noqa: E402
    Decoded,
    Decoder,
    Encoded,
    Extractor,
    ExtractorConfig,
    autocast,
    register_extractor,
    weights_sha256,
)
from pipeline.core.errors import PipelineError, one_line  # noqa: E402
from pipeline.core.params import ParamError  # noqa: E402

EMBEDDING_DIM = 512
CROP_SIZE = 160  # InceptionResnetV1's input size
VGGFACE2 = "vggface2"
VGGFACE2_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"
PARAM_KEY = "extract.face.weights"
REGIONS = ("full", "left", "right")
# manifest flags that say why a row has no video, most specific first (see pipeline/corpora)
NO_VIDEO_FLAGS = ("missing_clip", "unreadable_clip", "clip_without_video", "missing_video", "unreadable_video")
_TIME_EPS = 1e-6  # seconds; a frame starting within this of a timestamp is on screen at it
_DOWNLOAD_TIMEOUT_S = 60.0


def _offline_hint(reason: str) -> str:
    """The one-line error for weights that cannot be had here, with the fix."""
    return (
        f"face model weights: {reason}. The VGGFace2 InceptionResnetV1 weights download only on a machine "
        "with internet: there run `python -c \"import torch; from facenet_pytorch import InceptionResnetV1; "
        "torch.save(InceptionResnetV1(pretrained='vggface2').state_dict(), 'facenet-vggface2.pt')\"`, "
        f"copy facenet-vggface2.pt here and set {PARAM_KEY} to its path"
    )


@dataclass
class FaceConfig(ExtractorConfig):
    """The face extractor's settings (`extract.face` in params.yaml)."""

    weights: str = VGGFACE2  # state-dict file (.safetensors / .pt), or "vggface2" = download (internet)
    fps: float = 2.0  # frames sampled per second of the utterance's span
    max_frames: int = 32  # cap per utterance, spread evenly over the span
    max_side: int = 640  # frames (or their speaker half) are downscaled to this longer side
    min_face_prob: float = 0.9  # MTCNN detections below this probability are ignored
    min_face_size: int = 20  # MTCNN's smallest face, in px of the downscaled frame
    margin: int = 0  # extra px around the box, in the 160 px crop (facenet-pytorch's convention)
    with_frame_count: bool = False  # append the fraction of sampled frames with a face (dim 513)
    crops_per_forward: int = 8  # InceptionResnetV1 batch, fixed (zero-padded) for bitwise determinism
    batch_size: int = 4  # utterances per encode() call

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.weights.strip():
            raise ParamError("weights", f"must be a file path or {VGGFACE2!r}, got {self.weights!r}")
        if not self.fps > 0:
            raise ParamError("fps", f"must be positive, got {self.fps}")
        for name in ("max_frames", "max_side", "min_face_size", "crops_per_forward"):
            if getattr(self, name) < 1:
                raise ParamError(name, f"must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.min_face_prob <= 1.0:
            raise ParamError("min_face_prob", f"must be in [0, 1], got {self.min_face_prob}")
        if not 0 <= self.margin < CROP_SIZE:
            raise ParamError("margin", f"must be in [0, {CROP_SIZE}), got {self.margin}")


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
        image_size=CROP_SIZE, margin=0, min_face_size=min_face_size, select_largest=False, keep_all=True,
        post_process=True, device=device,
    ).eval()


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """An InceptionResnetV1 state dict from .safetensors or a torch file, without `logits.*` keys."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # many formats, many failure types: all mean "not a readable state dict"
        raise PipelineError(f"face model weights {str(path)!r} could not be read: {one_line(exc)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PipelineError(f"face model weights {str(path)!r} are not a state dict (name -> tensor)")
    return {k: v for k, v in state.items() if not k.startswith("logits.")}


def load_facenet(path: Path) -> InceptionResnetV1:
    """InceptionResnetV1 (embedding head only, eval mode) with the file's weights, loaded strictly."""
    model = InceptionResnetV1(pretrained=None, classify=False)
    state = load_state_dict(path)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # right names, wrong shapes
        raise PipelineError(f"face model weights {str(path)!r} do not fit InceptionResnetV1: {one_line(exc)}") from None
    if result.missing_keys or result.unexpected_keys:
        raise PipelineError(
            f"face model weights {str(path)!r} do not fit InceptionResnetV1: missing {result.missing_keys[:3]} "
            f"({len(result.missing_keys)}), unexpected {result.unexpected_keys[:3]} ({len(result.unexpected_keys)})"
        )
    return model.eval()


def resolve_weights(setting: str) -> Path:
    """The local weights file for `setting`; "vggface2" downloads into the torch cache if it is not there."""
    if setting == VGGFACE2:
        cached = Path(get_torch_home()) / "checkpoints" / Path(VGGFACE2_URL).name
        if not cached.is_file():
            _download_vggface2(cached)
        return cached
    path = Path(setting).expanduser()
    if path.is_dir():
        raise PipelineError(f"face model weights {setting!r} is a folder; give the weights file ({PARAM_KEY})")
    if not path.is_file():
        raise PipelineError(_offline_hint(f"file {setting!r} not found"))
    return path


def _download_vggface2(cached: Path) -> None:
    from facenet_pytorch.models.utils import download

    cached.parent.mkdir(parents=True, exist_ok=True)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)  # facenet's urlopen has no timeout of its own
    try:
        download.download_url_to_file(VGGFACE2_URL, str(cached), progress=False)
    except Exception as exc:  # URLError, HTTPError, timeouts, a full disk...
        raise PipelineError(_offline_hint(f"'vggface2' could not be downloaded ({one_line(exc)})")) from None
    finally:
        socket.setdefaulttimeout(previous)


@register_extractor
class FaceNetExtractor(Extractor):
    """MTCNN + InceptionResnetV1 (FaceNet) face embeddings, averaged over the utterance's frames."""

    name = "facenet"
    modality = "face"
    # 2: IEMOCAP's speaker half follows the release's rule (the session letter's actor on the left);
    # stores made under version 1 (F left everywhere) took half the corpus's faces from the listener
    version = "2"
    config_class = FaceConfig

    def __init__(self, config: FaceConfig, raw_root: Path, device: torch.device) -> None:
        super().__init__(config, raw_root, device)
        self.config: FaceConfig = config
        self.weights_path = resolve_weights(config.weights)
        self._sha256 = weights_sha256(self.weights_path)
        self.facenet = load_facenet(self.weights_path).to(device)
        self.mtcnn = build_mtcnn(device, config.min_face_size)

    @property
    def model_id(self) -> str:
        return self.config.weights

    @property
    def model_sha256(self) -> str:
        return self._sha256

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
        """The standardised [k, 3, 160, 160] speaker crops of an utterance's frames, and the frame count."""
        crops = []
        for frame, box in zip(frames, self.speaker_boxes(frames)):
            if box is None:
                continue
            x1, y1 = max(box[0], 0), max(box[1], 0)
            x2, y2 = min(box[2], frame.shape[1]), min(box[3], frame.shape[0])
            if x2 - x1 < 2 or y2 - y1 < 2:  # a box (nearly) outside the frame
                continue
            crops.append(fixed_image_standardization(extract_face(frame, box, CROP_SIZE, self.config.margin)))
        if not crops:
            return torch.empty(0, 3, CROP_SIZE, CROP_SIZE), len(frames)
        return torch.stack(crops), len(frames)

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        """[N, 512] float32 embeddings, computed crops_per_forward at a time (last call zero-padded)."""
        chunk = self.config.crops_per_forward
        out = []
        for i in range(0, len(crops), chunk):
            part = crops[i : i + chunk].to(self.device)
            n = len(part)
            if n < chunk:
                part = torch.cat([part, part.new_zeros(chunk - n, *part.shape[1:])])
            with autocast(self.device):
                out.append(self.facenet(part)[:n].float())
        return torch.cat(out) if out else torch.empty(0, EMBEDDING_DIM, device=self.device)

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
