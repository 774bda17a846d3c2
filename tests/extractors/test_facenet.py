"""The facenet extractor: frame sampling, speaker half, speaker rule, no-face / broken media, weights, determinism."""

from __future__ import annotations

import math
import urllib.error
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import skimage.data
import torch
from torch.utils.data import DataLoader

from extractors.base import extractor_for, get_extractor, weights_sha256
from extractors.face import build_mtcnn, choose_face, sample_times
from extractors.facenet import EMBEDDING_DIM, FaceNetConfig, FaceNetExtractor, load_facenet
from pipeline.demo.tiny_models import build_random_facenet
from pipeline.core.errors import PipelineError
from pipeline.formats.manifest import read_manifest

CPU = torch.device("cpu")
# where MTCNN finds the astronaut's face in the 512x512 photo (pipeline/demo/signals.py)
ASTRONAUT_FACE = (181, 62, 268, 172)  # x1, y1, x2, y2


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return build_random_facenet(tmp_path_factory.mktemp("facenet") / "facenet.safetensors")


@pytest.fixture(scope="module")
def meld(prepared_demo, demo_corpus) -> tuple[Path, dict[str, dict]]:
    root, _ = demo_corpus
    return root / "MELD.Raw", {r["utterance_id"]: r for r in read_manifest(prepared_demo["meld"])}


@pytest.fixture(scope="module")
def iemocap(prepared_demo, demo_corpus) -> tuple[Path, dict[str, dict]]:
    root, _ = demo_corpus
    return root / "IEMOCAP_full_release", {r["utterance_id"]: r for r in read_manifest(prepared_demo["iemocap"])}


@pytest.fixture(scope="module")
def extractor(weights, meld) -> FaceNetExtractor:
    return FaceNetExtractor(FaceNetConfig(weights=str(weights)), meld[0], CPU)


def _face_rows(rows: dict[str, dict], n: int) -> list[dict]:
    """The n shortest test clips with video (fewest frames: cheap to encode), in a fixed order."""
    clips = [r for r in rows.values() if r["has_video"] and r["split"] == "test"]
    return sorted(clips, key=lambda r: (r["video_end_s"], r["utterance_id"]))[:n]


def _astronaut_face(height: int) -> np.ndarray:
    crop = skimage.data.astronaut()[30:210, 150:300]
    return cv2.resize(crop, (round(crop.shape[1] * height / crop.shape[0]), height), interpolation=cv2.INTER_AREA)


def _pasted_face(top: int, left: int, height: int) -> tuple[float, float, float, float]:
    """Where the face lies in a `_astronaut_face(height)` patch pasted at (top, left)."""
    scale = height / 180
    x1, y1, x2, y2 = ASTRONAUT_FACE
    return (left + (x1 - 150) * scale, top + (y1 - 30) * scale, left + (x2 - 150) * scale, top + (y2 - 30) * scale)


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_registered_and_configured(extractor, weights):
    assert get_extractor("facenet") is FaceNetExtractor
    assert extractor_for("face") is FaceNetExtractor
    assert extractor.model_id == str(weights)
    assert extractor.model_sha256 == weights_sha256(weights)
    assert FaceNetConfig().batch_size == 4
    assert extractor.size_hint({"video_start_s": 2.0, "video_end_s": 3.5}) == pytest.approx(1.5)
    assert extractor.size_hint({"video_start_s": 0.0, "video_end_s": None, "start_s": 10.0, "end_s": 12.0}) == 2.0
    for bad in ({"fps": 0}, {"max_frames": 0}, {"min_face_prob": 1.5}):
        with pytest.raises(ValueError):
            FaceNetConfig(**bad)


def test_mtcnn_finds_the_astronaut_face():
    boxes, probs = build_mtcnn(CPU).detect(skimage.data.astronaut())
    confident = [(box, p) for box, p in zip(boxes, probs) if p > 0.9]
    assert len(confident) == 1
    box, _ = confident[0]
    assert _iou(box, ASTRONAUT_FACE) > 0.8


