"""The models by name: what params.yaml `train.model.name` selects and a checkpoint records.

Every model takes a `DialogueBatch` and returns a `DialogueModelOutput` (`model.common`); its config is
a dataclass whose fields input_dims, num_classes and num_speakers come from the data (`DATA_FIELDS`)
and whose other fields are the model's settings, with `to_dict`/`from_dict` and `loss_weights` (the
loss terms it returns). Adding a model is adding a module and one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from model.bigru import BiGRUConfig, DialogueBiGRU
from model.cmath import CMATH, CMATHConfig
from model.late_fusion import LateFusion, LateFusionConfig
from model.mlp import MLPConfig, UtteranceMLP

DEFAULT_MODEL = "cmath"
DATA_FIELDS = ("input_dims", "num_classes", "num_speakers")  # every config's fields that come from the data


@dataclass(frozen=True)
class ModelSpec:
    config_class: type
    model_class: type[nn.Module]
    summary: str  # one line: what the model is


MODELS: dict[str, ModelSpec] = {
    "cmath": ModelSpec(CMATHConfig, CMATH, "CMATH, the cross-modality augmented transformer (model/cmath.py)"),
    "mlp": ModelSpec(MLPConfig, UtteranceMLP, "utterance-level MLP on the concatenated modalities (model/mlp.py)"),
    "bigru": ModelSpec(BiGRUConfig, DialogueBiGRU,
                       "bidirectional GRU over the dialogue with a speaker embedding (model/bigru.py)"),
    "late_fusion": ModelSpec(LateFusionConfig, LateFusion,
                             "one classifier per modality, probabilities averaged (model/late_fusion.py)"),
}


def model_names() -> list[str]:
    return list(MODELS)


def model_spec(name: str) -> ModelSpec:
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def config_from_dict(name: str, values: dict[str, Any]):
    """The config of model `name` from its to_dict() (as a checkpoint stores it)."""
    return model_spec(name).config_class.from_dict(values)


def build_model(name: str, config) -> nn.Module:
    """Model `name` with freshly initialised weights (under the caller's torch seed)."""
    spec = model_spec(name)
    if not isinstance(config, spec.config_class):
        raise TypeError(f"model {name!r} takes a {spec.config_class.__name__}, got {type(config).__name__}")
    return spec.model_class(config)


__all__ = ["DATA_FIELDS", "DEFAULT_MODEL", "MODELS", "ModelSpec", "build_model", "config_from_dict", "model_names",
           "model_spec"]
