"""The hf_face extractor on tiny random CLIP (full and vision-only), SigLIP, DINOv2 (plain and with
registers) and ViT models built offline and loaded through `from_pretrained`: the real astronaut face
found in an mp4, feature shapes, what each pooling is, exact batch independence, no-face clips, and
one-line errors for bad settings."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from extractors.base import Decoded, extractor_for, get_extractor, weights_sha256
from extractors.face import FaceCropExtractor
from extractors.hf_face import FAMILIES, HFFaceConfig, HFFaceExtractor
from pipeline.core.errors import PipelineError
from pipeline.core.torchvision_compat import ensure_torchvision_ops
from pipeline.demo.media import write_mp4_clip

ensure_torchvision_ops()

import transformers  # noqa: E402

CPU = torch.device("cpu")
HIDDEN = 32
FPS = 10  # the clips' frame rate; the extractor samples 2 per second
TOWER = dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
TEXT = dict(hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99,
            bos_token_id=0, eos_token_id=1, pad_token_id=1)  # fmt: skip
# family -> (model class, config class, processor class, config kwargs, processor kwargs)
BUILDS: dict[str, tuple[str, str, str, dict[str, Any], dict[str, Any]]] = {
    "clip": ("CLIPModel", "CLIPConfig", "CLIPImageProcessorPil",
             {"vision_config": {**TOWER, "image_size": 32, "patch_size": 8}, "text_config": TEXT, "projection_dim": 16},
             {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}),
    "clip_vision": ("CLIPVisionModel", "CLIPVisionConfig", "CLIPImageProcessorPil",
                    {**TOWER, "image_size": 32, "patch_size": 8},
                    {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}),
    "siglip": ("SiglipModel", "SiglipConfig", "SiglipImageProcessorPil",
               {"vision_config": {**TOWER, "image_size": 64, "patch_size": 16}, "text_config": TEXT},
               {"size": {"height": 64, "width": 64}}),
    "dinov2": ("Dinov2Model", "Dinov2Config", "BitImageProcessorPil",
               {**TOWER, "image_size": 64, "patch_size": 16},  # DINOv2's resize 72, centre crop 64
               {"size": {"shortest_edge": 72}, "crop_size": {"height": 64, "width": 64}, "do_center_crop": True}),
    "dinov2_registers": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", "BitImageProcessorPil",
                         {**TOWER, "image_size": 32, "patch_size": 8, "num_register_tokens": 2},
                         {"size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 32}}),
    "vit": ("ViTModel", "ViTConfig", "ViTImageProcessorPil",
            {**TOWER, "image_size": 32, "patch_size": 8}, {"size": {"height": 32, "width": 32}}),
}  # fmt: skip
CROP = {"clip": 32, "clip_vision": 32, "siglip": 64, "dinov2": 64, "dinov2_registers": 32, "vit": 32}
POOLINGS = {"clip": ("pooler", "cls", "mean"), "clip_vision": ("pooler", "cls", "mean"),
            "siglip": ("pooler", "mean"), "dinov2": ("pooler", "cls", "mean"),
            "dinov2_registers": ("pooler", "cls", "mean"), "vit": ("pooler", "cls", "mean")}  # fmt: skip


def build(folder: Path, family: str, seed: int = 0, **model_kwargs: Any) -> Path:
    """A random-weight checkpoint of `family` with its image processor, saved like a hub download."""
    model_class, config_class, processor_class, config_kwargs, processor_kwargs = BUILDS[family]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = getattr(transformers, config_class)(**config_kwargs)
        getattr(transformers, model_class)(config, **model_kwargs).save_pretrained(folder)
    getattr(transformers, processor_class)(**processor_kwargs).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_face_models")
    return {family: build(root / family, family) for family in BUILDS}


def _astronaut_frames(n: int, mirror: bool = False) -> list[np.ndarray]:
    """The astronaut photo at 256x256, drifting a few px per frame (so sampled frames differ)."""
    photo = cv2.resize(skimage.data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    photo = photo[:, ::-1] if mirror else photo
    return [np.ascontiguousarray(np.roll(photo, 3 * i, axis=1)) for i in range(n)]


def _blank_frames(n: int) -> list[np.ndarray]:
    """A smooth colour gradient: nothing MTCNN could take for a face."""
    ramp = np.linspace(40, 200, 256, dtype=np.float32)
    image = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], np.full((256, 256), 90.0)), axis=-1)
    return [image.astype(np.uint8)] * n


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf_face_clips")
    silence = np.zeros(16_000, np.float32)
    for name, frames in {"face": _astronaut_frames(FPS), "mirror": _astronaut_frames(FPS, mirror=True),
                         "blank": _blank_frames(FPS)}.items():  # fmt: skip
        write_mp4_clip(root / f"{name}.mp4", frames, (256, 256), FPS, silence, 16_000)
    return root


def row(uid: str, clip: str, start: float = 0.0, end: float = 1.0) -> dict[str, Any]:
    return {"utterance_id": uid, "has_video": True, "video_path": f"{clip}.mp4", "video_start_s": start,
            "video_end_s": end, "video_region": "full", "flags": []}  # fmt: skip


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


ROWS = [row("face", "face"), row("mirror", "mirror"), row("face_late", "face", 0.5, 1.0)]


@pytest.fixture(scope="module", autouse=True)
def mtcnn_once():
    """MTCNN runs once per distinct set of frames: it is deterministic and runs per utterance (see
    extractors/face.py and test_facenet.py), and it costs 10-100x the tiny encoders, so later calls of
    `speaker_boxes` on the same frames get the boxes the first call found."""
    real = FaceCropExtractor.speaker_boxes
    found: dict[tuple, list] = {}

    def speaker_boxes(self: FaceCropExtractor, frames: np.ndarray) -> list:
        key = (hashlib.sha256(frames.tobytes()).hexdigest(), frames.shape, self.config.min_face_size,
               self.config.min_face_prob)  # fmt: skip
        if key not in found:
            found[key] = real(self, frames)
        return [None if box is None else box.copy() for box in found[key]]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FaceCropExtractor, "speaker_boxes", speaker_boxes)
        yield


@pytest.fixture(scope="module")
def decoded(models: dict[str, Path], clips: Path) -> dict[str, Decoded]:
    """The rows decoded once (the decoder holds no model: every family shares it)."""
    decoder = HFFaceExtractor(HFFaceConfig(model=str(models["vit"])), clips, CPU).decoder()
    items = {r["utterance_id"]: decoder(r) for r in [*ROWS, row("blank", "blank")]}
    assert all(item.missing is None for item in items.values())
    return items


@pytest.fixture(scope="module")
def extractors(models: dict[str, Path], clips: Path, one_torch_thread) -> dict[str, HFFaceExtractor]:
    return {family: HFFaceExtractor(HFFaceConfig(model=str(folder)), clips, CPU) for family, folder in models.items()}


def encode(extractor: HFFaceExtractor, items: list[Decoded]) -> dict[str, Any]:
    with torch.inference_mode():
        return {e.utterance_id: e for e in extractor.encode(items)}


def test_registered_and_configured(extractors, models):
    assert get_extractor("hf_face") is HFFaceExtractor
    assert extractor_for("face", "hf_face") is HFFaceExtractor
    assert HFFaceConfig().pooling == "pooler" and HFFaceConfig().batch_size == 4
    for family, extractor in extractors.items():
        assert extractor.model_id == str(models[family])
        assert extractor.model_sha256 == weights_sha256(models[family])
        assert extractor.crop_size == CROP[family]
    assert set(FAMILIES) >= {"clip", "clip_vision_model", "siglip", "siglip_vision_model", "dinov2", "vit"}
    for bad in ({"pooling": "max"}, {"crops_per_forward": 0}, {"crop_size": -1}, {"layers": [1, 1]}, {"model": " "}):
        with pytest.raises(ValueError):
            HFFaceConfig(**bad)


@pytest.mark.parametrize("family", list(BUILDS))
def test_face_found_feature_is_hidden_size(extractors, decoded, family):
    extractor = extractors[family]
    frames = decoded["face"].data["frames"]
    boxes = extractor.speaker_boxes(frames)
    assert len(frames) == 2 and all(box is not None for box in boxes)  # the astronaut, in every frame
    for box, time in zip(boxes, decoded["face"].data["times"]):  # ASTRONAUT_FACE of test_facenet, halved
        shift = 3 * round(time * FPS)
        assert _iou(box, (90.5 + shift, 31, 134 + shift, 86)) > 0.7
    crops, _ = extractor.crops(frames)
    assert crops.shape == (2, 3, CROP[family], CROP[family])
    out = encode(extractor, [decoded["face"], decoded["mirror"]])
    for item in out.values():
        assert item.missing is None
        assert item.feature.shape == (HIDDEN,) and item.feature.dtype == torch.float32
        assert torch.isfinite(item.feature).all()
    assert not torch.equal(out["face"].feature, out["mirror"].feature)


@pytest.mark.parametrize("family", list(BUILDS))
def test_pooling_variants(models, clips, decoded, family):
    """Every pooling the family has gives [hidden]; they differ, except DINOv2's pooler, which is its CLS."""
    features = {}
    for pooling in POOLINGS[family]:
        extractor = HFFaceExtractor(HFFaceConfig(model=str(models[family]), pooling=pooling), clips, CPU)
        features[pooling] = encode(extractor, [decoded["face"]])["face"].feature
        assert features[pooling].shape == (HIDDEN,)
    names = list(features)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            same = torch.equal(features[a], features[b])
            assert same == (family.startswith("dinov2") and {a, b} == {"pooler", "cls"}), (a, b)


