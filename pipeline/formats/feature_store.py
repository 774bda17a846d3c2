"""Feature store: the per-utterance feature tensors of one (corpus, modality), written in resumable shards.

On-disk format (format_version 1; a contract for every later reader)
--------------------------------------------------------------------
One folder per (corpus, modality), e.g. ``data/features/meld/audio/``::

    shard-00000.safetensors   one tensor per stored utterance, key = utterance id
    shard-00001.safetensors   ...
    availability.safetensors  the trainer's mask for this modality, in manifest order
    report.json               counts, and every utterance that is missing or flagged, with its reason
    fitted.safetensors        only for a fitted extractor (e.g. ``tfidf``): what it learned from the
                              train split, written before any shard
    index.json                written last: the store is finished only when it exists
    .lock                     empty; flock()ed by the writer for its whole lifetime, never data
    .mer-output.json          the stage that writes the store (`pipeline.core.outputs`), written first

Shard plan: the caller gives the utterance ids in manifest order and a shard size S; shard k holds
``ids[k*S:(k+1)*S]``. ``plan_sha256`` is the sha256 of the compact sorted-key JSON
``{"shard_size": S, "utterance_ids": ids}``.

Shards: each tensor is stored in the store's dtype (float16 by default) with its own shape
([D], [T, D], ...). The safetensors metadata has exactly one key, ``"mer_store"``, whose value is
the JSON::

    {"format_version": 1,
     "store": {"corpus", "modality", "extractor", "extractor_version", "model_id", "model_sha256",
               "manifest_sha256", "params": {...}, "feature_set", "code_sha256", "dtype", "shard_size",
               "plan_sha256", "num_utterances", "fitted": {...} (fitted extractors only, see below)},
     "shard": {"index": k, "utterance_ids": [the planned ids of shard k, in order],
               "missing": {id: reason}, "flagged": {id: reason}}}

An id in "missing" has no tensor (e.g. corrupt media); an id in "flagged" has a tensor and a caveat
(e.g. a low-confidence face). A shard whose "store" section or planned ids differ from the
writer's is stale: it is redone, never mixed with current shards.

``index.json``::

    {"format_version": 1, "store": {...as above},
     "shards": [{"file": "shard-00000.safetensors", "sha256": ..., "utterance_ids": [stored ids]}],
     "utterances": {id: {"shard": "shard-00000.safetensors", "shape": [...], "dtype": "float16"}}}

"shards" is in plan order; "utterances" lists stored ids only.

``report.json`` (the extract stage's report, common keys as in `pipeline.formats.stage_report`)::

    {"stage": "extract", "corpus": ..., "modality": ..., "store": {...},
     "counts": {"in": N, "out": stored, "dropped": missing, "missing": ..., "flagged": ...},
     "dropped_by_reason": {reason: n}, "flagged_by_reason": {reason: n},
     "missing": [{"utterance_id", "reason"}], "flagged": [{"utterance_id", "reason"}]}

lists in manifest order; "flagged" counts stored utterances with a flag (in = out + missing).

``availability.safetensors``: tensor ``"available"``, bool [N], True where the utterance has a
tensor, in manifest order; metadata key ``"mer_availability"`` = JSON
``{"store": {...}, "utterance_ids": [N ids]}``.

``fitted.safetensors`` (a `FittedState`; safetensors, never a pickle): the extractor's learned arrays
as named tensors (``tfidf``: ``idf`` [V], ``components`` [width, V]), and one metadata key,
``"mer_fitted"``, whose value is the JSON::

    {"format_version": 1, "fit_sha256": ..., "num_inputs": n, "info": {...}}

``info`` is the extractor's JSON part (``tfidf``: the vocabulary in column order, its settings);
``fit_sha256`` identifies what it was fitted on (`extractors.base.fit_sha256`: the extractor, its
version, the params that shape the fit and the exact train-split inputs, so dev and test never enter
it); ``num_inputs`` counts those inputs. The store section then carries
``"fitted": {"file": "fitted.safetensors", "sha256": <of the file>, "fit_sha256", "num_inputs"}``,
so a refit that changes one byte of the state makes every shard stale, and ``index.json`` records
the file's hash for readers and `mer lineage` to check. A store written without a fitted extractor
has no "fitted" key (and stores of earlier versions are unchanged).

All JSON has sorted keys and no timestamps, and safetensors orders tensors by itself, so the same
inputs and tensors give byte-identical files however often the run was killed and resumed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from pipeline.core.atomic import atomic_write_bytes, write_marker
from pipeline.core.errors import PipelineError
from pipeline.core.locks import OutputLock
from pipeline.core.outputs import MARKER_FILE, check_output
from pipeline.core.fingerprint import sha256_file
from pipeline.formats.stage_report import REPORT_FILE, stage_counts

FORMAT_VERSION = 1
STORE_KEY = "mer_store"
AVAILABILITY_KEY = "mer_availability"
AVAILABILITY_TENSOR = "available"
INDEX_FILE = "index.json"
AVAILABILITY_FILE = "availability.safetensors"
FITTED_FILE = "fitted.safetensors"
FITTED_KEY = "mer_fitted"
LOCK_FILE = ".lock"
# the finished-store files, in the order finalize() publishes them (index.json last)
_PUBLISHED = (AVAILABILITY_FILE, REPORT_FILE, INDEX_FILE)
_SHARD_NAME = re.compile(r"^shard-\d+\.safetensors$")
# every name a writer leaves in a store folder (temporary files: `.<name>.<random>.tmp`)
_STORE_ENTRY = re.compile(
    r"^\.?(shard-\d+\.safetensors|index\.json|report\.json|availability\.safetensors|fitted\.safetensors)"
    r"(\..+\.tmp)?$"
    r"|^\.lock$|^" + re.escape(MARKER_FILE) + r"(\..+\.tmp)?$"
)
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
_SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32"}


@dataclass(frozen=True)
class StoreMetadata:
    """What produced the features: a store is valid only for exactly these inputs."""

    corpus: str
    modality: str  # "text", "audio", "face", ...
    extractor: str
    extractor_version: str
    model_id: str
    model_sha256: str  # hash of the weights actually loaded
    manifest_sha256: str  # sha256 of manifest.parquet (pipeline.core.fingerprint.sha256_file)
    params: dict[str, Any] = field(default_factory=dict)  # the config section used (JSON-able)
    feature_set: str = ""  # the params section it was made by (`extract.<set>`); "" = named after its modality
    code_sha256: str = ""  # the extractor's code (`extractors.base.code_sha256`); "" = no extractor ran (imported)


@dataclass(frozen=True)
class FittedState:
    """What a fitted extractor learned from the train split (`extractors.base.Extractor.fit`).

    `info` is JSON (a vocabulary, settings, counts) and `tensors` are named arrays, so the state is
    stored as one safetensors file and read back without running any code (no pickle).
    `fit_sha256` and `num_inputs` say what it was fitted on; the extract stage sets them.
    """

    info: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    fit_sha256: str = ""
    num_inputs: int = 0


def fitted_state_bytes(state: FittedState) -> bytes:
    """The `fitted.safetensors` bytes of `state`: the same state always gives the same bytes."""
    header = {"format_version": FORMAT_VERSION, "fit_sha256": state.fit_sha256,
              "num_inputs": state.num_inputs, "info": state.info}
    try:
        meta = _compact_json(header)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"fitted state: its info must be JSON-serialisable and finite: {exc}") from None
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state.tensors.items()}
    return safetensors_save(tensors, metadata={FITTED_KEY: meta})


def parse_fitted_state(data: bytes) -> FittedState:
    """`fitted_state_bytes` read back; ValueError if `data` is not a fitted-state file of this format."""
    try:
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        record = json.loads(header["__metadata__"][FITTED_KEY])
        tensors = safetensors_load(data)
    except (KeyError, TypeError, ValueError, SafetensorError) as exc:
        raise ValueError(f"not a fitted-state file ({exc})") from None
    if not isinstance(record, dict) or record.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"fitted-state format {record.get('format_version')!r}, expected {FORMAT_VERSION}")
    return FittedState(info=record["info"], tensors=tensors, fit_sha256=record["fit_sha256"],
                       num_inputs=record["num_inputs"])


def saved_fitted_state(folder: Path | str, fit_sha256: str) -> FittedState | None:
    """The fitted state saved in the store at `folder`, if a run can reuse it instead of refitting.

    It must have been fitted on the same inputs (`fit_sha256`), and the store must already have
    committed to its exact bytes: a shard or index.json records its sha256. A file edited or swapped
    since (which would otherwise become the state of every redone shard) is not reused: the caller
    refits, which on the same machine gives the original bytes again.
    """
    folder = Path(folder)
    try:
        data = (folder / FITTED_FILE).read_bytes()
        state = parse_fitted_state(data)
    except (OSError, ValueError):
        return None
    if state.fit_sha256 != fit_sha256:
        return None
    digest = hashlib.sha256(data).hexdigest()
    sections = [(_read_store_header(path) or {}).get("store") for path in sorted(folder.glob("shard-*.safetensors"))]
    try:
        sections.append(json.loads((folder / INDEX_FILE).read_text(encoding="utf-8")).get("store"))
    except (OSError, ValueError, AttributeError):
        pass
    committed = any(isinstance(s, dict) and (s.get("fitted") or {}).get("sha256") == digest for s in sections)
    return state if committed else None


@dataclass(frozen=True)
class Availability:
    """Which manifest utterances have a feature in this modality (mask[i] <-> utterance_ids[i])."""

    utterance_ids: list[str]
    mask: torch.Tensor  # bool [N]


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def is_store_folder(folder: Path | str) -> bool:
    """True if every entry of the non-empty `folder` is a file a store writer makes: a store written
    before stores carried a marker (`pipeline.core.outputs`), which its writer may resume."""
    try:
        names = [entry.name for entry in os.scandir(folder)]
    except OSError:
        return False
    return bool(names) and all(_STORE_ENTRY.match(name) for name in names)


def plan_sha256(utterance_ids: Sequence[str], shard_size: int) -> str:
    """Identity of the shard plan: any change to the ids, their order or the size changes it."""
    plan = {"shard_size": shard_size, "utterance_ids": list(utterance_ids)}
    return hashlib.sha256(_compact_json(plan).encode("utf-8")).hexdigest()


def _compact_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _file_json(obj: Any) -> bytes:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False, indent=2)
    return (text + "\n").encode("utf-8")


def _read_store_header(path: Path) -> dict[str, Any] | None:
    """The "mer_store" metadata of a shard, or None if the file is absent, truncated or foreign."""
    try:
        with safe_open(path, framework="pt") as handle:
            raw = (handle.metadata() or {}).get(STORE_KEY)
        return json.loads(raw) if raw else None
    except (OSError, SafetensorError, ValueError):
        return None


class FeatureStoreWriter:
    """Writes one store shard by shard; use as a context manager, which holds the folder's lock.

    Typical use::

        with FeatureStoreWriter(folder, metadata, ids, shard_size=256) as writer:
            for k in writer.pending_shards():
                features, flags = extract(writer.shard_ids(k))
                writer.write_shard(k, features, flags)
            writer.finalize()
    """

    def __init__(
        self,
        folder: Path | str,
        metadata: StoreMetadata,
        utterance_ids: Sequence[str],
        shard_size: int,
        dtype: torch.dtype = torch.float16,
        wait_s: float = 0.0,
        stage: str = "extract",
        fitted: FittedState | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.stage = stage  # the `mer` stage named by the folder's marker
        self._ids = _checked_ids(utterance_ids)
        if shard_size < 1:
            raise PipelineError(f"{self.folder}: shard_size must be at least 1, got {shard_size}")
        if dtype not in _DTYPE_NAMES:
            raise PipelineError(
                f"{self.folder}: unsupported feature dtype {dtype}; use one of {list(_DTYPE_NAMES)}"
            )
        self.shard_size = shard_size
        self.dtype = dtype
        self.wait_s = wait_s
        # a fitted extractor's state: its bytes are hashed into the store section, so shards made
        # with another state are stale
        self._fitted = fitted_state_bytes(fitted) if fitted is not None else None
        self.store = self._store_section(metadata, fitted)
        # an exclusive flock on folder/.lock, so two writers never interleave shards of one store
        self._lock = OutputLock(self.folder / LOCK_FILE, self.folder, "feature store", remove=False)

    def _store_section(self, metadata: StoreMetadata, fitted: FittedState | None) -> dict[str, Any]:
        """The "store" section every shard carries, normalised through JSON so it compares equal on reload."""
        section = {
            **asdict(metadata),
            "dtype": _DTYPE_NAMES[self.dtype],
            "shard_size": self.shard_size,
            "plan_sha256": plan_sha256(self._ids, self.shard_size),
            "num_utterances": len(self._ids),
        }
        if fitted is not None and self._fitted is not None:  # (both or neither)
            section["fitted"] = {
                "file": FITTED_FILE,
                "sha256": hashlib.sha256(self._fitted).hexdigest(),
                "fit_sha256": fitted.fit_sha256,
                "num_inputs": fitted.num_inputs,
            }
        try:
            return json.loads(_compact_json(section))
        except (TypeError, ValueError) as exc:
            raise PipelineError(
                f"{self.folder}: store metadata must be JSON-serialisable and finite: {exc}"
            ) from None

    def __enter__(self) -> FeatureStoreWriter:
        # only an absent or empty folder, or a store of this stage, is written into (resumed)
        check_output(self.folder, self.stage, legacy=is_store_folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock.acquire(self.wait_s)
        try:
            write_marker(self.folder, self.stage)
            self._write_fitted()
        except BaseException:
            self._lock.release()
            raise
        return self

    def _write_fitted(self) -> None:
        """Save the fitted state before any shard that depends on it; an identical file is kept as it is."""
        if self._fitted is None:
            return
        path = self.folder / FITTED_FILE
        with contextlib.suppress(OSError):
            if path.read_bytes() == self._fitted:
                return
        self._unpublish()
        atomic_write_bytes(path, self._fitted)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.release()

    @property
    def num_shards(self) -> int:
        return -(-len(self._ids) // self.shard_size)

    def shard_ids(self, k: int) -> list[str]:
        """The utterance ids shard k must cover, in manifest order."""
        if not 0 <= k < self.num_shards:
            raise PipelineError(f"{self.folder}: shard {k} is outside the plan (0..{self.num_shards - 1})")
        return self._ids[k * self.shard_size : (k + 1) * self.shard_size]

    def pending_shards(self) -> list[int]:
        """Shards still to write: absent, unreadable, or written for other metadata or another plan."""
        self._require_lock()
        return [k for k in range(self.num_shards) if not self._is_complete(k)]

    def _is_complete(self, k: int) -> bool:
        header = _read_store_header(self.folder / shard_name(k))
        if header is None or header.get("format_version") != FORMAT_VERSION:
            return False
        shard = header.get("shard") or {}
        return (
            header.get("store") == self.store
            and shard.get("index") == k
            and shard.get("utterance_ids") == self.shard_ids(k)
        )

    def write_shard(
        self, k: int, features: Mapping[str, Any], flags: Mapping[str, str] | None = None
    ) -> None:
        """Write shard k atomically; every planned id needs a tensor, a flag (reason), or both.

        An id with a flag and no tensor is recorded as missing with that reason, so a resumed run
        does not try it again.
        """
        self._require_lock()
        flags = dict(flags or {})
        planned = self.shard_ids(k)
        self._check_coverage(k, planned, features, flags)
        tensors = {uid: _stored_tensor(uid, features[uid], self.dtype) for uid in planned if uid in features}
        header = {
            "format_version": FORMAT_VERSION,
            "store": self.store,
            "shard": {
                "index": k,
                "utterance_ids": planned,
                "missing": {uid: flags[uid] for uid in planned if uid not in features},
                "flagged": {uid: flags[uid] for uid in planned if uid in features and uid in flags},
            },
        }
        data = safetensors_save(tensors, metadata={STORE_KEY: _compact_json(header)})
        self._unpublish()
        atomic_write_bytes(self.folder / shard_name(k), data)

    def _check_coverage(
        self, k: int, planned: list[str], features: Mapping[str, Any], flags: Mapping[str, str]
    ) -> None:
        planned_set = set(planned)
        foreign = [uid for uid in [*features, *flags] if uid not in planned_set]
        if foreign:
            raise PipelineError(
                f"{self.folder}: shard {k}: utterance {foreign[0]!r} is not in this shard's plan"
            )
        uncovered = [uid for uid in planned if uid not in features and uid not in flags]
        if uncovered:
            raise PipelineError(
                f"{self.folder}: shard {k}: {len(uncovered)} planned utterance(s) have neither a feature "
                f"nor a flag giving the reason, e.g. {uncovered[:5]}"
            )
        bad = [uid for uid, reason in flags.items() if not isinstance(reason, str) or not reason]
        if bad:
            raise PipelineError(
                f"{self.folder}: shard {k}: the flag of {bad[0]!r} must be a non-empty reason string"
            )

    def finalize(self) -> dict[str, Any]:
        """Publish availability, report and (last) index; remove shards and temp files of older plans.

        Returns the report. Refuses while any shard is missing or stale, so a finished store never
        mixes shards of different metadata.
        """
        pending = self.pending_shards()
        if pending:
            raise PipelineError(
                f"{self.folder}: cannot finalize the feature store: {len(pending)} shard(s) are missing "
                f"or stale, e.g. {[shard_name(k) for k in pending[:5]]}"
            )
        shards = [_scan_shard(self.folder / shard_name(k)) for k in range(self.num_shards)]
        if self._fitted is not None and _sha256_or_none(self.folder / FITTED_FILE) != self.store["fitted"]["sha256"]:
            raise PipelineError(
                f"{self.folder / FITTED_FILE}: the fitted state changed while the store was written; run it again"
            )
        self._remove_leftovers()
        report = _report(self.store, shards)
        availability = _availability_bytes(self.store, self._ids, shards)
        atomic_write_bytes(self.folder / AVAILABILITY_FILE, availability)
        atomic_write_bytes(self.folder / REPORT_FILE, _file_json(report))
        atomic_write_bytes(self.folder / INDEX_FILE, _file_json(_index(self.store, shards)))
        return report

    def _unpublish(self) -> None:
        """Before a shard changes, withdraw the finished-store files (index first): no reader sees a mix."""
        for name in reversed(_PUBLISHED):
            (self.folder / name).unlink(missing_ok=True)

    def _remove_leftovers(self) -> None:
        current = {shard_name(k) for k in range(self.num_shards)}
        for path in self.folder.iterdir():
            old_shard = bool(_SHARD_NAME.match(path.name)) and path.name not in current
            temp = path.name.startswith(".") and path.name.endswith(".tmp")
            old_fitted = path.name == FITTED_FILE and self._fitted is None  # the store is no longer a fitted one
            if (old_shard or temp or old_fitted) and path.is_file():
                path.unlink()

    def _require_lock(self) -> None:
        if not self._lock.held:
            raise RuntimeError("use FeatureStoreWriter inside a `with` block: it holds the store's lock")


def _sha256_or_none(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def _checked_ids(utterance_ids: Sequence[str]) -> list[str]:
    ids = list(utterance_ids)
    if not ids:
        raise PipelineError("feature store: no utterance ids to store")
    seen: set[str] = set()
    for uid in ids:
        if not isinstance(uid, str) or not uid:
            raise PipelineError(f"feature store: utterance ids must be non-empty strings, got {uid!r}")
        if uid in seen:
            raise PipelineError(f"feature store: utterance id {uid!r} appears twice in the plan")
        seen.add(uid)
    return ids


def _stored_tensor(uid: str, value: Any, dtype: torch.dtype) -> torch.Tensor:
    """A private contiguous CPU copy in the store's dtype; NaN/inf (or overflow of the dtype) is an error."""
    tensor = torch.as_tensor(value).detach()
    if not bool(torch.isfinite(tensor).all()):
        raise PipelineError(f"utterance {uid!r}: feature contains NaN or inf")
    stored = tensor.to(device="cpu", dtype=dtype, copy=True).contiguous()
    if not bool(torch.isfinite(stored).all()):
        peak = float(tensor.abs().max())
        raise PipelineError(
            f"utterance {uid!r}: feature overflows {_DTYPE_NAMES[dtype]} (largest |value| {peak:g})"
        )
    return stored


