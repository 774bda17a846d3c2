"""What the dialogue models share: the output the trainer reads, the batch check, the class-weighted
cross-entropy, and the config of the baselines (`model.mlp`, `model.bigru`, `model.late_fusion`).

Every model takes a `DialogueBatch` and returns a `DialogueModelOutput` (CMATH's `CMATHOutput` is one,
with its representations added), so `pipeline/training` never needs to know which model it runs:
it backpropagates `loss`, logs every entry of `losses` (named by the config's `loss_weights`) and
predicts with `logits`. Unavailable modalities are zeros plus a mask, never NaN: a model selects
with `torch.where` on `valid[m]` (real turn AND modality available), so whatever a batch holds in an
unavailable or padded slot cannot reach an output.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F

from model.batch import IGNORE_LABEL, DialogueBatch


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def checked_input_dims(input_dims: Any) -> dict[str, int]:
    """A config's {modality: feature width}, checked: a non-empty dict of names to positive integers."""
    if not isinstance(input_dims, dict) or not input_dims:
        raise ValueError("input_dims must be a non-empty dict {modality: feature width}, e.g. {'text': 1024}")
    for name, dim in input_dims.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"input_dims keys must be non-empty modality names, got {name!r}")
        if not is_int(dim) or dim <= 0:
            raise ValueError(f"input_dims[{name!r}] must be a positive integer, got {dim!r}")
    return dict(input_dims)


@dataclass
class DialogueModelOutput:
    """What every model's forward() returns. B dialogues, N utterances, C classes.

    logits:          [B, N, C]; the prediction is its argmax (padding positions hold anything)
    modality_logits: {modality: [B, N, C]} of per-modality classifiers; empty for a model without them
    losses:          {name: scalar}: the model's loss terms, each unweighted and >= 0, float32
    loss:            the weighted total, or None when the batch has no usable label
    """

    logits: torch.Tensor
    modality_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    loss: torch.Tensor | None = None

    @property
    def probabilities(self) -> torch.Tensor:
        return self.logits.float().softmax(dim=-1)


# --------------------------------------------------------------------------------------------------
# The baselines' config
# --------------------------------------------------------------------------------------------------


@dataclass
class BaselineConfig:
    """The fields every baseline has; each baseline's config is a subclass (its own fields, if any,
    come after these). input_dims, num_classes and num_speakers come from the data, the rest from
    params.yaml `train.model`. JSON-able through to_dict()/from_dict() for checkpoints."""

    input_dims: dict[str, int]  # modality -> feature width, e.g. {"text": 1024, "audio": 1024, "face": 512}
    num_classes: int
    num_speakers: int  # speaker ids are 0..num_speakers-1 (0 = "other"); only a speaker embedding reads them
    hidden_size: int = 256
    num_layers: int = 1
    dropout: float = 0.1
    class_weights: list[float] | None = None  # per-class weights of the cross-entropy

    def __post_init__(self) -> None:
        self.input_dims = checked_input_dims(self.input_dims)
        if not is_int(self.num_classes) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {self.num_classes!r}")
        least = self.min_speakers
        if not is_int(self.num_speakers) or self.num_speakers < least:
            raise ValueError(f"num_speakers must be an integer >= {least}, got {self.num_speakers!r}")
        for name in ("hidden_size", "num_layers"):
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.class_weights is not None:
            weights = list(self.class_weights)
            if len(weights) != self.num_classes:  # the cross-field check: one weight per class
                raise ValueError(f"class_weights has {len(weights)} entries but num_classes is {self.num_classes}")
            if not all(is_number(w) and w >= 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f"class_weights must be finite numbers >= 0, not all zero, got {weights!r}")
            self.class_weights = [float(w) for w in weights]

    @property
    def min_speakers(self) -> int:
        """The least num_speakers this config accepts: 0 unless the model embeds speakers."""
        return 0

    @property
    def modalities(self) -> list[str]:
        """The modality names in sorted order, the fixed layout of every per-modality list and of a
        concatenated input, whatever order input_dims came in (a checkpoint's JSON sorts its keys)."""
        return sorted(self.input_dims)

    @property
    def loss_weights(self) -> dict[str, float]:
        """The loss terms the model returns and their weights in the total: the classification loss only."""
        return {"ce": 1.0}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**values)


# --------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------


