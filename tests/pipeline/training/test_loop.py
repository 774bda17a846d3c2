"""The passes' modality handling: modality dropout in training, modality subsets at scoring."""

from __future__ import annotations

import torch

from model.batch import IGNORE_LABEL, DialogueBatch
from pipeline.training.loop import ANCHOR_MODALITY, drop_modalities, modality_subsets, with_modalities


def batch(dialogues: int = 4, length: int = 50) -> DialogueBatch:
    shape = (dialogues, length)
    return DialogueBatch(
        features={m: torch.randn(*shape, 3) for m in ("text", "audio", "face")},
        available={m: torch.ones(shape, dtype=torch.bool) for m in ("text", "audio", "face")},
        speakers=torch.zeros(shape, dtype=torch.long), mask=torch.ones(shape, dtype=torch.bool),
        labels=torch.full(shape, IGNORE_LABEL), utterance_ids=[[] for _ in range(dialogues)],
    )


def test_modality_dropout_drops_each_other_modality_at_its_rate_and_never_text():
    original = batch()
    original.available["face"][0, :10] = False  # already missing stays missing
    dropped = drop_modalities(original, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(dropped.available[ANCHOR_MODALITY], original.available[ANCHOR_MODALITY])
    for m in ("audio", "face"):
        share = 1 - dropped.available[m].float().mean().item()
        assert 0.22 < share < 0.40, (m, share)  # 200 draws at 0.3 (face: plus its 10 missing)
        assert not (dropped.available[m] & ~original.available[m]).any()
    assert not torch.equal(dropped.available["audio"], dropped.available["face"])  # independent draws
    again = drop_modalities(original, 0.3, torch.Generator().manual_seed(0))
    assert all(torch.equal(again.available[m], dropped.available[m]) for m in again.available)  # resumable
    assert drop_modalities(original, 0.0, None) is original


def test_subsets_keep_text_and_start_with_all_modalities():
    assert modality_subsets(["text", "audio", "face"]) == [
        ("text", "audio", "face"), ("text", "audio"), ("text", "face"), ("text",)]
    assert modality_subsets(["audio", "face"]) == [("audio", "face")]  # no anchor: all or nothing
    assert modality_subsets(["text"]) == [("text",)]


def test_with_modalities_marks_the_others_unavailable_and_keeps_the_features():
    original = batch(1, 5)
    only_text = with_modalities(original, ("text",))
    assert only_text.available["text"].all() and not only_text.available["audio"].any()
    assert torch.equal(only_text.features["audio"], original.features["audio"])  # masks, not values, decide
    assert original.available["audio"].all()  # the input batch is left as it was
