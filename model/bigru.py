"""`bigru`: the dialogue-context baseline, DialogueRNN-like. A bidirectional GRU runs over the turns of
each dialogue, so every utterance is classified with what was said before and after it, and who said it.

    utterance = Linear -> GELU -> dropout of [features of every modality, zeros where unavailable ;
                one availability bit per modality], width hidden_size
              + speaker embedding (use_speaker_embedding; one vector per speaker id, 0 = "other")
    context   = BiGRU(num_layers, hidden_size per direction) over the dialogue's real turns only
                (packed sequences: padding is never read, in either direction)
    logits    = dropout -> Linear([forward state ; backward state]) -> num_classes

Loss: the class-weighted cross-entropy over labeled real turns ("ce"), as CMATH's "ce".
The GRU runs in float32 even under autocast (a recurrence accumulates rounding over the turns).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

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
class BiGRUConfig(BaselineConfig):
    """hidden_size: the utterance width and the GRU's state width per direction; num_layers: GRU depth
    (dropout also applies between GRU layers)."""

    use_speaker_embedding: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.use_speaker_embedding, bool):
            raise ValueError(f"use_speaker_embedding must be true or false, got {self.use_speaker_embedding!r}")
        super().__post_init__()

    @property
    def min_speakers(self) -> int:
        return 1 if self.use_speaker_embedding else 0


def dialogue_lengths(mask: torch.Tensor) -> torch.Tensor:
    """long [B]: each dialogue's number of real turns; the real turns must come first (padding at the end,
    as `DialogueBatch` is built), which packing relies on."""
    lengths = mask.sum(dim=1)
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(mask, positions.unsqueeze(0) < lengths.unsqueeze(1)):
        raise ValueError("batch.mask must be True on a prefix of each row (real turns first, then padding)")
    return lengths


class DialogueBiGRU(nn.Module):
    """See the module docstring."""

    def __init__(self, config: BiGRUConfig):
        super().__init__()
        self.config = config
        self.modalities = config.modalities
        size = config.hidden_size
        width = sum(config.input_dims.values()) + len(config.input_dims)
        self.utterance_encoder = nn.Sequential(nn.Linear(width, size), nn.GELU(), nn.Dropout(config.dropout))
        self.speaker_embedding = None
        if config.use_speaker_embedding:
            self.speaker_embedding = nn.Embedding(config.num_speakers, size)
            nn.init.normal_(self.speaker_embedding.weight, std=0.02)
        self.gru = nn.GRU(
            size, size, num_layers=config.num_layers, batch_first=True, bidirectional=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.classifier = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(2 * size, config.num_classes))
        class_weights = torch.tensor(config.class_weights) if config.class_weights is not None else None
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, batch: DialogueBatch) -> DialogueModelOutput:
        config = self.config
        check_batch(batch, config.input_dims, config.num_speakers if self.speaker_embedding is not None else None)
        mask = batch.mask.bool()
        lengths = dialogue_lengths(mask)
        valid = valid_masks(batch, self.modalities)

        utterances = self.utterance_encoder(concatenated_inputs(batch, valid))  # [B, N, D]
        if self.speaker_embedding is not None:
            utterances = utterances + self.speaker_embedding(batch.speakers.masked_fill(~mask, 0)).to(utterances.dtype)

        with torch.autocast(device_type=utterances.device.type, enabled=False):
            # a dialogue of no real turn (never made by the loader) is packed as one ignored turn
            packed = pack_padded_sequence(
                utterances.float(), lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False
            )
            states, _ = self.gru(packed)
            context, _ = pad_packed_sequence(states, batch_first=True, total_length=mask.shape[1])  # [B, N, 2D]

        logits = self.classifier(context)  # [B, N, C]; zeros in, bias out on padding
        return classification_output(logits, batch, self.class_weights)


__all__ = ["BiGRUConfig", "DialogueBiGRU", "dialogue_lengths"]
