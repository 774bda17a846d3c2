"""The passes the train and evaluate stages run: one training epoch, and gathered predictions.

Built on HF accelerate, so the same code runs on CPU, one GPU, or several processes
(`accelerate launch --multi_gpu --num_processes N -m pipeline.cli train ...`, which on a machine
without GPUs runs N CPU processes with gloo; accelerate 1.x's `--cpu --num_processes N` starts ONE
process unless an MPI hostfile is given). Predictions are gathered per dialogue with
`gather_for_metrics` and unpadded per utterance. The passes do not know which model they run: any
model of `model.registry`, whose output (`model.common.DialogueModelOutput`) gives the `loss` to
backpropagate, its `losses` terms to log and the `logits` to predict with.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from model.batch import DialogueBatch
from pipeline.core.errors import PipelineError
from pipeline.training.data import DialogueBatchSampler, DialogueIndices, SplitData
from pipeline.training.metrics import classification_metrics

MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
SCHEDULERS = ("cosine", "constant")


def resolve_mixed_precision(mode: str, cpu: bool = False) -> str:
    """"auto": bf16 on a GPU, no on CPU; any other mode as given."""
    if mode == "auto":
        return "bf16" if torch.cuda.is_available() and not cpu else "no"
    return mode


def make_accelerator(mode: str, cpu: bool = False) -> Accelerator:
    """An Accelerator for this process, with `mode` resolved by `resolve_mixed_precision`.

    Several processes on a machine without GPUs (`accelerate launch --multi_gpu --num_processes N`
    there) run on CPU with gloo; accelerate would otherwise start each process alone, and N
    independent runs would write the same folder, so that mismatch is an error.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and not torch.cuda.is_available():
        cpu = True
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(mode, cpu), cpu=cpu)
    if accelerator.num_processes != world:
        raise PipelineError(
            f"launched as {world} processes but accelerate joined {accelerator.num_processes}; "
            "check the launcher's settings (`accelerate launch --multi_gpu --num_processes N`)"
        )
    return accelerator


