"""Benchmark of the extract stage: throughput and peak memory, per modality, at two corpus sizes.

For each modality it times, on the same inputs:
  (a) loop:     one utterance at a time: decode its clip, run the model on it (how peer
                toolkits' extraction scripts work); no batching, no decode workers;
  (b) pipeline: `pipeline.stages.extract.extract_features` as the DVC stage runs it (length-bucketed
                batches, DataLoader decode workers, store writing included);
  (c) model:    the extractor's `encode` alone on pre-decoded, bucketed batches: the limit.
and prints utterances/s, (b)/(a), (b)/(c), and each run's peak RSS. Every (mode, modality, size)
runs in a fresh process so peak RSS is its own.

Inputs: a demo corpus in the MELD layout generated with realistic utterance lengths (2-6 s, like
MELD's mean of ~3.6 s), its manifest repeated to the requested sizes (same clips, new ids).
Models: random weights at the real architectures' sizes (`--model-size base`: RoBERTa-base and
wav2vec2-base shapes; FaceNet is always the real InceptionResnetV1 with MTCNN), or the tiny
stand-ins (`--model-size tiny`). Speed does not depend on the weights' values.

    python bench/extract.py                        # CPU, all modalities, sizes 64 and 256
    python bench/extract.py --modalities text --sizes 128 512 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.core.torchvision_compat import ensure_torchvision_ops

ensure_torchvision_ops()

MODES = ("loop", "pipeline", "model")
# the real checkpoints' shapes, random weights (roberta-base: 12 x 768; wav2vec2-base: 12 x 768)
BASE_ROBERTA = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
BASE_WAV2VEC2 = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
                 "conv_dim": (512,) * 7, "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16}  # fmt: skip


def build_models(out: Path, size: str) -> dict[str, Path]:
    from pipeline.demo import tiny_models

    if size == "tiny":
        return tiny_models.build_all(out)
    from transformers import RobertaConfig, RobertaModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    tokenizer = tiny_models.train_roberta_tokenizer()
    roberta = {**tiny_models.ROBERTA_CONFIG, **BASE_ROBERTA, "vocab_size": len(tokenizer)}
    tokenizer.save_pretrained(out / "text")
    RobertaModel(RobertaConfig(**roberta)).save_pretrained(out / "text")
    Wav2Vec2FeatureExtractor(**tiny_models.WAV2VEC2_FEATURE_EXTRACTOR).save_pretrained(out / "audio")
    Wav2Vec2Model(Wav2Vec2Config(**{**tiny_models.WAV2VEC2_CONFIG, **BASE_WAV2VEC2})).save_pretrained(out / "audio")
    tiny_models.build_random_facenet(out / "face.safetensors")
    return {"text": out / "text", "audio": out / "audio", "face": out / "face.safetensors"}


def sections(models: dict[str, Path], device: str, workers: int) -> dict[str, dict[str, Any]]:
    common = {"device": device, "num_workers": workers, "shard_size": 128}
    return {
        "text": {**common, "model": str(models["text"]), "layers": [-1], "context_window": 2, "batch_size": 32},
        "audio": {**common, "model": str(models["audio"]), "layers": [-1], "pooling": "mean_std", "batch_size": 16},
        "face": {**common, "weights": str(models["face"]), "fps": 2.0, "max_frames": 16, "batch_size": 4},
    }


def prepare_inputs(work: Path, sizes: list[int]) -> dict[int, Path]:
    """A realistic-length demo corpus, prepared, its manifest repeated to each size."""
    from pipeline.demo.corpus import DemoConfig, generate_demo_corpus
    from pipeline.stages.prepare import prepare_corpus

    config = DemoConfig(meld_dialogues_train=8, meld_dialogues_dev=2, meld_dialogues_test=2,
                        iemocap_dialogues_train=4, iemocap_dialogues_dev=1, iemocap_dialogues_test=1, iemocap_turns_per_dialogue=(4, 4),
                        utterance_duration_s=(2.0, 6.0))  # fmt: skip
    generate_demo_corpus(work / "corpus", config)
    prepare_corpus("meld", work / "corpus" / "MELD.Raw", work / "prepared")
    table = pq.read_table(work / "prepared" / "manifest.parquet")
    out = {}
    for n in sizes:
        copies = []
        for k in range(-(-n // table.num_rows)):
            copy = table
            for column in ("utterance_id", "dialogue_id"):
                values = [f"{v}#{k}" for v in copy.column(column).to_pylist()]
                copy = copy.set_column(copy.schema.get_field_index(column), column, pa.array(values))
            copies.append(copy)
        folder = work / f"manifest-{n}"
        folder.mkdir()
        pq.write_table(pa.concat_tables(copies).slice(0, n), folder / "manifest.parquet")
        out[n] = folder
    return out


def peak_rss_mb() -> tuple[float, float]:
    """Peak RSS of this process and of its largest child (decode workers), in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, child


