"""Face features from a Hugging Face vision encoder: the shared MTCNN speaker crops (`extractors.face`)
embedded by CLIP, SigLIP, DINOv2 or ViT, pooled per crop and averaged over the utterance's frames.

Families (``model`` is a local folder or a hub id; its ``config.json`` model type picks the class):

============================  ========================  ===================================================
model type                    loaded as                 ``pooler`` is
============================  ========================  ===================================================
clip, clip_vision_model       CLIPVisionModel           the post-layernormed CLS token (what CLIP projects)
siglip, siglip_vision_model   SiglipVisionModel         the attention-pooling head (what SigLIP projects)
dinov2                        Dinov2Model               the layernormed CLS token: the same vector as ``cls``
dinov2_with_registers         Dinov2WithRegistersModel  as dinov2 (register tokens are never pooled)
vit                           ViTModel                  tanh(dense(CLS)), only when the checkpoint has it
============================  ========================  ===================================================

A full CLIP or SigLIP checkpoint (text tower included) loads its vision tower only. Weights the
checkpoint lacks would be random, so they are an error, with one exception: ViT checkpoints saved
from a classifier have no ``pooler.*`` weights, and then only ``pooling: pooler`` is refused.

Pooling (per crop): ``pooler`` (default: the vector each family was trained to hand on, see the
table), ``cls`` (token 0 of the last hidden state; SigLIP has no CLS token) or ``mean`` (the mean
over the patch tokens, CLS and register tokens left out). ``layers`` (optional) replaces the last
hidden state by the mean of those ``hidden_states`` (0 = embeddings; raw layer outputs, before the
final norm that ViT, DINOv2 and SigLIP apply); ``pooler`` is defined on the last layer only. A
pooling or layer the model cannot give is a one-line error at construction. Feature: float32
[hidden_size] (+ 1 with ``with_frame_count``).

Input: MTCNN cuts the box at the model's input size S (``crop_size``; 0 = the image processor's:
its centre-crop size when it centre-crops, else its resize size), the same ``extract_face`` cut
as facenet. The checkpoint's own image processor (AutoImageProcessor, PIL backend: the reference
implementation, run per image, so a crop's pixels never depend on the other crops) then resizes to
SxS, a no-op on crops already of that size, and rescales and normalises with its own mean and std.
Its centre crop is turned off: the face box is the region of interest, and DINOv2's
resize-256-crop-224 would cut off the chin and forehead. CLIP, SigLIP and ViT take only their
``image_size``; DINOv2 interpolates its position embeddings and takes any multiple of its patch.
Weights load as float32 (some hub checkpoints are stored in half precision); on a GPU the model
runs under bf16 autocast like the other extractors.

Determinism: the encoder runs on exactly ``crops_per_forward`` crops per call (the last call
zero-padded), because kernels pick different algorithms, hence different float rounding, for
different batch sizes (GEMM blocking, the attention kernel; on CPU and GPU alike), so a crop's
embedding would otherwise depend on how many crops its batch happened to hold. Padding with zero
images is harmless: a vision transformer's tokens attend only within their own image and its
norms are per token, so a padded image never reaches a real one; only the shape matters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

# first: extractors.face registers torchvision's fallback NMS before transformers imports torchvision
from extractors.face import FaceCropConfig, FaceCropExtractor
from extractors.base import autocast, load_pretrained, register_extractor, weights_sha256

import transformers
from transformers import AutoConfig, AutoImageProcessor

from pipeline.core.errors import PipelineError
from pipeline.core.params import ParamError, require_choice

PARAM_KEY = "extract.face.model"
POOLINGS = ("pooler", "cls", "mean")


@dataclass(frozen=True)
class Family:
    """How one model type is loaded and pooled."""

    model_class: str  # the transformers class that holds the vision tower alone
    has_cls: bool  # token 0 is a CLS token
    fixed_size: bool  # position embeddings only for config.image_size (no interpolation)


FAMILIES = {
    "clip": Family("CLIPVisionModel", has_cls=True, fixed_size=True),
    "clip_vision_model": Family("CLIPVisionModel", has_cls=True, fixed_size=True),
    "siglip": Family("SiglipVisionModel", has_cls=False, fixed_size=True),
    "siglip_vision_model": Family("SiglipVisionModel", has_cls=False, fixed_size=True),
    "dinov2": Family("Dinov2Model", has_cls=True, fixed_size=False),
    "dinov2_with_registers": Family("Dinov2WithRegistersModel", has_cls=True, fixed_size=False),
    "vit": Family("ViTModel", has_cls=True, fixed_size=True),
}


@dataclass
class HFFaceConfig(FaceCropConfig):
    """params.yaml `extract.<set>` with `extractor: hf_face`."""

    model: str = "openai/clip-vit-base-patch32"  # local folder or hub id (see FAMILIES)
    pooling: Literal["pooler", "cls", "mean"] = "pooler"  # pooler | cls | mean (over patch tokens)
    layers: list[int] = field(default_factory=list)  # hidden_states indices, averaged; [] = last hidden state
    crop_size: int = 0  # px of the square crop the model sees; 0 = the image processor's size
    crops_per_forward: int = 8  # encoder batch, fixed (zero-padded) for bitwise determinism

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model.strip():
            raise ParamError("model", "must be a model folder or hub id, got ''")
        require_choice(self.pooling, POOLINGS, "pooling")
        if len(set(self.layers)) != len(self.layers):
            raise ParamError("layers", f"lists an index twice: {self.layers!r}")
        if self.crop_size < 0:
            raise ParamError("crop_size", f"must be 0 (the processor's size) or more, got {self.crop_size}")
        if self.crops_per_forward < 1:
            raise ParamError("crops_per_forward", f"must be at least 1, got {self.crops_per_forward}")


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """transformers logs a table of every unused key of a full CLIP/SigLIP checkpoint (its text tower);
    missing weights are checked here instead."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def _with_loading_info(load: Callable[..., Any]) -> Callable[..., Any]:
    """`load` returning (model, loading info); a shape mismatch (RuntimeError) becomes a ValueError,
    which `load_pretrained` turns into one line."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            with _quiet_loading():
                return load(*args, output_loading_info=True, dtype=torch.float32, **kwargs)
        except RuntimeError as exc:
            raise ValueError(str(exc)) from None

    return call


def processor_size(processor: Any) -> int | None:
    """The square side the processor hands the model (its centre crop, else its resize); None if not square."""
    if getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None):
        crop = processor.crop_size
        height, width = crop.get("height"), crop.get("width")
    else:
        size = processor.size
        height, width = size.get("height"), size.get("width")
        if height is None and size.get("shortest_edge"):
            height = width = size.get("shortest_edge")
    if height is None or height != width:
        return None
    return int(height)


@register_extractor
class HFFaceExtractor(FaceCropExtractor):
    """MTCNN speaker crops + a Hugging Face vision encoder, pooled per crop, averaged over frames."""

    name = "hf_face"
    version = "1"
    config_class = HFFaceConfig
    config: HFFaceConfig

    def __init__(self, config: HFFaceConfig, raw_root: Path, device: torch.device) -> None:
        model_config, _ = load_pretrained("face", config.model, AutoConfig.from_pretrained, PARAM_KEY)
        model_type = getattr(model_config, "model_type", "")
        if model_type not in FAMILIES:
            raise PipelineError(
                f"face model {config.model!r} is a {model_type or 'unknown'} model, not a supported vision "
                f"encoder ({', '.join(FAMILIES)}); set {PARAM_KEY}"
            )
        self.family = FAMILIES[model_type]
        self.processor, _ = load_pretrained(
            "face", config.model, partial(AutoImageProcessor.from_pretrained, backend="pil"), PARAM_KEY
        )
        model_class = getattr(transformers, self.family.model_class)
        (model, info), folder = load_pretrained(
            "face", config.model, _with_loading_info(model_class.from_pretrained), PARAM_KEY
        )
        self._sha256 = weights_sha256(folder)
        self.model = model.eval()
        self._crop_size = self._check_model(config, set(info.get("missing_keys") or ()))
        super().__init__(config, raw_root, device)  # FaceCropExtractor checks margin < crop_size
        self.model.to(device)

    def _check_model(self, config: HFFaceConfig, missing: set[str]) -> int:
        """The crop size; refuses what this model cannot give (one line each)."""
        vision = self.model.config
        name = f"face model {config.model!r}"
        if missing - {"pooler.dense.weight", "pooler.dense.bias"}:
            raise PipelineError(f"{name}: the checkpoint lacks {len(missing)} weights ({sorted(missing)[:3]}...), "
                                "which would be random")
        if config.pooling == "cls" and not self.family.has_cls:
            raise PipelineError(f"{name} has no CLS token; set extract.face.pooling to pooler or mean")
        if config.pooling == "pooler":
            if config.layers:
                raise PipelineError(f"{name}: pooling pooler is made from the last layer only; "
                                    "with extract.face.layers use cls or mean")
            if not getattr(vision, "vision_use_head", True):
                raise PipelineError(f"{name} has no pooling head; set extract.face.pooling to mean")
            if missing or getattr(self.model, "pooler", self.model) is None:  # ViT: pooler.* not in the checkpoint
                raise PipelineError(f"{name} has no trained pooler (its checkpoint has no pooler weights); "
                                    "set extract.face.pooling to cls or mean")
        n_states = vision.num_hidden_layers + 1  # hidden_states: the embeddings, then each layer
        bad = [i for i in config.layers if not -n_states <= i < n_states]
        if bad:
            raise PipelineError(f"extract.face.layers {bad} out of range: {config.model!r} has {n_states} "
                                f"hidden states (0 = embeddings, -1 = last layer)")
        size = config.crop_size or processor_size(self.processor)
        if size is None:
            raise PipelineError(f"{name}: its image processor gives no square input size; set extract.face.crop_size")
        patch = int(vision.patch_size)
        if self.family.fixed_size and size != vision.image_size:
            raise PipelineError(f"{name} takes {vision.image_size}x{vision.image_size} crops only, "
                                f"not {size}x{size} (extract.face.crop_size)")
        if size % patch:
            raise PipelineError(f"{name}: crop size {size} is not a multiple of its patch size {patch}")
        return size

    @property
    def crop_size(self) -> int:
        return self._crop_size

    @property
    def model_id(self) -> str:
        return self.config.model

    @property
    def model_sha256(self) -> str:
        return self._sha256

    @property
    def output_dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patches: CLS (when the family has one) and DINOv2's registers."""
        return int(self.family.has_cls) + int(getattr(self.model.config, "num_register_tokens", 0) or 0)

    def pixel_values(self, crops: torch.Tensor) -> torch.Tensor:
        """[k, 3, S, S] crops (0..255) -> the processor's normalised [k, 3, S, S] float32, on the CPU.

        The crops hold whole numbers (uint8 frames cut by INTER_AREA), so the uint8 round trip is exact.
        """
        images = list(crops.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
        side = self.crop_size
        out = self.processor(
            images=images, do_resize=True, size={"height": side, "width": side}, do_center_crop=False,
            input_data_format="channels_last", return_tensors="pt",
        )["pixel_values"]
        return out.to(torch.float32)

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        """[N, hidden] float32 pooled embeddings, computed crops_per_forward at a time (last call zero-padded)."""
        if len(crops) == 0:
            return torch.empty(0, self.output_dim, device=self.device)
        pixels = self.pixel_values(crops)
        chunk = self.config.crops_per_forward
        out = []
        for i in range(0, len(pixels), chunk):
            part = pixels[i : i + chunk]
            n = len(part)
            if n < chunk:
                part = torch.cat([part, part.new_zeros(chunk - n, *part.shape[1:])])
            out.append(self._pooled(part.to(self.device))[:n])
        return torch.cat(out)

    def _pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        layers = self.config.layers
        with autocast(self.device):
            result = self.model(pixel_values=pixels, output_hidden_states=bool(layers))
        if self.config.pooling == "pooler":
            return result.pooler_output.float()
        if layers:
            tokens = torch.stack([result.hidden_states[i].float() for i in layers]).mean(dim=0)
        else:
            tokens = result.last_hidden_state.float()
        if self.config.pooling == "cls":
            return tokens[:, 0]
        return tokens[:, self.prefix_tokens :].mean(dim=1)

