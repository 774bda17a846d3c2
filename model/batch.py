"""The contract between the dialogue data loader and the model: one padded batch of dialogues."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

IGNORE_LABEL = -100  # label of padding and of utterances without a usable label (cross_entropy's default)


@dataclass
class DialogueBatch:
    """B dialogues padded to N utterances. Modalities are keyed by name ("text", "audio", "face").

    features[m]:  float [B, N, D_m]; zeros where not available
    available[m]: bool  [B, N]; True where utterance i has a feature in modality m
    speakers:     long  [B, N]; per-corpus speaker ids (0 on padding)
    mask:         bool  [B, N]; True on real utterances, False on padding
    labels:       long  [B, N]; class index, IGNORE_LABEL on padding
    utterance_ids: B lists of the real utterances' ids, in dialogue order (for predictions files)
    """

    features: dict[str, torch.Tensor]
    available: dict[str, torch.Tensor]
    speakers: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor
    utterance_ids: list[list[str]]

    def to(self, device: torch.device | str) -> DialogueBatch:
        def move(value):
            if isinstance(value, torch.Tensor):
                return value.to(device, non_blocking=True)
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            return value

        return DialogueBatch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

    @property
    def modalities(self) -> list[str]:
        return list(self.features)