def check_batch(batch: DialogueBatch, input_dims: dict[str, int], num_speakers: int | None = None) -> None:
    """Clear errors for a batch that does not fit a model (modalities, widths, shapes; speaker ids when
    `num_speakers` is given, i.e. the model embeds speakers). Extra modalities in the batch are ignored."""
    shape = tuple(batch.mask.shape)
    if len(shape) != 2:
        raise ValueError(f"batch.mask must be [B, N], got shape {shape}")
    for m, dim in input_dims.items():
        if m not in batch.features or m not in batch.available:
            raise ValueError(
                f"the model needs modality {m!r} but the batch has features {sorted(batch.features)} "
                f"and available {sorted(batch.available)}"
            )
        if tuple(batch.features[m].shape) != shape + (dim,):
            raise ValueError(
                f"batch.features[{m!r}] has shape {tuple(batch.features[m].shape)}, expected {shape + (dim,)} "
                f"(input_dims[{m!r}] = {dim})"
            )
        if tuple(batch.available[m].shape) != shape:
            raise ValueError(f"batch.available[{m!r}] has shape {tuple(batch.available[m].shape)}, expected {shape}")
    for name in ("speakers", "labels"):
        if tuple(getattr(batch, name).shape) != shape:
            raise ValueError(f"batch.{name} has shape {tuple(getattr(batch, name).shape)}, expected {shape}")
    if num_speakers is not None and batch.speakers.numel():
        speakers = batch.speakers.masked_fill(~batch.mask.bool(), 0)
        low, high = int(speakers.min()), int(speakers.max())
        if low < 0 or high >= num_speakers:
            raise ValueError(f"speaker ids must be in [0, num_speakers={num_speakers}), the batch has {low}..{high}")


def valid_masks(batch: DialogueBatch, modalities: list[str]) -> dict[str, torch.Tensor]:
    """valid[m]: bool [B, N], the turn is real (not padding) and has a feature in modality m."""
    mask = batch.mask.bool()
    return {m: mask & batch.available[m].bool() for m in modalities}


def masked_features(batch: DialogueBatch, valid: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each modality's features [B, N, D_m] with exact zeros wherever valid[m] is False (whatever the
    batch held there, NaN included)."""
    return {m: torch.where(v.unsqueeze(-1), batch.features[m], 0.0) for m, v in valid.items()}


def concatenated_inputs(batch: DialogueBatch, valid: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, N, sum(D_m) + M]: every modality's masked features, then one availability bit per modality,
    so a model can tell "no feature" from "a feature of zeros"."""
    features = masked_features(batch, valid)
    dtype = next(iter(features.values())).dtype
    bits = [v.unsqueeze(-1).to(dtype) for v in valid.values()]
    return torch.cat([*features.values(), *bits], dim=-1)


# --------------------------------------------------------------------------------------------------
# The classification loss
# --------------------------------------------------------------------------------------------------


def labeled_mask(batch: DialogueBatch) -> torch.Tensor:
    """bool [B, N]: real turns with a usable label."""
    return batch.mask.bool() & (batch.labels != IGNORE_LABEL)


def cross_entropy_terms(
    logits: torch.Tensor, labels: torch.Tensor, where: torch.Tensor, class_weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the class-weighted cross-entropy over `where`, total weight), float32 scalars.

    sum / weight is what F.cross_entropy(weight=class_weights) averages; the two are kept apart so that
    an empty selection (or one of zero-weight classes only) averages to 0, not NaN.
    """
    safe_labels = labels.masked_fill(~where, 0)
    per_utterance = F.cross_entropy(logits.float().flatten(0, 1), safe_labels.flatten(), reduction="none")
    per_utterance = per_utterance.view_as(labels)
    weight = where.float() if class_weights is None else where.float() * class_weights.float()[safe_labels]
    return torch.where(where, per_utterance * weight, 0.0).sum(), weight.sum()


def mean_over_groups(terms: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The mean over groups (e.g. modalities) of each group's own average sum / weight; a group with no
    weight is left out, and no group at all gives 0. Tensor operations only, no Python branch, so every
    parameter stays in the graph (DDP expects a gradient, if zero, for each)."""
    sums = torch.stack([s for s, _ in terms])
    weights = torch.stack([w for _, w in terms])
    present = (weights > 0).float()
    per_group = sums / weights.clamp_min(1e-12)
    return ((per_group * present).sum() / present.sum().clamp_min(1.0)).clamp_min(0.0)


def classification_output(
    logits: torch.Tensor, batch: DialogueBatch, class_weights: torch.Tensor | None
) -> DialogueModelOutput:
    """The output of a model whose only loss is the class-weighted cross-entropy of `logits` ("ce")."""
    labeled = labeled_mask(batch)
    if not bool(labeled.any()):
        return DialogueModelOutput(logits=logits)
    ce = mean_over_groups([cross_entropy_terms(logits, batch.labels, labeled, class_weights)])
    return DialogueModelOutput(logits=logits, losses={"ce": ce}, loss=ce)


__all__ = [
    "BaselineConfig",
    "DialogueModelOutput",
    "check_batch",
    "classification_output",
    "concatenated_inputs",
    "cross_entropy_terms",
    "labeled_mask",
    "masked_features",
    "mean_over_groups",
    "valid_masks",
]
