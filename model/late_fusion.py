"""`late_fusion`: one classifier per modality, averaged. Each modality is classified alone, utterance by
utterance; the modalities meet only in the prediction.

    modality_logits[m] = num_layers x (Linear -> GELU -> dropout) -> Linear, on modality m's features
    prediction         = the mean of softmax(modality_logits[m]) over the modalities the utterance has
                         (an unavailable modality is left out of the mean, not counted as a zero);
                         `logits` is its log, so softmax(logits) is that mean exactly. An utterance with
                         no modality at all gets uniform probabilities.

Loss ("ce"): each classifier's class-weighted cross-entropy over the labeled real turns that have its
modality, averaged over the modalities present in the batch: the classifiers learn independently,
as late fusion trains them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from model.batch import DialogueBatch
from model.common import (
    BaselineConfig,
    DialogueModelOutput,
    check_batch,
    cross_entropy_terms,
    labeled_mask,
    masked_features,
    mean_over_groups,
    valid_masks,
)


@dataclass
class LateFusionConfig(BaselineConfig):
    """hidden_size, num_layers: width and number of hidden layers of each modality's classifier.
    num_speakers is taken (every config takes the data's fields) but not used."""


def modality_classifier(input_dim: int, config: LateFusionConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = input_dim
    for _ in range(config.num_layers):
        layers += [nn.Linear(width, config.hidden_size), nn.GELU(), nn.Dropout(config.dropout)]
        width = config.hidden_size
    return nn.Sequential(*layers, nn.Linear(width, config.num_classes))


def average_of_available(modality_logits: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> torch.Tensor:
    """float32 [B, N, C]: log of the mean over the available modalities of softmax(modality_logits[m]);
    zeros (uniform) where no modality is available. Computed as a log-sum-exp, so it is exact and finite."""
    log_probs = torch.stack([modality_logits[m].float().log_softmax(dim=-1) for m in valid])  # [M, B, N, C]
    present = torch.stack(list(valid.values())).unsqueeze(-1)  # [M, B, N, 1]
    count = present.sum(dim=0)  # [B, N, 1]
    nobody = count == 0
    # -inf leaves a modality out of the sum; where nobody is present, every modality takes part (finite,
    # so no NaN even in the backward pass) and the result is replaced by zeros below
    selected = torch.where(present | nobody, log_probs, -math.inf)
    averaged = torch.logsumexp(selected, dim=0) - torch.log(count.clamp_min(1).float())
    return torch.where(nobody, 0.0, averaged)


class LateFusion(nn.Module):
    """See the module docstring."""

    def __init__(self, config: LateFusionConfig):
        super().__init__()
        self.config = config
        self.modalities = config.modalities
        self.classifiers = nn.ModuleDict(
            {m: modality_classifier(config.input_dims[m], config) for m in self.modalities}
        )
        class_weights = torch.tensor(config.class_weights) if config.class_weights is not None else None
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, batch: DialogueBatch) -> DialogueModelOutput:
        check_batch(batch, self.config.input_dims)
        valid = valid_masks(batch, self.modalities)
        features = masked_features(batch, valid)
        modality_logits = {m: self.classifiers[m](features[m]) for m in self.modalities}  # each [B, N, C]
        logits = average_of_available(modality_logits, valid)

        labeled = labeled_mask(batch)
        if not bool(labeled.any()):
            return DialogueModelOutput(logits=logits, modality_logits=modality_logits)
        ce = mean_over_groups([
            cross_entropy_terms(modality_logits[m], batch.labels, labeled & valid[m], self.class_weights)
            for m in self.modalities
        ])
        return DialogueModelOutput(logits=logits, modality_logits=modality_logits, losses={"ce": ce}, loss=ce)


__all__ = ["LateFusion", "LateFusionConfig", "average_of_available"]
