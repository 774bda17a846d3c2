"""The `extract` stage: a manifest -> the feature store of one feature set.

A feature set is a named `extract.<set>` section of params.yaml: a modality, an extractor and its
settings, e.g. `audio` (hf_audio) beside `audio_egemaps` (opensmile). Its store is
`data/features/<corpus>/<set>`, and training picks one set per modality (`train.features`). The
store records the set's name and the hash of the code that made it (`extractors.base.code_sha256`),
so an edited extractor redoes every shard, not only reruns the stage.

Work goes shard by shard (the store's unit of resumption). Within a shard the extractor sorts rows
by its size hint and cuts them into batches (length bucketing); DataLoader worker processes decode
those batches while the main process runs the model on the previous one. Batches never cross a
shard boundary, so a shard's features do not depend on which shards were already done: a run
killed with SIGKILL and started again writes the same bytes as an uninterrupted run.

Memory is bounded by the shard size and the loader's prefetch depth, not by the corpus size:
a finished shard is written and dropped before the next one is assembled.

A fitted extractor (`needs_fit`, e.g. `tfidf`) is fitted before any shard is encoded, on the rows
whose split is "train" and nothing else; its state is saved in the store (`fitted.safetensors`)
and hashed into the store's identity. A rerun with the same train inputs and fit params reuses the
saved state instead of refitting (a killed run resumes with it); other train inputs or params refit
and redo every shard. Either way the extractor encodes from the state as stored, read back from its
bytes, so a fresh and a resumed run encode with identical numbers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from extractors.base import (
    STORE_DTYPES,
    Decoded,
    Decoder,
    Encoded,
    Extractor,
    ExtractorConfig,
    FittedState,
    bound_kernel_cache,
    code_sha256,
    cpu_threads,
    extractor_for,
    fit_sha256,
    resolve_device,
)
from pipeline.core.params import MODALITIES, check_value, reported_at, section_to_dataclass
from pipeline.core.errors import PipelineError
from pipeline.core.outputs import check_output
from pipeline.formats.feature_store import (
    FeatureStoreWriter,
    StoreMetadata,
    fitted_state_bytes,
    is_store_folder,
    parse_fitted_state,
    saved_fitted_state,
)
from pipeline.core.fingerprint import sha256_file
from pipeline.formats.manifest import MANIFEST_FILE, manifest_metadata, raw_root_of, read_manifest
from pipeline.core.progress import progress

# fast tokenizers warn (and may deadlock) when a process that used them forks DataLoader workers
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class _DecodeDataset(Dataset):
    """Row i -> Decoded, in a worker; an unexpected decoder error names the utterance it failed on."""

    def __init__(self, rows: Sequence[dict[str, Any]], decoder: Decoder) -> None:
        self.rows = rows
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Decoded:
        row = self.rows[i]
        try:
            return self.decoder(row)
        except PipelineError:
            raise
        except Exception as exc:  # a decoder bug, not bad media (decoders turn that into `missing`)
            raise PipelineError(
                f"decoding utterance {row['utterance_id']} failed unexpectedly: {type(exc).__name__}: {exc}"
            ) from exc


def _as_list(batch: list[Decoded]) -> list[Decoded]:
    return batch


def set_modality(feature_set: str, section: dict[str, Any], where: str) -> str:
    """A feature set's modality: its section's `modality`, else its name when that is a modality."""
    with reported_at(where):
        modality = check_value(section.get("modality", ""), str, "modality")
    if not modality:
        if feature_set not in MODALITIES:
            raise PipelineError(
                f"{where}.modality: missing; feature set {feature_set!r} must say its modality "
                f"({', '.join(MODALITIES)})"
            )
        return feature_set
    if modality not in MODALITIES:
        raise PipelineError(f"{where}.modality: must be one of {', '.join(MODALITIES)}, got {modality!r}")
    return modality


def extractor_config(
    feature_set: str, section: dict[str, Any] | None, where: str
) -> tuple[type[Extractor], ExtractorConfig]:
    """The extractor class of a feature set and its config from `section` (`extract.<set>`; None =
    all defaults), `where` being the section's label in messages, e.g. "params.yaml:extract.text".
    The section's `modality` and `extractor` pick the class, whose config class the whole section is
    checked against."""
    with reported_at(where):
        section = check_value({} if section is None else section, dict[str, Any])
        name = check_value(section.get("extractor", ""), str, "extractor")
    modality = set_modality(feature_set, section, where)
    cls = extractor_for(modality, name)
    return cls, section_to_dataclass(cls.config_class, {**section, "modality": modality}, where)


def build_extractor(feature_set: str, section: dict[str, Any] | None, raw_root: Path, where: str) -> Extractor:
    """The configured extractor of a feature set (see `extractor_config`), its model loaded on the configured device."""
    cls, config = extractor_config(feature_set, section, where)
    device = resolve_device(config.device)
    torch.set_num_threads(cpu_threads())
    bound_kernel_cache()  # before the model first runs: memory flat in corpus size (extractors/base.py)
    return cls(config, raw_root, device)


def extract_features(
    feature_set: str,
    manifest_dir: Path,
    out_dir: Path,
    section: dict[str, Any] | None = None,
    raw_root: Path | None = None,
    where: str = "extract",
    wait_s: float = 0.0,
    extractor: Extractor | None = None,
    params_file: Path | None = None,
) -> dict[str, Any]:
    """Fill (or finish) the feature store at `out_dir` for every utterance of the manifest.

    `feature_set` names the set (`text`, `audio_egemaps`...) and `section` is its params section
    (`extract.<set>`; its `modality` may be left out when the set is named after one); `raw_root` defaults to the
    raw folder recorded in the manifest. `extractor`, if given, is used instead of building one
    from `section` (its model stays loaded across calls). `params_file`, the file `section` came
    from, is one more input `out_dir` must not overlap. Returns the store's report; for a fitted
    extractor it also holds `fit` (whether this run fitted or reused the saved state), which is
    not part of report.json.
    """
    if extractor is None:
        # a bad section fails before any file is read
        cls, config = extractor_config(feature_set, section, f"{where}.{feature_set}")
    else:
        cls, config = type(extractor), extractor.config
        if feature_set in MODALITIES and feature_set != cls.modality:
            raise PipelineError(f"extractor {cls.name!r} makes {cls.modality} features, not {feature_set}")
    modality = cls.modality
    manifest_path = Path(manifest_dir) / MANIFEST_FILE
    if not manifest_path.is_file():
        raise PipelineError(f"{manifest_path}: manifest not found (run `mer prepare` for this corpus first)")
    meta = manifest_metadata(manifest_path)
    # the manifest records its root relative to its own folder (`record_raw_root`): a copied project
    # reads its own raw files
    root = Path(raw_root) if raw_root is not None else raw_root_of(manifest_dir, meta)
    if root is None:
        raise PipelineError(f"{manifest_path}: the manifest records no raw corpus folder (pass --root)")
    if not root.is_dir():
        raise PipelineError(
            f"{root}: the raw corpus folder of {manifest_path} does not exist (pass --root to say where it is now)"
        )
    inputs = [("--manifest", Path(manifest_dir)), ("--root" if raw_root is not None else "the manifest's raw root", root),
              *_config_paths(config, f"{where}.{feature_set}"), ("--params", params_file)]
    # before the model is loaded: an --out that is an input, a file or another folder is refused at once
    check_output(out_dir, "extract", inputs, legacy=is_store_folder)
    rows = read_manifest(manifest_path)
    train_rows = _train_rows(cls, rows, manifest_path) if cls.needs_fit else []
    if extractor is None:
        extractor = build_extractor(feature_set, section, root, f"{where}.{feature_set}")
    extractor.raw_root = root
    config = extractor.config
    fitted, reused = _fitted_state(extractor, train_rows, out_dir, manifest_path) if cls.needs_fit else (None, False)
    metadata = StoreMetadata(
        corpus=meta.get("corpus", ""),
        modality=modality,
        extractor=extractor.name,
        extractor_version=extractor.version,
        model_id=extractor.model_id,
        model_sha256=extractor.model_sha256,
        manifest_sha256=sha256_file(manifest_path),
        params=config.recorded_params(),
        feature_set=feature_set,
        code_sha256=code_sha256(cls),
    )
    ids = [row["utterance_id"] for row in rows]
    extractor.plan(rows)
    dtype = STORE_DTYPES[config.dtype]
    with FeatureStoreWriter(out_dir, metadata, ids, config.shard_size, dtype, wait_s, fitted=fitted) as writer:
        pending = writer.pending_shards()
        shard_rows = {k: rows[k * config.shard_size : (k + 1) * config.shard_size] for k in pending}
        for k, features, flags in _run_shards(extractor, shard_rows, f"{metadata.corpus} {feature_set}"):
            writer.write_shard(k, features, flags)
        report = writer.finalize()
    if fitted is not None:
        report = {**report, "fit": {"reused": reused, "num_inputs": fitted.num_inputs,
                                    "sha256": writer.store["fitted"]["sha256"]}}
    return report


def _train_rows(cls: type[Extractor], rows: list[dict[str, Any]], manifest_path: Path) -> list[dict[str, Any]]:
    """The rows a fitted extractor may learn from: split "train", and no other."""
    train = [row for row in rows if row["split"] == "train"]
    if not train:
        splits = sorted({row["split"] for row in rows})
        raise PipelineError(
            f"{manifest_path}: has no train split (splits: {', '.join(splits) or 'none'}), and the {cls.name} "
            f"extractor is fitted on the train split only; extract from a manifest with a train split, "
            f"or choose an extractor without a fit step"
        )
    return train


def _fitted_state(
    extractor: Extractor, train_rows: list[dict[str, Any]], out_dir: Path, manifest_path: Path
) -> tuple[FittedState, bool]:
    """Fit `extractor` on the train rows, or reuse the state the store saved for the same inputs;
    load it into the extractor as stored. Returns (state, whether it was reused)."""
    inputs = extractor.fit_inputs(train_rows)
    if not inputs:
        raise PipelineError(
            f"{manifest_path}: none of its {len(train_rows)} train utterances has {extractor.fit_needs} to fit "
            f"the {extractor.name} extractor on (it is fitted on the train split only)"
        )
    key = fit_sha256(extractor, inputs)
    state = saved_fitted_state(out_dir, key)
    reused = state is not None
    if state is None:
        fresh = extractor.fit(inputs)
        # encode from the state exactly as it will be read back on a resume (e.g. float32 arrays)
        state = parse_fitted_state(fitted_state_bytes(
            FittedState(info=fresh.info, tensors=fresh.tensors, fit_sha256=key, num_inputs=len(inputs))
        ))
    extractor.load_fitted(state)
    return state, reused


def _config_paths(config: ExtractorConfig, where: str) -> list[tuple[str, Path]]:
    """The config's values that name an existing local file or folder (the model, its weights): inputs."""
    found = []
    for name, value in vars(config).items():
        if isinstance(value, str) and value and os.path.lexists(value):
            found.append((f"{where}.{name}", Path(value)))
    return found