def test_choose_face_rule():
    frame_w, frame_h = 640, 480
    big_central = [220, 140, 420, 340]
    small_corner = [10, 10, 60, 60]
    assert choose_face(np.array([small_corner, big_central]), np.array([0.999, 0.95]), frame_w, frame_h) == 1
    # equal size: the central one, whatever the probabilities
    edge = [500, 0, 640, 140]
    central = [250, 170, 390, 310]
    assert choose_face(np.array([edge, central]), np.array([0.9999, 0.91]), frame_w, frame_h) == 1
    # identical boxes: the more probable one
    assert choose_face(np.array([central, central]), np.array([0.92, 0.97]), frame_w, frame_h) == 1
    assert choose_face(np.zeros((0, 4)), np.zeros(0), frame_w, frame_h) is None


def test_speaker_rule_on_frames_with_two_faces(extractor, monkeypatch):
    """Pasted astronaut faces: large central + small corner, then two equal faces, central + edge."""
    big, small, medium = _astronaut_face(220), _astronaut_face(110), _astronaut_face(150)
    frames = np.full((2, 480, 640, 3), 120, np.uint8)
    frames[0, 130:350, 250 : 250 + big.shape[1]] = big
    frames[0, 20:130, 20 : 20 + small.shape[1]] = small
    frames[1, 165:315, 258 : 258 + medium.shape[1]] = medium
    frames[1, 10:160, 510 : 510 + medium.shape[1]] = medium
    _, probs = extractor.mtcnn.detect(frames)
    assert [int(np.sum(np.asarray(p, float) > 0.9)) for p in probs] == [2, 2]  # the rule really had to choose
    chosen = extractor.speaker_boxes(frames)
    assert _iou(chosen[0], _pasted_face(130, 250, 220)) > 0.7
    assert _iou(chosen[1], _pasted_face(165, 258, 150)) > 0.7
    # faces below min_face_prob do not count
    top = max(float(np.max(np.asarray(p, float))) for p in probs)
    monkeypatch.setattr(extractor.config, "min_face_prob", float(np.nextafter(np.float32(top), np.float32(2))))
    assert extractor.speaker_boxes(frames) == [None, None]


def test_sample_times():
    assert sample_times(1.0, 2.0, 2.0, 32) == pytest.approx([1.25, 1.75])
    assert sample_times(3.0, 3.3, 2.0, 32) == pytest.approx([3.15])  # short span: one frame, its centre
    capped = sample_times(0.0, 100.0, 2.0, 32)
    assert len(capped) == 32 and capped[0] == pytest.approx(100 / 64) and capped[-1] == pytest.approx(100 - 100 / 64)
    assert sample_times(0.0, 1.2, 2.0, 32) == pytest.approx([0.2, 0.6, 1.0])  # ceil(2.4) = 3


def test_decoder_timestamps_and_frames(extractor, meld, iemocap):
    root, rows = meld
    row = _face_rows(rows, 100)[-1]  # the longest test clip: 3 timestamps
    assert row["video_end_s"] > 1.0
    decoded = extractor.decoder()(row)
    targets = sample_times(0.0, row["video_end_s"], 2.0, 32)
    expected = [math.floor(t * 10 + 1e-6) / 10 for t in targets]  # the demo's clips run at 10 fps
    assert decoded.missing is None
    assert decoded.data["times"] == pytest.approx(expected)
    assert decoded.data["frames"].shape == (len(expected), 240, 320, 3)
    assert decoded.data["frames"].dtype == np.uint8

    # a turn in the middle of an IEMOCAP dialogue: reached by seeking
    iemocap_root, iemocap_rows = iemocap
    turn = max(iemocap_rows.values(), key=lambda r: r["video_start_s"])
    decoder = extractor.decoder()
    decoder.raw_root = iemocap_root
    decoded = decoder(turn)
    targets = sample_times(turn["video_start_s"], turn["video_end_s"], 2.0, 32)
    assert turn["video_start_s"] > 10
    assert decoded.data["times"] == pytest.approx([math.floor(t * 10 + 1e-6) / 10 for t in targets])