@pytest.mark.parametrize("family", list(BUILDS))
def test_pooling_is_what_it_says(models, clips, family):
    """embed() on crops = the model's own output on the processor's pixels: pooler_output, token 0, or
    the mean of the patch tokens (without CLS and register tokens)."""
    crops = torch.randint(0, 256, (3, 3, CROP[family], CROP[family]), generator=torch.Generator().manual_seed(0))
    for pooling in POOLINGS[family]:
        extractor = HFFaceExtractor(HFFaceConfig(model=str(models[family]), pooling=pooling), clips, CPU)
        pixels = extractor.pixel_values(crops.float())
        assert pixels.shape == crops.shape and pixels.dtype == torch.float32
        padded = torch.cat([pixels, pixels.new_zeros(extractor.config.crops_per_forward - 3, *pixels.shape[1:])])
        with torch.inference_mode():
            result = extractor.model(pixel_values=padded)
            embedded = extractor.embed(crops.float())
        tokens = result.last_hidden_state[:3]
        prefix = {"siglip": 0, "dinov2_registers": 3}.get(family, 1)
        assert tokens.shape[1] == prefix + (CROP[family] // extractor.model.config.patch_size) ** 2
        expected = {"pooler": result.pooler_output[:3], "cls": tokens[:, 0], "mean": tokens[:, prefix:].mean(dim=1)}
        assert embedded.shape == (3, HIDDEN)
        assert torch.equal(embedded, expected[pooling]), pooling


@pytest.mark.parametrize("family", list(BUILDS))
def test_features_do_not_depend_on_the_batch(models, clips, decoded, extractors, family):
    """Alone, with others, in another order, split across forwards (crops_per_forward 3): bitwise equal."""
    items = [decoded[r["utterance_id"]] for r in ROWS]
    together = {uid: e.feature for uid, e in encode(extractors[family], items).items()}
    alone = {uid: encode(extractors[family], [decoded[uid]])[uid].feature for uid in together}
    split = HFFaceExtractor(HFFaceConfig(model=str(models[family]), crops_per_forward=3), clips, CPU)
    reordered = {uid: e.feature for uid, e in encode(split, items[::-1]).items()}
    for uid, feature in together.items():
        assert torch.equal(feature, alone[uid]), uid
        assert torch.allclose(feature, reordered[uid], atol=1e-4), uid  # another forward shape: close, not exact
    split_alone = encode(split, [decoded["face"]])["face"].feature
    assert torch.equal(split_alone, reordered["face"])


def test_no_face_clip_is_missing(extractors, decoded):
    for family in ("clip", "dinov2"):
        out = encode(extractors[family], [decoded["blank"], decoded["face"]])
        assert out["blank"].feature is None and out["blank"].missing == "no_face"
        assert out["face"].feature is not None
        assert encode(extractors[family], [decoded["blank"]])["blank"].missing == "no_face"


def test_with_frame_count_and_layers(models, clips, decoded, extractors):
    counted = HFFaceExtractor(HFFaceConfig(model=str(models["vit"]), with_frame_count=True), clips, CPU)
    item = decoded["face"]
    blanked = Decoded(item.utterance_id, data={**item.data, "frames": item.data["frames"].copy()})
    blanked.data["frames"][0] = _blank_frames(1)[0]  # one of the two frames without a face
    with_count = encode(counted, [blanked])["face"].feature
    plain = encode(extractors["vit"], [blanked])["face"].feature
    assert with_count.shape == (HIDDEN + 1,) and float(with_count[-1]) == 0.5
    assert torch.equal(with_count[:HIDDEN], plain)
    # layers: raw hidden states (ViT's last one is before its final layernorm), averaged
    last = HFFaceExtractor(HFFaceConfig(model=str(models["vit"]), pooling="cls"), clips, CPU)
    raw = HFFaceExtractor(HFFaceConfig(model=str(models["vit"]), pooling="cls", layers=[-1]), clips, CPU)
    both = HFFaceExtractor(HFFaceConfig(model=str(models["vit"]), pooling="mean", layers=[0, -1]), clips, CPU)
    features = [encode(e, [item])["face"].feature for e in (last, raw, both)]
    assert all(f.shape == (HIDDEN,) for f in features)
    assert not torch.equal(features[0], features[1])


def _one_line_error(match: str, **config: Any) -> str:
    with pytest.raises(PipelineError, match=match) as info:
        HFFaceExtractor(HFFaceConfig(**config), Path("."), CPU)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_bad_pooling_or_model_is_one_line(models, tmp_path):
    _one_line_error("no CLS token", model=str(models["siglip"]), pooling="cls")
    _one_line_error("last layer only", model=str(models["clip"]), layers=[-2])
    _one_line_error("out of range", model=str(models["clip"]), pooling="mean", layers=[3])
    _one_line_error("32x32 crops only", model=str(models["vit"]), crop_size=48)
    # a ViT saved from a classifier: no pooler weights, so pooler would be random; cls is fine
    no_pooler = build(tmp_path / "vit_no_pooler", "vit", add_pooling_layer=False)
    _one_line_error("no trained pooler", model=str(no_pooler))
    assert HFFaceExtractor(HFFaceConfig(model=str(no_pooler), pooling="cls"), tmp_path, CPU).crop_size == 32
    # weights that do not fit the config: a layer missing (would be random), shapes that differ
    for name, change, match in (("deeper", {"num_hidden_layers": 3}, "lacks 16 weights"),
                                ("wider", {"intermediate_size": 48}, "could not be loaded")):  # fmt: skip
        folder = Path(shutil.copytree(models["vit"], tmp_path / name))
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        _one_line_error(match, model=str(folder), pooling="cls")
    # not a vision encoder; no image processor; no such folder
    text_model = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(**{**TOWER, "vocab_size": 99})).save_pretrained(text_model)
    _one_line_error("bert model, not a supported vision encoder", model=str(text_model))
    no_processor = tmp_path / "vit_without_processor"
    transformers.ViTModel(transformers.ViTConfig(**BUILDS["vit"][3])).save_pretrained(no_processor)
    _one_line_error("could not be loaded", model=str(no_processor))
    message = _one_line_error("does not exist", model=str(tmp_path / "nope"))
    assert "extract.face.model" in message