def _run_shards(
    extractor: Extractor, shard_rows: dict[int, list[dict[str, Any]]], desc: str
):
    """Yield (shard, features, flags) for each shard in order, decoding ahead in worker processes."""
    if not shard_rows:
        return
    flat: list[dict[str, Any]] = []
    batches: list[list[int]] = []
    batches_left: dict[int, int] = {}
    batch_shard: list[int] = []
    for k, rows in shard_rows.items():
        offset = len(flat)
        flat.extend(rows)
        shard_batches = [[offset + i for i in batch] for batch in extractor.batches(rows)]
        batches.extend(shard_batches)
        batch_shard.extend([k] * len(shard_batches))
        batches_left[k] = len(shard_batches)
    workers = extractor.config.num_workers
    loader = DataLoader(
        _DecodeDataset(flat, extractor.decoder()),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_as_list,
        prefetch_factor=2 if workers else None,
    )
    features: dict[str, torch.Tensor] = {}
    flags: dict[str, str] = {}
    for b, decoded in enumerate(progress(loader, desc, total=len(batches), unit="batch")):
        k = batch_shard[b]
        for item in _encode_batch(extractor, decoded):
            if item.feature is not None:
                features[item.utterance_id] = item.feature.detach().to("cpu")
            reasons = ([item.missing] if item.missing else []) + list(item.flags)
            if reasons:
                flags[item.utterance_id] = "; ".join(reasons)
        batches_left[k] -= 1
        if batches_left[k] == 0:
            yield k, features, flags
            features, flags = {}, {}


