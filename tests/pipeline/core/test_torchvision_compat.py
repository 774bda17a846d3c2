"""torchvision_compat: exact fallback NMS, native ops left alone, MTCNN running on CPU-only torch."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.core.torchvision_compat import ensure_torchvision_ops, pure_torch_nms
from tests.helpers import PROJECT_ROOT

THRESHOLDS = [0.0, 0.5, 1.0, 0.3, 0.7]


def brute_force_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Textbook greedy NMS: visit boxes by score (stable), keep one unless it overlaps a kept one.

    Arithmetic stays in the boxes' numpy dtype, as in torchvision's C++ kernel; the IoU is compared
    to the threshold as a Python float (double), as C++ promotes it.
    """
    zero = boxes.dtype.type(0)

    def iou(a: int, b: int) -> float:
        w = max(zero, min(boxes[a, 2], boxes[b, 2]) - max(boxes[a, 0], boxes[b, 0]))
        h = max(zero, min(boxes[a, 3], boxes[b, 3]) - max(boxes[a, 1], boxes[b, 1]))
        inter = w * h
        area_a = (boxes[a, 2] - boxes[a, 0]) * (boxes[a, 3] - boxes[a, 1])
        area_b = (boxes[b, 2] - boxes[b, 0]) * (boxes[b, 3] - boxes[b, 1])
        # zero-area pairs give 0/0 = nan, which is never > threshold
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(inter / (area_a + area_b - inter))

    kept: list[int] = []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        if not any(iou(k, i) > iou_threshold for k in kept):
            kept.append(i)
    return kept


def random_case(rng: np.random.Generator, n: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """Boxes on a coarse grid (so exact ties, identical and zero-area boxes are common) or continuous."""
    if rng.random() < 0.5:
        xy = rng.integers(0, 6, size=(n, 2)).astype(dtype)
        wh = rng.integers(0, 4, size=(n, 2)).astype(dtype)  # 0 -> zero-area box
        scores = rng.integers(0, 4, size=n).astype(dtype)  # many tied scores
    else:
        xy = rng.uniform(0, 50, size=(n, 2)).astype(dtype)
        wh = rng.uniform(0, 30, size=(n, 2)).astype(dtype)
        scores = rng.random(n).astype(dtype)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    if n > 1:
        boxes[-1] = boxes[0]  # an identical pair, with its own score
    return boxes, scores


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fallback_nms_matches_brute_force(dtype: type) -> None:
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.choice([0, 1, 2, 3, 8, 25, 60]))
        boxes, scores = random_case(rng, n, dtype)
        threshold = THRESHOLDS[trial % len(THRESHOLDS)]
        got = pure_torch_nms(torch.from_numpy(boxes).reshape(n, 4), torch.from_numpy(scores), threshold)
        assert got.dtype == torch.int64
        assert got.tolist() == brute_force_nms(boxes, scores, threshold), (boxes, scores, threshold)


def test_fallback_nms_edge_cases() -> None:
    empty = pure_torch_nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.int64 and empty.shape == (0,)

    same = torch.tensor([[0.0, 0.0, 2.0, 2.0]] * 3)
    # tied scores: the first in input order wins, like a stable descending sort
    assert pure_torch_nms(same, torch.tensor([0.5, 0.5, 0.5]), 0.5).tolist() == [0]
    assert pure_torch_nms(same, torch.tensor([0.1, 0.9, 0.9]), 0.5).tolist() == [1]
    # identical boxes have IoU exactly 1, which is not > 1.0
    assert pure_torch_nms(same, torch.tensor([0.1, 0.9, 0.5]), 1.0).tolist() == [1, 2, 0]
    # zero-area boxes: IoU is 0/0, never suppressed, not even at threshold 0
    points = torch.tensor([[1.0, 1.0, 1.0, 1.0]] * 2)
    assert pure_torch_nms(points, torch.tensor([0.2, 0.8]), 0.0).tolist() == [1, 0]
    # touching boxes (IoU 0) survive threshold 0; overlapping ones don't
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0], [0.5, 0.0, 1.5, 1.0]])
    assert pure_torch_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.0).tolist() == [0, 1]