def test_max_frames_and_downscale(weights, meld):
    root, rows = meld
    row = _face_rows(rows, 1)[0]
    ex = FaceNetExtractor(FaceNetConfig(weights=str(weights), fps=30.0, max_frames=4, max_side=160), root, CPU)
    decoded = ex.decoder()(row)
    assert decoded.data["frames"].shape == (4, 120, 160, 3)
    assert decoded.data["scale"] == pytest.approx(0.5)
    assert len(set(decoded.data["times"])) == 4


@pytest.mark.parametrize("letter", ["F", "M"])
def test_iemocap_speaker_half(extractor, iemocap, letter):
    """In a Ses0xF dialogue F turns keep the left half, in a Ses0xM dialogue M turns do (the real
    release's rule); the other actor's turns keep the right half, and the speaker's face is found there."""
    root, rows = iemocap
    decoder = extractor.decoder()
    decoder.raw_root = root
    dialogue_rows = [r for r in rows.values() if r["dialogue_id"][5] == letter]
    by_side = {side: next(r for r in dialogue_rows if r["video_region"] == side) for side in ("left", "right")}
    other = {"F": "M", "M": "F"}[letter]
    assert by_side["left"]["utterance_id"][-4] == letter and by_side["right"]["utterance_id"][-4] == other
    for side, row in by_side.items():
        full = decoder({**row, "video_region": "full"}).data["frames"]
        half = decoder(row).data["frames"]
        assert full.shape[1:] == (180, 480, 3) and half.shape[1:] == (180, 240, 3)
        expected = full[:, :, :240] if side == "left" else full[:, :, 240:]
        assert np.array_equal(half, expected)
        boxes = extractor.speaker_boxes(half)
        assert all(box is not None for box in boxes)
        # the face sits in the middle of its half (the demo centres it), not at the frame's seam
        assert all(60 < (box[0] + box[2]) / 2 < 180 for box in boxes)


def test_no_face_clip_is_missing(extractor, meld, demo_corpus):
    _, truth = demo_corpus
    planted = truth["quirks"]["meld"]["no_face_clip"][0]
    row = meld[1][f"{planted['split']}_{planted['key']}"]
    decoded = extractor.decoder()(row)
    assert decoded.missing is None and len(decoded.data["frames"]) >= 1
    face_row = _face_rows(meld[1], 1)[0]
    with torch.inference_mode():
        encoded = {e.utterance_id: e for e in extractor.encode([decoded, extractor.decoder()(face_row)])}
    assert encoded[row["utterance_id"]].feature is None
    assert encoded[row["utterance_id"]].missing == "no_face"
    assert encoded[face_row["utterance_id"]].feature is not None