def is_main_launch_process() -> bool:
    """Whether this is the main process (rank 0) of the launch, known before any Accelerator exists
    (from the launcher's RANK, as torch.distributed reads it; a single process is its own main).
    Only the main process takes an output's lock (`pipeline.core.locks`): it is the one that writes."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def dialogue_loader(split: SplitData, sampler: DialogueBatchSampler) -> DataLoader:
    """Batches of whole dialogues of `split`, in the order `sampler` gives."""
    return DataLoader(DialogueIndices(split), batch_sampler=sampler, collate_fn=split.collate)


def lr_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float, kind: str
                ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_ratio` of the steps, then cosine decay to 0 or a constant rate."""
    warmup_steps = int(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


ANCHOR_MODALITY = "text"  # never dropped nor left out: the modality every prediction keeps


def with_modalities(batch: DialogueBatch, keep: Sequence[str]) -> DialogueBatch:
    """The batch as if only the modalities in `keep` had features (the others unavailable everywhere)."""
    available = {m: a if m in keep else torch.zeros_like(a) for m, a in batch.available.items()}
    return replace(batch, available=available)


def drop_modalities(batch: DialogueBatch, rate: float, generator: torch.Generator) -> DialogueBatch:
    """Modality dropout: each utterance loses each modality but ANCHOR_MODALITY with probability `rate`
    (drawn on CPU from `generator`, so a resumed run draws the same), so the model learns to predict
    without any of them and cannot lean on one alone."""
    if rate <= 0:
        return batch
    available = {}
    for m, present in batch.available.items():
        if m == ANCHOR_MODALITY:
            available[m] = present
            continue
        kept = torch.rand(present.shape, generator=generator) >= rate
        available[m] = present & kept.to(present.device)
    return replace(batch, available=available)


def modality_subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every subset that keeps ANCHOR_MODALITY (or all, without it), the full set first, then by size."""
    if ANCHOR_MODALITY not in modalities:
        return [tuple(modalities)]
    others = [m for m in modalities if m != ANCHOR_MODALITY]
    subsets = [(ANCHOR_MODALITY, *c) for k in range(len(others), -1, -1) for c in itertools.combinations(others, k)]
    return [tuple(m for m in modalities if m in subset) for subset in subsets]


def train_epoch(accelerator: Accelerator, model, loader, optimizer, scheduler, grad_clip: float,
                loss_names: list[str], modality_dropout: float = 0.0,
                generator: torch.Generator | None = None) -> dict[str, float]:
    """One pass over the training dialogues: {"loss": mean total loss, <term>: mean of each loss term},
    averaged over the batches of all processes. `modality_dropout` > 0 needs `generator`."""
    model.train()
    sums = torch.zeros(2 + len(loss_names), dtype=torch.float64, device=accelerator.device)  # loss, batches, terms
    for batch in loader:
        if modality_dropout > 0:
            batch = drop_modalities(batch, modality_dropout, generator)
        output = model(batch)
        # a batch without any label still takes part (zero loss), so processes stay in step
        loss = output.loss if output.loss is not None else output.logits.sum() * 0.0
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        zero, one = torch.zeros((), device=loss.device), torch.ones((), device=loss.device)
        terms = [output.losses.get(name, zero).detach() for name in loss_names]
        sums += torch.stack([loss.detach().float(), one, *[t.float() for t in terms]]).to(sums)
    sums = accelerator.reduce(sums, reduction="sum").cpu()
    losses = {"loss": float(sums[0] / sums[1])}
    losses.update({name: float(sums[2 + i] / sums[1]) for i, name in enumerate(loss_names)})
    return losses


@dataclass
class Predictions:
    """One row per utterance of the split, in the split's (dialogue, turn) order."""

    split: SplitData
    probabilities: np.ndarray  # float [U, C]

    @property
    def gold(self) -> np.ndarray:
        return self.split.labels.numpy()

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


def predict(accelerator: Accelerator, model, loader, split: SplitData, num_classes: int,
            modalities: Sequence[str] | None = None) -> Predictions:
    """Run `model` over `loader` (prepared by `accelerator`) and gather every utterance's probabilities.

    Each batch row is a whole dialogue: its index in the split is gathered with its padded
    probabilities (`gather_for_metrics` drops the dialogues duplicated to even out the last batch
    across processes), then the valid utterances are unpadded by the split's own offsets. Every
    utterance must come back exactly once.
    """
    model.eval()
    probabilities = np.zeros((split.num_utterances, num_classes), dtype=np.float32)
    seen = np.zeros(split.num_utterances, dtype=np.int64)
    with torch.no_grad():
        for batch in loader:
            output = model(batch if modalities is None else with_modalities(batch, modalities))
            probs = output.logits.float().softmax(dim=-1)
            index = torch.tensor(
                [split.dialogue_index(ids[0]) for ids in batch.utterance_ids], dtype=torch.long, device=probs.device
            )
            probs = accelerator.pad_across_processes(probs, dim=1)
            index, probs = accelerator.gather_for_metrics((index, probs))
            probs = probs.cpu().numpy()
            for row, dialogue in enumerate(index.tolist()):
                start, end = split.offsets[dialogue], split.offsets[dialogue + 1]
                probabilities[start:end] = probs[row, : end - start]
                seen[start:end] += 1
    if not (seen == 1).all():
        twice, never = int((seen > 1).sum()), int((seen == 0).sum())
        raise RuntimeError(
            f"{split.name}: gathered predictions cover {never} utterance(s) never and {twice} more than once"
        )
    return Predictions(split, probabilities)



def score(accelerator: Accelerator, model, loader, split: SplitData, label_names: list[str],
          modalities: Sequence[str] | None = None) -> dict:
    """The split's classification metrics (`pipeline.training.metrics`) under the current weights, using
    only `modalities` (None: all the batch has)."""
    predictions = predict(accelerator, model, loader, split, len(label_names), modalities)
    return classification_metrics(predictions.gold, predictions.predicted, label_names)
