"""Let torchvision (and so facenet-pytorch's MTCNN) import and run next to a CPU-only torch.

Every PyPI torchvision wheel is CUDA-linked, so beside a CPU-only torch its compiled ``_C``
library fails to load. torchvision 0.28 tolerates that for most ops (``extension._has_ops()``
turns False and ``_meta_registrations``/``_autograd_registrations`` skip them), but
``_meta_registrations`` calls ``torch.library.register_fake`` for ``torchvision::nms`` and
``torchvision::qnms`` unconditionally, so ``import torchvision`` raises
``operator torchvision::nms does not exist``.

The fallback therefore defines both schemas itself before torchvision is imported: ``nms`` gets an
exact pure-torch port of torchvision's CPU kernel, ``qnms`` only its schema (quantized NMS is never
used here; calling it raises "could not run ... with arguments from the 'CPU' backend"). The Meta
kernels are left to torchvision's own ``register_fake``, which refuses to run if one already exists.
Because ``_C`` still did not load, ``torchvision.ops.boxes`` keeps gating ``nms`` on
``_assert_has_ops()``; that one name in that one module is rebound to a no-op. The only other
caller in that module, rotated ``box_iou``, then fails on the missing ``box_iou_rotated`` op
instead of torchvision's "Couldn't load custom C++ ops" message. roi_align and the other ops keep
torchvision's own checks.
"""

import sys

import torch

_mode: str | None = None
# Dropping a torch.library.Library deregisters what it defined, so the fallback keeps it here.
_library: torch.library.Library | None = None


def native_ops_available() -> bool:
    """Whether torchvision imports with its compiled ops; a failed partial import is purged."""
    try:
        import torchvision.extension
    except RuntimeError:
        if hasattr(torch.ops.torchvision, "nms"):
            raise  # the compiled ops are there, so the failure is something this module can't fix
        _forget_torchvision()
        return False
    return torchvision.extension._has_ops()


def ensure_torchvision_ops() -> str:
    """Make ``import torchvision`` and its NMS work; return "native" or "fallback" (idempotent)."""
    global _mode
    if _mode is None:
        if native_ops_available():
            _mode = "native"
        else:
            _register_fallback_ops()
            _mode = "fallback"
    return _mode


def pure_torch_nms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Port of torchvision's CPU nms kernel (csrc/ops/cpu/nms_kernel.cpp), decision for decision.

    It keeps the kernel's checks, its stable descending score sort (0.28 calls ``sort_stable``),
    its arithmetic in the boxes' dtype and its comparison of that IoU against the threshold as a
    double: comparing in float32 instead would flip boxes whose IoU rounds onto the threshold.
    """
    torch._check(dets.dim() == 2, lambda: f"boxes should be a 2d tensor, got {dets.dim()}D")
    torch._check(dets.size(1) == 4, lambda: f"boxes should have 4 elements in dimension 1, got {dets.size(1)}")
    torch._check(scores.dim() == 1, lambda: f"scores should be a 1d tensor, got {scores.dim()}D")
    torch._check(
        dets.size(0) == scores.size(0),
        lambda: "boxes and scores should have same number of elements in dimension 0, "
        f"got {dets.size(0)} and {scores.size(0)}",
    )
    torch._check(
        dets.dtype in (torch.float32, torch.float64), lambda: f'"nms_kernel" not implemented for {dets.dtype}'
    )
    torch._check(dets.dtype == scores.dtype, lambda: "dets should have the same type as scores")
    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)

    order = scores.sort(stable=True, descending=True).indices
    x1, y1, x2, y2 = dets[order].unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    suppressed = torch.zeros(len(order), dtype=torch.bool, device=dets.device)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = slice(i + 1, None)
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest] |= iou.double() > iou_threshold
    return order[keep]


def _register_fallback_ops() -> None:
    """Define torchvision::nms/qnms, then import torchvision and let its ``nms`` through."""
    global _library
    _library = torch.library.Library("torchvision", "FRAGMENT")
    _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    # Device-generic pure-torch code; Meta stays free for torchvision's own fake kernel.
    _library.impl("nms", pure_torch_nms, "CompositeExplicitAutograd")

    import torchvision.ops.boxes

    torchvision.ops.boxes._assert_has_ops = _fallback_nms_registered


def _fallback_nms_registered() -> None:
    """Stands in for ``torchvision.ops.boxes._assert_has_ops``: ``_C`` is absent, but nms is defined."""


def _forget_torchvision() -> None:
    """Drop the half-imported torchvision modules, so the next import runs from scratch."""
    for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
        del sys.modules[name]