@dataclass(frozen=True)
class _ShardScan:
    """What finalize needs from one complete shard file."""

    file: str
    sha256: str
    planned: list[str]
    missing: dict[str, str]
    flagged: dict[str, str]
    tensors: dict[str, dict[str, Any]]  # id -> {"shape", "dtype"}

    @property
    def stored(self) -> list[str]:
        return [uid for uid in self.planned if uid not in self.missing]


def _scan_shard(path: Path) -> _ShardScan:
    with safe_open(path, framework="pt") as handle:
        shard = json.loads(handle.metadata()[STORE_KEY])["shard"]
        tensors = {}
        for uid in handle.keys():
            view = handle.get_slice(uid)
            tensors[uid] = {"shape": list(view.get_shape()), "dtype": _SAFETENSORS_DTYPES[view.get_dtype()]}
    return _ShardScan(
        file=path.name,
        sha256=sha256_file(path),
        planned=shard["utterance_ids"],
        missing=shard["missing"],
        flagged=shard["flagged"],
        tensors=tensors,
    )


def _index(store: dict[str, Any], shards: list[_ShardScan]) -> dict[str, Any]:
    utterances = {
        uid: {"shard": scan.file, **scan.tensors[uid]} for scan in shards for uid in scan.stored
    }
    return {
        "format_version": FORMAT_VERSION,
        "store": store,
        "shards": [{"file": s.file, "sha256": s.sha256, "utterance_ids": s.stored} for s in shards],
        "utterances": utterances,
    }


