"""Tiny random speech encoders of every `hf_audio` family, saved like downloaded checkpoints.

Built offline (config class + `save_pretrained`, with the matching feature extractor), so tests load
them through the extractor's real `from_pretrained` path. Sizes differ per family (hidden size,
layer count) so a shape or layer-range assertion cannot pass by accident.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.core.torchvision_compat import ensure_torchvision_ops

ensure_torchvision_ops()

from transformers import (  # noqa: E402
    Data2VecAudioConfig,
    Data2VecAudioModel,
    HubertConfig,
    HubertModel,
    PreTrainedModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperModel,
)

# the demo's conv stack (pipeline/demo/tiny_models.py): 400-sample receptive field, 320-sample hop
CONV = {"conv_dim": (16,) * 7, "conv_kernel": (10, 3, 3, 3, 3, 2, 2), "conv_stride": (5, 2, 2, 2, 2, 2, 2)}
LAYER_NORM = {"feat_extract_norm": "layer", "do_stable_layer_norm": True}  # wav2vec2-large-lv60 / HuBERT-large style
GROUP_NORM = {"feat_extract_norm": "group", "do_stable_layer_norm": False}  # wav2vec2-base style


def _encoder(hidden: int, layers: int) -> dict[str, int]:
    return {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 2,
            "intermediate_size": 2 * hidden, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}  # fmt: skip


WAVLM_BUCKETS = {"num_buckets": 32, "max_bucket_distance": 100}
# name -> (model_type, hidden size, hidden states = layers + 1)
FAMILIES: dict[str, tuple[str, int, int]] = {
    "wav2vec2-layer": ("wav2vec2", 32, 3),
    "hubert-layer": ("hubert", 24, 4),
    "wavlm-layer": ("wavlm", 40, 3),
    "wavlm-group": ("wavlm", 40, 3),
    "data2vec-audio": ("data2vec-audio", 48, 3),
    "whisper": ("whisper", 16, 3),
}


def _factory(name: str) -> Callable[[], PreTrainedModel]:
    _, hidden, states = FAMILIES[name]
    encoder = {**CONV, **_encoder(hidden, states - 1)}
    factories: dict[str, Callable[[], PreTrainedModel]] = {
        "wav2vec2-layer": lambda: Wav2Vec2Model(Wav2Vec2Config(**encoder, **LAYER_NORM)),
        "hubert-layer": lambda: HubertModel(HubertConfig(**encoder, **LAYER_NORM)),
        "wavlm-layer": lambda: WavLMModel(WavLMConfig(**encoder, **LAYER_NORM, **WAVLM_BUCKETS)),
        "wavlm-group": lambda: WavLMModel(WavLMConfig(**encoder, **GROUP_NORM, **WAVLM_BUCKETS)),
        # num_conv_pos_embeddings is data2vec's count of stacked positional conv layers
        "data2vec-audio": lambda: Data2VecAudioModel(
            Data2VecAudioConfig(**{**encoder, "num_conv_pos_embeddings": 2}, conv_pos_kernel_size=5)
        ),
        "whisper": lambda: WhisperModel(whisper_config(hidden, states - 1)),
    }
    return factories[name]


def whisper_config(hidden: int = 16, layers: int = 2) -> WhisperConfig:
    """A tiny Whisper with the real 30 s input (80 mel bins x 3000 frames -> 1500 encoder frames)."""
    return WhisperConfig(d_model=hidden, encoder_layers=layers, encoder_attention_heads=2, encoder_ffn_dim=2 * hidden,
                         decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=2 * hidden, vocab_size=64,
                         max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         decoder_start_token_id=1, num_mel_bins=80, max_source_positions=1500)  # fmt: skip


def seeded(seed: int, factory: Callable[[], PreTrainedModel]) -> PreTrainedModel:
    """Build under `seed` without disturbing the caller's global torch RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def save_checkpoint(model: PreTrainedModel, out_dir: Path) -> Path:
    """`model` and its family's feature extractor in `out_dir`, as `from_pretrained` expects them."""
    out_dir = Path(out_dir)
    if model.config.model_type == "whisper":
        WhisperFeatureExtractor(feature_size=model.config.num_mel_bins).save_pretrained(out_dir)
    else:  # layer-norm checkpoints ship return_attention_mask=True, as the real ones do
        mask = getattr(model.config, "feat_extract_norm", "layer") == "layer"
        Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True,
                                 return_attention_mask=mask).save_pretrained(out_dir)  # fmt: skip
    model.save_pretrained(out_dir)
    return out_dir


def build_tiny_audio_model(name: str, out_dir: Path, seed: int = 0) -> Path:
    """Write the tiny random model `name` (a key of FAMILIES) and its feature extractor to `out_dir`."""
    return save_checkpoint(seeded(seed, _factory(name)), out_dir)


def build_whisper_variants(out_root: Path, seed: int = 0) -> dict[str, Path]:
    """One random Whisper saved three ways: as `WhisperForConditionalGeneration` (how openai/whisper-*
    ship), as the `WhisperEncoder` alone, and as the encoder alone mislabelled `WhisperModel` (its
    encoder weights cannot be found: the extractor must refuse it)."""
    full = seeded(seed, lambda: WhisperForConditionalGeneration(whisper_config()))
    paths = {
        "generation": save_checkpoint(full, out_root / "whisper-generation"),
        "encoder": save_checkpoint(full.get_encoder(), out_root / "whisper-encoder"),
    }
    mislabelled = save_checkpoint(full.get_encoder(), out_root / "whisper-mislabelled")
    config_file = mislabelled / "config.json"
    config_file.write_text(config_file.read_text().replace('"WhisperEncoder"', '"WhisperModel"'))
    paths["mislabelled"] = mislabelled
    return paths