def run_mode(mode: str, modality: str, manifest: Path, section: dict[str, Any], out: Path) -> dict[str, Any]:
    """One measurement, in this process. Model loading is outside the timed region in every mode."""
    from pipeline.stages.extract import build_extractor, extract_features
    from pipeline.formats.manifest import manifest_metadata, read_manifest

    rows = read_manifest(manifest)
    root = Path(manifest_metadata(manifest / "manifest.parquet")["raw_root"])
    extractor = build_extractor(modality, section, root, "bench")
    extractor.plan(rows)
    decode = extractor.decoder()
    with torch.inference_mode():  # warm-up: first calls allocate and pick kernels
        first = next(item for item in map(decode, rows) if not item.missing)
        extractor.encode([first])
    start = time.perf_counter()
    if mode == "pipeline":
        extract_features(modality, manifest, out, section, extractor=extractor)
    elif mode == "loop":
        with torch.inference_mode():
            for row in rows:
                item = decode(row)
                if not item.missing:
                    extractor.encode([item])
    else:
        decoded = [decode(row) for row in rows]
        batches = [[decoded[i] for i in batch if not decoded[i].missing] for batch in extractor.batches(rows)]
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in filter(None, batches):
                extractor.encode(batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    own, child = peak_rss_mb()
    return {"seconds": seconds, "utterances": len(rows), "utt_per_s": len(rows) / seconds,
            "peak_rss_mb": own, "peak_worker_rss_mb": child}  # fmt: skip


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    from extractors.base import cpu_threads

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {cpu_threads()} cores, {gpu}, torch {torch.__version__}"


def table(results: list[dict[str, Any]]) -> str:
    lines = ["| modality | utterances | (a) loop utt/s | (b) pipeline utt/s | (c) model utt/s | (b)/(a) | (b)/(c) "
             "| peak RSS MiB a / b (+worker) / c |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        a, b, c = (r[m] for m in MODES)
        lines.append(
            f"| {r['modality']} | {r['size']} | {a['utt_per_s']:.1f} | {b['utt_per_s']:.1f} | {c['utt_per_s']:.1f} "
            f"| {b['utt_per_s'] / a['utt_per_s']:.2f} | {b['utt_per_s'] / c['utt_per_s']:.2f} "
            f"| {a['peak_rss_mb']:.0f} / {b['peak_rss_mb']:.0f} (+{b['peak_worker_rss_mb']:.0f}) / {c['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modalities", nargs="+", default=["text", "audio", "face"])
    parser.add_argument("--sizes", nargs=2, type=int, default=[64, 256])
    parser.add_argument("--model-size", choices=["base", "tiny"], default="base")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2, help="decode workers of the pipeline run (b)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--_one", nargs=4, metavar=("MODE", "MODALITY", "MANIFEST", "SECTION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        mode, modality, manifest, section = args._one
        out = Path(tempfile.mkdtemp(prefix="bench-store-"))
        print(json.dumps(run_mode(mode, modality, Path(manifest), json.loads(section), out / "store")))
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-extract-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}\nscratch: {work}", flush=True)
    models = build_models(work / "models", args.model_size)
    manifests = prepare_inputs(work, args.sizes)
    config = sections(models, args.device, args.workers)
    results = []
    for modality in args.modalities:
        for size in args.sizes:
            row: dict[str, Any] = {"modality": modality, "size": size}
            for mode in MODES:
                cmd = [sys.executable, __file__, "--_one", mode, modality, str(manifests[size]), json.dumps(config[modality])]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{mode} {modality} {size} failed:\n{done.stderr[-3000:]}")
                row[mode] = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{modality:5s} n={size:4d} {mode:8s} {row[mode]['utt_per_s']:8.1f} utt/s  "
                      f"peak RSS {row[mode]['peak_rss_mb']:.0f} MiB", flush=True)
            results.append(row)
    print(f"\nmodels: {args.model_size}; pipeline decode workers: {args.workers}; machine: {machine()}\n")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "model_size": args.model_size, "results": results}, indent=2))


if __name__ == "__main__":
    main()