def _report(store: dict[str, Any], shards: list[_ShardScan]) -> dict[str, Any]:
    missing = [{"utterance_id": uid, "reason": r} for s in shards for uid, r in _in_plan_order(s, s.missing)]
    flagged = [{"utterance_id": uid, "reason": r} for s in shards for uid, r in _in_plan_order(s, s.flagged)]
    total = sum(len(s.planned) for s in shards)
    report = stage_counts(
        "extract", store["corpus"], total, total - len(missing),
        dropped=[(e["utterance_id"], e["reason"]) for e in missing],
        flagged=[(e["utterance_id"], e["reason"]) for e in flagged],
    )
    report["counts"]["missing"] = len(missing)  # the store's own word for dropped: no tensor, availability False
    report.update({"modality": store["modality"], "store": store, "missing": missing, "flagged": flagged})
    return report


def _in_plan_order(scan: _ShardScan, reasons: dict[str, str]) -> list[tuple[str, str]]:
    return [(uid, reasons[uid]) for uid in scan.planned if uid in reasons]


def _availability_bytes(store: dict[str, Any], ids: list[str], shards: list[_ShardScan]) -> bytes:
    missing = {uid for s in shards for uid in s.missing}
    mask = torch.tensor([uid not in missing for uid in ids], dtype=torch.bool)
    meta = _compact_json({"store": store, "utterance_ids": ids})
    return safetensors_save({AVAILABILITY_TENSOR: mask}, metadata={AVAILABILITY_KEY: meta})