def test_fallback_nms_compares_float32_iou_as_double() -> None:
    """An IoU that rounds onto a float32 threshold still counts as greater, as in torchvision's C++."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]])
    iou = np.float32(81) / np.float32(100)
    threshold = float(iou) - 1e-12
    assert np.float32(threshold) == iou  # a float32 comparison would not suppress
    assert pure_torch_nms(boxes, torch.tensor([0.9, 0.8]), threshold).tolist() == [0]


def test_fallback_nms_rejects_what_the_kernel_rejects() -> None:
    with pytest.raises(RuntimeError, match="2d tensor"):
        pure_torch_nms(torch.zeros(4), torch.zeros(1), 0.5)
    with pytest.raises(RuntimeError, match="same number"):
        pure_torch_nms(torch.zeros(2, 4), torch.zeros(3), 0.5)
    with pytest.raises(RuntimeError, match="same type"):
        pure_torch_nms(torch.zeros(2, 4), torch.zeros(2, dtype=torch.float64), 0.5)


def test_ensure_is_idempotent_and_torchvision_nms_works() -> None:
    mode = ensure_torchvision_ops()
    assert ensure_torchvision_ops() == mode

    import torchvision

    assert mode == ("native" if torchvision.extension._has_ops() else "fallback")
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert torchvision.ops.nms(boxes, scores, 0.5).tolist() == [0]
    # different categories never suppress each other
    assert torchvision.ops.batched_nms(boxes, scores, torch.tensor([0, 0, 1]), 0.5).tolist() == [0, 2]
    assert torchvision.ops.batched_nms(boxes[:0], scores[:0], torch.zeros(0, dtype=torch.long), 0.5).numel() == 0


def test_registered_op_agrees_with_fallback() -> None:
    """Through the dispatcher; with native ops loaded this compares against torchvision's own kernel."""
    ensure_torchvision_ops()
    rng = np.random.default_rng(1)
    for trial in range(50):
        boxes, scores = random_case(rng, 40, np.float32)
        threshold = THRESHOLDS[trial % len(THRESHOLDS)]
        b, s = torch.from_numpy(boxes), torch.from_numpy(scores)
        assert torch.equal(torch.ops.torchvision.nms(b, s, threshold), pure_torch_nms(b, s, threshold))


def test_native_path_registers_nothing() -> None:
    """When the native check says yes, ensure_torchvision_ops defines no op and imports nothing."""
    script = """
import sys, torch
from pipeline.core import torchvision_compat
torchvision_compat.native_ops_available = lambda: True
assert torchvision_compat.ensure_torchvision_ops() == "native"
assert torchvision_compat.ensure_torchvision_ops() == "native"
assert not hasattr(torch.ops.torchvision, "nms"), "an nms op was registered"
assert not any(m.split(".")[0] == "torchvision" for m in sys.modules), "torchvision was imported"
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_failed_import_is_purged() -> None:
    """On CPU-only torch the native check leaves no half-imported torchvision behind."""
    script = """
import sys
from pipeline.core import torchvision_compat
native = torchvision_compat.native_ops_available()
if not native:
    assert not any(m.split(".")[0] == "torchvision" for m in sys.modules), "stale torchvision modules"
assert torchvision_compat.ensure_torchvision_ops() == ("native" if native else "fallback")
import torchvision.ops
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_mtcnn_finds_the_astronauts_face() -> None:
    ensure_torchvision_ops()
    from facenet_pytorch import MTCNN
    from skimage.data import astronaut

    boxes, probs = MTCNN(keep_all=True, device="cpu").detect(astronaut())  # 512x512 HWC uint8
    assert boxes is not None and len(boxes) == 1
    assert float(probs[0]) > 0.9
    x1, y1, x2, y2 = np.asarray(boxes[0], dtype=float)
    assert 150 <= x1 < x2 <= 300 and 20 <= y1 < y2 <= 200, boxes[0]
    assert x2 - x1 > 50 and y2 - y1 > 50  # a face, not a speck inside the region