def _encode_batch(extractor: Extractor, decoded: list[Decoded]) -> list[Encoded]:
    """Missing items pass through with their reason; the rest go to the model in one call."""
    out = [Encoded(d.utterance_id, None, d.missing, list(d.flags)) for d in decoded if d.missing]
    ready = [d for d in decoded if not d.missing]
    if ready:
        with torch.inference_mode():
            encoded = extractor.encode(ready)
        if sorted(e.utterance_id for e in encoded) != sorted(d.utterance_id for d in ready):
            raise RuntimeError(f"extractor {extractor.name} returned features for other utterances than it was given")
        out.extend(encoded)
    return out


def describe(report: dict[str, Any], out_dir: Path) -> str:
    """The stage's terminal report: counts in / stored / missing / flagged, by reason."""
    store = report["store"]
    counts = report["counts"]
    lines = [
        f"{store['corpus']} {store.get('feature_set') or store['modality']} ({store['modality']}: "
        f"{store['extractor']}, {store['model_id']}): "
        f"{counts['in']} utterances, {counts['out']} stored, {counts['missing']} missing, "
        f"{counts['flagged']} flagged -> {out_dir}"
    ]
    if "fit" in report:
        fit = report["fit"]
        how = "reused the state saved in the store" if fit["reused"] else "fitted now"
        lines.append(f"  fitted on {fit['num_inputs']} train utterances only ({how}; sha256 {fit['sha256'][:12]})")
    for kind, by_reason in (("missing", report["dropped_by_reason"]), ("flagged", report["flagged_by_reason"])):
        lines += [f"  {kind} {n} x {reason}" for reason, n in by_reason.items()]
    return "\n".join(lines)
