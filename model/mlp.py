"""`mlp`: the utterance-level baseline. Each utterance is classified alone, from its concatenated
modalities; no dialogue context, no speaker.

    input  = [features of every modality, zeros where unavailable ; one availability bit per modality]
    hidden = num_layers x (Linear -> GELU -> dropout), width hidden_size
    logits = Linear(hidden) -> num_classes

Loss: the class-weighted cross-entropy over labeled real turns ("ce"), as CMATH's "ce".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.batch import DialogueBatch
from model.common import (
    BaselineConfig,
    DialogueModelOutput,
    check_batch,
    classification_output,
    concatenated_inputs,
    valid_masks,
)


@dataclass
class MLPConfig(BaselineConfig):
    """hidden_size: width of each hidden layer; num_layers: how many hidden layers. num_speakers is
    taken (every config takes the data's fields) but not used: the model sees no speaker."""


class UtteranceMLP(nn.Module):
    """See the module docstring."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        self.modalities = config.modalities
        width = sum(config.input_dims.values()) + len(config.input_dims)
        layers: list[nn.Module] = []
        for _ in range(config.num_layers):
            layers += [nn.Linear(width, config.hidden_size), nn.GELU(), nn.Dropout(config.dropout)]
            width = config.hidden_size
        self.hidden_layers = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, config.num_classes)
        class_weights = torch.tensor(config.class_weights) if config.class_weights is not None else None
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, batch: DialogueBatch) -> DialogueModelOutput:
        check_batch(batch, self.config.input_dims)
        valid = valid_masks(batch, self.modalities)
        utterances = concatenated_inputs(batch, valid)  # [B, N, sum(D_m) + M]
        logits = self.classifier(self.hidden_layers(utterances))  # [B, N, C]
        return classification_output(logits, batch, self.class_weights)


__all__ = ["MLPConfig", "UtteranceMLP"]