def _audio_only_mp4(path: Path) -> None:
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def test_broken_media_is_missing_not_an_exception(extractor, meld, tmp_path):
    root, rows = meld
    good = _face_rows(rows, 1)[0]
    clip = (root / good["video_path"]).read_bytes()
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "truncated.mp4").write_bytes(clip[: len(clip) * 2 // 5])
    (tmp_path / "garbage.mp4").write_bytes(b"not a video at all" * 100)
    _audio_only_mp4(tmp_path / "audio_only.mp4")
    (tmp_path / "good.mp4").write_bytes(clip)
    decoder = extractor.decoder()
    decoder.raw_root = tmp_path
    cases = {
        "empty.mp4": "empty_video_file",
        "truncated.mp4": "unreadable_video",
        "garbage.mp4": "unreadable_video",
        "audio_only.mp4": "no_video_stream",
        "absent.mp4": "video_file_not_found",
    }
    for name, reason in cases.items():
        assert decoder({**good, "video_path": name}).missing == reason, name
    assert decoder({**good, "video_path": "good.mp4", "has_video": False}).missing == "no_video"
    assert decoder({**good, "video_path": None}).missing == "no_video"
    late = decoder({**good, "video_path": "good.mp4", "video_start_s": 50.0, "video_end_s": 51.0})
    assert late.missing == "span_outside_video"
    past_end = decoder({**good, "video_path": "good.mp4", "video_start_s": 0.0, "video_end_s": 10.0})
    assert past_end.missing is None and past_end.flags == ["span_past_video_end"]


def test_missing_weights_file_is_one_actionable_line(tmp_path, meld):
    with pytest.raises(PipelineError) as info:
        FaceNetExtractor(FaceNetConfig(weights=str(tmp_path / "nope.safetensors")), meld[0], CPU)
    message = str(info.value)
    assert "\n" not in message
    assert "nope.safetensors" in message and "extract.face.weights" in message and "internet" in message
    assert "pretrained='vggface2'" in message
    with pytest.raises(PipelineError, match="folder"):
        FaceNetExtractor(FaceNetConfig(weights=str(tmp_path)), meld[0], CPU)


def test_vggface2_offline_is_one_actionable_line(tmp_path, meld, monkeypatch):
    from facenet_pytorch.models.utils import download

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached copy
    monkeypatch.setattr(download, "download_url_to_file", offline)
    with pytest.raises(PipelineError) as info:
        FaceNetExtractor(FaceNetConfig(weights="vggface2"), meld[0], CPU)
    message = str(info.value)
    assert "\n" not in message
    assert "could not be downloaded" in message and "extract.face.weights" in message


def test_state_dict_with_logits_keys_loads(weights, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(weights))
    with_head = {**state, "logits.weight": torch.randn(10, 512), "logits.bias": torch.zeros(10)}
    torch.save(with_head, tmp_path / "vggface2-like.pt")
    loaded = load_facenet(tmp_path / "vggface2-like.pt").state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    del state["last_bn.running_mean"]
    torch.save(state, tmp_path / "incomplete.pt")
    with pytest.raises(PipelineError, match="do not fit InceptionResnetV1"):
        load_facenet(tmp_path / "incomplete.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(PipelineError, match="could not be read"):
        load_facenet(tmp_path / "junk.pt")


def test_features_do_not_depend_on_batch_or_workers(extractor, meld):
    rows = _face_rows(meld[1], 3)
    direct = [extractor.decoder()(r) for r in rows]
    loader = DataLoader(rows, batch_size=2, num_workers=2, collate_fn=lambda b: [extractor.decoder()(r) for r in b])
    via_workers = [d for batch in loader for d in batch]
    for a, b in zip(direct, via_workers):
        assert np.array_equal(a.data["frames"], b.data["frames"])
    with torch.inference_mode():
        together = {e.utterance_id: e.feature for e in extractor.encode(direct)}
        apart = {e.utterance_id: e.feature for e in extractor.encode([via_workers[2], via_workers[0]])}
        apart.update({e.utterance_id: e.feature for e in extractor.encode([via_workers[1]])})
    assert set(together) == set(apart) == {r["utterance_id"] for r in rows}
    for uid, feature in together.items():
        assert feature.shape == (EMBEDDING_DIM,) and feature.dtype == torch.float32
        assert torch.equal(feature, apart[uid]), uid
    # the mean of unit vectors of one (tinted) face: close to unit norm, and different per utterance
    assert all(0.5 < float(f.norm()) <= 1.0 + 1e-5 for f in together.values())
    first, second = (together[r["utterance_id"]] for r in rows[:2])
    assert not torch.equal(first, second)


def test_with_frame_count_appends_the_face_fraction(weights, meld, extractor):
    root, rows = meld
    counted = FaceNetExtractor(FaceNetConfig(weights=str(weights), with_frame_count=True), root, CPU)
    row = _face_rows(rows, 1)[0]
    decoded = counted.decoder()(row)
    frames = decoded.data["frames"]
    blank = frames.copy()
    blank[0] = frames[0, 0, 0]  # one frame painted with its background colour: no face there
    decoded.data["frames"] = blank
    with torch.inference_mode():
        (with_count,) = counted.encode([decoded])
        (plain,) = extractor.encode([decoded])
    n = len(frames)
    assert with_count.feature.shape == (EMBEDDING_DIM + 1,)
    assert float(with_count.feature[-1]) == pytest.approx((n - 1) / n)
    assert torch.equal(with_count.feature[:EMBEDDING_DIM], plain.feature)
