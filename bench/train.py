"""Benchmark of CMATH training: utterances/s and the share of step time spent waiting on data.

Synthetic features shaped like the real corpora (text 1024-d, audio 1024-d, face 512-d):
  iemocap-like: 151 dialogues, 7433 utterances;  meld-like: 1432 dialogues, 13708 utterances.
Batches come from the trainer's own `SplitData.collate` and `DialogueBatchSampler` through a
DataLoader, exactly as `mer train` feeds them; the model is the default-size CMATH (hidden 256,
2 layers). "Data wait" is the time `next(loader)` takes; a step is wait + forward + backward +
optimizer. Target: data wait < 5% of step time.

    python bench/train.py                      # CPU, a few steps per corpus shape
    python bench/train.py --device cuda --steps 50
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from model.cmath import CMATH, CMATHConfig
from pipeline.training.data import DialogueBatchSampler, DialogueIndices, SplitData

SHAPES = {"iemocap-like": (151, 7433, 6), "meld-like": (1432, 13708, 7)}
DIMS = {"text": 1024, "audio": 1024, "face": 512}


def synthetic_split(dialogues: int, utterances: int, classes: int, seed: int = 0) -> SplitData:
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, utterances), size=dialogues - 1, replace=False))
    offsets = [0, *cuts.tolist(), utterances]
    generator = torch.Generator().manual_seed(seed)
    return SplitData(
        name="train",
        dialogue_ids=[f"d{i}" for i in range(dialogues)],
        offsets=offsets,
        utterance_ids=[f"u{i}" for i in range(utterances)],
        features={m: torch.randn(utterances, d, generator=generator) for m, d in DIMS.items()},
        available={m: torch.rand(utterances, generator=generator) > 0.05 for m in DIMS},
        speakers=torch.randint(0, 2, (utterances,), generator=generator),
        labels=torch.randint(0, classes, (utterances,), generator=generator),
    )


def run(name: str, device: torch.device, steps: int, batch_size: int, workers: int) -> dict[str, float]:
    dialogues, utterances, classes = SHAPES[name]
    split = synthetic_split(dialogues, utterances, classes)
    sampler = DialogueBatchSampler(split.lengths, batch_size, shuffle=True)
    loader = DataLoader(DialogueIndices(split), batch_sampler=sampler, collate_fn=split.collate,
                        num_workers=workers, pin_memory=device.type == "cuda")  # fmt: skip
    model = CMATH(CMATHConfig(input_dims=DIMS, num_classes=classes, num_speakers=3)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    use_bf16 = device.type == "cuda"
    wait = compute = 0.0
    done_utterances = done = 0
    batches = iter(loader)
    while done < steps + 1:  # the first step is a warm-up, not counted
        t0 = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        batch = batch.to(device)
        t1 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if done > 0:
            wait += t1 - t0
            compute += t2 - t1
            done_utterances += int(batch.mask.sum())
        done += 1
    total = wait + compute
    return {"utt_per_s": done_utterances / total, "data_wait_pct": 100 * wait / total, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8, help="dialogues per step")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (collate is cheap slicing)")
    args = parser.parse_args()
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}; batch {args.batch_size} dialogues; {args.steps} timed steps\n")
    print("| shape | utterances/s | data wait % of step |\n|---|---|---|")
    for name in SHAPES:
        result = run(name, device, args.steps, args.batch_size, args.workers)
        print(f"| {name} | {result['utt_per_s']:.0f} | {result['data_wait_pct']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
