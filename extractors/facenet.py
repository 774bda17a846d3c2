"""FaceNet face features: the shared MTCNN speaker crops (`extractors.face`) at 160x160 with
facenet's fixed standardisation, embedded by InceptionResnetV1 (512 values, L2-normalised).

Determinism: InceptionResnetV1 runs on exactly ``crops_per_forward`` crops per call (the last call
zero-padded), because kernels choose different algorithms, hence different float rounding, for
different batch sizes (measured on CPU: 3 crops alone differ from the same crops in a batch of 8 in
the 7th digit; GPU kernels do the same).

Weights: ``weights`` is a local InceptionResnetV1 state dict (``.safetensors``, or a torch
``.pt``/``.pth``/``.bin`` file); ``logits.*`` keys (VGGFace2's 8631-class head) are dropped before a
strict load. ``weights: vggface2`` lets facenet-pytorch download the VGGFace2 file into the torch
cache (``$TORCH_HOME/checkpoints``), which works only with internet access.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import torch

# first: extractors.face registers torchvision's fallback NMS before facenet_pytorch imports torchvision
from extractors.face import FaceCropConfig, FaceCropExtractor
from extractors.base import autocast, register_extractor, weights_sha256
from facenet_pytorch import InceptionResnetV1
from facenet_pytorch.models.inception_resnet_v1 import get_torch_home
from facenet_pytorch.models.mtcnn import fixed_image_standardization

from pipeline.core.errors import PipelineError, one_line
from pipeline.core.params import ParamError

EMBEDDING_DIM = 512
CROP_SIZE = 160  # InceptionResnetV1's input size
VGGFACE2 = "vggface2"
VGGFACE2_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"
PARAM_KEY = "extract.face.weights"
_DOWNLOAD_TIMEOUT_S = 60.0


@dataclass
class FaceNetConfig(FaceCropConfig):
    """params.yaml `extract.<set>` with `extractor: facenet`."""

    weights: str = VGGFACE2  # state-dict file (.safetensors / .pt), or "vggface2" = download (internet)
    crops_per_forward: int = 8  # InceptionResnetV1 batch, fixed (zero-padded) for bitwise determinism

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.weights.strip():
            raise ParamError("weights", f"must be a file path or {VGGFACE2!r}, got {self.weights!r}")
        if self.crops_per_forward < 1:
            raise ParamError("crops_per_forward", f"must be at least 1, got {self.crops_per_forward}")
        if not self.margin < CROP_SIZE:
            raise ParamError("margin", f"must be in [0, {CROP_SIZE}), got {self.margin}")


def _offline_hint(reason: str) -> str:
    """The one-line error for weights that cannot be had here, with the fix."""
    return (
        f"face model weights: {reason}. The VGGFace2 InceptionResnetV1 weights download only on a machine "
        "with internet: there run `python -c \"import torch; from facenet_pytorch import InceptionResnetV1; "
        "torch.save(InceptionResnetV1(pretrained='vggface2').state_dict(), 'facenet-vggface2.pt')\"`, "
        f"copy facenet-vggface2.pt here and set {PARAM_KEY} to its path"
    )


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
class FaceNetExtractor(FaceCropExtractor):
    """MTCNN + InceptionResnetV1 (FaceNet) face embeddings, averaged over the utterance's frames."""

    name = "facenet"
    # 2: IEMOCAP's speaker half follows the release's rule (the session letter's actor on the left);
    # stores made under version 1 (F left everywhere) took half the corpus's faces from the listener
    version = "2"
    config_class = FaceNetConfig
    config: FaceNetConfig

    def __init__(self, config: FaceNetConfig, raw_root: Path, device: torch.device) -> None:
        super().__init__(config, raw_root, device)
        self.weights_path = resolve_weights(config.weights)
        self._sha256 = weights_sha256(self.weights_path)
        self.facenet = load_facenet(self.weights_path).to(device)

    @property
    def crop_size(self) -> int:
        return CROP_SIZE

    @property
    def model_id(self) -> str:
        return self.config.weights

    @property
    def model_sha256(self) -> str:
        return self._sha256

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        """[N, 512] float32 embeddings, computed crops_per_forward at a time (last call zero-padded)."""
        chunk = self.config.crops_per_forward
        out = []
        for i in range(0, len(crops), chunk):
            part = fixed_image_standardization(crops[i : i + chunk]).to(self.device)
            n = len(part)
            if n < chunk:
                part = torch.cat([part, part.new_zeros(chunk - n, *part.shape[1:])])
            with autocast(self.device):
                out.append(self.facenet(part)[:n].float())
        return torch.cat(out) if out else torch.empty(0, EMBEDDING_DIM, device=self.device)