class FeatureStoreReader:
    """Read a finished store; opening checks index.json against the shard files.

    `verify=False` skips hashing the shards (existence is still checked): for processes such as
    DataLoader workers that reopen a store the parent has already verified.
    """

    def __init__(self, folder: Path | str, verify: bool = True) -> None:
        self.folder = Path(folder)
        self._index = self._load_index()
        self._shard_of = {uid: entry["shard"] for uid, entry in self._index["utterances"].items()}
        self._check_shards(verify)

    def _load_index(self) -> dict[str, Any]:
        path = self.folder / INDEX_FILE
        if not path.is_file():
            raise PipelineError(
                f"{self.folder}: not a finished feature store (no {INDEX_FILE}); "
                "the feature extraction stage did not finish, run it again"
            )
        index = json.loads(path.read_text(encoding="utf-8"))
        if index.get("format_version") != FORMAT_VERSION:
            found = index.get("format_version")
            raise PipelineError(f"{path}: feature store format {found!r}, expected {FORMAT_VERSION}")
        return index

    def _check_shards(self, verify: bool) -> None:
        for shard in self._index["shards"]:
            path = self.folder / shard["file"]
            if not path.is_file():
                raise PipelineError(
                    f"{path}: shard listed in {INDEX_FILE} is missing; re-run the extraction stage"
                )
            if verify and sha256_file(path) != shard["sha256"]:
                raise PipelineError(
                    f"{path}: sha256 does not match {INDEX_FILE}; the shard changed after extraction, "
                    "re-run the stage"
                )
        fitted = self._index["store"].get("fitted")
        if fitted:
            path = self.folder / FITTED_FILE
            if not path.is_file():
                raise PipelineError(f"{path}: the fitted state listed in {INDEX_FILE} is missing; re-run the extraction stage")
            if verify and sha256_file(path) != fitted["sha256"]:
                raise PipelineError(
                    f"{path}: sha256 does not match {INDEX_FILE}; the fitted state changed after extraction, "
                    "re-run the stage"
                )

    @property
    def metadata(self) -> dict[str, Any]:
        """The "store" section: StoreMetadata fields plus dtype, shard_size, plan_sha256, num_utterances."""
        return self._index["store"]

    @cached_property
    def utterance_ids(self) -> list[str]:
        """Ids that have a feature, in manifest order."""
        return [uid for shard in self._index["shards"] for uid in shard["utterance_ids"]]

    def __contains__(self, utterance_id: object) -> bool:
        return utterance_id in self._shard_of

    def get(self, utterance_id: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """One utterance's feature; KeyError if it has none (report.json says why)."""
        if utterance_id not in self._shard_of:
            raise KeyError(
                f"{utterance_id!r} has no feature in {self.folder} (see {REPORT_FILE} for the reason)"
            )
        with safe_open(self.folder / self._shard_of[utterance_id], framework="pt") as handle:
            return handle.get_tensor(utterance_id).to(dtype)

    def load_all(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Every stored feature in manifest order, opening each shard once."""
        features: dict[str, torch.Tensor] = {}
        for shard in self._index["shards"]:
            with safe_open(self.folder / shard["file"], framework="pt") as handle:
                for uid in shard["utterance_ids"]:
                    features[uid] = handle.get_tensor(uid).to(dtype)
        return features

    def fitted_state(self) -> FittedState | None:
        """The state the extractor was fitted to (None for an extractor without a fit step)."""
        if not self._index["store"].get("fitted"):
            return None
        try:
            return parse_fitted_state(self._published_file(FITTED_FILE).read_bytes())
        except ValueError as exc:
            raise PipelineError(f"{self.folder / FITTED_FILE}: {exc}; re-run the extraction stage") from None

    def availability(self) -> Availability:
        path = self._published_file(AVAILABILITY_FILE)
        with safe_open(path, framework="pt") as handle:
            mask = handle.get_tensor(AVAILABILITY_TENSOR)
            ids = json.loads(handle.metadata()[AVAILABILITY_KEY])["utterance_ids"]
        return Availability(utterance_ids=ids, mask=mask)

    @cached_property
    def report(self) -> dict[str, Any]:
        return json.loads(self._published_file(REPORT_FILE).read_text(encoding="utf-8"))

    def _published_file(self, name: str) -> Path:
        path = self.folder / name
        if not path.is_file():
            raise PipelineError(
                f"{path}: missing from the finished feature store; re-run the extraction stage"
            )
        return path
